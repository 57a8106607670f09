"""`iot-assets show`: a day's inventory, incidents or exposure worklist in a terminal, read from the lake.

The same tables the Dagster UI shows on each partition (`iot_assets.reports.day_tables`).
"""

from __future__ import annotations

import textwrap

from iot_assets.contracts.calendar import previous_day
from iot_assets.io.lake import built_days, read_day, read_whole
from iot_assets.reports.day_tables import DayTable, exposure_table, incidents_table, inventory_table

ASSETS = {"inventory": "device_inventory", "incidents": "anomaly_incidents", "exposure": "device_exposure"}


class ShowError(RuntimeError):
    """Nothing to show: the asset or the day is not in the lake."""


def day_table(base_url: str, product: str, day: str | None = None) -> DayTable:
    """The `product` table of `day` (default the last day built) from the lake at `base_url`."""
    asset = ASSETS[product]
    days = built_days(base_url, asset)
    if not days:
        raise ShowError(f"{asset} is not in the lake at {base_url}/lake: run `iot-assets run` first")
    day = day or days[-1]
    if day not in days:
        raise ShowError(f"{asset} has no day {day} in {base_url}/lake (built: {days[0]} .. {days[-1]}, "
                        f"{len(days)} days)")
    frame = read_day(base_url, asset, day)
    if product == "inventory":
        try:
            membership = read_whole(base_url, "line_membership")
        except FileNotFoundError:
            membership = None  # lines not built: the column says none
        return inventory_table(frame, day, membership)
    if product == "incidents":
        return incidents_table(frame, day)
    before = previous_day(day)
    return exposure_table(frame, day, read_day(base_url, asset, before) if before in days else None)


def render(table: DayTable, width: int = 60) -> str:
    """The table as aligned text, cells cut to `width` characters, with its legend below."""
    shown = f", first {len(table.rows)} shown" if len(table.rows) < table.total_rows else ""
    title = f"{table.day}: {table.total_rows} row(s){shown}"
    if not table.rows:
        return f"{title}\nnothing on this day"
    frame = table.frame().map(lambda v: "" if v is None else
                              textwrap.shorten(f"{v:.3f}" if isinstance(v, float) else str(v), width, placeholder="..."))
    legend = "\n".join(f"  {c.name}: {c.description}" for c in table.columns)
    return f"{title}\n{frame.to_string(index=False)}\n\ncolumns:\n{legend}"


def render_day(base_url: str, product: str, day: str | None, width: int = 60) -> str:
    """`iot-assets show PRODUCT --day DAY` as text."""
    return render(day_table(base_url, product, day), width)
