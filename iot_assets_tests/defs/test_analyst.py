"""The analyst's tables, report and commands, without Dagster runs: what each day's table holds, what the daily
report puts first and explains, the reports' http links, `iot-assets show` and the reports server."""

import json
import re
import urllib.request
from html.parser import HTMLParser

import pandas as pd
import pytest
from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets.config import Settings, SettingsError
from iot_assets.contracts import catalogue
from iot_assets.contracts.schemas import AnomalyIncidents, DeviceVulnerabilities
from iot_assets.core import exposure, exposure_json
from iot_assets.core.incidents import service_labels
from iot_assets.io.lake import parquet_bytes
from iot_assets.io.reports import ReportFiles
from iot_assets.reports import day_tables
from iot_assets.reports.pages import COLUMN_LEGEND, daily_page
from iot_assets.ui import free_port, port_is_free, serve_reports

REMO, HUE = catalogue.BY_ARCHIVE["nature_remo"], catalogue.BY_ARCHIVE["philips_hue_bridge"]
STRANGER = "02:00:00:00:00:99"  # a locally administered MAC: in no catalogue
DAY, BEFORE = "2019-07-05", "2019-07-04"


def inventory() -> pd.DataFrame:
    return pd.DataFrame({
        "device_key": [REMO.mac, HUE.mac, STRANGER], "windows": [24, 24, 5],
        "predicted_device": ["Nature Remo", "Philips Hue Bridge", "Qrio Hub"],
        "predicted_category": ["Remote controller", "Light", "Door lock"], "confidence": [0.98, 0.91, 0.41],
        "runner_up": ["Qrio Hub", "Nature Remo", "Nature Remo"], "runner_up_confidence": [0.01, 0.05, 0.3],
        "catalogue_device": ["Nature Remo", "Philips Hue Bridge", None], "in_catalogue": [True, True, False],
        "disagrees": [False, False, False], "status": ["known", "known", "unknown"],
        "nearest_known": ["Nature Remo", "Philips Hue Bridge", "Qrio Hub"], "novelty": [0.0, 0.1, 2.5],
        "model_version": "aaaaaaaaaaaa",
    })


def membership() -> pd.DataFrame:
    return pd.DataFrame({"line_id": ["line-001", "line-002", "line-003", "line-004"],
                         "device_mac": [REMO.mac, REMO.mac, HUE.mac, STRANGER],
                         "since": pd.to_datetime([None, "2019-07-05 10:00", "2019-07-06 01:00", None], utc=True)})


def test_inventory_table_names_each_mac_with_its_line_of_that_day():
    table = day_tables.inventory_table(inventory(), DAY, membership())
    rows = {r["device"]: r for r in table.rows}
    assert rows[REMO.mac] == {"device": REMO.mac, "identity": "mac", "model": "Nature Remo", "category": "Remote controller",
                              "confidence": 0.98, "status": "known", "in_catalogue": True,
                              "catalogue_model": "Nature Remo", "line": "line-001, line-002"}
    # The Hue joins line-003 only the next day; the stranger is unknown and says so.
    assert rows[HUE.mac]["line"] == "none"
    assert rows[STRANGER]["model"] == "unknown" and rows[STRANGER]["catalogue_model"] is None
    assert [c.name for c in table.columns] == list(table.rows[0])
    assert all(c.description for c in table.columns)


def test_the_first_day_of_exposure_history_is_the_baseline():
    first = _exposure_day(BEFORE, None, [(REMO.mac, "Nature Remo", ("cleartext_http", "low"))])
    assert [r["change"] for r in day_tables.exposure_table(first, BEFORE, None).rows] == ["baseline"]


def _exposure_day(day: str, previous: pd.DataFrame | None, findings: list[tuple[str, str, tuple[str, str]]]):
    """A day of device_exposure from (MAC, device, (kind, severity)) findings."""
    today = pd.DataFrame([{"device_key": mac, "device": name, "predicted_device": name, "kind": kind,
                           "severity": severity, "flows": 3, "bytes": 10, "remote_peers": 1,
                           "evidence": ["CVE-2020-6007 https://www.cve.org/CVERecord?id=CVE-2020-6007"]
                           if kind == "known_advisory" else ["198.51.100.7:80"]}
                          for mac, name, (kind, severity) in findings])
    return exposure.carry_history(previous, today, day, {REMO.mac: "line-001", HUE.mac: "line-003"})


def test_exposure_table_explains_each_finding_and_marks_new_and_worse():
    before = _exposure_day(BEFORE, None, [(REMO.mac, "Nature Remo", ("cleartext_http", "low")),
                                          (HUE.mac, "Philips Hue Bridge", ("known_advisory", "medium"))])
    today = _exposure_day(DAY, before, [(REMO.mac, "Nature Remo", ("cleartext_http", "low")),
                                        (REMO.mac, "Nature Remo", ("telnet", "high")),
                                        (HUE.mac, "Philips Hue Bridge", ("known_advisory", "high"))])
    table = day_tables.exposure_table(today, DAY, before)
    rows = {(r["device"], r["finding"]): r for r in table.rows}
    assert {k: r["change"] for k, r in rows.items()} == {
        ("Nature Remo", "telnet"): "new", ("Nature Remo", "cleartext_http"): "ongoing",
        ("Philips Hue Bridge", "known_advisory"): "worse"}
    telnet = rows[("Nature Remo", "telnet")]
    assert telnet["since"] == DAY and telnet["day"] == DAY and telnet["severity"] == "high"
    assert telnet["what it means"] == exposure.RULES_BY_KIND["telnet"].meaning
    assert "disable telnet" in telnet["what to do"]
    # An advisory's evidence is its id here; its link and versions are fields of their own elsewhere.
    assert rows[("Philips Hue Bridge", "known_advisory")]["evidence"] == "CVE-2020-6007"


def test_every_finding_kind_has_a_meaning_and_a_remediation():
    for kind in exposure.KINDS:
        assert len(exposure.finding_meaning(kind)) > 40 and len(exposure.finding_remediation(kind)) > 40, kind
    assert len({exposure.finding_remediation(k) for k in exposure.KINDS}) == len(exposure.KINDS)


def test_advisories_carry_title_versions_and_link_outside_example_peers():
    advisories, problems = exposure.read_advisories(exposure.DEFAULT_ADVISORIES)
    assert problems == []
    (details,) = exposure.advisory_details(["CVE-2020-6007 https://www.cve.org/CVERecord?id=CVE-2020-6007"], advisories)
    assert details["fixed_version"] == "1935144040" and "1935144020" in details["affected_versions"]
    assert details["url"] == "https://www.cve.org/CVERecord?id=CVE-2020-6007" and "Zigbee" in details["title"]
    findings = _exposure_day(DAY, None, [(HUE.mac, "Philips Hue Bridge", ("known_advisory", "high"))])
    report = exposure_json.exposure_json(findings, [DAY], advisories)
    (finding,) = report["devices"][0]["findings"]
    assert finding["example_peers"] == [] and finding["advisories"][0]["advisory_id"] == "CVE-2020-6007"
    assert finding["remediation"] == exposure.ADVISORY_REMEDIATION
    json.dumps(report)


def test_an_advisories_file_without_version_columns_still_loads(tmp_path):
    path = tmp_path / "advisories.csv"
    path.write_text("vendor,model,advisory_id,severity,title,url,checked_date\n"
                    "Acme,Acme Cam,CVE-2099-00001,high,FICTIONAL test record,https://example.org/a,2026-01-01\n")
    advisories, problems = exposure.read_advisories(path)
    assert problems == [] and advisories.loc[0, "fixed_version"] == ""


def test_icmp_is_not_listed_as_a_port():
    flows = pd.DataFrame({"protocol": [1, 6, 17, 58], "remote_port": [3, 443, 53, 0], "device_port": [3, 40000, 5353, 135]})
    assert service_labels(flows).tolist() == ["icmp", "tcp/443", "udp/53", "icmpv6"]


def test_line_table_lists_models_per_line_at_the_finest_sampling():
    at = pd.to_datetime(["2019-07-03 08:00", "2019-07-05 09:30", "2019-07-03 08:00", "2019-07-04 00:00"], utc=True)
    inventory_ = pd.DataFrame({"sampling_rate": [1, 1, 100, 1], "line_id": ["line-001", "line-001", "line-001", "line-002"],
                               "level": "model", "label": ["Nature Remo", "Qrio Hub", "Nature Remo", "Sony Bravia"],
                               "detected": [True, True, True, False], "detected_at": at})
    table = day_tables.line_table(inventory_, DAY)
    assert table.rows == [{"line": "line-001", "models": "Nature Remo (2019-07-03), Qrio Hub (2019-07-05)",
                           "first_seen": "2019-07-03 08:00", "sampling": "1:1"}]


def test_incidents_table_has_the_day_and_the_evidence():
    incidents = pd.DataFrame({
        "device_key": [REMO.mac], "device_name": ["Nature Remo"], "incident": [f"{REMO.mac}@2019-07-04T23:00"],
        "start": pd.to_datetime(["2019-07-04 23:00"], utc=True), "end": pd.to_datetime(["2019-07-05 02:00"], utc=True),
        "peak_score_ratio": [7.26], "kind": ["scan-like"], "evidence_peers": ["203.0.113.9 (50 flows, 1.00 MB out, 0.00 MB in)"],
        "evidence_ports": ["tcp/23 (50 flows, 1.00 MB out, 0.00 MB in)"], "new_peers": [1]})
    (row,) = day_tables.incidents_table(incidents, DAY).rows
    assert row["day"] == DAY and row["start"] == "2019-07-04 23:00" and row["end"] == "2019-07-05 02:00"
    assert row["peak"] == 7.3 and "tcp/23" in row["evidence"] and "203.0.113.9" in row["evidence"]
    columns = {c.name: c for c in day_tables.incidents_table(incidents, DAY).columns}
    # A lake column keeps the contract's words: they are written once, in AnomalyIncidents.
    lake = AnomalyIncidents.to_schema().columns
    assert columns["peak"].description == lake["peak_score_ratio"].description
    assert (columns["kind"].description, columns["new_peers"].type) == (lake["kind"].description, "int")
    assert "scan-like" in columns["kind"].description


def test_vulnerabilities_table_is_the_open_worklist_riskiest_device_first():
    # FICTIONAL test records: the CVE ids are in the 2099 range, no vendor advisory is meant.
    findings = pd.DataFrame({
        "device": ["Nature Remo", "Nature Remo", "Philips Hue Bridge", "Philips Hue Bridge"],
        "device_mac": [REMO.mac, REMO.mac, HUE.mac, HUE.mac],
        "cve": ["CVE-2099-00001", "CVE-2099-00002", "CVE-2099-00003", "CVE-2099-00004"],
        "cvss": [5.0, None, 9.8, 7.5], "kev": [False, False, True, False], "epss": [0.1, None, 0.5, 0.2],
        "exposed": [False, False, True, False], "status": ["open", "acknowledged", "open", "resolved"],
        "days_open": [3, 1, 2, 9], "risk": [5.5, 0.0, 44.1, 9.0], "remediation": ["update", "none", "patch", "done"]})
    table = day_tables.vulnerabilities_table(findings, DAY)
    assert [(r["mac"], r["cve"]) for r in table.rows] == [
        (HUE.mac, "CVE-2099-00003"), (REMO.mac, "CVE-2099-00001"), (REMO.mac, "CVE-2099-00002")]
    assert table.rows[0]["kev"] is True and table.rows[0]["risk"] == 44.1 and table.rows[2]["cvss"] is None
    assert table.total_rows == 3  # the resolved finding is not on the worklist
    lake = DeviceVulnerabilities.to_schema().columns
    columns = {c.name: c for c in table.columns}
    assert columns["mac"].description == lake["device_mac"].description
    assert [columns[n].type for n in ("cvss", "kev", "days_open", "remediation")] == ["float", "bool", "int", "string"]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs, self.headers = set(), [], []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href", "").startswith("#"):
            self.hrefs.append(attrs["href"][1:])
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)
            self._in_th = False


def test_daily_report_starts_with_what_needs_attention_and_explains_every_column():
    incidents = pd.DataFrame({
        "device_key": [REMO.mac], "device_name": ["Nature Remo"], "incident": ["x"], "windows_flagged": [3],
        "start": pd.to_datetime(["2019-07-05 03:00"], utc=True), "end": pd.to_datetime(["2019-07-05 06:00"], utc=True),
        "peak_score_ratio": [9.0], "kind": ["flood-like"], "kind_reason": ["packets out up"], "top_features": ["w_x"],
        "evidence_peers": ["203.0.113.9"], "evidence_ports": ["udp/80"], "usual_ports": ["tcp/443"], "new_peers": [1],
        "model_version": "bbbbbbbbbbbb"})
    drift = pd.DataFrame({"device_key": REMO.mac, "device_name": "Nature Remo", "feature": ["a", "b", "mix:services"],
                          "js_distance": [0.5, 0.1, 0.9], "limit": [0.2, 0.2, 0.3], "drifted": [True, False, True],
                          "model_version": "cccccccccccc"})
    before = _exposure_day(BEFORE, None, [(REMO.mac, "Nature Remo", ("cleartext_http", "low"))])
    today = _exposure_day(DAY, before, [(REMO.mac, "Nature Remo", ("cleartext_http", "low")),
                                        (REMO.mac, "Nature Remo", ("telnet", "high"))])
    changes = day_tables.exposure_table(today, DAY, before).frame()
    labels = {"aaaaaaaaaaaa": "device classifier aaaaaaaaaaaa (trained on 2019-06-25..2019-07-01, built 2026-12-01, "
                              "accuracy 0.970 on 2019-07-02..2019-07-04)"}
    html = daily_page(DAY, inventory(), pd.DataFrame(columns=["anomaly", "has_model"]), incidents, drift,
                      pd.DataFrame(), exposure_section="<h2>Exposure</h2>", exposure_changes=changes,
                      model_labels=labels)
    body = html[html.index("<body>"):]
    attention = body[body.index("Needs attention"):body.index("</section>")]
    assert body.index("Needs attention") < body.index("<h2>Incidents") < body.index("<h2>Inventory")
    assert "Nature Remo: flood-like incident from 03:00 to 06:00, peak 9.0x its threshold" in attention
    assert "Nature Remo: new high exposure finding telnet" in attention and "cleartext_http" not in attention
    assert "Nature Remo: major drift, 50% of features drifted" in attention
    assert f"{STRANGER}: not in the catalogue, nearest known model Qrio Hub (novelty 2.50)" in attention
    parsed = _Links()
    parsed.feed(html)
    assert set(parsed.hrefs) == {"incidents", "exposure", "drift", "inventory"} and set(parsed.hrefs) <= parsed.ids
    assert labels["aaaaaaaaaaaa"] in body
    explained = {c for c in parsed.headers if c in COLUMN_LEGEND}
    unexplained = set(parsed.headers) - explained - {"finding", "what it means", "what to do"}
    assert unexplained == set()
    assert re.search(r"<dt>novelty</dt><dd>[^<]+</dd>", html) and re.search(r"<dt>mix_ratio</dt>", html)


def test_report_links_are_http_below_the_reports_url(tmp_path):
    reports = ReportFiles(base_url=str(tmp_path), public_url="http://127.0.0.1:8765/")
    path = reports.write_text("daily/2019-07-05.html", "<p>x</p>")
    assert reports.metadata(path)["url"].value == "http://127.0.0.1:8765/daily/2019-07-05.html"
    # Without a reports URL (an object store's reports without a web endpoint): the file's own address.
    assert ReportFiles(base_url=str(tmp_path)).url(path) == f"file://{tmp_path}/reports/daily/2019-07-05.html"


def test_the_reports_url_setting():
    assert Settings.from_env({"IOT_ASSETS_DATA_DIR": "/tmp/x"}).reports_url == "http://127.0.0.1:8765"
    assert Settings.from_env({"IOT_ASSETS_DATA_DIR": "s3://bucket/iot"}).reports_url == ""
    assert Settings.from_env({"IOT_ASSETS_REPORTS_URL": "https://reports.example.net/iot/"}).reports_url == \
        "https://reports.example.net/iot"
    with pytest.raises(SettingsError, match="IOT_ASSETS_REPORTS_URL='ftp://x' is not an http"):
        Settings.from_env({"IOT_ASSETS_REPORTS_URL": "ftp://x"})


def test_reports_server_serves_the_folder_on_localhost(tmp_path):
    (tmp_path / "daily").mkdir()
    (tmp_path / "daily" / "2019-07-05.html").write_text("<h1>iot-assets daily report 2019-07-05</h1>")
    port = free_port()
    server = serve_reports(tmp_path, port)
    try:
        assert not port_is_free(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/daily/2019-07-05.html", timeout=5) as answer:
            assert answer.status == 200 and b"daily report 2019-07-05" in answer.read()
    finally:
        server.shutdown()
        server.server_close()
    assert port_is_free(port)


def _write_day(data, asset: str, day: str, frame: pd.DataFrame) -> None:
    path = data / "lake" / asset / f"day={day}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(parquet_bytes(frame))


def test_show_prints_a_days_tables_from_the_lake(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _write_day(data, "device_inventory", DAY, inventory())
    (data / "lake" / "line_membership").mkdir(parents=True)
    (data / "lake" / "line_membership" / "part-0.parquet").write_bytes(parquet_bytes(membership()))
    before = _exposure_day(BEFORE, None, [(REMO.mac, "Nature Remo", ("cleartext_http", "low"))])
    today = _exposure_day(DAY, before, [(REMO.mac, "Nature Remo", ("telnet", "high"))])
    _write_day(data, "device_exposure", BEFORE, before.drop(columns="day"))
    _write_day(data, "device_exposure", DAY, today.drop(columns="day"))
    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", str(data))
    runner = CliRunner()
    shown = runner.invoke(main, ["show", "inventory", "--day", DAY])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"{DAY}: 3 row(s)"
    remo = next(line for line in lines if line.startswith(REMO.mac))
    assert "Nature Remo" in remo and "line-001, line-002" in remo and "known" in remo
    assert any(line.startswith(STRANGER) and "unknown" in line for line in lines)
    assert "  line: the subscriber line(s) the MAC sits on that day" in shown.output
    worklist = runner.invoke(main, ["show", "exposure"])  # the last day built
    assert worklist.exit_code == 0 and worklist.output.startswith(f"{DAY}: 1 row(s)")
    assert re.search(r"telnet\s+high\s+2019-07-05\s+new", worklist.output)
    missing = runner.invoke(main, ["show", "incidents"])
    assert missing.exit_code == 1 and "anomaly_incidents is not in the lake" in missing.output
    other_day = runner.invoke(main, ["show", "inventory", "--day", "2019-07-09"])
    assert other_day.exit_code == 1 and f"has no day 2019-07-09 in {data}/lake (built: {DAY} .. {DAY}, 1 days)" in \
        other_day.output


def test_a_ranged_run_of_a_days_built_asset_gives_each_day_its_rows(tmp_path):
    import dagster as dg

    from iot_assets.defs.automation.sensors import range_tags
    from iot_assets.defs.day_metadata import attach
    from iot_assets.io.lake import DaysBuilt, LakeIOManager

    daily = dg.DailyPartitionsDefinition(start_date="2019-07-01", end_date="2019-07-04")
    rows_of = {"2019-07-01": 2, "2019-07-02": 5, "2019-07-03": 1}

    @dg.asset(partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run(), io_manager_key="lake_io_manager")
    def counts(context: dg.AssetExecutionContext):
        def build(day: str) -> pd.DataFrame:
            frame = pd.DataFrame({"n": range(rows_of[day])})
            attach(context, "counts", day, {"built": f"{day} with {len(frame)} rows"})
            return frame

        return dg.Output(DaysBuilt(context.partition_keys, build, lambda: {"total": 99}))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([counts], instance=instance, resources={"lake_io_manager": LakeIOManager(str(tmp_path))},
                            tags=range_tags("2019-07-01", "2019-07-02"))
    assert result.success
    for day in ("2019-07-01", "2019-07-02"):
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("counts"), asset_partitions=[day]), limit=1).records
        metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert metadata["dagster/row_count"] == rows_of[day] and metadata["day"] == day
        assert metadata["built"] == f"{day} with {rows_of[day]} rows" and metadata["total"] == 99


def test_ui_refuses_a_taken_port_and_an_object_store(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = CliRunner().invoke(main, ["ui", "--port", str(port), "--reports-port", "0"])
    assert refused.exit_code == 1 and f"port {port} on 127.0.0.1 is taken: choose another with --port" in refused.output
    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", "s3://bucket/iot")
    remote = CliRunner().invoke(main, ["ui"])
    assert remote.exit_code == 2 and "static web endpoint (IOT_ASSETS_REPORTS_URL)" in remote.output


def test_an_input_allowed_missing_is_none_until_built(tmp_path):
    import dagster as dg

    from iot_assets.io.lake import LakeIOManager

    seen = []

    @dg.asset(io_manager_key="lake_io_manager", ins={"line_membership": dg.AssetIn(metadata={"allow_missing": True})})
    def reader(line_membership) -> pd.DataFrame:
        seen.append(line_membership)
        return pd.DataFrame({"n": [0 if line_membership is None else len(line_membership)]})

    source = dg.AssetSpec("line_membership").with_io_manager_key("lake_io_manager")
    resources = {"lake_io_manager": LakeIOManager(str(tmp_path))}
    assert dg.materialize([reader, source], resources=resources, selection=["reader"]).success
    (tmp_path / "lake" / "line_membership").mkdir(parents=True)
    (tmp_path / "lake" / "line_membership" / "part-0.parquet").write_bytes(parquet_bytes(membership()))
    assert dg.materialize([reader, source], resources=resources, selection=["reader"]).success
    assert seen[0] is None and len(seen[1]) == len(membership())
