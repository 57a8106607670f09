"""The vulnerabilities group materialized on small frames and FICTIONAL feeds (CVE-2099-..., test records).

The feeds name the real Philips Hue Bridge CPE of contracts/device_cpes.csv, but every CVE in
them is invented for these tests and says so in its description.
"""

import gzip
import json
from datetime import date, timedelta

import dagster as dg
import pandas as pd
import pytest

from iot_assets.config import Settings, SettingsError
from iot_assets.contracts import catalogue
from iot_assets.core import exposure
from iot_assets.defs.partitions import Partitions
from iot_assets.defs.resources import VulnerabilitySettings
from iot_assets.io.lake import parquet_bytes
from iot_assets.materialize import failure_message
from iot_assets.reports.vulnerabilities import vulnerability_section_html
from iot_assets_tests.support.definitions import assets_for, resources_for, settings_for
from iot_assets_tests.support.feed_files import cpe_match, kev_entry, nvd_record, write_epss, write_kev, write_nvd

HUE_CPE = "cpe:2.3:o:philips:hue_bridge_v2_firmware:*:*:*:*:*:*:*:*"  # the model's real CPE (device_cpes.csv)
HUE_A = catalogue.BY_ARCHIVE["philips_hue_bridge"].mac
HUE_B, HUE_C = "02:00:00:00:01:0b", "02:00:00:00:01:0c"
REMO = catalogue.BY_ARCHIVE["nature_remo"].mac
DAY1, DAY2 = "2019-06-25", "2019-06-26"
WEB_CVE, KEV_CVE = "CVE-2099-0101", "CVE-2099-0102"
NETWORK_7_5 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"
ADJACENT_4_6 = "CVSS:3.1/AV:A/AC:L/PR:N/UI:R/S:U/C:L/I:L/A:N"


def write_feeds(folder, feed_day: str = "2019-06-30") -> None:
    """Fictional NVD, KEV and EPSS files: two CVEs of the Hue Bridge's CPE, one of them known exploited."""
    folder.mkdir(parents=True, exist_ok=True)
    write_nvd(folder, "2099", [
        nvd_record(WEB_CVE, "The bridge's web server on port tcp/80 stops answering a long request.",
                   vector=NETWORK_7_5, matches=[cpe_match(HUE_CPE, versionEndExcluding="1935144040")]),
        nvd_record(KEV_CVE, "A neighbour on the Zigbee radio can pair a lamp without consent.",
                   vector=ADJACENT_4_6, matches=[cpe_match(HUE_CPE)]),
    ], last_modified=f"{feed_day}T03:00:00-04:00")
    write_kev(folder, [kev_entry(KEV_CVE, due="2019-07-20")], released=f"{feed_day}T15:00:00.0000Z")
    write_epss(folder, feed_day, [(WEB_CVE, 0.2, 0.9), (KEV_CVE, 0.05, 0.5)])


def write_day(data, asset: str, day: str, frame: pd.DataFrame) -> None:
    path = data / "lake" / asset / f"day={day}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(parquet_bytes(frame.drop(columns=["day"], errors="ignore")))


def inventory(*pairs) -> pd.DataFrame:
    return pd.DataFrame([{"device_mac": mac, "predicted_device": model} for mac, model in pairs])


def exposure_day(day: str, reachable: list[str]) -> pd.DataFrame:
    """A device_exposure day built by the exposure module: each MAC answering an Internet peer on its port 80."""
    found = pd.DataFrame([{"device_key": mac, "device": "Philips Hue Bridge", "predicted_device": "Philips Hue Bridge",
                           "kind": "inbound_from_internet", "severity": "high", "flows": 3, "bytes": 900,
                           "remote_peers": 1, "evidence": ["203.0.113.9 -> device:80"]} for mac in reachable],
                         columns=exposure.FINDING_COLUMNS)
    return exposure.carry_history(None, found, day)


def write_inputs(data) -> None:
    """Day 1: bridges A (reachable on port 80) and B, and a Nature Remo (no CPE). Day 2: A is gone, C arrives."""
    write_day(data, "device_inventory", DAY1, inventory((HUE_A, "Philips Hue Bridge"), (HUE_B, "Philips Hue Bridge"),
                                                        (REMO, "Nature Remo")))
    write_day(data, "device_inventory", DAY2, inventory((HUE_B, "Philips Hue Bridge"), (HUE_C, "Philips Hue Bridge"),
                                                        (REMO, "Nature Remo")))
    write_day(data, "device_exposure", DAY1, exposure_day(DAY1, [HUE_A]))
    write_day(data, "device_exposure", DAY2, exposure_day(DAY2, [HUE_C]))
    membership = pd.DataFrame({"line_id": ["line-001", "line-001", "line-002", "line-002"],
                               "device_mac": [HUE_A, REMO, HUE_B, HUE_C],
                               "since": pd.to_datetime([None, None, None, "2019-06-26T10:00:00"], utc=True)})
    (data / "lake" / "line_membership").mkdir(parents=True, exist_ok=True)
    (data / "lake" / "line_membership" / "part-0.parquet").write_bytes(parquet_bytes(membership))


@pytest.fixture
def setup(tmp_path):
    """A data folder with the inputs and fictional feeds; B's known-exploited CVE acknowledged from day 2."""
    data = tmp_path / "data"
    write_inputs(data)
    write_feeds(data / "feeds")
    acks = tmp_path / "acknowledgements.csv"
    acks.write_text(f"device_mac,from_day,cve\n{HUE_B},{DAY2},{KEV_CVE}\n")
    built = assets_for()
    daily = Partitions.from_settings(settings_for(tmp_path)).daily
    sources = [dg.AssetSpec(key, partitions_def=daily).with_io_manager_key("lake_io_manager")
               for key in ("device_inventory", "device_exposure")]
    sources += [dg.AssetSpec(key).with_io_manager_key("lake_io_manager")
                for key in ("line_membership", "nvd_feed", "nvd_cpe_matches", "kev_feed", "epss_feed")]
    return {"data": data, "built": built, "sources": sources, "instance": dg.DagsterInstance.ephemeral(),
            # The lake's tables here are written by hand with MACs in clear: the acknowledgements are read alike.
            "resources": resources_for(data, IOT_ASSETS_ACKNOWLEDGEMENTS=str(acks), IOT_ASSETS_PSEUDONYMISE="off")}


def import_feeds(s, **kwargs) -> dg.ExecuteInProcessResult:
    built = s["built"]
    return dg.materialize([built.nvd_feed, built.kev_feed, built.epss_feed], resources=s["resources"],
                          instance=s["instance"], **kwargs)


def build_days(s, first: str, last: str | None = None, **kwargs) -> dg.ExecuteInProcessResult:
    """device_vulnerabilities for one day, or for first..last in one run (a ranged backfill)."""
    extra = ({"tags": {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}}
             if last else {"partition_key": first})
    return dg.materialize([s["built"].device_vulnerabilities, *s["sources"]], resources=s["resources"],
                          instance=s["instance"], **extra, **kwargs)


def day_table(data, day: str) -> pd.DataFrame:
    table = pd.read_parquet(data / "lake" / "device_vulnerabilities" / f"day={day}" / "part-0.parquet")
    return table.set_index(["device_mac", "cve"])


def day_materialization(instance, day: str) -> dict:
    (record,) = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("device_vulnerabilities"), asset_partitions=[day]), limit=1).records
    return record.asset_materialization.metadata


@pytest.mark.slow
def test_a_ranged_run_ranks_by_exposure_carries_the_lifecycle_and_gives_each_day_its_metadata(setup):
    s = setup
    assert import_feeds(s).success
    result = build_days(s, DAY1, DAY2)
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"vulnerabilities_schema": True}

    first = day_table(s["data"], DAY1)
    # The Hue Bridges get their fictional CVEs; the Nature Remo (no NVD CPE) none.
    assert sorted(first.index) == sorted([(HUE_A, WEB_CVE), (HUE_A, KEV_CVE), (HUE_B, WEB_CVE), (HUE_B, KEV_CVE)])
    # A answers Internet peers on port 80, the port the web CVE names: exposed, and ranked above B.
    assert first.loc[(HUE_A, WEB_CVE), "exposed"] and not first.loc[(HUE_B, WEB_CVE), "exposed"]
    assert first.loc[(HUE_A, WEB_CVE), "risk"] == pytest.approx(7.5 * 1.2 * 1.5)
    assert first.loc[(HUE_B, WEB_CVE), "risk"] == pytest.approx(7.5 * 1.2)
    assert first.loc[(HUE_A, KEV_CVE), "risk"] == pytest.approx(4.6 * 2 * 1.05)  # KEV doubles; AV:A: not exposed
    assert first.loc[(HUE_A, KEV_CVE), "kev_due_date"] == "2019-07-20"
    assert first.loc[(HUE_A, WEB_CVE), "remediation"] == "Update the firmware to version 1935144040 or later."
    assert set(first["line"]) == {"line-001", "line-002"} and first.loc[(HUE_A, WEB_CVE), "line"] == "line-001"

    second = day_table(s["data"], DAY2)
    # A is gone: resolved, with why; C is new; B's known-exploited CVE is acknowledged; days open counted.
    assert second.loc[(HUE_A, WEB_CVE), "status"] == "resolved"
    assert second.loc[(HUE_A, WEB_CVE), "resolution"] == f"device gone: not in the inventory of {DAY2}"
    assert second.loc[(HUE_B, KEV_CVE), "status"] == "acknowledged"
    assert second.loc[(HUE_B, WEB_CVE), ["status", "first_seen", "days_open"]].tolist() == ["open", DAY1, 1]
    assert second.loc[(HUE_C, WEB_CVE), ["new_today", "first_seen", "exposed"]].tolist() == [True, DAY2, True]

    # Each day carries its own metadata, though one run built both.
    one, two = day_materialization(s["instance"], DAY1), day_materialization(s["instance"], DAY2)
    counts = ("open", "acknowledged", "resolved", "new_today", "resolved_today")
    assert [one[k].value for k in counts] == [4, 0, 0, 4, 0]
    assert [two[k].value for k in counts] == [3, 1, 2, 2, 2]
    rows_one = [(r.data["mac"], r.data["cve"]) for r in one["worklist"].value.records]
    rows_two = [(r.data["mac"], r.data["cve"]) for r in two["worklist"].value.records]
    assert rows_one == [(HUE_A, WEB_CVE), (HUE_A, KEV_CVE), (HUE_B, KEV_CVE), (HUE_B, WEB_CVE)]
    assert rows_two == [(HUE_C, WEB_CVE), (HUE_C, KEV_CVE), (HUE_B, KEV_CVE), (HUE_B, WEB_CVE)]
    top = one["worklist"].value.records[0].data
    assert (top["kev"], top["exposed"], top["status"], top["cvss"], top["epss"]) == (False, True, "open", 7.5, 0.2)
    assert [c.name for c in one["worklist"].value.schema.columns][:3] == ["device", "mac", "cve"]

    # The daily report's section of day 2 (the lake gives a day's table its `day` column back).
    section = vulnerability_section_html(second.reset_index().assign(day=DAY2))
    assert section.startswith("<h2>Vulnerabilities</h2>")
    assert "3 open and 1 acknowledged finding(s) on 2 device(s)" in section
    assert "<h3>New today (2)</h3>" in section and "<h3>Resolved today (2)</h3>" in section
    assert f"device gone: not in the inventory of {DAY2}" in section
    open_part = section.split("<h3>Open by risk (4)</h3>")[1]
    assert open_part.index(HUE_C) < open_part.index(HUE_B) and HUE_A not in open_part
    assert "has not been built" in vulnerability_section_html(None)


@pytest.mark.slow
def test_day_by_day_the_report_writes_the_json_and_a_notice_per_line(setup):
    s = setup
    built = s["built"]
    assert import_feeds(s).success
    report_sources = [dg.AssetSpec("device_vulnerabilities", partitions_def=s["sources"][0].partitions_def)
                      .with_io_manager_key("lake_io_manager")]

    def report():
        return dg.materialize([built.vulnerability_report, *report_sources], resources=s["resources"],
                              instance=s["instance"])

    assert build_days(s, DAY1).success
    assert report().success
    notices = s["data"] / "reports" / "notices"
    assert sorted(p.name for p in notices.iterdir()) == ["line-001.html", "line-001.md", "line-002.html",
                                                         "line-002.md"]
    # Day 2 in a run of its own: the history comes from the lake.
    assert build_days(s, DAY2).success
    assert day_table(s["data"], DAY2).loc[(HUE_B, WEB_CVE), "first_seen"] == DAY1
    result = report()
    assert result.success
    # Line 1's only bridge is gone: its notice of day 1 goes; line 2 has B and C.
    assert sorted(p.name for p in notices.iterdir()) == ["line-002.html", "line-002.md"]
    metadata = result.asset_materializations_for_node("vulnerability_report")[0].metadata
    assert metadata["day"].value == DAY2 and metadata["notices_removed"].value == ["line-001.html", "line-001.md"]

    document = json.loads((s["data"] / "reports" / "vulnerabilities.json").read_text())
    assert [d["mac"] for d in document] == [HUE_C, HUE_B, HUE_A]  # risk first; A's findings are all resolved
    c = document[0]
    assert (c["device"], c["cpe"], c["risk"]) == ("Philips Hue Bridge", [HUE_CPE], pytest.approx(13.5))
    web = c["findings"][0]
    assert {k: web[k] for k in ("cve", "cvss", "kev", "epss", "exposed", "status", "first_seen")} == {
        "cve": WEB_CVE, "cvss": 7.5, "kev": False, "epss": 0.2, "exposed": True, "status": "open", "first_seen": DAY2}
    assert web["remediation"] == "Update the firmware to version 1935144040 or later."
    assert [f["status"] for f in document[2]["findings"]] == ["resolved", "resolved"]

    markdown = (notices / "line-002.md").read_text()
    assert markdown.startswith("# Security notice for your Internet line line-002")
    assert f"## Philips Hue Bridge ({HUE_C})" in markdown and f"## Philips Hue Bridge ({HUE_B})" in markdown
    assert "**Risk: very high.**" not in markdown  # the known-exploited CVE is not the exposed one
    assert "**Risk: high.**" in markdown and "Criminals are already using" in markdown
    assert "Update the firmware to version 1935144040 or later." in markdown
    page = (notices / "line-002.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h2>Philips Hue Bridge (02:00:00:00:01:0c)</h2>" in page


def test_a_tampered_nvd_feed_is_refused_and_the_previous_version_stays_served(setup):
    s = setup
    first = import_feeds(s)
    good = first.asset_materializations_for_node("nvd_feed")[0].metadata["sha256"].value
    feed = s["data"] / "feeds" / "nvdcve-2.0-2099.json.gz"
    # Someone lowers the web CVE's score (availability high -> low: CVSS 7.5 -> 5.3); the .meta still
    # holds the sha256 of the original.
    tampered = gzip.decompress(feed.read_bytes()).replace(b"C:N/I:N/A:H", b"C:N/I:N/A:L")
    feed.write_bytes(gzip.compress(tampered))

    result = dg.materialize([s["built"].nvd_feed], resources=s["resources"], instance=s["instance"],
                            raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure_message(failure.event_specific_data.error)
    assert "Failure: NVD CVE feed refused, the previous version stays in use: " in message
    assert str(feed) in message and "sha256" in message and "\n" not in message

    latest = s["instance"].get_latest_materialization_event(dg.AssetKey("nvd_feed")).asset_materialization
    assert latest.metadata["sha256"].value == good
    served = pd.read_parquet(s["data"] / "lake" / "nvd_feed" / "part-0.parquet")
    assert served.set_index("cve").loc[WEB_CVE, "cvss_base_score"] == 7.5
    assert build_days(s, DAY1).success
    assert day_table(s["data"], DAY1).loc[(HUE_A, WEB_CVE), "cvss"] == 7.5


@pytest.mark.slow
def test_no_feed_files_give_empty_tables_and_warnings_not_a_failed_day(setup, tmp_path):
    s = setup
    # Before any import (a deployment upgraded to this group) the day is built, with nothing matched.
    result = build_days(s, DAY1)
    assert result.success and day_table(s["data"], DAY1).empty
    assert result.asset_materializations_for_node("device_vulnerabilities")[0].metadata[
        "feeds_missing"].value == ["nvd_feed", "kev_feed", "epss_feed"]

    for path in (s["data"] / "feeds").iterdir():
        path.unlink()
    result = import_feeds(s)
    assert result.success
    checks = {c.asset_key.to_user_string(): c for c in result.get_asset_check_evaluations()}
    assert {k: (c.passed, c.severity) for k, c in checks.items()} == {
        k: (False, dg.AssetCheckSeverity.WARN) for k in ("nvd_feed", "kev_feed", "epss_feed")}
    assert checks["nvd_feed"].description.startswith(
        f"no NVD CVE feed file (nvdcve-2.0-*.json.gz) in {s['data'] / 'feeds'}")
    assert pd.read_parquet(s["data"] / "lake" / "nvd_cpe_matches" / "part-0.parquet").empty
    assert build_days(s, DAY2).success
    assert day_table(s["data"], DAY2).empty
    assert "no device matches a CVE" in vulnerability_section_html(day_table(s["data"], DAY2).reset_index())


def test_feeds_fresh_warns_on_an_old_feed_and_a_refused_newer_file(setup):
    s = setup
    stale = import_feeds(s)
    checks = {c.asset_key.to_user_string(): c for c in stale.get_asset_check_evaluations()}
    age = (date.today() - date(2019, 6, 30)).days
    assert not checks["epss_feed"].passed
    assert checks["epss_feed"].description.startswith(f"FIRST EPSS feed of 2019-06-30 is {age} days old")
    assert checks["kev_feed"].metadata["age_days"].value == age

    today = date.today().isoformat()
    write_feeds(s["data"] / "feeds", feed_day=today)
    fresh = import_feeds(s)
    assert all(c.passed for c in fresh.get_asset_check_evaluations())
    # A newer EPSS file that cannot be read: the good one of today is used, and the check says why.
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    (s["data"] / "feeds" / f"epss_scores-{tomorrow}.csv.gz").write_bytes(b"not gzip")
    result = dg.materialize([s["built"].epss_feed], resources=s["resources"], instance=s["instance"])
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed and "newer file(s) refused" in check.description and tomorrow in check.description
    assert result.asset_materializations_for_node("epss_feed")[0].metadata["feed_date"].value == today


def test_feeds_are_read_from_an_object_store_folder(tmp_path):
    from upath import UPath

    local = tmp_path / "feeds"
    write_feeds(local)
    remote = UPath("memory://iot-assets-test/feeds")
    for path in local.iterdir():
        (remote / path.name).write_bytes(path.read_bytes())
    (remote / "unrelated.txt").write_text("not a feed")
    resources = {**resources_for(tmp_path / "data"),
                 "vulnerability_settings": VulnerabilitySettings(feeds_dir=str(remote))}
    result = dg.materialize([assets_for().nvd_feed], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    metadata = result.asset_materializations_for_node("nvd_feed")[0].metadata
    assert metadata["records"].value == 2 and metadata["files"].value == ["nvdcve-2.0-2099.json.gz"]


def test_feed_settings_and_their_errors(tmp_path):
    settings = Settings.from_env({"IOT_ASSETS_DATA_DIR": str(tmp_path)})
    assert (settings.feeds_dir, settings.feed_max_age_days) == (str(tmp_path / "feeds"), 7)
    assert Settings.from_env({"IOT_ASSETS_DATA_DIR": "s3://bucket/iot"}).feeds_dir == "s3://bucket/iot/feeds"
    assert Settings.from_env({"IOT_ASSETS_FEEDS_DIR": str(tmp_path / "x"), "IOT_ASSETS_FEED_MAX_AGE_DAYS": "30"}
                             ).feed_max_age_days == 30
    for raw, says in (("seven", "is not a number"), ("7.5", "is not a whole number"), ("-1", "is outside")):
        with pytest.raises(SettingsError, match=f"^IOT_ASSETS_FEED_MAX_AGE_DAYS={raw!r}|^IOT_ASSETS_FEED_MAX"):
            Settings.from_env({"IOT_ASSETS_FEED_MAX_AGE_DAYS": raw})
        with pytest.raises(SettingsError) as error:
            Settings.from_env({"IOT_ASSETS_FEED_MAX_AGE_DAYS": raw})
        assert says in str(error.value) and "\n" not in str(error.value)



def test_a_device_on_two_lines_is_in_both_notices_and_a_line_joins_on_its_day():
    from iot_assets.defs.vulnerabilities.assets import line_notices, lines_on, notice_name

    membership = pd.DataFrame({"line_id": ["line-001", "line-002", "line-002", "line-003"],
                               "device_mac": [HUE_A, HUE_A, HUE_B, HUE_C],
                               "since": pd.to_datetime([None, "2019-06-25T23:59:00", None, "2019-06-26T00:00:00"],
                                                       utc=True)})
    lines = lines_on(membership, DAY1).set_index("device_mac")["line"].to_dict()
    assert lines == {HUE_A: "line-001, line-002", HUE_B: "line-002"}  # C joins line 3 the next day
    findings = pd.DataFrame({
        "device_mac": [HUE_A, HUE_B, HUE_C], "device": "Philips Hue Bridge",
        "line": ["line-001, line-002", "line-002", "unknown"], "cve": WEB_CVE, "risk": [9.0, 9.0, 9.0],
        "status": ["open", "resolved", "open"], "kev": False, "exposed": False, "cvss": 7.5,
        "affected": "possibly affected (firmware unknown)", "remediation": "Update the firmware."})
    notices = line_notices(findings)
    assert sorted(notices) == ["line-001", "line-002"]  # no notice for `unknown`
    assert HUE_A in notices["line-001"] and HUE_A in notices["line-002"] and HUE_B not in notices["line-002"]
    assert notice_name("Tokyo/ftth 0042") == "Tokyo_ftth_0042"
