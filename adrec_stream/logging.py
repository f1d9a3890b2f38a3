"""Structured JSON logging (structlog) shared by the CLI and the workers."""

from __future__ import annotations

import logging
import sys

import structlog

_CONFIGURED = False


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    """Configure structlog to write one JSON object per line to stderr.

    Args:
        level: minimum level name (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``).
        json: JSON lines when True, human-readable console lines otherwise.

    Raises:
        ValueError: unknown level name.
    """
    global _CONFIGURED
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
    _CONFIGURED = True


def get_logger(name: str | None = None, **bound) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger (configuring JSON logging on first use)."""
    if not _CONFIGURED:
        configure_logging()
    log = structlog.get_logger(name) if name else structlog.get_logger()
    return log.bind(**bound) if bound else log
