#!/bin/sh
# Start what consul-reg needs on this host, each only if it is not running
# yet: dockerd (no systemd here) and a Consul dev agent on 127.0.0.1:8500.
# Then import the busybox test image (no registry is reachable).
# Optional components (other names, meant for install-deps.sh, are ignored):
#   podman: Podman's Docker-compatible API on unix:///run/podman/podman.sock,
#           with the busybox test image loaded into Podman's storage.
# Logs go to ${CONSUL_REG_STATE:-/tmp/consul-reg-services}.
# Usage: scripts/start-services.sh [podman]
set -eu
state="${CONSUL_REG_STATE:-/tmp/consul-reg-services}"
mkdir -p "$state"
here=$(cd "$(dirname "$0")" && pwd)

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  limit=$1; what=$2; shift 2
  deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "start-services: $what did not come up within ${limit}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

if ! docker info >/dev/null 2>&1; then
  nohup dockerd >"$state/dockerd.log" 2>&1 &
  wait_for 60 dockerd docker info || { tail -n 20 "$state/dockerd.log" >&2; exit 1; }
fi

if ! curl -fsS http://127.0.0.1:8500/v1/agent/self >/dev/null 2>&1; then
  nohup consul agent -dev -client 127.0.0.1 -bind 127.0.0.1 \
    -hcl 'enable_script_checks = true' -hcl 'log_level = "debug"' \
    >"$state/consul.log" 2>&1 &
  wait_for 60 "consul agent" curl -fsS http://127.0.0.1:8500/v1/agent/self || { tail -n 20 "$state/consul.log" >&2; exit 1; }
fi

"$here/make-test-image.sh"
echo "start-services: dockerd and consul (127.0.0.1:8500) are up"

podman_socket=/run/podman/podman.sock
start_podman() {
  # Podman's default asks for more open files than this machine's hard limit
  # allows (runc: "error setting rlimit type 7"): a drop-in lowers it.
  if [ ! -f /etc/containers/containers.conf.d/consul-reg-ulimits.conf ]; then
    mkdir -p /etc/containers/containers.conf.d
    printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n' \
      > /etc/containers/containers.conf.d/consul-reg-ulimits.conf
  fi
  if ! curl -fsS --unix-socket "$podman_socket" http://podman/_ping >/dev/null 2>&1; then
    mkdir -p "$(dirname "$podman_socket")"
    nohup podman system service --time=0 "unix://$podman_socket" >"$state/podman.log" 2>&1 &
    wait_for 60 "podman system service" curl -fsS --unix-socket "$podman_socket" http://podman/_ping \
      || { tail -n 20 "$state/podman.log" >&2; exit 1; }
  fi
  if ! podman image exists consul-reg-test/busybox:latest; then
    docker save consul-reg-test/busybox:latest | podman load -q >/dev/null
  fi
  echo "start-services: podman $(podman version -f '{{.Server.Version}}' 2>/dev/null || podman --version | cut -d' ' -f3) on unix://$podman_socket"
}

for component in "$@"; do
  case "$component" in
    podman) start_podman ;;
  esac
done
