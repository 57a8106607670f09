"""Resources: where the lake is, which days count, and how tables are stored."""

from __future__ import annotations

import os
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from iot_assets.settings import Settings


class DataLake(dg.ConfigurableResource):
    """Paths and the date range of a deployment (from IOT_ASSETS_* environment variables)."""

    data_dir: str
    first_day: str
    last_day: str

    @classmethod
    def from_env(cls) -> "DataLake":
        s = Settings.from_env()
        return cls(data_dir=str(s.data_dir), first_day=s.first_day.isoformat(), last_day=s.last_day.isoformat())

    @property
    def raw_dir(self) -> Path:
        return Path(self.data_dir) / "raw"

    @property
    def staging_dir(self) -> Path:
        return Path(self.data_dir) / "staging"

    @property
    def reports_dir(self) -> Path:
        return Path(self.data_dir) / "reports"

    @property
    def days(self) -> tuple[date, date]:
        return date.fromisoformat(self.first_day), date.fromisoformat(self.last_day)


def write_parquet_atomic(data: pd.DataFrame | pa.Table, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="snappy")
    os.replace(tmp, path)


def day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


class ParquetLakeIOManager(dg.ConfigurableIOManager):
    """DataFrames as Parquet under `<data_dir>/lake/<asset>/[day=YYYY-MM-DD/]part-0.parquet`.

    Hive-style paths, so DuckDB, Spark or Trino read the lake as it is. A re-materialized
    partition replaces its file atomically.
    """

    data_dir: str

    def _path(self, asset: str, partition: str | None) -> Path:
        base = Path(self.data_dir) / "lake" / asset
        return (base / f"day={partition}" if partition else base) / "part-0.parquet"

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if obj is None:
            return
        partition = context.partition_key if context.has_asset_partitions else None
        path = self._path(context.asset_key.to_user_string(), partition)
        write_parquet_atomic(obj, path)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "dagster/row_count": len(obj)})

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        asset = context.asset_key.to_user_string()
        if not context.has_asset_partitions:
            return pd.read_parquet(self._path(asset, None))
        frames = []
        for key in context.asset_partition_keys:
            path = self._path(asset, key)
            if not path.exists():
                raise FileNotFoundError(f"{asset} partition {key} has not been materialized ({path})")
            frames.append(pd.read_parquet(path))
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
