#!/bin/sh
# The test command (README, .ci/run): set up the real components, then run
# every test (unit and integration) against them. Extra args go to pytest.
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh etcd zookeeper prometheus compose image podman swarm
exec .venv/bin/python -m pytest -q "$@"
