"""Media types of images: OCI's and Docker's, and which kind of object each names.

One place for both registry pulls and the store, so they accept the same things.
"""

from __future__ import annotations

from images.layout import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
)

MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_LIST})
MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
CONFIG_MEDIA_TYPES = frozenset({MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})
LAYER_MEDIA_TYPES = frozenset(
    {
        MEDIA_TYPE_LAYER,
        MEDIA_TYPE_LAYER_GZIP,
        MEDIA_TYPE_LAYER_ZSTD,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        MEDIA_TYPE_DOCKER_LAYER,
        MEDIA_TYPE_DOCKER_LAYER_GZIP,
        MEDIA_TYPE_DOCKER_FOREIGN_LAYER,
    }
)
