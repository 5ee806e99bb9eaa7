"""Linux namespaces, mounts and the thin syscall layer everything above uses."""
