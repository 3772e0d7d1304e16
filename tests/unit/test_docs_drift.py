"""Nothing documented can drift from the code. Each test reads a page of the
docs site (docs/, built strictly by `mkdocs build --strict` in scripts/test.sh)
and compares it with what the code does:

- every option `consul-reg --help` (and each subcommand's --help) prints is in
  docs/options.md, and every option named there exists;
- every key the mapping reads is named in the key tables;
- every service-key example (docs/*.md: a `container` block, its
  `registration` block, maybe a `warning` block) is what the pure mapping gives;
- the metrics table of docs/operating.md is exactly what /metrics exports;
- every message docs/troubleshooting.md quotes is still in the code;
- the README's test command is what .ci/run runs; stated numbers match the code.

Adding an option, a metric or a message is one line in its page's table."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import tomllib
from pathlib import Path

import pytest
from consul_reg.app import cli

from tests.unit import docs_examples

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "consul_reg"


def _table_first_cells(page: Path, heading: str) -> list[str]:
    """The first column of the first table under `heading` (a `## ...` line)."""
    text = page.read_text()
    start = text.index(f"\n{heading}\n")
    cells, in_table = [], False
    for line in text[start:].splitlines()[2:]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            in_table = True
            cells.append(line.split("|")[1].strip())
        elif in_table:
            break
    return cells[2:]  # past the header and its rule


# --- options ------------------------------------------------------------------------------------------

_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*)")


def _help_options(text: str) -> list[frozenset[str]]:
    """The options an argparse help text lists, one set of aliases per option:
    each line of its option list that starts with a dash names one option
    (`-ip IP, --ip IP`)."""
    options = []
    for line in text.splitlines():
        if re.match(r"^ {2}-", line):
            options.append(frozenset(part.split(" ")[0] for part in line.strip().split("  ")[0].split(", ")))
    return options


def _run_help(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue()


def _subcommands() -> set[str]:
    """The subcommands main() dispatches on: the names it compares its first
    argument with (`argv[:1] == ["explain"]`, `argv[0] in ("a", "b")`...)."""
    tree = ast.parse(Path(cli.__file__).read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    names = set()
    for node in ast.walk(main):
        if isinstance(node, ast.Compare) and ast.unparse(node.left) in ("argv[:1]", "argv[0]"):
            for comparator in node.comparators:
                names |= {c.value for c in ast.walk(comparator)
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return names


def _page_options() -> set[str]:
    r"""Options named in docs/options.md's table of the daemon's options, and in
    any page's table under a subcommand's heading (`## \`wait\` options`, or
    `## \`consul-reg wait\` reference` on the page that explains it)."""
    names = set()
    for cell in _table_first_cells(DOCS / "options.md", "## The daemon's options"):
        names |= set(_OPTION.findall(cell.replace("\\|", " ")))
    for page in DOCS.glob("*.md"):
        heading = r"\n## `(?:consul-reg )?\w+` (?:options|reference)\n(.*?)(?=\n## |\Z)"
        for section in re.findall(heading, page.read_text(), re.S):
            for line in section.splitlines():
                if line.startswith("|"):
                    names |= set(_OPTION.findall(line.split("|")[1]))
    return names


def test_every_option_the_help_prints_is_documented_and_every_documented_option_exists() -> None:
    code, text = _run_help(["--help"])
    assert code == 0 and "usage: consul-reg" in text
    printed = _help_options(text)
    for name in sorted(_subcommands()):
        code, sub_text = _run_help([name, "--help"])
        if code == 0 and "usage:" in sub_text:  # a subcommand with options of its own (its -h aside)
            printed += [aliases for aliases in _help_options(sub_text) if aliases != {"-h", "--help"}]
    assert len(printed) > 30, printed  # the parse above found the option list
    documented = _page_options()
    missing = [sorted(aliases) for aliases in printed if not aliases & documented]
    assert missing == [], "options --help prints that docs/options.md does not name"
    assert documented - set().union(*printed) == set(), "docs/options.md names options that do not exist"


def test_registrators_one_dash_options_are_accepted_with_two_as_the_page_says() -> None:
    assert "registrator's options are accepted as registrator spells them (one dash) and\nwith two dashes" in (
        DOCS / "options.md").read_text()
    for aliases in _help_options(_run_help(["--help"])[1]):
        for name in aliases:
            if not name.startswith("--") and len(name) > 2:
                assert "-" + name in aliases, aliases


def test_every_subcommand_is_documented_and_every_documented_one_exists() -> None:
    documented = {cell.strip("`") for cell in _table_first_cells(DOCS / "options.md", "## Subcommands")}
    assert _subcommands() and documented == _subcommands()


# --- service-key examples --------------------------------------------------------------------------


EXAMPLES = docs_examples.examples()


def test_the_pages_hold_examples() -> None:
    pages = {e.page for e in EXAMPLES}
    assert {"service-keys.md", "health-checks.md", "workers.md"} <= pages
    assert len(EXAMPLES) >= 15


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_each_service_key_example_is_what_the_mapping_registers(example: docs_examples.Example) -> None:
    registrations, warnings = docs_examples.registrations(example)
    assert registrations == example.expected
    if example.warnings is not None:
        assert len(warnings) == len(example.warnings), warnings
        for shown, actual in zip(example.warnings, warnings, strict=True):
            assert shown in actual, (shown, actual)


def test_a_container_block_without_its_registration_is_an_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "page.md").write_text('```sh title="container"\ndocker run -d nginx\n```\n')
    monkeypatch.setattr(docs_examples, "DOCS", tmp_path)
    with pytest.raises(AssertionError, match="followed by its registration"):
        docs_examples.examples()


def test_an_option_the_examples_do_not_know_is_an_error() -> None:
    with pytest.raises(AssertionError, match="does not know --privileged"):
        docs_examples.inspect_data(("--privileged", "nginx"))


def _keys_the_mapping_reads() -> set[str]:
    """SERVICE_* keys (lower-cased, after `SERVICE_`) the mapping configures itself with:
    its daemon keys and every `check_*`, `heartbeat_*`, `tagged_address_*` key it names."""
    from consul_reg.mapping.labels import DAEMON_KEYS

    keys = set(DAEMON_KEYS)
    for path in (PACKAGE / "mapping").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(
                    r"(check|heartbeat|tagged_address)_[a-z0-9_]+", node.value):
                keys.add(node.value)
    return keys


def test_every_key_the_mapping_reads_is_documented() -> None:
    """Some page's key table names every key: the first cell of a row (a new key
    is one row, on the page that explains it)."""
    documented = set()
    for page in DOCS.glob("*.md"):
        for line in page.read_text().splitlines():
            if line.startswith("| `"):
                for code in re.findall(r"`([^`]*)`", line.split("|")[1]):
                    for key in re.findall(r"(?:SERVICE_)?(?:<port>_|[0-9]+_)?([A-Z][A-Z0-9_]*)", code):
                        documented.add(key.lower().rstrip("_"))
    keys = _keys_the_mapping_reads()
    assert len(keys) > 25 and "check_docker" in keys
    assert {key for key in keys if key.rstrip("_") not in documented} == set()


# --- metrics ----------------------------------------------------------------------------------------


def test_the_metrics_table_is_exactly_what_the_daemon_exports() -> None:
    from consul_reg.app.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    exported = {}
    for collector in set(metrics.registry._collector_to_names):  # every collector /metrics renders
        name = collector._name + ("_total" if collector._type == "counter" else "")
        exported[name] = (collector._type, tuple(collector._labelnames))
    rendered = set(re.findall(r"^# TYPE (consul_reg_\w+) ", metrics.render()[0].decode(), re.M))
    assert set(exported) <= rendered  # /metrics shows every collector
    assert rendered - set(exported) <= {  # and prometheus-client's own *_created beside counters and histograms
        name.removesuffix("_total") + "_created" for name, (kind, _) in exported.items() if kind != "gauge"}
    rows = {}
    text = (DOCS / "operating.md").read_text()
    table = text[text.index("\n## Metrics\n"):]
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) >= 3 and cells[0].startswith("`consul_reg_"):
            labels = tuple(label.strip("` ") for label in cells[2].split(",") if label.strip("` "))
            rows[cells[0].strip("`")] = (cells[1], labels)
    assert len(exported) >= 10
    assert rows == exported


# --- troubleshooting messages -----------------------------------------------------------------------


def _code_literals() -> list[str]:
    """Every string literal of the package, f-strings and loguru's `{}` formats
    split at their fields."""
    pieces: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                pieces.extend(re.split(r"\{[^{}]*\}", node.value))
    return [p for p in pieces if p.strip()]


def _quoted_messages() -> list[str]:
    text = (DOCS / "troubleshooting.md").read_text()
    return [m.strip() for m in re.findall(r'^```text title="message"\s*\n(.*?)^```', text, re.M | re.S)]


def _covered(fragment: str, literals: list[str]) -> bool:
    """Whether `fragment` can be cut into pieces of the code's literals (the
    daemon composes messages from several): each piece holding a letter at
    least 12 characters long (or the whole fragment's words, or an article
    starting it); shorter ones are separators (`: `, `; `, quotes) and numbers."""
    text = "\x00".join(literals)
    words = re.sub(r"^[^A-Za-z]+|[^A-Za-z]+$", "", fragment)  # the fragment without its end punctuation
    need = min(12, len(words))

    def longest(position: int) -> int:  # the longest piece of a literal starting there (shorter ones are too)
        low, high = 0, len(fragment) - position
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fragment[position:position + middle] in text else (low, middle - 1)
        return low

    reachable = {0}
    for position in range(len(fragment)):
        if position not in reachable:
            continue
        for size in range(1, longest(position) + 1):
            piece = fragment[position:position + size]
            if size >= need or not re.search(r"[A-Za-z]", piece) or (position == 0 and size <= 2):
                reachable.add(position + size)
    return len(fragment) in reachable


def test_each_quoted_message_is_still_in_the_code() -> None:
    messages = _quoted_messages()
    assert len(messages) >= 8
    literals = _code_literals()
    for message in messages:
        for fragment in re.split(r"<[^<>]+>", message):
            assert _covered(fragment, literals), f"not in the code any more: {fragment!r} (of {message!r})"


def test_a_reworded_message_is_caught() -> None:
    literals = _code_literals()
    assert _covered("; retrying in ", literals)
    assert not _covered("; will retry after a pause of ", literals)
    assert not _covered("); this service is left out of Consul", literals)  # the end reworded
    assert not _covered("a service ID must consist only of ASCII letters", literals)


# --- facts stated once ------------------------------------------------------------------------------


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["sh scripts/test.sh"]
    assert "```sh\nsh scripts/test.sh" in (ROOT / "README.md").read_text()


def test_the_env_file_read_deadline_is_the_codes() -> None:
    from consul_reg.docker.env_files import READ_TIMEOUT_SECONDS

    text = (DOCS / "operating.md").read_text()
    stated = re.findall(r"a read has a (\d+) s deadline", text)
    assert stated == [f"{READ_TIMEOUT_SECONDS:g}"]
    assert not re.search(r"\b\d+ s deadline", (DOCS / "security.md").read_text())


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", readme):
        assert (ROOT / link).exists(), link


def test_the_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    code, text = _run_help(["--version"])
    assert code == 0 and text.strip() == f"consul-reg {version('consul-reg')}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ARG VERSION=(\S+)$', dockerfile, re.M).group(1) == version("consul-reg")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == version("consul-reg")  # the metadata installed is this tree's
    assert re.search(r'^ARG SOURCE=(\S+)$', dockerfile, re.M).group(1) == project["urls"]["Source"]
    assert f'org.opencontainers.image.licenses={project["license"]["text"]}' in dockerfile
    assert f"## [{version('consul-reg')}]" in (ROOT / "CHANGELOG.md").read_text()

