"""HTML building blocks for the reports: tables, pages and charts as embedded PNGs. Rendering only."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; } tr.flag td { background: #fde2e2; } img { max-width: 100%; }
.note { color: #666; font-size: 0.9em; }
"""


def png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def table(df: pd.DataFrame, flag: pd.Series | None = None, digits: int = 3) -> str:
    if df.empty:
        return "<p class='note'>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, (_, row) in enumerate(df.iterrows()):
        cells = "".join(f"<td>{html.escape(f'{v:.{digits}f}' if isinstance(v, float) else str(v))}</td>" for v in row)
        css = " class='flag'" if flag is not None and bool(flag.iloc[i]) else ""
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
