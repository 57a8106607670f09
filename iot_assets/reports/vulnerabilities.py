"""Rendering of the device vulnerabilities: the daily report's section. Rendering only: frames in, HTML out."""

from __future__ import annotations

import pandas as pd

from iot_assets.core.vulnerabilities import day_summary, device_worklist
from iot_assets.reports.html import table

OPEN_COLUMNS = ["risk", "device", "device_mac", "line", "cve", "cvss", "kev", "kev_due_date", "epss", "exposed",
                "status", "days_open", "remediation"]
NEW_COLUMNS = ["risk", "device", "device_mac", "cve", "title", "cvss", "kev", "epss", "exposed", "evidence"]
RESOLVED_COLUMNS = ["device", "device_mac", "cve", "first_seen", "days_open", "resolution"]


def _label(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(device=frame["device"].fillna(frame["device_mac"]))


def vulnerability_section_html(findings: pd.DataFrame | None, top: int = 30) -> str:
    """The daily report's Vulnerabilities section: the day's counts, new and resolved findings, open ones by risk."""
    parts = ["<h2>Vulnerabilities</h2>"]
    if findings is None:
        parts.append("<p class='note'>device_vulnerabilities has not been built for this day</p>")
        return "".join(parts)
    if findings.empty:
        parts.append("<p class='note'>no device matches a CVE of the imported feeds (or no feed is imported yet: "
                     "see the feeds_fresh checks)</p>")
        return "".join(parts)
    counts = day_summary(findings)
    parts.append(f"<p class='note'>{counts['open']} open and {counts['acknowledged']} acknowledged finding(s) on "
                 f"{counts['devices']} device(s): {counts['kev']} known exploited (CISA KEV), {counts['exposed']} "
                 f"with the vulnerable service exposed; {counts['new_today']} new and {counts['resolved_today']} "
                 "resolved today. Risk = CVSS x (1 + KEV) x (1 + EPSS) x 1.5 if exposed.</p>")
    new = findings[findings["new_today"].astype(bool)].sort_values(["risk", "device_mac", "cve"],
                                                                     ascending=[False, True, True])
    parts.append(f"<h3>New today ({len(new)})</h3>")
    parts.append(table(_label(new)[NEW_COLUMNS].round({"risk": 1}), flag=new["kev"] | new["exposed"]))
    day = findings["day"].iloc[0]
    resolved = findings[(findings["status"] == "resolved") & (findings["resolved_on"] == day)]
    parts.append(f"<h3>Resolved today ({len(resolved)})</h3>")
    parts.append(table(_label(resolved)[RESOLVED_COLUMNS]))
    work = device_worklist(findings)
    parts.append(f"<h3>Open by risk ({len(work)})</h3>")
    if len(work) > top:
        parts.append(f"<p class='note'>the {top} riskiest of {len(work)}; all in reports/vulnerabilities.json and "
                     "the asset's table in the UI</p>")
    shown = _label(work.head(top))
    parts.append(table(shown[OPEN_COLUMNS].round({"risk": 1}), flag=shown["kev"] & shown["exposed"]))
    return "".join(parts)
