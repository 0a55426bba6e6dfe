"""Images from OCI/Docker registries and archives: naming, manifests, the skopeo transport, safe
layer unpacking, and the pulled part of the image store (see docs/images.md)."""
