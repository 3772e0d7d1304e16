#!/bin/sh
# Everything a fresh machine needs before consul-reg runs or is tested:
# the real components (installed and started) and a virtualenv in .venv.
# Usage: scripts/bootstrap.sh [etcd] [zookeeper] [prometheus] [compose] [image] [podman] [swarm]
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh "$@"
sh scripts/start-services.sh "$@"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,docs]'
