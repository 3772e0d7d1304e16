"""Review H7 reproductions: every test here fails on the code it was written
against (each is a finding). So that `.ci/run` stays green once this branch is
merged, they are collected as strict xfails: a fix turns its test into an
XPASS, which fails the run until the test is moved next to the code it covers.
Run them as plain tests (and see them fail) with CONSUL_REG_REVIEW=1."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("CONSUL_REG_REVIEW") == "1":
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.xfail(strict=True, reason="review H7 finding (CONSUL_REG_REVIEW=1 runs it as a plain test)"))
