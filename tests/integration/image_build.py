"""The consul-reg image, built once per test process by scripts/build-image.sh
(the local base is cached between runs; only the thin top layers are rebuilt).
A fixture imported into several modules is set up once per module, whatever
its scope: the build itself is cached here. The tag is the checkout's own:
two checkouts testing on one dockerd never run each other's image."""

from __future__ import annotations

import functools
import hashlib
import subprocess

import pytest

from tests.integration.conftest import ROOT

IMAGE_TAG = f"consul-reg-test/consul-reg:{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


@functools.cache
def _build() -> tuple[int, str]:
    built = subprocess.run(["sh", str(ROOT / "scripts" / "build-image.sh"), IMAGE_TAG],
                           capture_output=True, text=True, timeout=900)
    return built.returncode, f"{built.stdout}\n{built.stderr[-3000:]}"


@pytest.fixture(scope="session")
def consul_reg_image() -> str:
    returncode, output = _build()
    assert returncode == 0, f"scripts/build-image.sh failed:\n{output}"
    return IMAGE_TAG
