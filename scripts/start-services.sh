#!/bin/sh
# Start what consul-reg needs on this host, each only if it is not running
# yet: dockerd (no systemd here) and a Consul dev agent on 127.0.0.1:8500.
# Then import the busybox test image (no registry is reachable).
# Logs go to ${CONSUL_REG_STATE:-/tmp/consul-reg-services}.
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
