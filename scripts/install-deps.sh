#!/bin/sh
# Install the real components consul-reg is tested against (Debian bookworm):
# dockerd (docker.io), busybox-static (test images) and consul 1.8.7, which
# only Debian's bullseye suite carries: that suite is added at low priority
# so nothing else is taken from it.
# Usage: scripts/install-deps.sh [etcd] [zookeeper] [prometheus] [compose] [image] [podman] [swarm]
#   image: debootstrap (the local base image); podman: Debian's podman 4.3.1 and netavark;
#   swarm: nothing more (a second dockerd of the tests' own, on a bridge made with iproute2).
set -eu
export DEBIAN_FRONTEND=noninteractive

need=""
command -v dockerd >/dev/null 2>&1 || need="$need docker.io"
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need="$need busybox-static"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v dig >/dev/null 2>&1 || need="$need bind9-dnsutils"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v curl >/dev/null 2>&1 || need="$need curl"
for extra in "$@"; do
  case "$extra" in
    etcd) command -v etcd >/dev/null 2>&1 || need="$need etcd-server" ;;
    zookeeper) [ -x /usr/share/zookeeper/bin/zkServer.sh ] || need="$need zookeeper" ;;
    prometheus) ;;
    compose) command -v docker-compose >/dev/null 2>&1 || need="$need docker-compose" ;;
    image) command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap" ;;
    podman) { command -v podman >/dev/null 2>&1 && [ -x /usr/lib/podman/netavark ]; } || need="$need podman netavark" ;;
    swarm) ;;
    *) echo "install-deps: unknown component '$extra'" >&2; exit 2 ;;
  esac
done

add_bullseye() {
  if [ ! -f /etc/apt/sources.list.d/bullseye.sources ]; then
    uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
    [ -n "$uri" ] || uri="http://deb.debian.org/debian"
    cat > /etc/apt/sources.list.d/bullseye.sources <<SRC
Types: deb
URIs: $uri
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    cat > /etc/apt/preferences.d/bullseye-pin <<PIN
Package: *
Pin: release n=bullseye
Pin-Priority: 100
PIN
    updated=""
  fi
}

updated=""
update_once() { [ -n "$updated" ] || { apt-get update -qq; updated=1; }; }

bullseye=""
command -v consul >/dev/null 2>&1 || bullseye="consul"
for extra in "$@"; do
  if [ "$extra" = prometheus ] && ! { command -v prometheus >/dev/null 2>&1 && prometheus --version 2>&1 | grep -q 'version 2.24'; }; then
    bullseye="$bullseye prometheus/bullseye"
  fi
done

if [ -n "$need" ] || [ -n "$bullseye" ]; then
  [ -z "$bullseye" ] || add_bullseye
  update_once
  [ -z "$need" ] || apt-get install -y -qq --no-install-recommends $need >/dev/null
  [ -z "$bullseye" ] || apt-get install -y -qq --no-install-recommends $bullseye >/dev/null
fi
echo "install-deps: docker $(dockerd --version | cut -d' ' -f3 | tr -d ,), $(consul version | head -n1)"
