"""Rendering of the exposure findings: HTML fragments for the reports, Markdown for the UI.

Rendering only: every function takes frames the domain module (`iot_assets.core.exposure`)
built and returns text; nothing here reads or writes data.
"""

from __future__ import annotations

import html

import pandas as pd

from iot_assets.core.exposure import SEVERITIES
from iot_assets.reports.html import incident_anchor

SEVERITY_COLOURS = {"info": "#9aa5b1", "low": "#f2c94c", "medium": "#f2994a", "high": "#d64545"}
WORKLIST_COLUMNS = ["score", "device", "kind", "severity", "first_seen", "new_today", "flows", "remote_peers",
                    "evidence", "explained_by_incident"]


def _incident_ids(row) -> list[str]:
    value = getattr(row, "explained_by_incident", "")
    return [i for i in str(value or "").split(", ") if i] if isinstance(value, str) else []


def _label(row) -> str:
    return row.device if isinstance(row.device, str) else row.device_key


def _worklist_rows(worklist: pd.DataFrame, limit: int) -> list[list[str]]:
    rows = []
    for row in worklist.head(limit).itertuples():
        rows.append([f"{row.score:g}", _label(row), row.kind, row.severity, str(row.first_seen),
                     "new" if row.new_today else "", f"{row.flows:,}", f"{row.remote_peers:,}",
                     # An advisory's link and versions are in a table of their own; its id names it here.
                     ", ".join(str(e).split(" ")[0] if row.kind == "known_advisory" else str(e)
                               for e in row.evidence[:3]), ", ".join(_incident_ids(row))])
    return rows


def worklist_markdown(worklist: pd.DataFrame, limit: int = 40) -> str:
    """The day's worklist as a Markdown table, for the asset's metadata in the Dagster UI."""
    if worklist.empty:
        return "No exposure finding today."
    header = "| " + " | ".join(WORKLIST_COLUMNS) + " |\n|" + "---|" * len(WORKLIST_COLUMNS) + "\n"
    body = "".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |\n"
                   for row in _worklist_rows(worklist, limit))
    more = f"\n{len(worklist) - limit} more finding(s) in the table." if len(worklist) > limit else ""
    return header + body + more


def _incident_links(ids: list[str]) -> str:
    """Links to the incidents' rows of the same report's Incidents section."""
    return ", ".join(f"<a href='#{incident_anchor(i)}'>{html.escape(i)}</a>" for i in ids)


def _html_table(columns: list[str], rows: list[list[str]], flags: list[bool] | None = None,
                raw_last: list[str] | None = None) -> str:
    """An HTML table of text cells; `raw_last`: HTML (already escaped) for each row's last cell."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        f"<tr{' class=flag' if flags and flags[i] else ''}>"
        + "".join(f"<td>{raw_last[i] if raw_last is not None and j == len(row) - 1 else html.escape(c)}</td>"
                  for j, c in enumerate(row))
        + "</tr>" for i, row in enumerate(rows))
    return f"<table><tr>{head}</tr>{body}</table>"


def findings_chart_svg(per_day: pd.DataFrame, width: int = 720, height: int = 180) -> str:
    """Stacked bars of findings per day, coloured by severity, as an inline SVG."""
    if per_day.empty:
        return "<p class='note'>no findings on any day yet</p>"
    left, bottom, top = 40, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    totals = per_day.sum(axis=1)
    peak = max(int(totals.max()), 1)
    bar_w = plot_w / len(per_day)
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
             f"aria-label='findings per day by severity'>",
             f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' stroke='#999'/>",
             f"<text x='{left - 4}' y='{top + 8}' font-size='10' text-anchor='end'>{peak}</text>",
             f"<text x='{left - 4}' y='{top + plot_h}' font-size='10' text-anchor='end'>0</text>"]
    label_every = max(1, len(per_day) // 12)
    for i, (day, counts) in enumerate(per_day.iterrows()):
        x, y = left + i * bar_w, top + plot_h
        for severity in SEVERITIES:
            n = int(counts.get(severity, 0))
            if n:
                h = plot_h * n / peak
                y -= h
                parts.append(f"<rect x='{x + 1:.1f}' y='{y:.1f}' width='{max(bar_w - 2, 1):.1f}' height='{h:.1f}' "
                             f"fill='{SEVERITY_COLOURS[severity]}'><title>{html.escape(str(day))}: {n} {severity}"
                             f"</title></rect>")
        if i % label_every == 0:
            parts.append(f"<text x='{x + bar_w / 2:.1f}' y='{top + plot_h + 14}' font-size='9' text-anchor='middle'>"
                         f"{html.escape(str(day)[5:])}</text>")
    for j, severity in enumerate(SEVERITIES):
        parts.append(f"<rect x='{left + j * 80}' y='{height - 14}' width='10' height='10' "
                     f"fill='{SEVERITY_COLOURS[severity]}'/><text x='{left + j * 80 + 14}' y='{height - 5}' "
                     f"font-size='10'>{severity}</text>")
    parts.append("</svg>")
    return "".join(parts)


def exposure_section_html(worklist: pd.DataFrame, per_day: pd.DataFrame, lines: pd.DataFrame) -> str:
    """The daily report's Exposure section: the worklist (new high findings highlighted), lines, the chart."""
    parts = ["<h2>Exposure</h2>"]
    if worklist.empty:
        parts.append("<p class='note'>no exposure finding today</p>")
    else:
        flags = [bool(r.new_today and r.severity == "high") for r in worklist.itertuples()]
        parts.append(f"<p class='note'>{worklist['device_key'].nunique()} device(s), {len(worklist)} finding(s); "
                     "highlighted: high severity and new today.</p>")
        links = [_incident_links(_incident_ids(r)) for r in worklist.itertuples()]
        parts.append(_html_table(WORKLIST_COLUMNS, _worklist_rows(worklist, len(worklist)), flags, raw_last=links))
    if len(lines):
        parts.append("<h3>Subscriber lines</h3>")
        parts.append(_html_table(["line", "score", "devices"],
                                 [[str(r.line), f"{r.score:g}", ", ".join(r.devices)] for r in lines.itertuples()]))
    parts.append("<h3>Findings per day</h3>")
    parts.append(findings_chart_svg(per_day))
    return "".join(parts)


def fleet_view_html(by_model: pd.DataFrame, shares: pd.DataFrame) -> str:
    """The model report's fleet view: devices with each kind per predicted model, and each kind's share."""
    parts = ["<h2>Exposure across the fleet</h2>"]
    if shares.empty:
        parts.append("<p class='note'>no exposure finding in the range</p>")
        return "".join(parts)
    parts.append(_html_table(["kind", "devices", "share of devices"],
                             [[r.kind, str(r.devices), f"{r.share:.0%}"] for r in shares.itertuples()]))
    kinds = list(by_model.columns)
    parts.append("<h3>Devices with each finding, per predicted model</h3>")
    parts.append(_html_table(["predicted model", *kinds],
                             [[str(model), *[str(int(v)) if v else "" for v in row]]
                              for model, row in by_model.iterrows()]))
    return "".join(parts)
