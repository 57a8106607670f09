"""The partitions, made at load from the settings: one per day of flows over the configured range,
and day x line shard for the line-level (post-NAT) assets, whose work grows with the subscribers."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import timedelta

import dagster as dg

from iot_assets.config import Settings

# Beta parameters in Dagster 1.13 that every daily asset and every model uses.
for _parameter in ("backfill_policy", "data_version"):
    warnings.filterwarnings("ignore", message=f"Parameter `{_parameter}`", category=dg.BetaWarning)


def shard_keys(count: int) -> list[str]:
    """`00-of-04` .. `03-of-04`: the count is in the key, so shards of different counts never share a path."""
    width = max(2, len(str(count)))
    return [f"{i:0{width}d}-of-{count:0{width}d}" for i in range(count)]


def shard_number(shard_key: str) -> tuple[int, int]:
    """(shard, count) of a key of `shard_keys`."""
    shard, count = shard_key.split("-of-")
    return int(shard), int(count)


@dataclass(frozen=True)
class Partitions:
    """Every partition-shaped setting of one code location."""

    daily: dg.DailyPartitionsDefinition
    # Ranges of days in one run (a backfill, `iot-assets run`), at most `days_per_run` each: the
    # per-run cost (a process, loading the models) is paid once per range, and the memory a run
    # holds grows with its days, not with the backfill. Each day is still its own file.
    days_per_run: int
    ranged_backfill: dg.BackfillPolicy
    # Line shards: a line's shard is a stable hash of its id modulo the count
    # (core.subscriber_lines.line_shards), so it never moves while the count stays.
    line_shards: int
    # Keys look like `2019-06-25|00-of-04` (dimensions in name order); the lake stores one file per
    # day and shard, `<asset>/day=2019-06-25/00-of-04/part-0.parquet`.
    daily_line_shards: dg.MultiPartitionsDefinition
    line_window_days: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Partitions":
        daily = dg.DailyPartitionsDefinition(
            start_date=settings.first_day.isoformat(),
            # Dagster's end_date is exclusive; the configured last day is inclusive.
            end_date=(settings.last_day + timedelta(days=1)).isoformat(),
            timezone="UTC",
        )
        shards = dg.StaticPartitionsDefinition(shard_keys(settings.line_shards))
        return cls(
            daily=daily,
            days_per_run=settings.days_per_run,
            ranged_backfill=dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.days_per_run),
            line_shards=settings.line_shards,
            daily_line_shards=dg.MultiPartitionsDefinition({"day": daily, "shard": shards}),
            line_window_days=settings.line_window_days,
        )

    def day_and_shard(self, partition_key: str) -> tuple[str, int, int]:
        """(day, shard, count) of a `daily_line_shards` key."""
        keys = self.daily_line_shards.get_partition_key_from_str(str(partition_key)).keys_by_dimension
        return (keys["day"], *shard_number(keys["shard"]))
