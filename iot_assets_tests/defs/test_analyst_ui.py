"""The analyst's day on a small built sample: each day's own tables on its partition after a ranged run, and
`iot-assets ui` in headless Chromium: a daily_report partition links that day's report over http, the
device_inventory partition names every device; SIGTERM stops the webserver, the daemon and the reports server.

Skips without Chromium or Playwright (`.ci/run` installs both).
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from iot_assets.config import Settings
from iot_assets.defs.automation.sensors import range_tags
from iot_assets.reports import day_tables
from iot_assets.show import day_table
from iot_assets.ui import free_port, port_is_free
from iot_assets_tests.support.browser import BROWSER_ARGS, CHROMIUM, ROOT, built_sample, text_with, wait_for_url

DAYS = ["2019-06-25", "2019-06-26", "2019-06-27"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory):
    """Three sample days built by `iot-assets run`, with the reports linked at a free localhost port."""
    work = tmp_path_factory.mktemp("analyst")
    reports_port = free_port()
    env = built_sample(work, DAYS, IOT_ASSETS_REPORTS_URL=f"http://127.0.0.1:{reports_port}")
    return {"env": env, "work": work, "data": str(work / "data"), "reports_port": reports_port}


def _latest(instance: dg.DagsterInstance, asset: str, day: str) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[day]), limit=1).records
    return record.asset_materialization.metadata


def _rows(value: dg.TableMetadataValue) -> list[dict]:
    return [record.data for record in value.records]


def test_a_ranged_run_gives_each_day_its_own_tables(sample_lake):
    from iot_assets.definitions import build_definitions

    env, data = sample_lake["env"], sample_lake["data"]
    defs = build_definitions(Settings.from_env(env))
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    first, second = DAYS[0], DAYS[1]
    result = defs.resolve_job_def("daily_scoring_job").execute_in_process(
        instance=instance, tags=range_tags(first, second), raise_on_error=False)
    assert result.success
    run_id = result.run_id
    tables = {}
    for day in (first, second):
        inventory = _latest(instance, "device_inventory", day)
        lake_inventory = pd.read_parquet(Path(data, "lake", "device_inventory", f"day={day}", "part-0.parquet"))
        # The partition's table is that day's lake file, as `iot-assets show` reads it, with its own row count.
        assert _rows(inventory["inventory"]) == day_table(data, "inventory", day).rows
        assert inventory["day"].value == day and inventory["macs"].value == len(lake_inventory)
        assert inventory["dagster/row_count"].value == len(lake_inventory)
        assert [c.name for c in inventory["inventory"].schema.columns] == \
            ["device", "identity", "model", "category", "confidence", "status", "in_catalogue", "catalogue_model", "line"]
        assert all(c.description for c in inventory["inventory"].schema.columns)

        worklist = _latest(instance, "device_exposure", day)
        assert _rows(worklist["worklist"]) == day_table(data, "exposure", day).rows
        assert {r["day"] for r in _rows(worklist["worklist"])} == {day}
        assert all(r["what it means"] and r["what to do"] for r in _rows(worklist["worklist"]))
        assert worklist["findings"].value == len(_rows(worklist["worklist"]))

        incidents = _latest(instance, "anomaly_incidents", day)
        assert _rows(incidents["incidents_table"]) == day_table(data, "incidents", day).rows
        assert incidents["incidents"].value == len(_rows(incidents["incidents_table"]))

        lines = _latest(instance, "line_inventory", day)
        lake_lines = pd.read_parquet(Path(data, "lake", "line_inventory", f"day={day}", "part-0.parquet"))
        assert _rows(lines["lines"]) == day_tables.line_table(lake_lines, day).rows
        assert lines["dagster/row_count"].value == len(lake_lines)

        scores = _latest(instance, "anomaly_scores", day)
        lake_scores = pd.read_parquet(Path(data, "lake", "anomaly_scores", f"day={day}", "part-0.parquet"))
        assert scores["windows"].value == len(lake_scores) == scores["dagster/row_count"].value
        assert scores["anomalies"].value == int(lake_scores["anomaly"].sum())
        drift = _latest(instance, "feature_drift", day)
        lake_drift = pd.read_parquet(Path(data, "lake", "feature_drift", f"day={day}", "part-0.parquet"))
        assert drift["drifted_features"].value == int(lake_drift["drifted"].sum())
        assert drift["devices"].value == lake_drift["device_key"].nunique()

        report = _latest(instance, "daily_report", day)
        assert report["url"].value == f"http://127.0.0.1:{sample_lake['reports_port']}/daily/{day}.html"
        assert report["report"].value.endswith(f"/reports/daily/{day}.html")
        tables[day] = (inventory, worklist, lines)
    # One run built both days, and the two days differ where their data differ.
    assert {_latest(instance, "daily_report", d)["url"].value for d in (first, second)} == {
        f"http://127.0.0.1:{sample_lake['reports_port']}/daily/{d}.html" for d in (first, second)}
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("device_exposure"),
                                                                    asset_partitions=[first, second]), limit=2).records
    assert {r.run_id for r in records} == {run_id}
    first_lines, second_lines = _rows(tables[first][2]["lines"]), _rows(tables[second][2]["lines"])
    first_work, second_work = _rows(tables[first][1]["worklist"]), _rows(tables[second][1]["worklist"])
    assert (first_lines, first_work) != (second_lines, second_work)
    assert {r["change"] for r in first_work} == {"baseline"}  # the first day of history: nothing to compare with
    assert tables[first][1]["baseline"].value == len(first_work) and tables[first][1]["new"].value == 0


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (.ci/run installs it)")
def test_iot_assets_ui_links_each_days_report_and_names_every_device(sample_lake):
    playwright = pytest.importorskip("playwright.sync_api")
    env, work, data = sample_lake["env"], sample_lake["work"], sample_lake["data"]
    ui_port, reports_port = free_port(), sample_lake["reports_port"]
    log = work / "iot_assets_ui.log"
    ui = subprocess.Popen([sys.executable, "-m", "iot_assets.cli", "ui", "--port", str(ui_port),
                           "--reports-port", str(reports_port)],
                          env=env, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    base, reports = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{reports_port}"
    day = DAYS[0]
    try:
        wait_for_url(f"{base}/server_info", ui, log)
        wait_for_url(f"{reports}/daily/{day}.html", ui, log)
        processes = _descendants(ui.pid)
        names = {b" ".join(Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[:3]).decode(errors="replace")
                 for p in processes if Path(f"/proc/{p}/cmdline").exists()}
        assert any("dagster-webserver" in n for n in names) and any("dagster-daemon" in n for n in names), names
        devices = sorted(set(pd.read_parquet(Path(data, "lake", "clean_flows", f"day={day}"))["device_name"].dropna()))
        assert len(devices) >= 20
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.goto(f"{base}/assets/daily_report?view=partitions&partition={day}", wait_until="domcontentloaded")
            link = f"{reports}/daily/{day}.html"
            text_with(page, [link, "incidents"], "analyst_daily_report_partition.png")
            # The instance turns Dagster's community sign-up modal off (instance_yaml: nux); were it
            # shown, it would cover this link some seconds after the page loads.
            page.wait_for_timeout(3000)
            assert page.locator(".dagster-backdrop").count() == 0
            anchor = page.locator(f"a[href='{link}']").first
            if anchor.get_attribute("target") == "_blank":
                with context.expect_page() as opened:
                    anchor.click()
                report = opened.value
            else:
                anchor.click()
                report = page
            report.wait_for_load_state()
            assert report.url == link
            text = text_with(report, [f"iot-assets daily report {day}", "Needs attention", "Exposure",
                                       "What the findings mean and what to do"], "analyst_daily_report.png")
            assert "device classifier" in text and "trained on" in text
            page.goto(f"{base}/assets/device_inventory?view=partitions&partition={day}", wait_until="domcontentloaded")
            text_with(page, ["inventory", "catalogue_model", *devices], "analyst_device_inventory.png")
            browser.close()
    finally:
        ui.send_signal(signal.SIGTERM)
        started = time.time()
        ui.wait(timeout=60)
        stopped_in_s = time.time() - started
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in processes):
        time.sleep(0.2)
    assert [p for p in processes if _alive(p)] == []
    assert ui.returncode == 0 and stopped_in_s < 30, log.read_text()[-2000:]
    assert port_is_free(ui_port) and port_is_free(reports_port)
    assert "SIGTERM: stopping the webserver, the daemon and the reports server" in log.read_text()
