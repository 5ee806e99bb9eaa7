"""Overlay snapshots of image layers (containerd's snapshotter vocabulary).

- `snapshotter`: `Snapshotter` (the interface) and `OverlaySnapshotter`
  (prepare/view/commit/remove/usage/walk/cleanup, layers stored once by chain ID).
- `mounts`: `Mount` records, `mount_all`/`unmount_all`/`mounted` (many lower
  layers through fsconfig `lowerdir+` or mount(2) with /proc/self/fd paths).
- `unpack`: `apply_layer`, secure application of OCI layer tars (gzip, zstd)
  with whiteouts converted to overlayfs's format.
- `features`: what this kernel's overlayfs supports, probed.
- `errors`: the typed errors, each naming its snapshot, target or entry.
"""
