"""OCI images: registry client, content store, unpacking, and a small image builder."""
