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
    window_minutes: int = 60
    train_fraction: float = 0.7
    target_fpr: float = 0.01
    seed: int = 0
    episodes: str = ""  # an episodes.csv with ground truth for the anomaly metrics, if any

    @classmethod
    def from_env(cls) -> "DataLake":
        s = Settings.from_env()
        return cls(data_dir=str(s.data_dir), first_day=s.first_day.isoformat(), last_day=s.last_day.isoformat(),
                   window_minutes=s.window_minutes, train_fraction=s.train_fraction, target_fpr=s.target_fpr,
                   seed=s.seed, episodes=str(s.episodes or ""))

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "models"

    def table_path(self, asset: str, partition: str | None = None) -> Path:
        return lake_path(self.data_dir, asset, partition)

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


def lake_path(data_dir: str, asset: str, partition: str | None = None) -> Path:
    base = Path(data_dir) / "lake" / asset
    return (base / f"day={partition}" if partition else base) / "part-0.parquet"


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
        return lake_path(self.data_dir, asset, partition)

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
        keys = context.asset_partition_keys
        paths = {key: self._path(asset, key) for key in keys}
        missing = [key for key, path in paths.items() if not path.exists()]
        if len(keys) == 1 and missing:
            raise FileNotFoundError(f"{asset} partition {keys[0]} has not been materialized ({paths[keys[0]]})")
        if len(missing) == len(keys):
            raise FileNotFoundError(f"none of the {len(keys)} partitions of {asset} has been materialized")
        if missing:
            # A range (training days, the day before) with gaps: use what exists, and say so.
            context.log.warning(f"{asset}: {len(missing)} of {len(keys)} partitions not materialized, e.g. {missing[0]}")
        frames = [pd.read_parquet(path) for key, path in paths.items() if key not in missing]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
