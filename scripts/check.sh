#!/bin/sh
# The shape of the code, before any test runs: the import layers hold
# (import-linter, contracts in pyproject.toml), the package is clean for ruff,
# and mypy passes on core, mapping and sync (its files in pyproject.toml).
set -eu
cd "$(dirname "$0")/.."
.venv/bin/lint-imports --no-cache
.venv/bin/ruff check consul_reg
.venv/bin/mypy
echo "check: layers, lint and types pass"
