"""Headless Chromium for the status-page test (Debian's ``chromium`` package; ``.ci/run`` installs it).

Only the browser's own command line is used: ``--dump-dom`` prints the page's DOM after its scripts ran (with a
virtual-time budget for the page's fetches), ``--screenshot`` writes a PNG. The flags keep Chromium off the
network it cannot reach here (background networking, component updates, sync) and out of the user's profile.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

#: Set by .ci/run: a missing browser fails the test instead of skipping it.
REQUIRE_ENV = "ADREC_REQUIRE_BROWSER"


def chromium_or_skip() -> str:
    """Path of the Chromium binary; skips the test when there is none (fails under ``ADREC_REQUIRE_BROWSER=1``)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    msg = "no headless Chromium found (apt-get install chromium); .ci/run installs it"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def _run(binary: str, url: str, *extra: str, budget_ms: int = 5000) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *extra, url]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)


def dump_dom(binary: str, url: str, budget_ms: int = 5000) -> str:
    """The page's DOM after its scripts ran for ``budget_ms`` of virtual time.

    Raises:
        AssertionError: Chromium failed or printed no document.
    """
    out = _run(binary, url, "--dump-dom", budget_ms=budget_ms)
    assert out.returncode == 0 and "<html" in out.stdout, f"chromium failed ({out.returncode}): {out.stderr[-800:]}"
    return out.stdout


def screenshot(binary: str, url: str, path: Path, size: str = "1280,1100", budget_ms: int = 5000) -> None:
    """Write a PNG of the rendered page to ``path``."""
    out = _run(binary, url, f"--window-size={size}", f"--screenshot={path}", "--hide-scrollbars", budget_ms=budget_ms)
    assert out.returncode == 0 and path.is_file(), f"chromium screenshot failed: {out.stderr[-800:]}"


def fields(dom: str) -> dict[str, str]:
    """``data-field`` -> text of every element that carries one (text unescaped, whitespace trimmed)."""
    return {m.group(1): html.unescape(m.group(2)).strip()
            for m in re.finditer(r'data-field="([^"]+)"[^>]*>([^<]*)<', dom)}
