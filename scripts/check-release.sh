#!/bin/sh
# The release, checked (scripts/test.sh): `python -m build` makes the sdist
# and the wheel, the wheel installs into a fresh virtualenv, and the installed
# `consul-reg --version` prints the version of the package's metadata.
# Builds without isolation (the venv's setuptools; no download for the build).
set -eu
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$python" -m build --no-isolation --outdir "$out/dist" . >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
rm -rf build  # what setuptools leaves in the tree
ls "$out"/dist/consul?reg-*.tar.gz >/dev/null
wheel=$(ls "$out"/dist/consul_reg-*-py3-none-any.whl)
"$python" -m venv "$out/venv"
"$out/venv/bin/pip" install -q --disable-pip-version-check "$wheel" >"$out/pip.log" 2>&1 || { cat "$out/pip.log"; exit 1; }
expected=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
# From the temporary directory: the checkout's consul_reg/ must not stand in for the installed one.
got=$(cd "$out" && venv/bin/consul-reg --version)
[ "$got" = "consul-reg $expected" ] || { echo "check-release: the installed wheel says '$got', pyproject.toml '$expected'" >&2; exit 1; }
unzip -l "$wheel" | grep -q 'consul_reg-.*dist-info/.*LICENSE' || { echo "check-release: no LICENSE in the wheel" >&2; exit 1; }
echo "check-release: $(basename "$wheel") and its sdist build, install into a fresh venv, and say '$got'"
