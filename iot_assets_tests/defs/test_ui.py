"""The product as its users meet it: `dagster dev` (webserver and daemon) on a small sample,
checked in headless Chromium, and a backfill through the daemon with one corrupted day.

Skips when no Chromium or Playwright is installed; `.ci/run` installs both so that CI runs it.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from iot_assets.materialize import failure_message
from iot_assets.ui import free_port
from iot_assets_tests.support.browser import BROWSER_ARGS, CHROMIUM, ROOT, built_sample, text_with, wait_for_url

DAYS = ["2019-06-25", "2019-06-26", "2019-06-27"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs it)")]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    """A sample materialized by `iot-assets run`, then `dagster dev` serving it on 127.0.0.1."""
    work = tmp_path_factory.mktemp("ui")
    env = built_sample(work, DAYS)
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=ROOT, stdout=open(work / "dagster_dev.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{url}/server_info", server, work / "dagster_dev.log")
        yield {"url": url, "env": env, "work": work}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _page_text(page, url: str, expected: list[str], screenshot: str) -> str:
    page.goto(url, wait_until="domcontentloaded", timeout=60_000)
    return text_with(page, expected, screenshot)


def test_ui_shows_assets_partitions_and_checks(dagster_dev):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        base = dagster_dev["url"]
        _page_text(page, f"{base}/locations/iot_assets/asset-groups/ingest",
                   ["raw_archives", "decoded_flows", "clean_flows", "clean_rejects", "2 / 2 Passed"], "ingest_graph.png")
        _page_text(page, f"{base}/locations/iot_assets/asset-groups/behaviour",
                   ["device_windows", "device_classifier", "anomaly_detector", "feature_drift"], "behaviour_graph.png")
        _page_text(page, f"{base}/assets/clean_flows?view=partitions",
                   ["Materialized (3)", "Failed (0)", *DAYS], "clean_flows_partitions.png")
        # The latest check shown is clean_schema's: passed, with the description its result wrote.
        _page_text(page, f"{base}/assets/clean_flows?view=checks",
                   ["day_reconciles", "clean_schema", "Succeeded", "Passed", "every row matches CleanFlows"],
                   "clean_flows_checks.png")
        _page_text(page, f"{base}/assets/raw_archives?view=checks",
                   ["archives_reconcile", "archives_match_catalogue"], "raw_archives_checks.png")
        browser.close()


def _corrupt_day(staged: Path, day: str) -> None:
    """Damage the row group holding one day of a staged archive, as a bad disk block would."""
    table = pq.read_table(staged)
    days = pc.strftime(table.column("flow_start"), format="%Y-%m-%d").to_numpy(zero_copy_only=False)
    with pq.ParquetWriter(staged, table.schema, compression="snappy") as writer:
        for d in sorted(set(days)):
            writer.write_table(table.filter(days == d))
    meta = pq.ParquetFile(staged).metadata
    index = sorted(set(days)).index(day)
    group = meta.row_group(index)
    data = bytearray(staged.read_bytes())
    for j in range(group.num_columns):
        column = group.column(j)
        start = column.dictionary_page_offset or column.data_page_offset
        data[start + 8: start + column.total_compressed_size] = b"\xff" * (column.total_compressed_size - 8)
    staged.write_bytes(bytes(data))


def test_backfill_with_a_corrupted_day_completes_the_others(dagster_dev):
    env = dagster_dev["env"]
    staged = sorted(Path(env["IOT_ASSETS_DATA_DIR"], "staging").glob("*/*/flows.parquet"))
    _corrupt_day(staged[0], DAYS[1])
    queued = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "daily_flows_job",
         "--partitions", ",".join(DAYS), "--noprompt"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert queued.returncode == 0, queued.stdout + queued.stderr
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    deadline = time.time() + 600
    while time.time() < deadline:
        runs = [r for r in instance.get_runs() if r.tags.get("dagster/backfill")]
        if len(runs) == len(DAYS) and all(r.is_finished for r in runs):
            break
        time.sleep(3)
    statuses = {r.tags["dagster/partition"]: r.status for r in runs}
    errors = {r.tags["dagster/partition"]: [failure_message(e.dagster_event.event_specific_data.error)[:300]
                                            for e in instance.all_logs(r.run_id)
                                            if e.is_dagster_event and e.dagster_event.is_step_failure] for r in runs}
    assert statuses == {DAYS[0]: dg.DagsterRunStatus.SUCCESS, DAYS[1]: dg.DagsterRunStatus.FAILURE,
                        DAYS[2]: dg.DagsterRunStatus.SUCCESS}, errors
    failed = next(r for r in runs if r.status == dg.DagsterRunStatus.FAILURE)
    failures = [e for e in instance.all_logs(failed.run_id) if e.is_dagster_event and e.dagster_event.is_step_failure]
    assert failures and failures[0].dagster_event.step_key == "decoded_flows"
