"""One HTTP transport under every client: only consul_reg/transport imports h11,
nothing in the package imports httpx or requests, docker-py is imported by
docker/ssh.py alone (an optional extra, for ssh:// and npipe://), and the
transport knows nothing of Docker. Read from the source (an AST walk, every
import wherever it sits: in a function, under TYPE_CHECKING) and checked at
run time (what the daemon's imports load)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "consul_reg"
HTTP_LIBRARIES = {"httpx", "httpcore", "requests", "urllib3", "aiohttp", "http.client"}
ONLY_IN = {"h11": "consul_reg/transport/", "docker": "consul_reg/docker/ssh.py"}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement of the file names (and its parents)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found = [node.module]
        else:
            continue
        for name in found:
            parts = name.split(".")
            names.update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return names


def modules() -> dict[str, set[str]]:
    found = {str(path.relative_to(ROOT)): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}
    assert len(found) > 50, "the walk found the package"
    return found


def test_no_module_imports_an_http_library_and_h11_and_docker_py_stay_in_their_place() -> None:
    problems = []
    for module, names in modules().items():
        for library in sorted(names & HTTP_LIBRARIES - {"http.client"}):
            if library in ("requests", "urllib3") and module == ONLY_IN["docker"]:
                continue  # docker-py's own errors, in the optional fallback
            problems.append(f"{module} imports {library}")
        for library, place in ONLY_IN.items():
            if library in names and not module.startswith(place):
                problems.append(f"{module} imports {library} (only {place} may)")
    assert problems == []


def test_the_walk_sees_the_imports_it_rules_on() -> None:
    """Not vacuous: the places allowed to import h11 and docker-py do import them."""
    found = modules()
    assert "h11" in found["consul_reg/transport/wire.py"]
    assert {"docker", "docker.errors", "requests.exceptions"} <= found["consul_reg/docker/ssh.py"]
    assert "consul_reg.transport.pool" in found["consul_reg/mirrors/etcd.py"]
    assert "consul_reg.transport.pool" in found["consul_reg/consul/agent.py"]


def test_no_module_imports_http_client() -> None:
    """Not even for its exceptions: the transport has its own (RemoteDisconnected, ProtocolError),
    and http.client would load the email package into every daemon (1.4 MB of idle RSS).
    The status endpoint's http.server loads it, only with --status-addr."""
    users = {module for module, names in modules().items() if "http.client" in names or "email" in names}
    assert users == set()
    assert "http.server" in modules()["consul_reg/app/status.py"]  # the walk sees stdlib imports


def test_the_transport_has_no_docker_knowledge() -> None:
    """No string of transport/ (its messages, its headers) mentions Docker; docstrings and comments may."""
    said = []
    for path in sorted((PACKAGE / "transport").glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        said += [f"{path.name}: {node.value!r}" for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                 and ("docker" in node.value.lower() or "DOCKER_" in node.value)]
    assert said == []


def test_runtime_dependencies_hold_no_http_library_and_docker_py_is_the_ssh_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {requirement.split(">")[0].split("<")[0].split("[")[0].split("=")[0].strip().lower()
                for requirement in requirements}
    assert names(project["dependencies"]) & {"httpx", "requests", "docker", "urllib3"} == set()
    assert "h11" in names(project["dependencies"])
    assert names(project["optional-dependencies"]["ssh"]) == {"docker"}
    assert {"httpx", "docker"} <= names(project["optional-dependencies"]["test"])


@pytest.mark.parametrize("docker_host", ["", "unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"])
def test_the_daemon_and_every_client_load_no_http_library(docker_host: str) -> None:
    code = ("import sys, consul_reg.app.daemon, consul_reg.app.explain\n"
            "import consul_reg.mirrors.etcd, consul_reg.mirrors.skydns2, consul_reg.mirrors.consulkv\n"
            "from consul_reg.docker.client import DockerSource\n"
            "from consul_reg.mirrors.etcd import EtcdRegistry\n"
            "DockerSource().close()\n"
            "EtcdRegistry('127.0.0.1', 1, 'services', 'h', 300).close()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('httpx', 'httpcore', 'requests', 'urllib3', 'docker', 'anyio', 'email') or m == 'http.client'))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env |= {"DOCKER_HOST": docker_host} if docker_host else {}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


SSH_ADVICE = "DOCKER_HOST=ssh://... needs docker-py: pip install 'consul-reg[ssh]'"


def test_without_docker_py_an_ssh_docker_host_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from consul_reg.docker.client import DockerSource, DockerUnavailable

    monkeypatch.setitem(sys.modules, "docker", None)  # as when the extra is not installed
    monkeypatch.delitem(sys.modules, "consul_reg.docker.ssh", raising=False)
    monkeypatch.setenv("DOCKER_HOST", "ssh://nobody@127.0.0.1:1")
    with pytest.raises(DockerUnavailable) as refused:
        DockerSource(timeout=2)
    assert str(refused.value) == f"docker: {SSH_ADVICE}"
    monkeypatch.setenv("DOCKER_HOST", "npipe:////./pipe/docker_engine")
    with pytest.raises(DockerUnavailable, match=r"DOCKER_HOST=npipe://\.\.\. needs docker-py"):
        DockerSource(timeout=2)


def test_without_docker_py_the_daemon_stops_at_the_start_saying_so() -> None:
    code = ("import sys\n"
            "sys.modules['docker'] = None  # the ssh extra is not installed\n"
            "from consul_reg.app.cli import main\n"
            "sys.exit(main(['-retry-attempts', '1', 'consul://127.0.0.1:1']))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")} | {
        "DOCKER_HOST": "ssh://nobody@127.0.0.1:1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 1, out.stderr
    assert SSH_ADVICE in out.stderr
    assert "Traceback" not in out.stderr
