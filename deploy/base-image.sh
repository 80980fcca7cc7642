#!/usr/bin/env bash
# A Debian base image made from Debian's packages, for machines that reach no image
# registry (the project's own): debootstrap a minimal bookworm with Python, import it.
#
#   deploy/base-image.sh            # prints the image's name; builds it only if missing
#   make image BASE=$(deploy/base-image.sh)
#
# The name carries a hash of this script, so a changed recipe makes a new base and an
# existing one is reused as it is (it takes about a minute to build).
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
recipe=$(sha256sum "$0" | cut -c1-12)
name="localhost/asyncinvoke-base:$SUITE-$recipe"
podman=(podman ${PODMAN_FLAGS---runtime runc --cgroup-manager cgroupfs})

if "${podman[@]}" image exists "$name"; then
    echo "$name"
    exit 0
fi
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || {
        echo "base-image.sh: $tool is not installed (apt-get install podman runc debootstrap)" >&2
        exit 1
    }
done

rootfs=$(mktemp -d /var/tmp/asyncinvoke-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "base-image.sh: debootstrap $SUITE into $rootfs (about a minute)" >&2
debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$MIRROR" >&2
# What an image needs no copy of: downloaded packages, package lists, docs, translations.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" -c . | "${podman[@]}" import --change 'CMD ["python3"]' - "$name" >&2
echo "$name"
