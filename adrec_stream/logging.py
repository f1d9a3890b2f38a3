"""Structured JSON logging (structlog) shared by the CLI and the workers.

Records of standard-library loggers (aiokafka, kafka-python, faust, mode) are rendered as the same JSON lines, with
``logger`` and ``level``; a message that repeats (same logger, level and message template, e.g. aiokafka's
"Unable connect to node" once per retry while the broker is down) is written once per
:data:`REPEAT_WINDOW_S`, the next line carrying ``repeated``: how many were left out since.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
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


#: seconds within which a repeated standard-library log message is written only once
REPEAT_WINDOW_S = 30.0


class RepeatFilter(logging.Filter):
    """Let the first record of each (logger, level, message template) through, then at most one per ``window_s``;
    a record let through after left-out ones gets ``record.repeated`` = how many were left out.

    Args:
        window_s: seconds.
        clock: monotonic clock (seconds).
        max_keys: distinct messages remembered (all are forgotten when exceeded; bounds memory).
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1000) -> None:
        super().__init__()
        self.window_s, self.clock, self.max_keys = window_s, clock, max_keys
        self._seen: dict[tuple[str, int, str], list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            record.repeated = entry[1]
        if entry is None and len(self._seen) >= self.max_keys:
            self._seen.clear()
        self._seen[key] = [now, 0]
        return True


class _CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler that writes to the *current* ``sys.stderr`` (see :class:`_StderrLogger`)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if sys.stderr is None or getattr(sys.stderr, "closed", False):
            return
        super().emit(record)


def _stdlib_handler(level: int, timestamper: Any) -> logging.Handler:
    """stderr handler rendering standard-library records as JSON lines (see the module docstring)."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level, timestamper,
                           structlog.stdlib.ExtraAdder(allow=["repeated"])],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info,
                    finite_json_values, structlog.processors.JSONRenderer()])
    handler = _CurrentStderrHandler()
    handler.setLevel(level)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter())
    return handler


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
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            *([finite_json_values] if json else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )
    stdlib_level = max(numeric, logging.WARNING)
    if json:
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, _CurrentStderrHandler)]:
            root.removeHandler(h)  # configured again (tests, several CLI calls in one process)
        root.addHandler(_stdlib_handler(stdlib_level, timestamper))
        root.setLevel(stdlib_level)
    else:
        logging.basicConfig(level=stdlib_level, stream=sys.stderr)
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
