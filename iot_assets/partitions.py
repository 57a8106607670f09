"""The daily partitions: one per day of flows, the range from the settings; and day x line shard
for the line-level (post-NAT) assets, whose work grows with the subscribers."""

import warnings
from datetime import datetime, timedelta, timezone

import dagster as dg

from iot_assets.settings import SETTINGS

# Dagster's end_date is exclusive; the configured last day is inclusive.
daily_partitions = dg.DailyPartitionsDefinition(
    start_date=SETTINGS.first_day.isoformat(),
    end_date=(SETTINGS.last_day + timedelta(days=1)).isoformat(),
    timezone="UTC",
)

# Ranges of days in one run (a backfill, `iot-assets run`), at most DAYS_PER_RUN each: the
# per-run cost (a process, loading the models) is paid once per range, and the memory a run
# holds grows with its days, not with the backfill. Each day is still its own file.
DAYS_PER_RUN = SETTINGS.days_per_run
ranged_backfill = dg.BackfillPolicy.multi_run(max_partitions_per_run=DAYS_PER_RUN)
# Beta parameters in Dagster 1.13 that every daily asset and every model uses.
for _parameter in ("backfill_policy", "data_version"):
    warnings.filterwarnings("ignore", message=f"Parameter `{_parameter}`", category=dg.BetaWarning)


def day_bounds(day: str) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def previous_day(day: str) -> str:
    return (datetime.fromisoformat(day) - timedelta(days=1)).date().isoformat()


# Line shards: the line-level assets split each day further, by subscriber line. A line's shard
# is a stable hash of its id modulo the count (iot_assets.lines.line_shards), so it never moves
# while the count stays; the count is fixed when the code location loads, as partitions are.
LINE_SHARDS = SETTINGS.line_shards


def shard_keys(count: int) -> list[str]:
    """`00-of-04` .. `03-of-04`: the count is in the key, so shards of different counts never share a path."""
    width = max(2, len(str(count)))
    return [f"{i:0{width}d}-of-{count:0{width}d}" for i in range(count)]


def shard_number(shard_key: str) -> tuple[int, int]:
    """(shard, count) of a key of `shard_keys`."""
    shard, count = shard_key.split("-of-")
    return int(shard), int(count)


line_shard_partitions = dg.StaticPartitionsDefinition(shard_keys(LINE_SHARDS))
# Keys look like `2019-06-25|00-of-04` (dimensions in name order); the lake stores one file per
# day and shard, `<asset>/day=2019-06-25/00-of-04/part-0.parquet`.
daily_line_shards = dg.MultiPartitionsDefinition({"day": daily_partitions, "shard": line_shard_partitions})


def day_and_shard(partition_key: str) -> tuple[str, int, int]:
    """(day, shard, count) of a `daily_line_shards` key."""
    keys = daily_line_shards.get_partition_key_from_str(str(partition_key)).keys_by_dimension
    return (keys["day"], *shard_number(keys["shard"]))
