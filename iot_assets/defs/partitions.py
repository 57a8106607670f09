"""The partitions, made at load from the settings: one per day of flows over the configured range,
and, for the line-level (post-NAT) assets whose work grows with the subscribers, one per day or,
with IOT_ASSETS_LINE_SHARDS above 1, one per day and line shard."""

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
    # The partitions of line_views, line_truth and line_inventory. One shard: `daily`, the lake as
    # for every daily table. More: day x shard, keys like `2019-06-25|00-of-04` (dimensions in name
    # order), one file per day and shard, `<asset>/day=2019-06-25/00-of-04/part-0.parquet`.
    lines: dg.PartitionsDefinition
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
            lines=daily if settings.line_shards == 1 else dg.MultiPartitionsDefinition({"day": daily, "shard": shards}),
            line_window_days=settings.line_window_days,
        )

    @property
    def lines_sharded(self) -> bool:
        return isinstance(self.lines, dg.MultiPartitionsDefinition)

    def day_and_shard(self, partition_key: str) -> tuple[str, int, int]:
        """(day, shard, count) of a key of `lines`: a day alone is shard 0 of 1."""
        if not self.lines_sharded:
            return str(partition_key), 0, 1
        keys = self.lines.get_partition_key_from_str(str(partition_key)).keys_by_dimension
        return (keys["day"], *shard_number(keys["shard"]))


def day_of_key(partition_key: str) -> str:
    """The day of a daily key, or of a day x shard key (`2019-06-25|00-of-04`: the day dimension sorts first)."""
    return str(partition_key).split("|", 1)[0]


def keys_of_days(partitions_def: dg.PartitionsDefinition, days) -> dict[str, str]:
    """{partition key: day} of every partition of `days`: the days themselves, or each of their shards."""
    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return {day: day for day in days}
    shards = _shard_dimension(partitions_def).get_partition_keys()
    return {str(dg.MultiPartitionKey({"day": day, "shard": shard})): day for day in days for shard in shards}


def day_range(partitions_def: dg.PartitionsDefinition, first_day: str, last_day: str) -> tuple[str, str]:
    """The (first, last) partition keys of a run over `first_day`..`last_day`: every shard of each day."""
    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return first_day, last_day
    shards = _shard_dimension(partitions_def).get_partition_keys()
    # A range of a day x shard definition is a box: the days between, times the shards between.
    return (str(dg.MultiPartitionKey({"day": first_day, "shard": shards[0]})),
            str(dg.MultiPartitionKey({"day": last_day, "shard": shards[-1]})))


def _shard_dimension(partitions_def: dg.MultiPartitionsDefinition) -> dg.PartitionsDefinition:
    return next(d.partitions_def for d in partitions_def.partitions_defs if d.name == "shard")


# Training reads every day of the range that has been built; a day not built yet is left out.
EVERY_BUILT_DAY = dg.AssetIn(metadata={"allow_missing_partitions": True})
