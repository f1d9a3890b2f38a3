"""argparse ``type=`` converters shared by the subcommands (each raises ``argparse.ArgumentTypeError``)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite or infinite float >= 0 (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def tcp_port(text: str) -> int:
    """A TCP port number, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {value}")
    return value


def host_port(text: str) -> str:
    """``HOST:PORT`` (port 1-65535; an IPv6 host in brackets, e.g. ``[::1]:9465``), without a URL scheme."""
    if "://" in text:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT without a scheme, got {text!r} "
                                         f"(write {text.split('://', 1)[1].rstrip('/')!r})")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port 1-65535, e.g. 127.0.0.1:9465, got {text!r}")
    return text
