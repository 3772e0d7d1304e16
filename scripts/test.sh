#!/bin/sh
# The test command (README, .ci/run): set up the real components, check the
# shape of the code (scripts/check.sh: layers, lint, types), then run every
# test (unit and integration) against them. Extra args go to pytest.
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh etcd zookeeper prometheus compose image podman swarm
sh scripts/check.sh
exec .venv/bin/python -m pytest -q "$@"
