"""The shape of the code, checked: the tree is the layers, the map in
docs/architecture.md names every module (and nothing that is gone), the loop
stays narrow, and collaborators are never probed. The import layers
themselves are import-linter's job (pyproject.toml, run by .ci/run)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from consul_reg.sync.loop import Loop, LoopSettings
from consul_reg.sync.desires import DesireBuilder
from consul_reg.app.config import Config
from tests.unit.fakes import FakeAgent, FakeDocker

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "consul_reg"
LAYERS = {"core", "mapping", "transport", "docker", "consul", "sync", "probes", "mirrors", "restarts", "app"}
MAP = ROOT / "docs" / "architecture.md"


def modules() -> set[str]:
    """Every module of the package as `<layer>/<module>.py`."""
    return {str(path.relative_to(PACKAGE)) for path in PACKAGE.glob("*/*.py") if path.name != "__init__.py"}


def test_the_package_holds_only_its_layers() -> None:
    entries = {path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    assert entries == LAYERS | {"__init__.py", "__main__.py"}
    assert not list(PACKAGE.glob("*/*/")) or all(p.name == "__pycache__" for p in PACKAGE.glob("*/*/"))


def test_the_architecture_page_names_every_module_and_no_other() -> None:
    text = MAP.read_text()
    named = set(re.findall(r"`((?:%s)/\w+\.py)`" % "|".join(sorted(LAYERS)), text))
    assert modules() - named == set(), "modules missing from docs/architecture.md"
    assert named - modules() == set(), "docs/architecture.md names modules that do not exist"


def test_the_loop_takes_at_most_eight_collaborators_and_holds_at_most_twenty_attributes() -> None:
    parameters = [p for p in inspect.signature(Loop.__init__).parameters if p != "self"]
    assert len(parameters) <= 8, parameters
    docker = FakeDocker()
    config = Config(hostname="h", registry_uris=("consul://x",))
    loop = Loop(LoopSettings(owner="h", io_workers=1), docker, FakeAgent(),
                DesireBuilder(config.container_rules(), docker, config.mapping_settings("10.0.0.1", "test")),
                probes=None)  # type: ignore[arg-type]
    assert len(vars(loop)) <= 20, sorted(vars(loop))


def test_no_collaborator_is_probed_with_hasattr() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
