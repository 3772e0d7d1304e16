"""The consul-reg image, built once per test session by scripts/build-image.sh
(the local base is cached between runs; only the thin top layers are rebuilt)."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.conftest import ROOT

IMAGE_TAG = "consul-reg-test/consul-reg:latest"


@pytest.fixture(scope="session")
def consul_reg_image() -> str:
    built = subprocess.run(["sh", str(ROOT / "scripts" / "build-image.sh"), IMAGE_TAG],
                           capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, f"scripts/build-image.sh failed:\n{built.stdout}\n{built.stderr[-3000:]}"
    return IMAGE_TAG
