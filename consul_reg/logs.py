"""Logging setup: loguru, text or one JSON object per line; secrets redacted."""

from __future__ import annotations

import sys

from loguru import logger

REDACTED = "[redacted]"


_secrets: set[str] = set()


def add_secret(secret: str) -> None:
    """A new secret (a token re-read on SIGHUP) to scrub from every line."""
    if secret:
        _secrets.add(secret)


def setup(level: str = "INFO", log_format: str = "text", secrets: tuple[str, ...] = ()) -> None:
    """Configure the one stderr sink. Every secret string is replaced in every
    message, as a last line of defence: no code path should log one anyway."""
    for secret in secrets:
        add_secret(secret)

    def redact(record) -> None:
        for secret in tuple(_secrets):
            if secret in record["message"]:
                record["message"] = record["message"].replace(secret, REDACTED)
            for key, value in record["extra"].items():
                if isinstance(value, str) and secret in value:
                    record["extra"][key] = value.replace(secret, REDACTED)

    logger.remove()
    logger.configure(patcher=redact)
    if log_format == "json":
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, backtrace=False, diagnose=False,
                   format="{time:YYYY-MM-DDTHH:mm:ss.SSSZ} {level: <7} {message}")
