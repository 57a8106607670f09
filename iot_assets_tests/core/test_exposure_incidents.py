"""A finding an incident explains links to it: explained_by_incident on a small frame, and the links in the report."""

import pandas as pd
import pytest

from iot_assets.core import exposure
from iot_assets.core.exposure_incidents import link_incidents
from iot_assets.reports.exposure import exposure_section_html, worklist_markdown
from iot_assets.reports.html import incident_anchor, table

DAY = "2019-07-05"
BEACONING = "02:00:00:00:00:0a"  # FICTIONAL devices: locally administered MACs
QUIET = "02:00:00:00:00:0b"


def _flow(mac: str, start: str, minutes: int, remote_port: int = 8080) -> dict:
    """An answered TCP flow from the device to an Internet server (a `cleartext_http` flow on 8080)."""
    begin = pd.Timestamp(f"{DAY} {start}", tz="UTC")
    return {"device_key": mac, "device_name": "Test Camera", "device_port": 40000, "remote_ip": "198.51.100.7",
            "remote_mac": "02:00:00:00:00:01", "remote_port": remote_port, "remote_scope": "internet",
            "device_initiated": True, "protocol": exposure.TCP, "bytes_out": 500, "bytes_in": 900, "packets_out": 5,
            "packets_in": 6, "initial_tcp_flags_out": exposure.SYN, "initial_tcp_flags_in": exposure.SYN | exposure.ACK,
            "flow_start": begin, "flow_end": begin + pd.Timedelta(minutes=minutes)}


def _incident(mac: str, start: str, end: str) -> dict:
    begin = pd.Timestamp(f"{DAY} {start}", tz="UTC")
    return {"device_key": mac, "incident": f"{mac}@{begin:%Y-%m-%dT%H:%M}", "start": begin,
            "end": pd.Timestamp(f"{DAY} {end}", tz="UTC")}


@pytest.fixture()
def linked() -> pd.DataFrame:
    flows = pd.DataFrame([
        _flow(BEACONING, "01:00", 10),  # before the incident
        _flow(BEACONING, "03:55", 10),  # beaconing that starts before the incident and runs into it
        _flow(QUIET, "10:00", 30),  # the other device's HTTP, hours before its incident
    ])
    incidents = pd.DataFrame([_incident(BEACONING, "04:00", "06:00"), _incident(BEACONING, "20:00", "21:00"),
                              _incident(QUIET, "15:00", "16:00")])
    findings = exposure.day_findings(flows, pd.DataFrame(columns=["device_key", "predicted_device"]),
                                     pd.DataFrame(columns=exposure.ADVISORY_COLUMNS))
    table = exposure.carry_history(None, findings, DAY)
    return link_incidents(table, flows, incidents)


def test_a_finding_whose_evidence_overlaps_an_incident_of_its_device_names_it_and_only_it(linked):
    by_device = dict(zip(linked["device_key"], linked["explained_by_incident"]))
    assert linked["kind"].tolist() == ["cleartext_http", "cleartext_http"]
    assert by_device == {BEACONING: f"{BEACONING}@{DAY}T04:00", QUIET: ""}


def test_no_incidents_or_an_older_finding_carried_on_names_none(linked):
    flows = pd.DataFrame([_flow(BEACONING, "04:30", 5)])
    assert link_incidents(linked, flows, None)["explained_by_incident"].tolist() == ["", ""]
    carried = linked.assign(seen_today=False)
    incidents = pd.DataFrame([_incident(BEACONING, "04:00", "06:00")])
    assert link_incidents(carried, flows, incidents)["explained_by_incident"].tolist() == ["", ""]
    with pytest.raises(ValueError, match="lack flow_start, flow_end"):
        link_incidents(linked, flows.drop(columns=["flow_start", "flow_end"]), incidents)


def test_the_report_links_the_finding_to_the_incidents_row(linked):
    worklist = exposure.worklist(linked)
    section = exposure_section_html(worklist, exposure.findings_per_day(linked), pd.DataFrame())
    anchor = incident_anchor(f"{BEACONING}@{DAY}T04:00")
    assert anchor == "incident-02-00-00-00-00-0a-2019-07-05T04-00"
    assert section.count("<a href=") == 1 and f"<a href='#{anchor}'>{BEACONING}@{DAY}T04:00</a>" in section
    rows = table(pd.DataFrame({"kind": ["scan-like"]}), row_ids=[anchor])
    assert f"<tr id='{anchor}'><td>scan-like</td></tr>" in rows
    markdown = worklist_markdown(worklist)
    assert markdown.splitlines()[0].endswith("| explained_by_incident |") and f"{BEACONING}@{DAY}T04:00 |" in markdown
