"""Helpers shared by the operations tests: HTTP reads of a worker endpoint, the exposition parsed into a dict,
polling until a condition holds."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

#: one sample: (name, sorted (label, value) pairs)
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def parse_samples(text: str) -> dict[SampleKey, float]:
    """Prometheus exposition -> {(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def scrape(url: str) -> dict[SampleKey, float]:
    """``/metrics`` of the endpoint at ``url``, parsed."""
    code, text = http_get(f"{url}/metrics")
    assert code == 200
    return parse_samples(text)


def readyz(url: str) -> tuple[int, dict]:
    """(status, JSON body) of ``/readyz``."""
    code, body = http_get(f"{url}/readyz")
    return code, json.loads(body)


def lag_of(samples: dict[SampleKey, float], topic: str, partition: int) -> float | None:
    """``adrec_consumer_lag_records`` of one partition (None when absent)."""
    return samples.get(("adrec_consumer_lag_records", (("partition", str(partition)), ("topic", topic))))


def by_label(samples: dict[SampleKey, float], name: str, label: str) -> dict[str, float]:
    """The samples of ``name`` keyed by the value of their ``label``."""
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def poll(fn: Callable[[], Any], what: str, timeout_s: float = 90.0, worker: Any = None) -> Any:
    """Call ``fn`` every 0.2 s until it returns something truthy and return that; fail naming ``what`` on timeout
    or when ``worker`` (a conftest Worker) exited meanwhile."""
    deadline = time.time() + timeout_s
    while True:
        got = fn()
        if got:
            return got
        if worker is not None and worker.proc.poll() is not None:
            pytest.fail(f"{worker.role} worker exited ({worker.proc.returncode}) while waiting for {what}")
        if time.time() > deadline:
            pytest.fail(f"no {what} within {timeout_s} s (last: {got!r})")
        time.sleep(0.2)


def poll_metrics(url: str, done: Callable[[dict[SampleKey, float]], bool], what: str, timeout_s: float = 90.0,
                 worker: Any = None) -> dict[SampleKey, float]:
    """Scrape ``url`` until ``done(samples)`` holds; return those samples."""

    def attempt() -> dict[SampleKey, float] | None:
        s = scrape(url)
        return s if done(s) else None

    return poll(attempt, what, timeout_s, worker)


def key(name: str, **labels: str) -> SampleKey:
    """The sample key of ``name`` with ``labels``."""
    return name, tuple(sorted(labels.items()))


def subset(samples: dict[SampleKey, float], expected: dict[SampleKey, float]) -> dict[SampleKey, float | None]:
    """The values of ``samples`` at the keys of ``expected`` (None where absent): compare with ``expected``."""
    return {k: samples.get(k) for k in expected}
