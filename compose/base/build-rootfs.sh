#!/usr/bin/env bash
# Builds the root filesystem every image of the Compose stack starts from (the API, the workers,
# Redis and PostgreSQL), with Debian's mmdebstrap, as a tarball for `docker import`: no image ever
# comes from Docker Hub or any other registry, only Debian packages through this host's apt mirror.
#
#   compose/base/build-rootfs.sh OUT.tar     (quick when OUT.tar exists and this script is unchanged)
#
# The packages: python3 (sandpit runs on Debian's Python; its libraries come from the set-up's
# virtual environment, see compose/Dockerfile; python3-async-timeout is what redis-py needs on
# Debian's 3.11.2 and not on the 3.11.3+ the set-up's environment may have been made with), the OCI runtimes (crun, runc and gVisor's runsc),
# what host preparation and jobs need (btrfs-progs for the job disks, nftables/iproute2 for egress,
# util-linux, uidmap, dnsmasq-base for egress DNS, mmdebstrap to build job images, git for
# checkouts), and redis-server and postgresql for the stack's own Redis and database.
set -euo pipefail
out=${1:?usage: build-rootfs.sh OUT.tar}
here=$(cd "$(dirname "$0")" && pwd)
PACKAGES=python3,python3-venv,python3-async-timeout,ca-certificates,crun,runc,runsc,mmdebstrap,btrfs-progs,nftables,iproute2,util-linux,uidmap,dnsmasq-base,git,redis-server,postgresql,procps
stamp=$(cat "$0" | sha256sum | cut -c1-16)
if [[ -f "$out" && "$(cat "$out.stamp" 2>/dev/null)" == "$stamp" ]]; then
    exit 0
fi
mkdir -p "$(dirname "$out")"  # a fresh host has no /var/cache/sandpit yet
tmp="${out%.tar}.tmp$$.tar"  # mmdebstrap writes a tarball when the name ends in .tar
trap 'rm -f "$tmp"' EXIT
# --variant=minbase: no init system, no editors; apt's lists and caches are dropped from the image
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/usr/share/doc "$1"/usr/share/man' \
    bookworm "$tmp"
mv "$tmp" "$out"
echo "$stamp" > "$out.stamp"
trap - EXIT
