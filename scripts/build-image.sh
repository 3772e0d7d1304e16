#!/bin/sh
# Build the consul-reg image on a machine whose builds reach no registry and
# no PyPI: the same Dockerfile, on the local base of make-base-image.sh, with
# the package and its dependencies as wheels prepared here (pip's cache serves
# repeated runs), built with --network none.
# With a normal internet connection, `docker build -t consul-reg .` is enough.
# Usage: scripts/build-image.sh [tag]   (default consul-reg:latest)
# Env: CONSUL_REG_BASE_IMAGE (default consul-reg-base/bookworm-python3.11:latest), PYTHON (runs pip).
set -eu
cd "$(dirname "$0")/.."
tag="${1:-consul-reg:latest}"
base="${CONSUL_REG_BASE_IMAGE:-consul-reg-base/bookworm-python3.11:latest}"
python="${PYTHON:-}"
[ -n "$python" ] || { [ -x .venv/bin/python ] && python=.venv/bin/python || python=python3; }

sh scripts/make-base-image.sh "$base"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# The build context: what .dockerignore lets through (its `!` lines), wheels/ added below.
for path in $(sed -n 's#^!\([^*]*[^/]\)/*$#\1#p' .dockerignore); do
  [ ! -e "$path" ] || cp -R "$path" "$ctx/"
done
cp Dockerfile .dockerignore "$ctx/"

# consul-reg's own wheel, then its dependencies for the base's Python (whatever Python runs pip here).
target=$(docker run --rm --network none --entrypoint python3 "$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$python" -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$ctx/wheels" "$ctx" >/dev/null
"$python" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$target" \
  --dest "$ctx/wheels" "$ctx"/wheels/consul_reg-*.whl >/dev/null
rm -rf "$ctx/build" "$ctx"/*.egg-info

DOCKER_BUILDKIT=0 docker build -q --network none --build-arg BASE="$base" -t "$tag" "$ctx" >/dev/null
echo "build-image: built $tag on $base ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
