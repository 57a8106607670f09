"""Each day's own metadata on its own partition, also when one run builds a range of days.

Dagster gives every partition of a ranged run the run's output metadata; a day's figures and
tables are attached here with `context.add_asset_metadata(..., partition_key=day)` (Dagster
1.13), which the UI shows for that partition on top of (and instead of, key by key) the run's.
The tables are `iot_assets.reports.day_tables`, as `iot-assets show` prints them.
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from iot_assets.core import exposure
from iot_assets.reports.day_tables import (
    DayTable,
    exposure_changes,
    exposure_table,
    incidents_table,
    inventory_table,
    line_table,
)


def table_metadata(table: DayTable) -> dg.TableMetadataValue:
    """A day's table as Dagster table metadata, with its column schema."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name=c.name, type=c.type, description=c.description)
                                     for c in table.columns])
    return dg.MetadataValue.table([dg.TableRecord(row) for row in table.rows], schema=schema)


def attach(context: dg.AssetExecutionContext, asset_key: str, day: str, metadata: dict) -> None:
    """`metadata` on the materialization of `asset_key` for `day` only."""
    context.add_asset_metadata({"day": day, **metadata}, asset_key=asset_key, partition_key=day)


def inventory_metadata(inventory: pd.DataFrame, day: str, membership: pd.DataFrame | None) -> dict:
    """device_inventory's metadata for one day: the table, and that day's counts."""
    known = inventory[inventory["in_catalogue"].astype(bool)] if len(inventory) else inventory
    return {
        "inventory": table_metadata(inventory_table(inventory, day, membership)),
        "macs": len(inventory),
        "unknown": int((inventory["status"] == "unknown").sum()) if len(inventory) else 0,
        "not_in_catalogue": int((~inventory["in_catalogue"].astype(bool)).sum()) if len(inventory) else 0,
        "disagreements": int(inventory["disagrees"].astype(bool).sum()) if len(inventory) else 0,
        "agreement": float((~known["disagrees"].astype(bool)).mean()) if len(known) else None,
    }


def incidents_metadata(incidents: pd.DataFrame, day: str) -> dict:
    """anomaly_incidents' metadata for one day."""
    return {
        "incidents_table": table_metadata(incidents_table(incidents, day)),
        "incidents": len(incidents),
        "per_kind": dg.MetadataValue.json(incidents["kind"].value_counts().to_dict() if len(incidents) else {}),
    }


def exposure_metadata(findings: pd.DataFrame, day: str, previous: pd.DataFrame | None) -> dict:
    """device_exposure's metadata for one day: the worklist with what each finding means and what to do."""
    work = exposure.worklist(findings) if len(findings) else findings
    changes = exposure_changes(work, previous) if len(work) else pd.Series(dtype=object)
    return {
        "worklist": table_metadata(exposure_table(findings, day, previous)),
        "findings": len(work), "devices_with_findings": int(work["device_key"].nunique()) if len(work) else 0,
        "new": int((changes == "new").sum()), "worse": int((changes == "worse").sum()),
        "baseline": int((changes == "baseline").sum()),
        "high": int((work["severity"] == "high").sum()) if len(work) else 0,
    }


def line_metadata(line_inventory: pd.DataFrame, day: str) -> dict:
    """line_inventory's metadata for one day: per line, its models and since when."""
    table = line_table(line_inventory, day)
    return {"lines": table_metadata(table), "lines_detected": table.total_rows,
            "rows": len(line_inventory)}
