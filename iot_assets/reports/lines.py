"""Line metrics rendered: an HTML section for the model report, a Markdown table for asset metadata.

Rendering only: takes the `line_metrics.json` dictionary, reads nothing.
"""

from __future__ import annotations

import html

HEADLINE = (
    ("recall", "device-day recall", "{:.3f}"),
    ("recall_model_level", "recall, model named", "{:.3f}"),
    ("precision", "precision", "{:.3f}"),
    ("false_per_line_month", "false presences / line / month", "{:.2f}"),
    ("ttd_hours_median", "time to detect, median (h)", "{:.1f}"),
    ("ttd_hours_p90", "time to detect, p90 (h)", "{:.1f}"),
    ("device_days", "device-days", "{:,}"),
    ("ttd_never_detected", "never detected (device on a line)", "{:,}"),
)
PER_MODEL = (
    ("device_days", "device-days", "{:,}"),
    ("recall", "recall", "{:.3f}"),
    ("precision", "precision", "{:.3f}"),
    ("false_detections", "false detections", "{:,}"),
    ("ttd_hours_median", "ttd median (h)", "{:.1f}"),
    ("ttd_hours_p90", "ttd p90 (h)", "{:.1f}"),
)


def _cell(value, fmt: str) -> str:
    """A figure as text; a time to detect that is null means the quantile was never reached."""
    if value is None:
        return "n/a"
    return fmt.format(value)


def _rates(metrics: dict) -> list[str]:
    return sorted(metrics["sampling"], key=int)


def headline_rows(metrics: dict) -> list[list[str]]:
    """One row per sampling rate: the rate, then every headline figure as text."""
    return [[f"1:{rate}", *(_cell(metrics["sampling"][rate].get(key), fmt) for key, _, fmt in HEADLINE)]
            for rate in _rates(metrics)]


def metrics_table_markdown(metrics: dict) -> str:
    """The headline figures per sampling rate as a Markdown table."""
    head = ["sampling", *(title for _, title, _ in HEADLINE)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(HEADLINE)]
    lines += ["| " + " | ".join(row) + " |" for row in headline_rows(metrics)]
    lines.append("")
    lines.append(f"{metrics['lines']} lines, evaluation days {' .. '.join(metrics['eval_range'])}, "
                 f"sliding window {metrics['window_days']} day(s).")
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]], flags: list[bool] | None = None) -> str:
    if not rows:
        return "<p class='note'>none</p>"
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        css = " class='flag'" if flags and flags[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><tr>{cells}</tr>{''.join(body)}</table>"


def metrics_fragment_html(metrics: dict, recall_target: float = 0.95, precision_target: float = 0.99) -> str:
    """The model report's section on lines: headline table per sampling rate, then per model for each rate."""
    parts = [
        "<h2>Device models behind the NAT (subscriber lines)</h2>",
        f"<p class='note'>{metrics['lines']} lines, evaluation days {html.escape(' .. '.join(metrics['eval_range']))}"
        f" (signatures trained before), sliding window of {metrics['window_days']} day(s). Recall counts a device-day "
        "(a device with Internet-bound traffic on its line) as found when the day's inventory names its model, or "
        "its manufacturer only; precision counts a detection as true when that model (manufacturer) had traffic on "
        "the line in the window. Time to detect runs from the device's first Internet-bound flow on the line; "
        "n/a: the quantile lands on devices never detected.</p>",
        _html_table(["sampling", *(title for _, title, _ in HEADLINE)], headline_rows(metrics)),
    ]
    for rate in _rates(metrics):
        per_model = metrics["sampling"][rate]["per_model"]
        rows, flags = [], []
        for name, figures in sorted(per_model.items()):
            rows.append([name, *(_cell(figures.get(key), fmt) for key, _, fmt in PER_MODEL)])
            recall, precision = figures.get("recall"), figures.get("precision")
            flags.append((recall is not None and recall < recall_target)
                         or (precision is not None and precision < precision_target))
        parts.append(f"<h3>Per model at 1:{html.escape(rate)}</h3>")
        parts.append(_html_table(["model", *(title for _, title, _ in PER_MODEL)], rows, flags))
    return "".join(parts)
