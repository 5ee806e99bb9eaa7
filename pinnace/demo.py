"""`pinnace demo`: the whole path from nothing to a running container, offline.

Builds a small image from this host's busybox-static (images/builder.py),
imports it into the store, and runs a container from it with the OCI
runtime: no registry and no network anywhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from images.store import Image, ImageNotFoundError, ImageStore

DEMO_IMAGE = "busybox"
DEMO_SCRIPT = (
    "echo 'Hello from a Pinnace container.'; "
    'echo "  hostname: $(hostname)"; '
    'echo "  pid:      $$ (a new pid namespace)"; '
    'echo "  user:     $(id)"; '
    'echo "  network:  $(ls /sys/class/net | tr "\\n" " ")"'
)


def ensure_busybox_image(store: ImageStore, busybox: Path) -> tuple[Image, bool]:
    """The demo image from the store, built and imported first if it is not there."""
    from images.archive import import_layout
    from images.builder import ImageBuilder, busybox_recipes, load_busybox
    from images.layout import OCILayout
    from pinnace.image_cli import find_image, normalize

    try:
        return find_image(store, DEMO_IMAGE), False
    except ImageNotFoundError:
        pass
    recipe = busybox_recipes(load_busybox(busybox))[DEMO_IMAGE]
    with tempfile.TemporaryDirectory(prefix="pinnace-demo-") as tmp:
        layout = OCILayout.create(Path(tmp) / "layout")
        ImageBuilder(layout).build(recipe)
        import_layout(store, layout.root, normalize=normalize)
    return find_image(store, DEMO_IMAGE), True
