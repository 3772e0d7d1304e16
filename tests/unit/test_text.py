"""The one log-safe text helper (core/text.py): whatever it is given, one line of
printable text, cut where asked, the cut saying how long the whole was."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consul_reg.core.text import printable, quoted


def test_control_format_and_separator_characters_are_escaped() -> None:
    assert printable("a\nb\x1b[31mc\u202ed\u200be\u2028f\x7f") == "a\\nb\\x1b[31mc\\u202ed\\u200be\\u2028f\\x7f"
    assert printable("plain text") == "plain text"


def test_a_cut_names_the_whole_length_and_quoting_is_reprs() -> None:
    assert printable("x" * 10, 4) == "xxxx...(10 chars)"
    assert quoted("web\n") == "'web\\n'" and quoted("it's") == '"it\'s"'
    assert quoted("y" * 100, 5) == "'yyyyy...(100 chars)'"


def test_one_line_folds_every_run_of_whitespace() -> None:
    assert printable("  error:\n\tnot\r\n found  ", one_line=True) == "error: not found"


@given(st.text(), st.one_of(st.none(), st.integers(0, 50)), st.booleans(), st.booleans())
def test_the_result_is_always_one_printable_line(text: str, limit: int | None, is_quoted: bool,
                                                 one_line: bool) -> None:
    shown = printable(text, limit, quoted=is_quoted, one_line=one_line)
    assert shown.isprintable() and "\n" not in shown
    if limit is not None:
        assert len(shown) <= limit * 10 + 40  # a kept character escapes to at most 10 (\U0010ffff)
