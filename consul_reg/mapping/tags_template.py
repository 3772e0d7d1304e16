"""`-tags` in registrator 7.4's Go-template form, by a small safe interpreter
of our own (never Python eval). Pure: no I/O.

Supported: text with `{{ pipeline }}` actions; a pipeline is commands joined
by `|`, the value on the left passed as the last argument of the next
command; operands are fields of the container (`.ID`, `.Config.Labels`...),
"strings", `raw strings`, integers and (parenthesised pipelines); functions
are Go's `index` and registrator's `strSlice`, `sIndex`, `mIndex`, `toUpper`,
`toLower`, `replace`, `join`, `split`, `splitIndex`, `matchFirstElement`,
`matchAllElements`. `httpGet` and `jsonParse` are left out on purpose: a
network call inside a registration is a latency and security hazard.

Regular expressions are RE2 (google-re2), the syntax and semantics of Go's
regexp that registrator used, matched in linear time: container data can
never make a match backtrack. They are compiled when the template is
parsed, only from string literals written in it: a pattern taken from a
field or a pipeline is a parse error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

LEFT_OUT = {"httpGet", "jsonParse"}
REGEX_FUNCTIONS = {"matchFirstElement", "matchAllElements"}
# A value a template function builds may be at most this long (a guard
# against a template that multiplies container data, e.g. nested replaces).
MAX_VALUE_LENGTH = 1 << 20
_TOKEN = re.compile(r'\s*(?:(?P<field>\.[A-Za-z0-9_.]*)|(?P<string>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)'
                    r'|(?P<number>-?[0-9]{1,9})|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[|()]))')
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", "'": "'", '"': '"'}


class TemplateError(ValueError):
    """The template is malformed or failed on one container; the message says where."""


def _go_string(value: Any) -> str:
    """How Go's text/template prints a value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_go_string(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_string(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _pick(items: list[Any], index: int, what: str) -> Any:
    if not -len(items) <= index < len(items):
        raise TemplateError(f"{what}: index {index} out of range (length {len(items)})")
    return items[index]


@functools.cache
def _re2() -> tuple[Any, Any]:
    """google-re2 and its options, imported with the first regular expression (2.5 MB of
    memory a daemon without a -tags template using one never needs)."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print parse errors to stderr; ours is the message
    return re2, options


def _regex(pattern: str) -> Any:
    re2, options = _re2()
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        reason = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) \
            else str(error)
        raise TemplateError(f"bad regular expression {pattern!r}: {reason}") from None


def _go_unquote(body: str) -> str:
    """The text of a Go interpreted string literal (between the quotes):
    unicode as written, escapes \\n \\t \\" \\\\ \\x41 \\101 \\u00e9 \\U0001F600."""
    out = bytearray()
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode("utf-8", "surrogatepass")
            i += 1
            continue
        kind = body[i + 1] if i + 1 < len(body) else ""
        if kind in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[kind].encode()
            i += 2
        elif kind in ("x", "u", "U") or kind in "01234567" and kind:
            width, base = {"x": (2, 16), "u": (4, 16), "U": (8, 16)}.get(kind, (3, 8))
            start = i + 2 if kind in ("x", "u", "U") else i + 1
            digits = body[start:start + width]
            if len(digits) != width or not re.fullmatch(r"[0-9A-Fa-f]+" if base == 16 else "[0-7]+", digits):
                raise TemplateError(f"bad escape \\{kind} in string literal {body!r}")
            value = int(digits, base)
            if kind in ("u", "U"):
                if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                    raise TemplateError(f"escape \\{kind}{digits} is not a valid code point")
                out += chr(value).encode("utf-8")
            elif value > 255:
                raise TemplateError(f"octal escape \\{digits} is above 255")
            else:
                out.append(value)  # \x and octal escapes are bytes, as in Go
            i = start + width
        else:
            raise TemplateError(f"unknown escape sequence \\{kind} in string literal {body!r}")
    return out.decode("utf-8", errors="replace")


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "strSlice": lambda s, start, end: str(s)[int(start):int(end)],
    "sIndex": lambda i, items: _pick(list(items or []), int(i), "sIndex"),
    "mIndex": lambda key, mapping: (mapping or {}).get(key),
    "toUpper": lambda s: _go_string(s).upper(),
    "toLower": lambda s: _go_string(s).lower(),
    "replace": lambda old, new, s: _go_string(s).replace(old, new),
    "join": lambda sep, items: str(sep).join(_go_string(v) for v in (items or [])),
    "split": lambda sep, s: _go_string(s).split(sep),
    "splitIndex": lambda i, sep, s: _pick(_go_string(s).split(sep), int(i), "splitIndex"),
    "matchFirstElement": lambda regex, items: next(
        (v for v in (items or []) if regex.search(_go_string(v))), None),
    "matchAllElements": lambda regex, items: [v for v in (items or []) if regex.search(_go_string(v))],
}


def _index(collection: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(collection, dict):
            collection = collection.get(key)
        elif isinstance(collection, list):
            collection = _pick(collection, int(key), "index")
        else:
            raise TemplateError(f"index of {type(collection).__name__}")
    return collection


FUNCTIONS["index"] = _index


class Template:
    """A parsed template; `render(container)` evaluates it for one container."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: list[str | list[Any]] = []
        position = 0
        while True:
            start = text.find("{{", position)
            if start < 0:
                self.parts.append(text[position:])
                break
            end = text.find("}}", start)
            if end < 0:
                raise TemplateError(f"unclosed action at character {start}")
            self.parts.append(text[position:start])
            self.parts.append(self._parse(text[start + 2:end].strip("- ")))
            position = end + 2

    @functools.cached_property
    def fields(self) -> frozenset[str]:
        """Every field the template reads (`.Config.Labels`; `.` is the whole container)."""
        found: set[str] = set()

        def walk(commands: list[list[Any]]) -> None:
            for command in commands:
                for kind, value in command:
                    if kind == "field":
                        found.add(value)
                    elif kind == "pipeline":
                        walk(value)

        for part in self.parts:
            if not isinstance(part, str):
                walk(part)
        return frozenset(found)

    def _parse(self, action: str) -> list[Any]:
        tokens, position = [], 0
        while position < len(action):
            match = _TOKEN.match(action, position)
            if not match or match.end() == position:
                if action[position:].strip() == "":
                    break
                raise TemplateError(f"cannot read {action[position:]!r} in {{{{ {action} }}}}")
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            position = match.end()
        pipeline, rest = self._pipeline(tokens, action)
        if rest:
            raise TemplateError(f"unexpected {rest[0][1]!r} in {{{{ {action} }}}}")
        return pipeline

    def _pipeline(self, tokens: list[tuple[str, str]], action: str) -> tuple[list[Any], list[tuple[str, str]]]:
        commands: list[list[Any]] = [[]]
        while tokens:
            kind, value = tokens[0]
            if value == ")":
                break
            tokens = tokens[1:]
            if value == "|":
                commands.append([])
            elif value == "(":
                inner, tokens = self._pipeline(tokens, action)
                if not tokens or tokens[0][1] != ")":
                    raise TemplateError(f"unclosed '(' in {{{{ {action} }}}}")
                tokens = tokens[1:]
                commands[-1].append(("pipeline", inner))
            elif kind == "ident":
                if value in LEFT_OUT:
                    raise TemplateError(f"{value} is left out on purpose (a network call inside a "
                                        "registration is a latency and security hazard)")
                if value not in FUNCTIONS:
                    raise TemplateError(f"unknown function {value!r}")
                commands[-1].append(("function", value))
            elif kind == "string":
                commands[-1].append(("value", _go_unquote(value[1:-1])))
            elif kind == "raw":
                commands[-1].append(("value", value[1:-1]))
            elif kind == "number":
                commands[-1].append(("value", int(value)))
            else:
                commands[-1].append(("field", value))
        if any(not command for command in commands):
            raise TemplateError(f"empty command in {{{{ {action} }}}}")
        for command in commands:
            head_kind, head = command[0]
            if head_kind == "function" and head in REGEX_FUNCTIONS:
                pattern = command[1] if len(command) > 1 else None
                if pattern is None or pattern[0] != "value" or not isinstance(pattern[1], str):
                    raise TemplateError(f"{head} takes its regular expression as a string literal "
                                        f"written in the template, in {{{{ {action} }}}}")
                command[1] = ("value", _regex(pattern[1]))
        return commands, tokens

    def render(self, container: dict[str, Any]) -> str:
        view = {**container, "ID": container.get("Id", "")}  # go-dockerclient's field names
        out = []
        for part in self.parts:
            out.append(part if isinstance(part, str) else _go_string(self._run(part, view)))
        return "".join(out)

    def _run(self, commands: list[list[Any]], view: dict[str, Any]) -> Any:
        piped: Any = _NOTHING
        for command in commands:
            head_kind, head = command[0]
            args = [self._operand(op, view) for op in command[1:]]
            if piped is not _NOTHING:
                args.append(piped)
            if head_kind == "function":
                try:
                    piped = FUNCTIONS[head](*args)
                except TemplateError:
                    raise
                except (TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError) as error:
                    raise TemplateError(f"{head}: {error}") from None
                if isinstance(piped, (str, list)) and len(piped) > MAX_VALUE_LENGTH:
                    raise TemplateError(f"{head}: a value of more than {MAX_VALUE_LENGTH} characters or items")
            elif args:
                raise TemplateError("only a function takes arguments")
            else:
                piped = self._operand(command[0], view)
        return None if piped is _NOTHING else piped

    def _operand(self, operand: tuple[str, Any], view: dict[str, Any]) -> Any:
        kind, value = operand
        if kind == "value":
            return value
        if kind == "pipeline":
            return self._run(value, view)
        if kind == "function":
            return self._run([[operand]], view)
        current: Any = view
        for name in (n for n in value.split(".") if n):
            if not isinstance(current, dict) or name not in current:
                raise TemplateError(f"no field {value}")
            current = current[name]
        return current


_NOTHING = object()
