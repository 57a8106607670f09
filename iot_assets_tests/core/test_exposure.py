"""Exposure findings: each kind from flows (and the nearest flows that are not it), advisories,
history across days, scores, the report section, the metrics, and the asset with its checks."""

import json
import re
from datetime import timedelta

import dagster as dg
import pandas as pd
import pytest

from iot_assets.contracts import catalogue
from iot_assets.contracts.schemas import CleanFlows
from iot_assets.core import exposure, exposure_json, exposure_metrics
from iot_assets.core.archive import find_archives
from iot_assets.core.clean import to_device_centric
from iot_assets.core.ingest import decode_archive
from iot_assets.defs.partitions import Partitions
from iot_assets.reports.exposure import (
    exposure_section_html,
    fleet_view_html,
    worklist_markdown,
)
from iot_assets.synthetic import sample
from iot_assets.synthetic.inject import EXPOSURE_EPISODE_TYPES, inject, read_episodes
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY

REMO = catalogue.BY_ARCHIVE["nature_remo"]
HUE = catalogue.BY_ARCHIVE["philips_hue_bridge"]
S, SA, A, AP, RA = 0x02, 0x12, 0x10, 0x18, 0x14


def flow(**overrides) -> dict:
    """A device-centric flow: by default the device opens TCP 443 to a cloud server, answered."""
    row = {
        "archive": "nature_remo", "line_number": 1,
        "flow_start": pd.Timestamp("2019-07-01 10:00:00", tz="UTC"),
        "flow_end": pd.Timestamp("2019-07-01 10:00:02", tz="UTC"), "duration_ms": 2000, "rtt_ms": 20,
        "device_key": REMO.mac, "device_name": REMO.name, "device_category": REMO.category, "in_catalogue": True,
        "device_ip": "192.168.1.225", "device_port": 40000, "remote_ip": "52.1.2.3",
        "remote_mac": catalogue.GATEWAY_MAC, "remote_port": 443, "remote_scope": "internet", "device_initiated": True,
        "protocol": 6, "ip_version": 4, "end_reason": "idle", "has_flow_stats": True, "identity": "mac", "sampling_rate": 1,
        "bytes_out": 600, "bytes_in": 1500, "packets_out": 6, "packets_in": 5,
        "initial_tcp_flags_out": S, "initial_tcp_flags_in": SA, "union_tcp_flags_out": AP | S,
        "union_tcp_flags_in": AP | S,
    }
    for name in ("payload_bytes", "non_empty_packets", "small_packets", "large_packets", "max_payload_bytes",
                 "first_payload_bytes", "stddev_payload_bytes"):
        row[f"{name}_out"], row[f"{name}_in"] = 0, 0
    row["mean_interarrival_ms_out"], row["mean_interarrival_ms_in"] = 0.0, 0.0
    row.update(overrides)
    row.setdefault("device_mac", row["device_key"] if row["identity"] == "mac" else None)
    return row


def flows(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))  # test_case_flows_keep_the_clean_contract validates them, once


def kinds_of(*rows: dict, **kw) -> set[str]:
    return set(exposure.flow_findings(flows(*rows), **kw)["kind"])


# The peer opens a TCP connection to the device (SYN), the device answers (SYN+ACK).
INBOUND = dict(device_initiated=False, initial_tcp_flags_in=S, initial_tcp_flags_out=SA, remote_port=51000)
# The device's UDP service answers a request from an Internet peer.
UDP_ANSWER = dict(protocol=17, device_initiated=False, remote_port=51000, initial_tcp_flags_in=0,
                  initial_tcp_flags_out=0, union_tcp_flags_in=0, union_tcp_flags_out=0)
UDP_OUT = dict(protocol=17, initial_tcp_flags_in=0, initial_tcp_flags_out=0, union_tcp_flags_in=0,
               union_tcp_flags_out=0, packets_out=1, packets_in=1)

# kind, a flow that is it, the nearest flow that is not.
CASES = [
    ("cleartext_http", dict(remote_port=80), dict(remote_port=443)),
    ("cleartext_http", dict(remote_port=8080), dict(remote_port=80, remote_scope="lan", remote_ip="192.168.1.202")),
    ("cleartext_http", dict(remote_port=80), dict(remote_port=80, packets_in=0, initial_tcp_flags_in=0)),  # unanswered
    ("cleartext_mqtt", dict(remote_port=1883), dict(remote_port=8883)),
    ("telnet", dict(remote_port=23), dict(remote_port=23, packets_in=1, initial_tcp_flags_in=RA)),  # refused
    ("telnet", dict(device_port=23, **INBOUND), dict(remote_port=23, packets_out=1, packets_in=0,
                                                     initial_tcp_flags_in=0)),  # a scan's probe
    ("ftp", dict(remote_port=21), dict(remote_port=22)),
    ("rtsp", dict(remote_port=554), dict(remote_port=5540)),
    ("tftp", dict(remote_port=69, **UDP_OUT), dict(remote_port=69, remote_scope="gateway",
                                                   remote_ip=catalogue.GATEWAY_IP, **UDP_OUT)),
    ("upnp_ssdp_internet", dict(remote_port=1900, **UDP_OUT),
     dict(remote_port=1900, remote_scope="multicast", remote_ip="239.255.255.250", **UDP_OUT)),
    ("hardcoded_dns", dict(remote_port=53, remote_ip="8.8.8.8", **UDP_OUT),
     dict(remote_port=53, remote_ip=catalogue.GATEWAY_IP, remote_scope="gateway", **UDP_OUT)),
    ("dns_over_tls", dict(remote_port=853, remote_ip="1.1.1.1"), dict(remote_port=443, remote_ip="1.1.1.1")),
    ("inbound_from_internet", dict(device_port=8080, **INBOUND),
     # A long outbound connection cut by YAF's active timeout: its next record starts with the
     # server's packet, ACK+PSH, never a bare SYN.
     dict(device_port=40000, remote_port=443, device_initiated=False, initial_tcp_flags_in=AP,
          initial_tcp_flags_out=AP, end_reason="active", duration_ms=1_799_999)),
    ("inbound_from_internet", dict(device_port=8080, **INBOUND),
     dict(device_port=8080, **{**INBOUND, "initial_tcp_flags_out": RA})),  # closed port
    ("udp_reflector", dict(device_port=1900, **UDP_ANSWER),
     # Xiaomi's cloud answers first on its long UDP conversation to the device's port 54321.
     dict(device_port=54321, **{**UDP_ANSWER, "remote_port": 8053})),
    ("udp_reflector", dict(device_port=123, **UDP_ANSWER), dict(device_port=123, **{**UDP_ANSWER, "packets_out": 0})),
]


def test_case_flows_keep_the_clean_contract():
    CleanFlows.validate(flows(*[flow(**case) for _, positive, negative in CASES for case in (positive, negative)]))


@pytest.mark.parametrize("kind, positive, negative", CASES,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_each_kind_has_its_flow_and_not_the_nearest_other(kind, positive, negative):
    assert kind in kinds_of(flow(**positive))
    assert kind not in kinds_of(flow(**negative))


def test_findings_count_flows_bytes_peers_and_show_examples():
    rows = [flow(remote_ip=f"203.0.113.{i % 7}", device_port=23, bytes_out=100, bytes_in=50, **INBOUND)
            for i in range(12)]
    found = exposure.flow_findings(flows(*rows)).set_index("kind")
    assert set(found.index) == {"telnet", "inbound_from_internet"}
    telnet = found.loc["telnet"]
    assert (telnet["flows"], telnet["bytes"], telnet["remote_peers"], telnet["severity"]) == (12, 1800, 7, "high")
    assert len(telnet["evidence"]) == 5 and telnet["evidence"][0] == "203.0.113.0 -> device:23"


def test_isp_resolvers_are_not_hardcoded_dns():
    dns = flow(remote_port=53, remote_ip="210.196.3.183", **UDP_OUT)
    assert "hardcoded_dns" in kinds_of(dns)
    assert "hardcoded_dns" not in kinds_of(dns, isp_resolvers=frozenset({"210.196.3.183"}))


def test_rule_table_covers_every_kind_once():
    assert [r.kind for r in exposure.RULES] + ["known_advisory"] == list(exposure.KINDS)
    assert len(set(exposure.KINDS)) == len(exposure.KINDS)
    assert all(r.severity in exposure.SEVERITIES and r.evidence in exposure.EVIDENCE for r in exposure.RULES)


def test_rules_coverage_counts_flows_no_rule_or_service_explains():
    udp = {k: v for k, v in UDP_OUT.items() if k != "protocol"}
    rows = [flow(remote_port=443)] * 3 + [flow(protocol=17, remote_port=16053, **udp)] * 5 \
        + [flow(protocol=17, remote_port=8053, **udp)] * 2 + [flow(protocol=1, remote_port=3, device_port=1)] \
        + [flow(protocol=17, remote_port=123, device_port=123, **udp)]
    coverage = exposure.rules_coverage(flows(*rows)).set_index("device_key").loc[REMO.mac]
    # Xiaomi's cloud port (8053) is known; after a firmware change moves it to 16053 it is not.
    assert coverage["internet_flows"] == 12 and coverage["unexplained_flows"] == 5
    assert coverage["unexplained_share"] == pytest.approx(5 / 12) and coverage["unexplained_ports"] == "udp/16053 (5)"
    # An amplification port explains a flow only on the rule's side (the device's): to a relay it does not.
    relay = flows(flow(protocol=17, remote_port=3702, device_port=40000, **udp))
    assert exposure.rules_coverage(relay)["unexplained_flows"].tolist() == [1]


# ---------------------------------------------------------------- advisories


def test_shipped_advisories_are_valid_and_name_public_records():
    advisories, problems = exposure.read_advisories(exposure.DEFAULT_ADVISORIES)
    assert problems == []
    assert set(advisories["model"]) <= {d.name for d in catalogue.DEVICES}
    for row in advisories.itertuples():
        assert re.fullmatch(r"CVE-\d{4}-\d{4,}", row.advisory_id)
        assert row.url == f"https://www.cve.org/CVERecord?id={row.advisory_id}"
        assert row.severity in exposure.SEVERITIES and re.fullmatch(r"\d{4}-\d{2}-\d{2}", row.checked_date)


def test_bad_advisory_records_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_text("vendor,model,advisory_id,severity,title,url,checked_date\n"
                    "V,Qrio Hub,ADV-1,critical,t,https://example.org/1,2024-01-01\n"
                    "V,Qrio Hub,ADV-2,severe,t,https://example.org/2,2024-01-01\n"
                    "V,,ADV-3,low,t,https://example.org/3,2024-01-01\n")
    advisories, problems = exposure.read_advisories(path)
    assert advisories[["advisory_id", "severity"]].values.tolist() == [["ADV-1", "high"]]
    assert problems == [f"{path} line 3: severity 'severe' is not one of low, medium, high, critical",
                        f"{path} line 4: empty model"]
    (tmp_path / "bad.csv").write_text("vendor,model\nV,M\n")
    with pytest.raises(ValueError, match="bad.csv: advisories file lacks column"):
        exposure.read_advisories(tmp_path / "bad.csv")


def test_known_advisory_joins_the_predicted_model():
    advisories, _ = exposure.read_advisories(exposure.DEFAULT_ADVISORIES)
    inventory = pd.DataFrame({"device_key": [HUE.mac, REMO.mac, "02:00:00:00:00:01"],
                              "predicted_device": ["philips hue bridge", "Nature Remo", None]})
    found = exposure.advisory_findings(inventory, advisories)
    assert found["device_key"].tolist() == [HUE.mac] and found["severity"].tolist() == ["high"]
    ids = [e.split()[0] for e in found["evidence"].iloc[0]]
    assert sorted(ids) == sorted(advisories["advisory_id"])
    # The join is on the prediction, not the catalogue: a MAC predicted to be the bridge gets it too.
    day = exposure.day_findings(flows(flow()), inventory.assign(device_key=[REMO.mac, HUE.mac, "x"]), advisories)
    assert day.loc[day["kind"] == "known_advisory", ["device_key", "device"]].values.tolist() == \
        [[REMO.mac, REMO.name]]


# ---------------------------------------------------------------- history, scores, worklist


def _day(findings: list[tuple[str, str]]) -> pd.DataFrame:
    rows = [{"device_key": mac, "device": None, "predicted_device": None, "kind": kind,
             "severity": exposure.RULES_BY_KIND[kind].severity, "flows": 1, "bytes": 10, "remote_peers": 1,
             "evidence": ["198.51.100.1:80"]} for mac, kind in findings]
    return pd.DataFrame(rows, columns=exposure.FINDING_COLUMNS)


def test_first_seen_is_carried_across_days_and_gaps():
    mac = REMO.mac
    d1 = exposure.carry_history(None, _day([(mac, "cleartext_http")]), "2019-07-01", {mac: "gw"})
    d2 = exposure.carry_history(d1, _day([(mac, "telnet")]), "2019-07-02", {mac: "gw"})
    d3 = exposure.carry_history(d2, _day([(mac, "cleartext_http"), (mac, "telnet")]), "2019-07-03", {mac: "gw"})
    assert d1[["kind", "first_seen", "new_today", "seen_today"]].values.tolist() == [
        ["cleartext_http", "2019-07-01", True, True]]
    by_kind = d2.set_index("kind")
    assert by_kind.loc["cleartext_http", ["seen_today", "first_seen", "flows"]].tolist() == [False, "2019-07-01", 0]
    assert by_kind.loc["telnet", ["seen_today", "new_today", "first_seen"]].tolist() == [True, True, "2019-07-02"]
    by_kind = d3.set_index("kind")
    # Not seen on 07-02, seen again on 07-03: not new, first seen on 07-01, two days so far.
    assert by_kind.loc["cleartext_http", ["new_today", "first_seen", "last_seen", "days_seen"]].tolist() == [
        False, "2019-07-01", "2019-07-03", 2]
    assert by_kind.loc["telnet", ["new_today", "first_seen", "days_seen"]].tolist() == [False, "2019-07-02", 2]
    assert (d3["day"] == "2019-07-03").all() and (d3["line"] == "gw").all()
    assert exposure.new_high_findings(d2)["kind"].tolist() == ["telnet"]
    assert exposure.new_high_findings(d3).empty


def test_scores_are_monotone_sums_of_the_weights():
    a, b = REMO.mac, HUE.mac
    base = exposure.carry_history(None, _day([(a, "cleartext_http"), (b, "hardcoded_dns")]), "2019-07-01",
                                  {a: "line-1", b: "line-1"})
    more = exposure.carry_history(None, _day([(a, "cleartext_http"), (a, "telnet"), (b, "hardcoded_dns")]),
                                  "2019-07-01", {a: "line-1", b: "line-1"})
    w = exposure.SEVERITY_WEIGHTS
    scores = exposure.device_scores(more).set_index("device_key")["score"]
    assert scores[a] == w["low"] + w["high"] and scores[b] == w["low"]
    assert (exposure.device_scores(base).set_index("device_key")["score"].reindex(scores.index) <= scores).all()
    lines = exposure.line_scores(more)
    assert lines[["line", "score"]].values.tolist() == [["line-1", 2 * w["low"] + w["high"]]]
    assert exposure.worklist(more)[["device_key", "kind"]].values.tolist() == [
        [a, "telnet"], [a, "cleartext_http"], [b, "hardcoded_dns"]]


def test_device_lines_follow_the_gateway_or_a_given_table():
    two = flows(flow(), flow(device_key=HUE.mac, remote_scope="gateway", remote_ip=catalogue.GATEWAY_IP))
    assert exposure.device_lines(two) == {REMO.mac: f"gateway {catalogue.GATEWAY_MAC}",
                                          HUE.mac: f"gateway {catalogue.GATEWAY_MAC}"}
    assert exposure.device_lines(two, {REMO.mac: "line 7"}) == {REMO.mac: "line 7", HUE.mac: "unknown"}


def test_exposure_json_has_the_documented_structure():
    mac = REMO.mac
    d1 = exposure.carry_history(None, _day([(mac, "hardcoded_dns")]), "2019-07-01", {mac: "gw"})
    d2 = exposure.carry_history(d1, _day([(mac, "hardcoded_dns"), (mac, "telnet")]), "2019-07-02", {mac: "gw"})
    # The incidents that explained a finding on any of its days (iot_assets.core.exposure_incidents), once each.
    d1 = d1.assign(explained_by_incident=["2019-07-01-a1b2"])
    d2 = d2.assign(explained_by_incident=["2019-07-01-a1b2, 2019-07-02-c3d4", None])
    report = exposure_json.exposure_json(pd.concat([d1, d2]))
    assert report["day_range"] == ["2019-07-01", "2019-07-02"]
    (device,) = report["devices"]
    assert device["device_key"] == mac and device["score"] == 11.0
    assert [(f["kind"], f["first_seen"], f["last_seen"], f["days"], f["flows"]) for f in device["findings"]] == [
        ("telnet", "2019-07-02", "2019-07-02", 1, 1), ("hardcoded_dns", "2019-07-01", "2019-07-02", 2, 2)]
    assert [f["explained_by_incident"] for f in device["findings"]] == [
        [], ["2019-07-01-a1b2", "2019-07-02-c3d4"]]
    assert report["lines"] == [{"line": "gw", "score": 11.0, "devices": [mac]}]
    json.dumps(report)  # plain JSON types only


# ---------------------------------------------------------------- reports


def test_report_section_and_fleet_view_render():
    a, b = REMO.mac, HUE.mac
    d1 = exposure.carry_history(None, _day([(b, "hardcoded_dns")]), "2019-07-01", {a: "gw", b: "gw"})
    d2 = exposure.carry_history(d1, _day([(a, "telnet"), (b, "hardcoded_dns")]), "2019-07-02", {a: "gw", b: "gw"})
    history = pd.concat([d1, d2])
    html_text = exposure_section_html(exposure.worklist(d2), exposure.findings_per_day(history),
                                      exposure.line_scores(d2[d2["seen_today"]]))
    assert html_text.startswith("<h2>Exposure</h2>")
    assert html_text.count("<tr class=flag>") == 1  # the new telnet finding
    assert html_text.count("<rect ") == 3 + 4  # 07-01 low; 07-02 low + high; four legend boxes
    assert "198.51.100.1:80" in html_text and "<svg" in html_text and "</svg>" in html_text
    markdown = worklist_markdown(exposure.worklist(d2))
    assert markdown.splitlines()[0].startswith("| score | device | kind |")
    assert len(markdown.splitlines()) == 2 + 2 and "| telnet | high |" in markdown
    inventory = pd.DataFrame({"device_key": [a, b, "02:00:00:00:00:09"],
                              "predicted_device": ["Nature Remo", "Philips Hue Bridge", "Qrio Hub"]})
    by_model, shares = exposure.fleet_view(history, inventory)
    assert shares.set_index("kind")["share"].to_dict() == pytest.approx({"telnet": 1 / 3, "hardcoded_dns": 1 / 3})
    fleet = fleet_view_html(by_model, shares)
    assert "33%" in fleet and "Philips Hue Bridge" in fleet and "Nature Remo" in fleet
    assert worklist_markdown(exposure.worklist(exposure.empty_exposure())) == "No exposure finding today."


# ---------------------------------------------------------------- ground truth metrics


def test_metrics_count_device_days_and_the_delay():
    a, b = REMO.mac, HUE.mac
    tables, previous = [], None
    plan = {"2019-07-01": [(b, "hardcoded_dns")], "2019-07-02": [(b, "hardcoded_dns")],
            "2019-07-03": [(b, "hardcoded_dns"), (b, "telnet")],  # a false telnet on the bridge
            "2019-07-04": [(a, "telnet"), (b, "hardcoded_dns")], "2019-07-05": [(a, "telnet")]}
    for day, found in plan.items():
        previous = exposure.carry_history(previous, _day(found).assign(device=lambda t: t["device_key"].map(
            {a: REMO.name, b: HUE.name})), day, {})
        tables.append(previous)
    findings = pd.concat(tables)
    episodes = pd.DataFrame({"device": [REMO.name, REMO.name], "type": ["open_telnet", "dns_hijack"],
                             "start": pd.to_datetime(["2019-07-03 18:00", "2019-07-05 01:00"], utc=True),
                             "end": pd.to_datetime(["2019-07-06 00:00", "2019-07-06 00:00"], utc=True)})
    metrics = exposure_metrics.exposure_metrics(findings, episodes)
    telnet = metrics["kinds"]["telnet"]
    # Truth: Remo on 07-03, 07-04, 07-05; flagged on 07-04 and 07-05 (a day late); the bridge's 07-03 is false.
    assert (telnet["true_positive_days"], telnet["missed_days"], telnet["false_positive_days"]) == (2, 1, 1)
    assert telnet["recall"] == pytest.approx(2 / 3) and telnet["precision"] == pytest.approx(2 / 3)
    assert telnet["false_positive_devices"] == [b] and telnet["delays"][0]["delay_days"] == 1
    dns = metrics["kinds"]["hardcoded_dns"]
    # The bridge had it before any episode began: its own exposure, not a false alarm.
    assert metrics["pre_existing"] == [f"{b} hardcoded_dns"]
    assert (dns["pre_existing_days"], dns["false_positive_days"], dns["recall"]) == (4, 0, 0.0)
    assert dns["delays"][0]["first_flagged_day"] is None


# ---------------------------------------------------------------- end to end on generated archives


def _clean_days(archive_dir, tmp_path) -> dict[str, pd.DataFrame]:
    archives, _ = find_archives(archive_dir)
    frames, macs = [], {}
    for archive in archives:
        summary = decode_archive(archive, tmp_path / "staged" / archive.name, FIRST_DAY, LAST_DAY)
        macs[archive.name] = summary.local_mac
        frames.append(pd.read_parquet(tmp_path / "staged" / archive.name / "flows.parquet"))
    clean, _ = to_device_centric(pd.concat(frames, ignore_index=True), macs)
    days = clean["flow_start"].dt.strftime("%Y-%m-%d")
    return {day: clean[days == day].reset_index(drop=True) for day in sorted(days.unique())}


def _inventory(day_flows: pd.DataFrame, day: str) -> pd.DataFrame:
    macs = day_flows["device_key"].unique()
    names = [catalogue.BY_MAC[m].name for m in macs]
    return pd.DataFrame({"day": day, "device_key": macs, "windows": 24, "predicted_device": names,
                         "predicted_category": None, "confidence": 0.9, "runner_up": None,
                         "runner_up_confidence": 0.1, "catalogue_device": names, "in_catalogue": True,
                         "disagrees": False})


@pytest.mark.slow
def test_injected_exposure_episodes_are_found_on_their_days(tmp_path):
    raw = tmp_path / "raw"
    sample.generate(raw, FIRST_DAY, 10, scale=0.03, seed=3, devices=["nature_remo", "xiaomi_mijia_led"])
    archives, _ = find_archives(raw)
    out = tmp_path / "injected"
    remo = next(a for a in archives if a.name == "nature_remo")
    xiaomi = next(a for a in archives if a.name == "xiaomi_mijia_led")
    inject(remo, out, seed=1, types=("open_telnet", "dns_hijack", "scan"))
    inject(xiaomi, out, seed=1, types=("reflector",))
    (out / "episodes.csv").rename(tmp_path / "episodes.csv")
    previous, tables = None, []
    for day, day_flows in _clean_days(out, tmp_path).items():
        today = exposure.day_findings(day_flows, _inventory(day_flows, day), pd.DataFrame())
        previous = exposure.carry_history(previous, today, day, exposure.device_lines(day_flows))
        tables.append(previous)
    findings = pd.concat(tables)
    metrics = exposure_metrics.exposure_metrics(findings, read_episodes(tmp_path / "episodes.csv", EXPOSURE_EPISODE_TYPES))
    for kind in ("telnet", "inbound_from_internet", "udp_reflector", "upnp_ssdp_internet", "hardcoded_dns"):
        result = metrics["kinds"][kind]
        assert result["recall"] == 1.0 and result["precision"] == 1.0, (kind, result)
        assert all(d["delay_days"] == 0 for d in result["delays"])
    # Xiaomi's real-looking TCP 80 line to its cloud is its own exposure, from the first day on.
    assert f"{catalogue.BY_ARCHIVE['xiaomi_mijia_led'].mac} cleartext_http" in metrics["pre_existing"]


# ---------------------------------------------------------------- the asset and its checks


def _write_day(data, asset: str, day: str, frame: pd.DataFrame) -> None:
    from iot_assets.io.lake import parquet_bytes

    path = data / "lake" / asset / f"day={day}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(parquet_bytes(frame.drop(columns=["day"], errors="ignore")))


@pytest.mark.slow
def test_asset_flags_a_new_open_telnet_port_on_the_day_it_opens(tmp_path, monkeypatch):
    from iot_assets_tests.support.definitions import assets_for, resources_for, settings_for

    built = assets_for()
    device_exposure, exposure_report = built.device_exposure, built.exposure_report
    daily_partitions = Partitions.from_settings(settings_for(tmp_path)).daily

    raw = tmp_path / "raw"
    sample.generate(raw, FIRST_DAY, 4, scale=0.02, seed=5, devices=["nature_remo", "philips_hue_bridge"])
    archives, _ = find_archives(raw)
    remo = next(a for a in archives if a.name == "nature_remo")
    _, (episode,) = inject(remo, tmp_path / "injected", seed=2, types=("open_telnet",))
    for archive in archives:
        if archive.name != "nature_remo":
            (tmp_path / "injected" / archive.parts[0].name).write_bytes(archive.parts[0].read_bytes())
    data = tmp_path / "data"
    days = _clean_days(tmp_path / "injected", tmp_path)
    for day, day_flows in days.items():
        _write_day(data, "clean_flows", day, day_flows)
        _write_day(data, "device_inventory", day, _inventory(day_flows, day))
    monkeypatch.delenv("IOT_ASSETS_ADVISORIES", raising=False)
    sources = [dg.AssetSpec(key, partitions_def=daily_partitions).with_io_manager_key("lake_io_manager")
               for key in ("clean_flows", "device_inventory", "anomaly_incidents")]
    resources = resources_for(data, IOT_ASSETS_EPISODES=str(tmp_path / "injected" / "episodes.csv"))
    instance = dg.DagsterInstance.ephemeral()
    opened = episode.start.strftime("%Y-%m-%d")
    outcomes = {}
    for day in days:
        result = dg.materialize([device_exposure, *sources], partition_key=day, resources=resources,
                                instance=instance)
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        outcomes[day] = checks["no_new_high_exposure"].passed
        table = pd.read_parquet(data / "lake" / "device_exposure" / f"day={day}" / "part-0.parquet")
        hue = table[table["device_key"] == HUE.mac]
        assert hue["kind"].tolist() == ["known_advisory"] and hue["first_seen"].iloc[0] == str(FIRST_DAY)
        if day == opened:
            new = checks["no_new_high_exposure"]
            assert "telnet" in new.description and "inbound_from_internet" in new.description
            metadata = result.asset_materializations_for_node("device_exposure")[0].metadata
            rows = [r.data for r in metadata["worklist"].records]
            assert {"day": day, "finding": "telnet", "severity": "high", "since": opened, "change": "new"}.items() <= \
                next(r for r in rows if r["finding"] == "telnet").items()
        if day >= opened:
            telnet = table[(table["kind"] == "telnet") & table["seen_today"]]
            assert telnet["first_seen"].tolist() == [opened]
        assert checks["exposure_rules_cover_traffic"].passed
    # The first day is the baseline (the bridge's advisory is high, but there is nothing to compare with);
    # the check fails on the day telnet opens and on no other.
    assert outcomes == {day: day != opened for day in days}
    assert opened > str(FIRST_DAY) and str(FIRST_DAY + timedelta(days=3)) in days

    report_source = dg.AssetSpec("device_exposure", partitions_def=daily_partitions).with_io_manager_key(
        "lake_io_manager")
    dg.materialize([exposure_report, report_source], resources=resources, instance=instance)
    report = json.loads((data / "reports" / "exposure.json").read_text())
    assert report["day_range"] == [min(days), max(days)]
    remo = next(d for d in report["devices"] if d["device_key"] == REMO.mac)
    assert {f["kind"]: f["first_seen"] for f in remo["findings"]} == {"telnet": opened, "inbound_from_internet": opened}
    metrics = json.loads((data / "reports" / "exposure_metrics.json").read_text())
    assert metrics["kinds"]["telnet"]["recall"] == 1.0 and metrics["kinds"]["telnet"]["precision"] == 1.0
    assert metrics["kinds"]["udp_reflector"]["flagged_days"] == 0


@pytest.mark.slow
def test_real_archives_split_connections_are_not_inbound(real_data, tmp_path):
    """Nature Remo's long TLS line is cut by YAF's timeouts into records that start with the server's packet."""
    found, macs = [], {}
    for name in ("nature_remo", "au_network_camera"):
        (archive,) = [a for a in find_archives(real_data)[0] if a.name == name]
        summary = decode_archive(archive, tmp_path / name, FIRST_DAY, LAST_DAY)
        macs[name] = summary.local_mac
        found.append(pd.read_parquet(tmp_path / name / "flows.parquet"))
    clean, _ = to_device_centric(pd.concat(found, ignore_index=True), macs)
    remo = clean[clean["device_key"] == REMO.mac]
    server_first = remo[(remo["protocol"] == 6) & ~remo["device_initiated"] & (remo["remote_scope"] == "internet")]
    assert len(server_first) > 1000 and not (server_first["initial_tcp_flags_in"] & S).any()
    findings = exposure.flow_findings(clean)
    assert "inbound_from_internet" not in set(findings["kind"])
    camera = findings[findings["device_key"] == catalogue.BY_ARCHIVE["au_network_camera"].mac].set_index("kind")
    assert camera.loc["hardcoded_dns", "evidence"] == ["8.8.8.8:53"] and camera.loc["hardcoded_dns", "flows"] > 1000
