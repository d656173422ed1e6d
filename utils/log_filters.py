"""Dropping one library log message that is known to be harmless, where it would hide the ones that matter."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def dropping_log_message(logger_name: str, prefix: str) -> Iterator[None]:
    """Within the block, records of the logger `logger_name` whose message starts with `prefix` are dropped; every
    other record passes, and the logger is as before once the block ends."""
    logger = logging.getLogger(logger_name)

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
