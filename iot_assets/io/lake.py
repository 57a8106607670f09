"""Tables as hive-style Parquet on the base location, one file per day.

`<base>/lake/<asset>/day=YYYY-MM-DD/part-0.parquet` for daily assets, `<base>/lake/<asset>/part-0.parquet`
otherwise: DuckDB, Spark or Trino read the lake as it is.

A run may cover a range of days (a single-run backfill): daily assets then return
`{day: frame}` and each day is still its own file. Inputs of daily assets always arrive as
`{day: frame}`, whether one day or many was asked for, so asset code has one shape to handle.

A daily asset may instead return `DaysBuilt(days, build)`: the IO manager then builds each day
when it writes it, so that a run over many days holds one day's table at a time, and hands the
memory back between days (`iot_assets.core.memory`). This is the one place where an asset's code
runs inside its IO manager, and it is explicit: what `build` gathers (counts, check failures) is
ready only once the days are written, so the asset yields the output first and then calls
`written()` on it before it reads what was gathered; `written()` raises if the IO manager has not
written the days yet (a reordered `yield`), instead of letting a check pass on nothing.
The run's output metadata is every day's of
the run: what belongs to one day is attached to that day's partition explicitly, by the asset
(`iot_assets.defs.day_metadata.attach`, also from inside a `build`) and, for the row count, here.

The day is the partition, in the path: a `day` column of a daily table is not written into the
file (a hive reader would see two `day` fields) and is restored from the path on load. A day x
shard partition (the line assets with IOT_ASSETS_LINE_SHARDS above 1) is a folder of its day,
`<asset>/day=YYYY-MM-DD/00-of-04/part-0.parquet`, and its rows get their day the same way.

An unpartitioned input may say `allow_missing` in its metadata: it is None until its asset is first
materialized.

An input may name the columns it reads (`dg.AssetIn(metadata={"columns": [...]})`): only those
are read from each file (the restored `day` comes with them), as Dagster's database IO managers do.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from iot_assets.core.memory import release_unused_memory
from iot_assets.io.location import base_path, remove_tree, write_bytes_atomic

PART = "part-0"


def parquet_bytes(frame: pd.DataFrame | pa.Table) -> bytes:
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    return buffer.getvalue()


def read_parquet(path: UPath, columns: list[str] | None = None, **kwargs) -> pa.Table:
    """The table at `path`; with `columns`, only those of them the file has."""
    if not path.exists():
        raise FileNotFoundError(str(path))
    if columns is not None:
        present = set(pq.read_schema(path.path, filesystem=path.fs).names)
        columns = [c for c in columns if c in present]
    return pq.read_table(path.path, filesystem=path.fs, columns=columns, **kwargs)


class DaysBuilt(Mapping):
    """A daily output whose days are built as the lake IO manager writes them, one at a time.

    `build(day)` gives the day's frame; it is called once per day, in day order, and nothing keeps
    the frame after it is written. `metadata()`, if given, is called after the last day: output
    metadata that sums up what the builds saw (rows, devices ...).
    """

    def __init__(self, days, build: Callable[[str], pd.DataFrame], metadata: Callable[[], dict] | None = None):
        self._days, self._build, self._metadata = sorted(days), build, metadata
        self._written = False

    def __getitem__(self, day: str) -> pd.DataFrame:
        if day not in self._days:
            raise KeyError(day)
        if self._build is None:
            raise RuntimeError(f"the days were built and written already: read {day} from the lake")
        return self._build(day)

    def __iter__(self):
        return iter(self._days)

    def __len__(self) -> int:
        return len(self._days)

    def metadata(self) -> dict:
        return self._metadata() if self._metadata is not None else {}

    def close(self) -> None:
        """Written: let go of the builder and what it holds (the step's inputs); an in-process run keeps every
        output value of the run (`execute_in_process` captures them), and should keep no days through it."""
        self._build = self._metadata = None
        self._written = True

    def written(self) -> "DaysBuilt":
        """This, once the IO manager has written every day; raises before that (module docstring)."""
        if not self._written:
            raise RuntimeError("DaysBuilt read before its days were written: yield the Output first, then read what "
                               "its build gathered")
        return self


class LakeIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def __init__(self, base_url: str):
        super().__init__(base_path=base_path(base_url) / "lake")

    def _get_path(self, context) -> UPath:
        return self._get_path_without_extension(context) / f"{PART}{self.extension}"

    def get_path_for_partition(self, context, path: UPath, partition: str) -> UPath:
        return path / f"day={partition}" / PART

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        write_bytes_atomic(path, parquet_bytes(obj))

    def load_from_path(self, context: dg.InputContext, path: UPath, table: pa.Table | None = None) -> pd.DataFrame:
        frame = (read_parquet(path) if table is None else table).to_pandas()
        day = _day_in_path(path)
        return frame if day is None else frame.assign(day=day)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        if not context.has_asset_partitions:
            super().handle_output(context, obj)
            context.add_output_metadata({"dagster/row_count": len(obj)})
            return
        paths = self._get_paths_for_partitions(context)
        by_day = obj if isinstance(obj, Mapping) else {next(iter(paths)): obj}
        if set(by_day) != set(paths):
            raise ValueError(f"{context.asset_key.to_user_string()}: output holds days {sorted(by_day)[:3]}..., "
                             f"the run asked for {sorted(paths)[:3]}...")
        built = isinstance(by_day, DaysBuilt)
        rows = 0
        for day in sorted(paths):  # a partition key: a day, or a day and a shard
            frame = by_day[day]
            rows += len(frame)
            if "day" in frame.columns:
                if len(frame) and not (frame["day"].astype(str) == _day_in_path(paths[day])).all():
                    raise ValueError(f"{context.asset_key.to_user_string()}: rows of {day} hold another `day`")
                frame = frame.drop(columns="day")
            write_bytes_atomic(paths[day], parquet_bytes(frame))
            _day_row_count(context, day, len(frame))
            if built:  # the day is written and dropped: give its memory back before the next is built
                del frame
                release_unused_memory(between_days=True)
        summary = by_day.metadata() if built else {}
        if built:
            by_day.close()
        asset_folder = _day_folder(next(iter(paths.values()))).parent
        context.add_output_metadata({**summary, "dagster/row_count": rows,
                                     "days": len(paths),
                                     "path": dg.MetadataValue.path(str(asset_folder))})

    def load_input(self, context: dg.InputContext):
        if not context.has_asset_partitions:
            # An input that says `allow_missing` gets None for a table never materialized (a new asset).
            if (context.definition_metadata or {}).get("allow_missing") and not self._get_path(context).exists():
                context.log.info(f"{context.asset_key.to_user_string()}: not materialized yet")
                return None
            return super().load_input(context)
        paths = self._get_paths_for_partitions(context)
        present = {key: path for key, path in paths.items() if path.exists()}
        missing = sorted(set(paths) - set(present))
        if missing:
            allowed = (context.definition_metadata or {}).get("allow_missing_partitions", False)
            if not allowed:
                raise FileNotFoundError(f"{context.asset_key.to_user_string()}: {len(missing)} partition(s) not "
                                        f"materialized, e.g. {missing[0]} ({paths[missing[0]]})")
            context.log.info(f"{context.asset_key.to_user_string()}: {len(missing)} of {len(paths)} days not built")
        # What the steps before this one in the process freed goes back before this one reads its days.
        release_unused_memory()
        metadata = context.definition_metadata or {}
        columns = metadata.get("columns")
        return LazyDays(present, lambda path, table=None: self.load_from_path(context, path, table),
                        read=read_parquet if columns is None else lambda path: read_parquet(path, columns=list(columns)),
                        keep=metadata.get("keep_days", LazyDays.KEEP))


def _day_folder(path: UPath) -> UPath | None:
    """The `day=YYYY-MM-DD` folder of a partition's file: `day=.../part-0.parquet`, `day=.../<shard>/part-0.parquet`."""
    for folder in (path.parent, path.parent.parent):
        if folder.name.startswith("day="):
            return folder
    return None


def _day_in_path(path: UPath) -> str | None:
    """The day of a partition's file, None for an unpartitioned table."""
    folder = _day_folder(path)
    return None if folder is None else folder.name.removeprefix("day=")


def _day_row_count(context: dg.OutputContext, day: str, rows: int) -> None:
    """The day's own row count on its partition: the output metadata is the whole run's (all its days)."""
    try:
        step = context.step_context
    except dg.DagsterInvariantViolationError:
        return  # an output context built outside a run (a test of the IO manager alone)
    if len(context.asset_partition_keys) > 1:
        step.add_asset_metadata({"dagster/row_count": rows}, asset_key=context.asset_key, partition_key=day)


class LazyDays(Mapping):
    """Days of a table, each read when the asset asks for it: a run over many days holds few at a time.

    The Arrow tables of the last `keep` days read are kept (immutable, and smaller than the
    frames), so that an asset walking the days with the day before (today, then as tomorrow's
    history) or reading a day twice reads each file once; every access converts its own frame.
    An input whose asset reads each day once says `keep_days: 0` in its metadata: nothing is kept.
    """

    KEEP = 2

    def __init__(self, paths: dict[str, UPath], load, read=None, keep: int = KEEP):
        """`load(path)` gives the frame of a day; or `read(path)` its Arrow table and `load(path, table)` the frame."""
        self._paths, self._load, self._read, self._keep = paths, load, read, keep
        self._kept: dict[str, pa.Table] = {}

    def __getitem__(self, day: str) -> pd.DataFrame:
        if day not in self._paths:
            raise KeyError(day)
        path = self._paths[day]
        if self._read is None:
            return self._load(path)
        table = self._kept.pop(day, None)
        if table is None:
            table = self._read(path)
        self._kept[day] = table
        while len(self._kept) > self._keep:
            self._kept.pop(next(iter(self._kept)))
        return self._load(path, table)

    def __contains__(self, day) -> bool:
        return day in self._paths  # without reading the day

    def __iter__(self):
        return iter(sorted(self._paths))

    def __len__(self) -> int:
        return len(self._paths)


def prune_outside(base_url: str, keep: set[str]) -> dict[str, list[str]]:
    """Remove every daily partition file whose day is not in `keep` (the configured range shrank)."""
    root = base_path(base_url) / "lake"
    removed: dict[str, list[str]] = {}
    if not root.exists():
        return removed
    for asset_dir in root.iterdir():
        if not asset_dir.is_dir():
            continue
        for child in asset_dir.iterdir():
            if child.name.startswith("day=") and child.name.removeprefix("day=") not in keep:
                remove_tree(child)
                removed.setdefault(asset_dir.name, []).append(child.name.removeprefix("day="))
    return {asset: sorted(days) for asset, days in removed.items()}


def built_days(base_url: str, asset: str) -> list[str]:
    """The days of a daily asset that are in the lake, in order."""
    root = base_path(base_url) / "lake" / asset
    if not root.exists():
        return []
    return sorted(child.name.removeprefix("day=") for child in root.iterdir()
                  if child.name.startswith("day=") and (child / f"{PART}.parquet").exists())


def read_day(base_url: str, asset: str, day: str) -> pd.DataFrame:
    """One day of a daily asset as the assets read it (with its `day` column)."""
    path = base_path(base_url) / "lake" / asset / f"day={day}" / f"{PART}.parquet"
    return read_parquet(path).to_pandas().assign(day=day)


def read_whole(base_url: str, asset: str) -> pd.DataFrame:
    """An asset that is not partitioned by day."""
    return read_parquet(base_path(base_url) / "lake" / asset / f"{PART}.parquet").to_pandas()


def concat_days(by_day: LazyDays) -> pd.DataFrame:
    """The days of a LazyDays input as one frame, in day order (an empty frame of the same columns when
    every day is empty)."""
    frames = [frame for _, frame in sorted(by_day.items()) if frame is not None and len(frame)]
    if not frames:
        return next(iter(by_day.values())).iloc[0:0] if by_day else pd.DataFrame()
    return pd.concat(frames, ignore_index=True)
