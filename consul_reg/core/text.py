"""The one place that makes text safe for a log line, a terminal or an error
message: whatever a container, dockerd, the agent or a peer wrote may hold a
newline, a terminal escape, a bidi override or megabytes. Nothing else in
the package escapes text for display; secrets are app/logs.py's (redaction)."""

from __future__ import annotations


def printable(text: object, limit: int | None = None, *, quoted: bool = False, one_line: bool = False) -> str:
    """`text` as one line may show it:
    - `one_line`: every run of whitespace (newlines included) first becomes one space;
    - cut after `limit` characters, the cut marked with the whole length;
    - every character that is not printable (control characters, ESC, DEL, format
      characters such as bidi overrides and zero-width spaces, line separators)
      escaped as repr() writes it;
    - `quoted`: in quotes, as repr() shows a string (how a warning names a value)."""
    shown = str(text)
    if one_line:
        shown = " ".join(shown.split())
    if limit is not None and len(shown) > limit:
        shown = shown[:limit] + f"...({len(shown)} chars)"
    if quoted:
        return repr(shown)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


def quoted(text: object, limit: int = 80) -> str:
    """A value quoted for a warning (`'web'`), escaped and cut: `printable(..., quoted=True)`."""
    return printable(text, limit, quoted=True)
