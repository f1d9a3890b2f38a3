"""Structured JSON logging (structlog) shared by the CLI and the workers."""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import structlog

_CONFIGURED = False


class _StderrLogger:
    """Writes each rendered line to the *current* ``sys.stderr`` (resolved at write time, so a replaced or
    closed stream - pytest's capture, a daemonised worker - never leaves a logger pointing at a dead file)."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        if stream is None or getattr(stream, "closed", False):
            return
        print(message, file=stream, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


def _stderr_logger_factory(*_args) -> _StderrLogger:
    return _StderrLogger()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def finite_json_values(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: NaN and ±inf (a diverged loss, an empty window's metric) become null, nested too, so
    every line stays strict JSON (``NaN`` / ``Infinity`` are not JSON and break ``jq`` and most log shippers)."""
    return _finite(event_dict)


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
            *([finite_json_values] if json else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger_factory,
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


def drop_tracebacks_from_now_on() -> None:
    """Strip the traceback from every later log record of every root handler (the message lines stay).

    Called once an operations error was logged as one line: the worker then only shuts down, and the
    framework's shutdown adds nothing an operator can use. That covers faust's own crash log of the error
    and the races of its shutdown (measured: about 1 run in 9, mode logs "Error while stopping child ...
    Event loop is closed" with a traceback while stopping the consumer thread)."""

    def _filter(record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    for handler in [*logging.getLogger().handlers, logging.lastResort]:
        if handler is not None:
            handler.addFilter(_filter)
