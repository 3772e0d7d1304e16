#!/bin/sh
# Build a local Python base image for the Dockerfile (`--build-arg BASE=...`):
# no registry is reachable on this project's machines, so python:3.11-slim
# cannot be pulled. debootstrap a minimal Debian bookworm with python3 and
# python3-venv from the machine's Debian mirror, drop what only apt needs,
# and `docker import` it. Cached: nothing is done when the image exists.
# Usage: scripts/make-base-image.sh [image]   (default consul-reg-base/bookworm-python:latest)
# Env: DOCKER (docker or podman, default docker), DEBIAN_MIRROR (default: the machine's).
set -eu
image="${1:-consul-reg-base/bookworm-python:latest}"
docker="${DOCKER:-docker}"
if "$docker" image inspect "$image" >/dev/null 2>&1; then exit 0; fi
command -v debootstrap >/dev/null 2>&1 || { echo "make-base-image: debootstrap is missing (scripts/install-deps.sh image)" >&2; exit 1; }

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
fi
[ -n "$mirror" ] || mirror="http://deb.debian.org/debian"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; echo "make-base-image: debootstrap failed" >&2; exit 1; }

# What only apt and debootstrap need, and the host's own files debootstrap copied in.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/usr/share/locale/*
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
: > "$root/etc/resolv.conf"  # the runtime mounts its own over it

tar -C "$root" -c . | "$docker" import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'CMD ["python3"]' - "$image" >/dev/null
echo "make-base-image: built $image ($(du -sh "$root" | cut -f1) root)"
