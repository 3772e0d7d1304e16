#!/bin/sh
# The test command (README, .ci/run): set up the real components, check the
# shape of the code (scripts/check.sh: layers, lint, types), build the docs
# site strictly (a broken link or anchor, or a page left out of mkdocs.yml's
# nav, fails) and the release (scripts/check-release.sh), then run every
# test (unit and integration) against them. Extra args go to pytest.
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh etcd zookeeper prometheus compose image podman swarm
sh scripts/check.sh
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir build/site
sh scripts/check-release.sh
exec .venv/bin/python -m pytest -q "$@"
