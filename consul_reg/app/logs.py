"""Logging setup: loguru, text or one JSON object per line; secrets redacted.

Records of the standard library's logging (kazoo, docker-py's urllib3 for ssh://)
are routed into loguru too, so `--log-format json` holds for every line and
the redaction applies to all of them.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import urllib.parse

from loguru import logger

REDACTED = "[redacted]"

_secrets: set[str] = set()


def secret_forms(secret: str) -> set[str]:
    """The secret as written and as it looks once escaped by repr, JSON or a URL."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""),
             secret.encode("unicode_escape").decode("ascii")}
    return {form for form in forms if form}


def add_secret(secret: str) -> None:
    """A new secret (a token re-read on SIGHUP) to scrub from every line."""
    if secret:
        _secrets.update(secret_forms(secret))


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class InterceptHandler(logging.Handler):
    """The standard library's records, re-emitted through loguru (loguru's documented recipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        try:
            message = record.getMessage()
        except Exception:  # a library's malformed format string
            message = str(record.msg)
        logger.opt(depth=0, exception=record.exc_info).bind(library=record.name).log(
            level, "{}: {}", record.name, message)


def setup(level: str = "INFO", log_format: str = "text", secrets: tuple[str, ...] = ()) -> None:
    """Configure the one stderr sink. Every secret string is replaced in every
    message, as a last line of defence: no code path should log one anyway."""
    for secret in secrets:
        add_secret(secret)

    def patch(record) -> None:
        if not _secrets:
            return
        record["message"] = redact(record["message"])
        for key, value in record["extra"].items():
            if isinstance(value, str):
                record["extra"][key] = redact(value)

    logger.remove()
    logger.configure(patcher=patch)
    if log_format == "json":
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, backtrace=False, diagnose=False,
                   format="{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}")
    # Libraries' own records: only warnings and up (kazoo is chatty at INFO), unless debugging.
    library_level = logging.INFO if level in ("TRACE", "DEBUG") else logging.WARNING
    logging.basicConfig(handlers=[InterceptHandler()], level=library_level, force=True)
    for noisy in ("urllib3",):  # docker-py's, for an ssh:// DOCKER_HOST
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threading.excepthook = _thread_died


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread ended by an exception: one (scrubbed, JSON when asked) line through
    loguru, never Python's multi-line print to stderr."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logger.opt(exception=(args.exc_type, args.exc_value, args.exc_traceback)).error(
        "thread {} ended by an unexpected error", name)
