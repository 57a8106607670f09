"""HTML building blocks for the reports: tables, pages, charts as inline SVG or embedded PNG. Rendering only."""

from __future__ import annotations

import base64
import html
import io
import re

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; } tr.flag td { background: #fde2e2; } img { max-width: 100%; }
.note { color: #666; font-size: 0.9em; }
#attention { background: #fff7e6; border: 1px solid #f2c94c; padding: 0.5em 1em; }
#attention h2 { margin-top: 0.3em; border: none; }
.legend { font-size: 0.85em; color: #444; margin: 0.4em 0 1em; }
.legend dt { font-weight: bold; float: left; clear: left; margin-right: 0.5em; } .legend dd { margin: 0 0 0.2em 0; }
"""


def png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def incident_anchor(incident_id: str) -> str:
    """The id of an incident's row in the daily report (`MAC@start` made safe for a fragment)."""
    return "incident-" + re.sub(r"[^0-9A-Za-z]+", "-", incident_id).strip("-")


def table(df: pd.DataFrame, flag: pd.Series | None = None, digits: int = 3, row_ids: list[str] | None = None) -> str:
    """`df` as an HTML table; `row_ids` gives each row an id (a link target)."""
    if df.empty:
        return "<p class='note'>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, (_, row) in enumerate(df.iterrows()):
        cells = "".join(f"<td>{html.escape(f'{v:.{digits}f}' if isinstance(v, float) else str(v))}</td>" for v in row)
        css = " class='flag'" if flag is not None and bool(flag.iloc[i]) else ""
        if row_ids is not None:
            css += f" id='{html.escape(row_ids[i])}'"
        rows.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>")


def heatmap(matrix: pd.DataFrame, title: str, label: str, cmap: str = "viridis"):
    fig, ax = plt.subplots(figsize=(12, 0.3 * max(len(matrix), 4) + 1.5))
    image = ax.imshow(matrix.to_numpy(dtype=float), aspect="auto", cmap=cmap)
    ax.set_yticks(range(len(matrix)), [str(i) for i in matrix.index], fontsize=7)
    step = max(1, len(matrix.columns) // 24)
    ax.set_xticks(range(0, len(matrix.columns), step), [str(c) for c in matrix.columns[::step]], fontsize=7, rotation=90)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    return fig


def svg_heatmap(matrix: pd.DataFrame, title: str, label: str, cmap: str = "viridis", vmin: float | None = None,
                vmax: float | None = None, marks: set[tuple] = frozenset()) -> str:
    """A heatmap as inline SVG: one rectangle per cell, a cross on the `marks` (row, column) cells.

    Drawn in milliseconds, where a matplotlib figure takes a few hundred: the daily report
    draws these for every day of a backfill.
    """
    if matrix.empty:
        return "<p class='note'>no data</p>"
    values = matrix.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if vmin is None and finite.size else (vmin or 0.0)
    high = float(finite.max()) if vmax is None and finite.size else (vmax if vmax is not None else 1.0)
    span = (high - low) or 1.0
    colours = matplotlib.colormaps[cmap]
    cell_w, cell_h, left, top = 24, 14, 190, 24
    width, height = left + cell_w * values.shape[1] + 10, top + cell_h * values.shape[0] + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="9" '
             f'font-family="sans-serif"><text x="{left}" y="14" font-size="11">{html.escape(title)} '
             f'({html.escape(label)}: {low:.2g} .. {high:.2g})</text>']
    for i, row_name in enumerate(matrix.index):
        y = top + i * cell_h
        parts.append(f'<text x="{left - 4}" y="{y + 10}" text-anchor="end">{html.escape(str(row_name))[:32]}</text>')
        for j, column in enumerate(matrix.columns):
            v = values[i, j]
            if not np.isfinite(v):
                continue
            r, g, b, _ = colours(min(max((v - low) / span, 0.0), 1.0))
            x = left + j * cell_w
            parts.append(f'<rect x="{x}" y="{y}" width="{cell_w - 1}" height="{cell_h - 1}" '
                         f'fill="rgb({r * 255:.0f},{g * 255:.0f},{b * 255:.0f})"><title>{html.escape(str(row_name))} '
                         f'{html.escape(str(column))}: {v:.3g}</title></rect>')
            if (row_name, column) in marks:
                parts.append(f'<text x="{x + cell_w / 2 - 3}" y="{y + 10}" font-size="11">x</text>')
    for j, column in enumerate(matrix.columns):
        if j % max(1, len(matrix.columns) // 24) == 0:
            parts.append(f'<text x="{left + j * cell_w + 2}" y="{top + cell_h * len(matrix) + 12}">'
                         f'{html.escape(str(column))}</text>')
    parts.append("</svg>")
    return "".join(parts)
