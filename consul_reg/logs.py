"""Logging setup: loguru, text or one JSON object per line; secrets redacted."""

from __future__ import annotations

import sys

from loguru import logger

REDACTED = "[redacted]"


def setup(level: str = "INFO", log_format: str = "text", secrets: tuple[str, ...] = ()) -> None:
    """Configure the one stderr sink. Every secret string is replaced in every
    message, as a last line of defence: no code path should log one anyway."""
    secrets = tuple(s for s in secrets if s)

    def redact(record) -> None:
        for secret in secrets:
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
