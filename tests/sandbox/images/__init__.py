"""Images from registries and archives: crafted layers unpacked on the host, a real registry on
loopback (Debian's docker-registry), pulls, imports, the store's list/prune/cap, and jobs on them."""
