#!/bin/sh
# Set up dockerd and Consul when absent, run consul-reg against them, start a
# demo web container and show what landed in Consul. Ctrl-C stops it all.
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh
docker rm -f consul-reg-demo >/dev/null 2>&1 || true
.venv/bin/consul-reg -deregister-on-exit -resync 30 &
daemon=$!
trap 'docker rm -f consul-reg-demo >/dev/null 2>&1; kill $daemon 2>/dev/null; wait $daemon 2>/dev/null' EXIT INT TERM
docker run -d --name consul-reg-demo --label consul-reg-demo=1 -p 8080 \
  -e SERVICE_NAME=demo-web -e 'SERVICE_TAGS=traefik.enable=true,demo' -e SERVICE_VERSION=1 \
  consul-reg-test/busybox:latest httpd -f -p 8080 -h /www >/dev/null
for _ in $(seq 1 50); do
  if curl -fsS http://127.0.0.1:8500/v1/catalog/service/demo-web | grep -q demo-web; then break; fi
  sleep 0.2
done
echo "--- Consul's view of demo-web:"
curl -fsS http://127.0.0.1:8500/v1/catalog/service/demo-web | .venv/bin/python -m json.tool
echo "--- consul-reg keeps running; Ctrl-C stops it and removes the demo container."
wait $daemon
