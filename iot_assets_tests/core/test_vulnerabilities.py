"""Matching, risk, exposure evidence, lifecycle and reports on FICTIONAL feeds (CVE-2099-..., example_vendor)."""

import json

import pandas as pd
import pytest

from iot_assets.core import exposure, feeds
from iot_assets.core import vulnerabilities as vuln
from iot_assets.core.device_cpes import read_device_cpes
from iot_assets_tests.support.feed_files import (
    HUB_CPE,
    NEIGHBOUR_CPE,
    cpe_match,
    kev_entry,
    nvd_record,
    write_epss,
    write_kev,
    write_nvd,
)

HUB_A, HUB_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
ADJACENT = "CVSS:3.1/AV:A/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"


@pytest.fixture()
def feed_tables(tmp_path):
    """The tables of an import of fictional NVD, KEV and EPSS files, and the fictional model's CPEs."""
    records = [
        nvd_record("CVE-2099-0001", "A SYN flood on port tcp/80 freezes the lamp hub.",
                   matches=[cpe_match(HUB_CPE, versionEndExcluding="2.4.0")]),
        nvd_record("CVE-2099-0002", "The lamp hub's cloud agent crashes on a long header.",
                   matches=[cpe_match(HUB_CPE)]),
        nvd_record("CVE-2099-0003", "Only the pro hub: a neighbour product.", matches=[cpe_match(NEIGHBOUR_CPE)]),
        nvd_record("CVE-2099-0004", "The lamp app, running with the hub firmware (not itself vulnerable).",
                   matches=[cpe_match("cpe:2.3:a:example_vendor:lamp_app:*:*:*:*:*:*:*:*"),
                            cpe_match(HUB_CPE, vulnerable=False)]),
        nvd_record("CVE-2099-0005", "Zigbee pairing overflow from a neighbour's radio.", vector=ADJACENT,
                   matches=[cpe_match(HUB_CPE, versionStartIncluding="2.0", versionEndIncluding="2.9")]),
    ]
    write_nvd(tmp_path, "2099", records)
    write_kev(tmp_path, [kev_entry("CVE-2099-0002", due="2019-07-20")])
    write_epss(tmp_path, "2019-06-30", [("CVE-2099-0001", 0.1, 0.8), ("CVE-2099-0002", 0.1, 0.8)])
    (tmp_path / "device_cpes.csv").write_text(f"device,cpe,source\nLamp Hub,{HUB_CPE},FICTIONAL test mapping\n"
                                              "Kettle,,no NVD CPE found\n")
    nvd = feeds.import_nvd(tmp_path)
    return {"device_cpes": read_device_cpes(tmp_path / "device_cpes.csv"), "cves": nvd.tables["cves"],
            "cpe_matches": nvd.tables["cpe_matches"],
            "kev": feeds.import_kev(tmp_path / feeds.KEV_FILE).tables["kev"],
            "epss": feeds.import_epss(tmp_path / "epss_scores-2019-06-30.csv.gz").tables["epss"]}


def inventory(*macs, model="Lamp Hub"):
    return pd.DataFrame({"device_mac": list(macs), "predicted_device": model})


def exposure_table(day, rows):
    """A device_exposure table built by the exposure module itself from (mac, kind, evidence) findings."""
    found = pd.DataFrame([{"device_key": mac, "device": "Lamp Hub", "predicted_device": "Lamp Hub", "kind": kind,
                           "severity": exposure.RULES_BY_KIND[kind].severity, "flows": 3, "bytes": 900,
                           "remote_peers": 1, "evidence": evidence} for mac, kind, evidence in rows],
                         columns=exposure.FINDING_COLUMNS)
    return exposure.carry_history(None, found, day)


def day_table(feed_tables, day, macs, previous=None, **kwargs):
    return vuln.device_vulnerabilities(day, inventory(*macs), previous, **feed_tables, **kwargs)


def test_matching_takes_exactly_the_cves_of_the_models_cpe(feed_tables):
    matches = vuln.match_devices(pd.concat([inventory(HUB_A), inventory("02:00:00:00:00:0c", model="Kettle")]),
                                 feed_tables["device_cpes"], feed_tables["cpe_matches"])
    assert matches["cve"].tolist() == ["CVE-2099-0001", "CVE-2099-0002", "CVE-2099-0005"]
    assert set(matches["device_mac"]) == {HUB_A}
    assert (matches["affected"] == vuln.POSSIBLY_AFFECTED).all()
    assert matches.set_index("cve").loc["CVE-2099-0001", "fixed_version"] == "2.4.0"


@pytest.mark.parametrize("firmware, match, expected", [
    ("2.3.9", {"cpe_version": "*", "versionEndExcluding": "2.4.0"}, True),
    ("2.4.0", {"cpe_version": "*", "versionEndExcluding": "2.4.0"}, False),
    ("1935144020", {"cpe_version": "*", "versionEndIncluding": "1935144020"}, True),
    ("1935144040", {"cpe_version": "*", "versionEndIncluding": "1935144020"}, False),
    ("1.9", {"cpe_version": "*", "versionStartIncluding": "2.0", "versionEndIncluding": "2.9"}, False),
    ("2.0", {"cpe_version": "*", "versionStartExcluding": "2.0"}, False),
    ("1707040932", {"cpe_version": "1707040932"}, True),
    ("1707040933", {"cpe_version": "1707040932"}, False),
    ("fw-3.1b_jp", {"cpe_version": "*", "versionEndExcluding": "2.4.0"}, None),  # not a PEP 440 version
    (None, {"cpe_version": "*", "versionEndExcluding": "2.4.0"}, None),
])
def test_version_ranges(firmware, match, expected):
    assert vuln.version_affected(firmware, match) is expected


def test_known_firmware_narrows_the_match(feed_tables):
    firmware = pd.DataFrame({"device_mac": [HUB_A, HUB_B], "firmware_version": ["2.3.0", "2.4.1"]})
    matches = vuln.match_devices(inventory(HUB_A, HUB_B), feed_tables["device_cpes"], feed_tables["cpe_matches"],
                                 firmware)
    verdicts = matches.set_index(["device_mac", "cve"])["affected"]
    assert verdicts[(HUB_A, "CVE-2099-0001")] == "affected (firmware 2.3.0)"
    assert verdicts[(HUB_B, "CVE-2099-0001")] == "not affected (firmware 2.4.1)"
    assert verdicts[(HUB_B, "CVE-2099-0002")] == "affected (firmware 2.4.1)"  # every version


def test_kev_raises_the_rank(feed_tables):
    table = day_table(feed_tables, "2019-07-01", [HUB_A]).set_index("cve")
    assert table.loc["CVE-2099-0002", "kev"] and not table.loc["CVE-2099-0001", "kev"]
    assert table.loc["CVE-2099-0002", "kev_due_date"] == "2019-07-20"
    assert table.loc["CVE-2099-0001", "risk"] == pytest.approx(7.5 * 1.1)
    assert table.loc["CVE-2099-0002", "risk"] == pytest.approx(7.5 * 2 * 1.1)
    # CVE-2099-0005 (CVSS 8.8, no EPSS) sits between: 8.8 > 7.5 * 1.1
    assert vuln.device_worklist(table.reset_index())["cve"].tolist() == ["CVE-2099-0002", "CVE-2099-0005",
                                                                         "CVE-2099-0001"]


def test_exposure_evidence_raises_the_rank(feed_tables):
    seen = exposure_table("2019-07-01", [(HUB_A, "inbound_from_internet", ["203.0.113.9 -> device:80"])])
    table = day_table(feed_tables, "2019-07-01", [HUB_A, HUB_B], exposure=seen).set_index(["device_mac", "cve"])
    exposed = table.loc[(HUB_A, "CVE-2099-0001")]
    assert exposed["exposed"] and "inbound_from_internet on port 80" in exposed["evidence"]
    assert "203.0.113.9 -> device:80" in exposed["evidence"]
    assert not table.loc[(HUB_B, "CVE-2099-0001"), "exposed"]
    assert exposed["risk"] == pytest.approx(table.loc[(HUB_B, "CVE-2099-0001"), "risk"] * vuln.EXPOSED_WEIGHT)
    assert table.loc[(HUB_A, "CVE-2099-0002"), "evidence"].startswith("reachable from the Internet")
    assert not table.loc[(HUB_A, "CVE-2099-0005"), "exposed"]  # adjacent network only
    assert vuln.device_worklist(table.reset_index())["device_mac"].iloc[0] == HUB_A


def test_a_cve_naming_a_port_is_exposed_only_on_that_port(feed_tables):
    seen = exposure_table("2019-07-01", [(HUB_A, "inbound_from_internet", ["203.0.113.9 -> device:443"])])
    table = day_table(feed_tables, "2019-07-01", [HUB_A], exposure=seen).set_index("cve")
    assert not table.loc["CVE-2099-0001", "exposed"] and table.loc["CVE-2099-0001", "evidence"] == ""
    assert table.loc["CVE-2099-0002", "exposed"]


def test_a_lasting_behaviour_change_after_publication_is_stated(feed_tables):
    changes = pd.DataFrame({"device_mac": [HUB_A], "change_day": ["2019-06-15"]})
    table = day_table(feed_tables, "2019-07-01", [HUB_A], behaviour_changes=changes).set_index("cve")
    assert ("lasting behaviour change from 2019-06-15, after the CVE was published on 2019-05-01"
            in table.loc["CVE-2099-0001", "evidence"])
    assert (table["status"] == "open").all()


def test_lifecycle_open_acknowledged_resolved(feed_tables):
    ack = pd.DataFrame({"device_mac": [HUB_A], "from_day": ["2019-07-02"]})
    day1 = day_table(feed_tables, "2019-07-01", [HUB_A], acknowledgements=ack)
    assert (day1["status"] == "open").all() and (day1["days_open"] == 0).all() and day1["new_today"].all()
    assert (day1["first_seen"] == "2019-07-01").all()
    day2 = day_table(feed_tables, "2019-07-02", [HUB_A], day1, acknowledgements=ack)
    assert (day2["status"] == "acknowledged").all() and (day2["days_open"] == 1).all()
    assert not day2["new_today"].any()
    day3 = day_table(feed_tables, "2019-07-03", [HUB_B], day2, acknowledgements=ack)
    gone = day3[day3["device_mac"] == HUB_A]
    assert (gone["status"] == "resolved").all() and (gone["resolved_on"] == "2019-07-03").all()
    assert (gone["resolution"] == "device gone: not in the inventory of 2019-07-03").all()
    assert (gone["days_open"] == 2).all()
    assert (day3.loc[day3["device_mac"] == HUB_B, "status"] == "open").all()
    day4 = day_table(feed_tables, "2019-07-04", [HUB_B], day3, acknowledgements=ack)
    still = day4[day4["device_mac"] == HUB_A]
    assert (still["status"] == "resolved").all() and (still["resolved_on"] == "2019-07-03").all()
    assert (still["days_open"] == 2).all() and (still["day"] == "2019-07-04").all()
    assert (day4.loc[day4["device_mac"] == HUB_B, "days_open"] == 1).all()
    day5 = day_table(feed_tables, "2019-07-05", [HUB_A, HUB_B], day4, acknowledgements=ack)
    back = day5[day5["device_mac"] == HUB_A]
    assert (back["status"] == "acknowledged").all() and back["new_today"].all()
    assert (back["first_seen"] == "2019-07-01").all() and (back["days_open"] == 4).all()
    assert back["resolved_on"].isna().all()


def test_a_firmware_update_past_the_fix_resolves_the_finding(feed_tables):
    before = pd.DataFrame({"device_mac": [HUB_A], "firmware_version": ["2.3.0"]})
    after = pd.DataFrame({"device_mac": [HUB_A], "firmware_version": ["2.4.1"]})
    day1 = day_table(feed_tables, "2019-07-01", [HUB_A], firmware=before)
    day2 = day_table(feed_tables, "2019-07-02", [HUB_A], day1, firmware=after).set_index("cve")
    assert day2.loc["CVE-2099-0001", "status"] == "resolved"
    assert day2.loc["CVE-2099-0001", "resolution"] == ("firmware changed: not affected (firmware 2.4.1), "
                                                       "outside the affected range")
    assert day2.loc["CVE-2099-0002", "status"] == "open"
    assert day2.loc["CVE-2099-0001", "remediation"] == "Update the firmware to version 2.4.0 or later."
    assert day2.loc["CVE-2099-0005", "remediation"] == "Update the firmware to a version later than 2.9."


def test_acknowledging_one_cve_leaves_the_others_open(feed_tables):
    ack = pd.DataFrame({"device_mac": [HUB_A], "from_day": ["2019-07-01"], "cve": ["CVE-2099-0005"]})
    table = day_table(feed_tables, "2019-07-01", [HUB_A], acknowledgements=ack).set_index("cve")
    assert table["status"].to_dict() == {"CVE-2099-0001": "open", "CVE-2099-0002": "open",
                                         "CVE-2099-0005": "acknowledged"}


def test_vulnerabilities_json_orders_devices_and_findings_by_risk(feed_tables):
    seen = exposure_table("2019-07-01", [(HUB_A, "inbound_from_internet", ["203.0.113.9 -> device:80"])])
    firmware = pd.DataFrame({"device_mac": [HUB_B], "firmware_version": ["2.3.0"]})
    day1 = day_table(feed_tables, "2019-07-01", [HUB_A, HUB_B], exposure=seen, firmware=firmware)
    firmware2 = firmware.assign(firmware_version="2.5")
    day2 = day_table(feed_tables, "2019-07-02", [HUB_A, HUB_B], day1, firmware=firmware2)
    report = json.loads(json.dumps(vuln.vulnerabilities_json(day1)))
    assert [d["mac"] for d in report] == [HUB_A, HUB_B]
    assert [f["cve"] for f in report[0]["findings"]] == ["CVE-2099-0002", "CVE-2099-0001", "CVE-2099-0005"]
    assert report[0]["cpe"] == [HUB_CPE] and report[0]["device"] == "Lamp Hub"
    first = report[0]["findings"][0]
    assert {k: first[k] for k in ("cvss", "kev", "epss", "exposed", "status", "first_seen")} == {
        "cvss": 7.5, "kev": True, "epss": 0.1, "exposed": True, "status": "open", "first_seen": "2019-07-01"}
    later = vuln.vulnerabilities_json(day2)
    b_findings = next(d for d in later if d["mac"] == HUB_B)["findings"]
    assert [(f["cve"], f["status"]) for f in b_findings] == [
        ("CVE-2099-0002", "open"), ("CVE-2099-0005", "open"), ("CVE-2099-0001", "resolved")]


def test_line_worklist_puts_the_riskiest_line_first(feed_tables):
    seen = exposure_table("2019-07-01", [(HUB_B, "inbound_from_internet", ["203.0.113.9 -> device:80"])])
    lines = pd.DataFrame({"device_mac": [HUB_A, HUB_B], "line": ["line-7", "line-9"]})
    table = day_table(feed_tables, "2019-07-01", [HUB_A, HUB_B], exposure=seen, lines=lines)
    work = vuln.line_worklist(table)
    assert work["line"].tolist() == ["line-9"] * 3 + ["line-7"] * 3
    assert work["line_risk"].iloc[0] == pytest.approx(table.loc[table["line"] == "line-9", "risk"].sum())


def test_line_notice_names_the_device_and_what_to_do(feed_tables):
    seen = exposure_table("2019-07-01", [(HUB_A, "inbound_from_internet", ["203.0.113.9 -> device:80"])])
    lines = pd.DataFrame({"device_mac": [HUB_A], "line": ["line-7"]})
    table = day_table(feed_tables, "2019-07-01", [HUB_A], exposure=seen, lines=lines)
    notice = vuln.line_notice_markdown(table, "line-7")
    assert notice.startswith("# Security notice for your Internet line line-7")
    assert f"## Lamp Hub ({HUB_A})" in notice and "**Risk: very high.**" in notice
    assert "- Update the firmware to version 2.4.0 or later." in notice
    assert "Criminals are already using" in notice and "can be reached from the Internet" in notice
    assert "CVE-2099-0002" in notice
    page = vuln.notice_html(notice, "Security notice for line-7")
    assert f"<h2>Lamp Hub ({HUB_A})</h2>" in page
    assert "<li>Update the firmware to version 2.4.0 or later.</li>" in page
    assert "No action is needed" in vuln.line_notice_markdown(table, "line-8")


def test_the_table_carries_through_parquet_as_the_previous_day(feed_tables, tmp_path):
    lines = pd.DataFrame({"device_mac": [HUB_A], "line": ["line-7"]})
    day1 = day_table(feed_tables, "2019-07-01", [HUB_A], lines=lines)
    day1.to_parquet(tmp_path / "day1.parquet")
    stored = pd.read_parquet(tmp_path / "day1.parquet")
    day2 = day_table(feed_tables, "2019-07-02", [], stored)
    assert (day2["status"] == "resolved").all() and (day2["days_open"] == 1).all()
    assert (day2["line"] == "line-7").all() and (day2["first_seen"] == "2019-07-01").all()
    day2.to_parquet(tmp_path / "day2.parquet")
    day3 = day_table(feed_tables, "2019-07-03", [HUB_A], pd.read_parquet(tmp_path / "day2.parquet"))
    assert (day3["status"] == "open").all() and day3["new_today"].all() and (day3["days_open"] == 2).all()
    assert (day3["line"] == "line-7").all()


def test_report_section_counts_new_and_resolved_findings(feed_tables):
    firmware = pd.DataFrame({"device_mac": [HUB_A], "firmware_version": ["2.3.0"]})
    day1 = day_table(feed_tables, "2019-07-01", [HUB_A], firmware=firmware)
    day2 = day_table(feed_tables, "2019-07-02", [HUB_A, HUB_B], day1, firmware=firmware.assign(firmware_version="2.5"))
    assert vuln.day_summary(day2) == {"open": 5, "acknowledged": 0, "new_today": 3, "resolved_today": 1, "kev": 2,
                                      "exposed": 0, "devices": 2}
    section = vuln.report_section_markdown(day2)
    assert "5 open and 0 acknowledged findings on 2 devices" in section and "3 new and 1 resolved today" in section
    assert "Resolved today:" in section and "firmware changed: not affected (firmware 2.5)" in section
