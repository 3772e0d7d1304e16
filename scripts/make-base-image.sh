#!/bin/sh
# Build a local Python base image for the Dockerfile (`--build-arg BASE=...`):
# no registry is reachable on this project's machines, so the Dockerfile's
# python base cannot be pulled. debootstrap a minimal Debian with python3 and
# python3-venv, drop what only apt needs, and `docker import` it. Cached:
# nothing is done when the image exists.
#
# Pinned: the suite (bookworm, Debian 12) and Python's minor version (3.11,
# the Dockerfile's default base's; checked, the build fails on another).
# The archive: the Debian snapshot DEBIAN_SNAPSHOT (snapshot.debian.org, an
# exact and reproducible package set) when it can be reached; else the
# machine's own mirror, whose state is recorded instead. Either way the image's
# labels record what it was built from: the archive URL, the suite's Release
# file (its Date and sha256, debootstrap checks its signature; it names the
# hash of every package), the Debian point release and the python3.11 package.
# See them with: docker image inspect -f '{{json .Config.Labels}}' IMAGE
#
# Usage: scripts/make-base-image.sh [image]   (default consul-reg-base/bookworm-python3.11:latest)
# Env: DOCKER (docker or podman, default docker), DEBIAN_SNAPSHOT (default
# below: the snapshot this project's machines were installed from; empty: do
# not try one), DEBIAN_MIRROR (used as is, instead of any snapshot).
set -eu
image="${1:-consul-reg-base/bookworm-python3.11:latest}"
docker="${DOCKER:-docker}"
suite=bookworm
python_minor=3.11
snapshot="${DEBIAN_SNAPSHOT-20250520T000000Z}"
if "$docker" image inspect "$image" >/dev/null 2>&1; then exit 0; fi
command -v debootstrap >/dev/null 2>&1 || { echo "make-base-image: debootstrap is missing (scripts/install-deps.sh image)" >&2; exit 1; }

reachable() {  # $1: a URL
  if command -v curl >/dev/null 2>&1; then curl -fsS -m 15 -o /dev/null "$1" 2>/dev/null
  else wget -q -T 15 -O /dev/null "$1" 2>/dev/null; fi
}

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ] && [ -n "$snapshot" ]; then
  candidate="http://snapshot.debian.org/archive/debian/$snapshot"
  if reachable "$candidate/dists/$suite/Release"; then
    mirror="$candidate"
  else
    echo "make-base-image: snapshot $snapshot cannot be reached; building from the machine's mirror (recorded in the labels)" >&2
  fi
fi
if [ -z "$mirror" ]; then
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
fi
[ -n "$mirror" ] || mirror="http://deb.debian.org/debian"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
debootstrap --variant=minbase --include=python3,python3-venv "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; echo "make-base-image: debootstrap failed" >&2; exit 1; }

python_version=$(chroot "$root" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true)
case "$python_version" in
  "$python_minor".*) ;;
  *) echo "make-base-image: $suite gave python '$python_version', not $python_minor" >&2; exit 1 ;;
esac
# The suite's Release file as debootstrap fetched (and verified) it.
release=$(ls "$root"/var/lib/apt/lists/*_dists_"$suite"_Release 2>/dev/null | head -n1)
[ -n "$release" ] || release=$(ls "$root"/var/lib/apt/lists/*_dists_"$suite"_InRelease | head -n1)
release_date=$(sed -n 's/^Date: //p' "$release" | head -n1)
release_sha256=$(sha256sum "$release" | cut -d' ' -f1)
python_package=$(chroot "$root" dpkg-query -W -f '${Version}' "python$python_minor" 2>/dev/null || echo unknown)
debian_version=$(cat "$root/etc/debian_version")

# What only apt and debootstrap need, and the host's own files debootstrap copied in.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/usr/share/locale/*
rm -f "$root/etc/hostname" "$root/etc/resolv.conf"
: > "$root/etc/resolv.conf"  # the runtime mounts its own over it

tar -C "$root" -c . | "$docker" import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' \
  -c "LABEL consul-reg.base.suite=$suite consul-reg.base.debian-version=$debian_version" \
  -c "LABEL consul-reg.base.archive=$mirror consul-reg.base.release-sha256=$release_sha256" \
  -c "LABEL consul-reg.base.release-date=\"$release_date\" consul-reg.base.python=python$python_minor=$python_package" \
  -c 'CMD ["python3"]' - "$image" >/dev/null
echo "make-base-image: built $image ($(du -sh "$root" | cut -f1) root): Debian $debian_version ($suite, Release of" \
  "$release_date, sha256 $release_sha256, from $mirror), python$python_minor $python_package"
