"""The caps every spelling of a check obeys, SERVICE_CHECK_* keys and
SERVICE_CHECKS alike: how many headers and how long, Notes, the TLS server
name, the HTTP path, the body. Pure: each returns None, or why not (the
caller says where and what it costs). Sizes are checked before content, so
a huge value costs a length comparison, never a scan."""

from __future__ import annotations

import re

from consul_reg.mapping.labels import show
from consul_reg.mapping.validate import Limits, has_control, has_space_or_control

HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")  # fullmatch: `$` would let a final newline through
HEADER_NAME_LENGTH = 128
_TAB_AND_LINE_BREAKS = {9: None, 10: None, 13: None}


def header_count_problem(count: int, limits: Limits = Limits()) -> str | None:
    if count > limits.check_headers:
        return f"a check may send at most {limits.check_headers} headers (this one has {count})"
    return None


def header_name_problem(name: str) -> str | None:
    if not name or len(name) > HEADER_NAME_LENGTH or not HEADER_NAME.fullmatch(name):
        return f"header name {show(name, 40)}: 1 to {HEADER_NAME_LENGTH} letters, digits and -"
    return None


def header_value_problem(value: str, limits: Limits = Limits()) -> str | None:
    if len(value) > limits.header_value_length:
        return f"a header value may hold at most {limits.header_value_length} characters (this one has {len(value)})"
    if has_control(value):
        return "a header value may not hold CR, LF or other control characters"
    return None


def text_problem(what: str, value: str, limit: int) -> str | None:
    """A check's Name or Notes: at most `limit` characters, no control character."""
    if len(value) > limit or has_control(value):
        return f"{what} must be at most {limit} characters without control characters (it has {len(value)})"
    return None


def server_name_problem(value: str, limits: Limits = Limits()) -> str | None:
    """TLSServerName: a DNS name's length, no whitespace or control character."""
    if len(value) > limits.server_name_length:
        return f"a TLS server name holds at most {limits.server_name_length} characters (this one has {len(value)})"
    if has_space_or_control(value):
        return "a TLS server name may not hold whitespace or control characters"
    return None


def path_problem(path: str, limits: Limits = Limits(), what: str = "an HTTP check's path") -> str | None:
    if len(path) > limits.check_path_length:
        return f"{what} may hold at most {limits.check_path_length} characters (this one has {len(path)})"
    return None


def body_problem(body: str, limit: int = Limits().check_body_length) -> str | None:
    """None when `body` may be sent as an HTTP check's request body, else why not.
    Line breaks and tabs are fine (a JSON body); other control characters are not."""
    if len(body) > limit:
        return f"a check body may hold at most {limit} characters (this one has {len(body)})"
    if has_control(body.translate(_TAB_AND_LINE_BREAKS)):
        return "a check body may not hold control characters other than tab and line breaks"
    return None
