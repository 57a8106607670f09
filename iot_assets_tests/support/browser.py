"""Chromium through Playwright, and the servers it looks at: what the UI tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("IOT_ASSETS_SCREENSHOTS", ROOT / "ui-screenshots"))
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def wait_for_url(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    """Until `url` answers 200; fails with the server's log when it does not in time or the server died."""
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                assert answer.status == 200
                return
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                raise AssertionError(f"{url} never answered; log: {log.read_text()[-3000:]}")
            time.sleep(1)


def text_with(page, expected: list[str], screenshot: str, seconds: float = 60) -> str:
    """The page's text once it holds every string of `expected` (the UI fills in over seconds); a
    screenshot either way, and a failure naming what is missing."""
    deadline = time.time() + seconds
    text = ""
    while time.time() < deadline:
        text = page.inner_text("body")
        if all(e in text for e in expected):
            break
        page.wait_for_timeout(1000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / screenshot), full_page=True)
    missing = [e for e in expected if e not in text]
    assert not missing, f"{missing} not on {page.url}; screenshot {SCREENSHOTS / screenshot}"
    return text


def built_sample(work: Path, days: list[str], **extra_env: str) -> dict:
    """`iot-assets run` on a sample of `days` (scale 0.02) in `work`: the environment it ran with, which
    the UI started after it must share (DAGSTER_HOME, IOT_ASSETS_DATA_DIR, ...)."""
    import sys

    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(work / "dagster_home"),
           "IOT_ASSETS_END_DATE": days[-1], **extra_env}
    env.pop("IOT_ASSETS_EPISODES", None)
    env.pop("IOT_ASSETS_AUTO_PROMOTE", None)  # the default policy: what a new user gets
    done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run", "--sample-days", str(len(days)),
                           "--sample-scale", "0.02"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return env
