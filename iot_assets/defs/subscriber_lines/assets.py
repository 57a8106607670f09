"""Behind the NAT: subscriber lines as the ISP edge sees them, endpoint signatures, line inventories."""

import json
import warnings
from collections.abc import Iterable, Mapping
from datetime import date

import dagster as dg
import pandas as pd
import pandera.errors

from iot_assets.contracts.calendar import previous_day
from iot_assets.contracts.schemas import column_schema
from iot_assets.core import subscriber_lines as lines
from iot_assets.core.splits import time_split
from iot_assets.defs.day_metadata import attach, line_metadata
from iot_assets.defs.loading import current_deployment
from iot_assets.defs.partitions import EVERY_BUILT_DAY, Partitions, keys_of_days
from iot_assets.defs.resources import LineSettings, ModelSettings
from iot_assets.defs.stages import DAILY_FLOWS, DAILY_SCORING, INGEST, REPORTS, TRAINING, stage
from iot_assets.io.lake import DaysBuilt, LazyDays
from iot_assets.io.location import base_path
from iot_assets.io.models import JsonDocument
from iot_assets.io.reports import ReportFiles
from iot_assets.reports.html import page
from iot_assets.reports.lines import metrics_fragment_html, metrics_table_markdown

# An inventory reads each day of views once, and only what the rules match on.
VIEWS_MATCHED = {"columns": lines.MATCHED_COLUMNS, "keep_days": 0}


def _frames(value) -> pd.DataFrame:
    """A partitioned input as one frame: the IO manager may hand over a dict of partitions or a concatenation."""
    if isinstance(value, Mapping):
        frames = [f for f in value.values() if f is not None and len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return value


def _named_in_every_period(membership: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Synthetic members under each pseudonym their archive's flows have (one per key period; as is in clear)."""
    names = {row.local_mac: list(json.loads(row.local_macs).values()) for row in manifest.itertuples()
             if isinstance(getattr(row, "local_macs", None), str)}
    if not names:
        return membership
    rows = [{**record, "device_mac": name} for record in membership.to_dict("records")
            for name in names.get(record["device_mac"], [record["device_mac"]])]
    return pd.DataFrame(rows, columns=membership.columns).astype(membership.dtypes.to_dict())


def _inventories(views: Iterable[pd.DataFrame], endpoint_signatures: pd.DataFrame, days: list[str],
                 line_settings: LineSettings, window_days: int) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, int]:
    """Each day's inventory from the views of its window (days of views, read in turn); the detections new since
    the day before; the rate they are at."""
    # Once for every day of the run, each day's inventory takes its window; a day of views at a time.
    units = lines.evidence_units_of(views, endpoint_signatures)
    version = lines.signatures_version(endpoint_signatures)
    rate = min(line_settings.rates)  # the check speaks for the finest sampling rate: the best view the ISP has
    out, new_by_day = {}, []
    for day in days:
        today = lines.inventory_from_units(units, day, window_days, line_settings.threshold)
        yesterday = lines.inventory_from_units(units, previous_day(day), window_days, line_settings.threshold)
        out[day] = today.assign(signatures_version=version)
        if len(yesterday):  # a day with nothing before it is the baseline, not a change
            changes = lines.inventory_changes(today, yesterday)
            new_by_day.append(changes[changes["sampling_rate"] == rate].assign(day=day))
    new = pd.concat(new_by_day, ignore_index=True) if new_by_day else pd.DataFrame(columns=["day", "line_id", "label"])
    return out, new, rate


def _inventory_metadata(out: Mapping[str, pd.DataFrame], endpoint_signatures: pd.DataFrame, window_days: int) -> dict:
    detected = pd.concat(out.values(), ignore_index=True)
    detected = detected[detected["detected"].astype(bool)] if len(detected) else detected
    return {
        "rows": sum(len(t) for t in out.values()), "detections": len(detected), "window_days": window_days,
        "signatures_version": lines.signatures_version(endpoint_signatures),
        "lines_with_detections": dg.MetadataValue.json(
            detected.groupby("sampling_rate")["line_id"].nunique().rename(lambda r: f"1:{r}").to_dict()
            if len(detected) else {}),
    }


def _changed_check(check_name: str, asset: str, new: pd.DataFrame, rate: int) -> dg.AssetCheckResult:
    described = new.groupby(["day", "line_id"])["label"].agg(lambda s: ", ".join(sorted(s))) if len(new) else {}
    return dg.AssetCheckResult(
        check_name=check_name, asset_key=asset, passed=new.empty, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{day} {line}: {labels}" for (day, line), labels in dict(described).items())[:2000]
        or f"no line's inventory changed at 1:{rate}",
        metadata={"lines_changed": int(new["line_id"].nunique()) if len(new) else 0, "sampling_rate": rate,
                  "new_detections": dg.MetadataValue.json(
                      new[["day", "line_id", "level", "label", "evidence"]].head(50).to_dict("records")
                      if len(new) else [])},
    )


# --- sharded by subscriber line: IOT_ASSETS_LINE_SHARDS ------------------------------------------------
#
# An ISP's day holds every line; with N > 1 shards the line assets are partitioned day x shard by
# a stable hash of the line id, so one day's line work spreads over as many runs, workers or
# pods. With 1 shard they are partitioned by day, as every daily table. The union of a day's N
# shards is that day with 1 shard (tested). The device-level assets they read stay daily.

def _by_shard(keys, parts: Partitions) -> dict[int, list[tuple[str, str]]]:
    """Partition keys of a run grouped by shard: {shard: [(key, day), ...]} (one shard: the keys are the days)."""
    grouped: dict[int, list[tuple[str, str]]] = {}
    for key in keys:
        day, shard, count = parts.day_and_shard(key)
        if count != parts.line_shards:
            raise ValueError(f"partition {key} is of {count} shards, the code location has {parts.line_shards}")
        grouped.setdefault(shard, []).append((str(key), day))
    return grouped


def build(parts: Partitions) -> list:
    """This group's definitions over the partitions resolved at load."""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        # The window, and the day before it for yesterday's inventory (what changed).
        window_and_day_before = dg.TimeWindowPartitionMapping(start_offset=-parts.line_window_days,
                                                              allow_nonexistent_upstream_partitions=True)
        if parts.lines_sharded:
            # A shard's inventory takes the same shard's views of the window; every shard of a day
            # reads that day's (device-level) clean flows.
            views_of_window = dg.MultiPartitionMapping({
                "day": dg.DimensionPartitionMapping("day", window_and_day_before),
                "shard": dg.DimensionPartitionMapping("shard", dg.IdentityPartitionMapping()),
            })
            flows_of_day = dg.MultiToSingleDimensionPartitionMapping("day")
        else:
            views_of_window, flows_of_day = window_and_day_before, None
    # A ranged run over days (the daemon's backfills, `iot-assets run`); a sharded day is one run per
    # shard (the queue spreads them over workers), and `iot-assets run` asks for every shard of its days.
    line_backfill = None if parts.lines_sharded else parts.ranged_backfill
    # Shards of a day are built one after the other: the day's clean flows are read once for all of them.
    clean_columns = {"columns": lines.CLEAN_COLUMNS, "keep_days": 1 if parts.lines_sharded else 0}

    @dg.asset(group_name="lines", tags=stage(INGEST), io_manager_key="lake_io_manager")
    def line_membership(context: dg.AssetExecutionContext, raw_archives: pd.DataFrame, line_settings: LineSettings,
                        model_settings: ModelSettings) -> dg.Output:
        """Which device sits on which subscriber line, from lines.csv or seeded synthetic lines."""
        if line_settings.lines_csv:
            path = base_path(line_settings.lines_csv)
            if not path.exists():
                raise lines.LinesInputError(f"IOT_ASSETS_LINES={path}: no such file")
            with path.open("rb") as handle:
                membership = lines.parse_membership(pd.read_csv(handle, dtype=str, keep_default_na=False), str(path))
            membership = model_settings.pseudonymiser.membership(membership)  # the real MACs named as the flows name them
            source = str(path)
        else:
            devices = raw_archives.dropna(subset=["local_mac", "first_day"])
            membership = lines.synthetic_lines(
                devices["local_mac"].tolist(), date.fromisoformat(devices["first_day"].min()),
                date.fromisoformat(devices["last_day"].max()), lines=line_settings.synthetic_lines,
                max_devices=line_settings.max_devices_per_line, joining_share=line_settings.joining_share, seed=model_settings.seed)
            membership = _named_in_every_period(membership, raw_archives)
            source = f"synthetic (seed {model_settings.seed})"
        per_line = membership.groupby("line_id").size()
        return dg.Output(membership, metadata={
            "lines": int(membership["line_id"].nunique()), "memberships": len(membership),
            "devices": int(membership["device_mac"].nunique()), "source": source,
            "devices_per_line": dg.MetadataValue.json(per_line.value_counts().sort_index().to_dict()),
        })


    @dg.multi_asset(
        partitions_def=parts.lines,
        backfill_policy=line_backfill,
        group_name="lines",
        outs={
            "line_views": dg.AssetOut(tags=stage(DAILY_FLOWS), io_manager_key="lake_io_manager",
                                      metadata={"dagster/column_schema": column_schema(lines.LineViews)},
                                      description="The day's flows as the ISP edge sees each line: public side only, "
                                                  "once per packet sampling rate."),
            "line_truth": dg.AssetOut(tags=stage(DAILY_FLOWS), io_manager_key="lake_io_manager",
                                      description="Ground truth of the day: which device had traffic on which line."),
        },
        check_specs=[dg.AssetCheckSpec("line_views_schema", asset="line_views",
                                       description="pandera LineViews: no column but the public side of a flow.")],
        # Each day read once, and only the columns a view or the truth keeps.
        ins={"clean_flows": dg.AssetIn(partition_mapping=flows_of_day, metadata=clean_columns)},
    )
    def line_views(context: dg.AssetExecutionContext, clean_flows: LazyDays, line_membership: pd.DataFrame,
                   line_settings: LineSettings, model_settings: ModelSettings):
        """Line views of the day, or of the day's shard of the lines (no MAC, LAN address or device port; sampled
        1:N), and the ground truth beside them."""
        rates = line_settings.rates
        truth, failures, view_rows = {}, {}, []
        per_rate, line_ids = pd.Series(0, index=list(rates)), set()
        members_of_shard: dict[int, pd.DataFrame] = {}

        def view_of(key: str) -> pd.DataFrame:
            """A partition's views, as the lake writes them (a ranged run holds one's); its truth is kept (small)."""
            nonlocal per_rate
            day, shard, count = parts.day_and_shard(key)
            if shard not in members_of_shard:
                members_of_shard[shard] = (line_membership if count == 1
                                           else lines.shard_membership(line_membership, shard, count))
            members = members_of_shard[shard]
            clean = clean_flows[day]
            view = lines.line_views(clean, members, day, rates, model_settings.seed)
            truth[key] = lines.line_truth(clean, members, day)
            del clean
            try:
                lines.LineViews.validate(view, lazy=True)
            except pandera.errors.SchemaErrors as exc:
                failures[key] = f"{len(exc.failure_cases)} failures of LineViews"
            # Figures of the run without concatenating its days (a copy of every view).
            per_rate = per_rate.add(view.groupby("sampling_rate").size(), fill_value=0)
            line_ids.update(view["line_id"].unique())
            view_rows.append(len(view))
            day_rates = view.groupby("sampling_rate").size()
            day_base = int(day_rates.get(rates[0], 0))
            attach(context, "line_views", key, {
                "rows": len(view), "lines": int(view["line_id"].nunique()),
                "flows_per_rate": dg.MetadataValue.json({f"1:{r}": int(day_rates.get(r, 0)) for r in rates}),
                "surviving_share": dg.MetadataValue.json({f"1:{r}": round(int(day_rates.get(r, 0)) / day_base, 4)
                                                          if day_base else None for r in rates})})
            attach(context, "line_truth", key, {"rows": len(truth[key])})
            return view

        def views_metadata() -> dict:
            base = int(per_rate.get(rates[0], 0))
            return {
                "rows": int(sum(view_rows)), "lines": len(line_ids),
                "flows_per_rate": dg.MetadataValue.json({f"1:{r}": int(per_rate.get(r, 0)) for r in rates}),
                "surviving_share": dg.MetadataValue.json({f"1:{r}": round(int(per_rate.get(r, 0)) / base, 4) if base
                                                          else None for r in rates}),
            }

        built = DaysBuilt(context.partition_keys, view_of, views_metadata)
        yield dg.Output(built, output_name="line_views")
        built.written()  # truth, failures and view_rows are complete only now
        rows = int(sum(view_rows))
        yield dg.Output(truth, output_name="line_truth", metadata={"rows": sum(len(t) for t in truth.values())})
        yield dg.AssetCheckResult(check_name="line_views_schema", asset_key="line_views", passed=not failures,
                                  severity=dg.AssetCheckSeverity.ERROR,
                                  description="; ".join(f"{d}: {w}" for d, w in sorted(failures.items()))
                                  or "every day matches LineViews", metadata={"rows": rows})


    @dg.asset(group_name="lines", tags=stage(TRAINING), io_manager_key="lake_io_manager",
              ins={"clean_flows": dg.AssetIn(metadata={**EVERY_BUILT_DAY.metadata, "columns": lines.CLEAN_COLUMNS,
                                                       "keep_days": 0})})
    def endpoint_signatures(context: dg.AssetExecutionContext, clean_flows: LazyDays,
                            model_settings: ModelSettings) -> dg.Output:
        """Per device model (or manufacturer) the backend services only it uses, learned on the training days."""
        # A day at a time: the services each model used that day (counts), not the flows of every day at once.
        episodes = model_settings.read_episodes()
        observed, in_episodes = {}, {}
        for day in clean_flows:
            flows = clean_flows[day]
            if not len(flows):
                continue
            # Known attack episodes (injected ones) are not the products' backends.
            kept = lines.outside_episodes(flows, episodes)
            observed[day], in_episodes[day] = lines.service_observations(kept), len(flows) - len(kept)
            del flows, kept
        train_days, eval_days = time_split(sorted(observed), model_settings.train_fraction)
        observations = pd.concat([observed[day] for day in train_days], ignore_index=True) \
            .sort_values(lines.OBSERVATION_COLUMNS[:-1], kind="stable", ignore_index=True)
        signatures = lines.signatures_from_observations(observations)
        rules = signatures[signatures["level"] != "excluded"]
        per_label = rules.groupby(["level", "label"]).agg(rules=("rule_id", "size"), weight=("weight", "sum")).reset_index()
        return dg.Output(signatures, metadata={
            "rules": len(rules), "excluded_keys": int((signatures["level"] == "excluded").sum()),
            "models": len(lines.known_models(signatures)), "version": lines.signatures_version(signatures),
            "training_flows_in_episodes": sum(in_episodes[day] for day in train_days),
            "train_range": dg.MetadataValue.json([train_days[0], train_days[-1]]),
            "eval_range": dg.MetadataValue.json([eval_days[0], eval_days[-1]]),
            "rules_per_label": dg.MetadataValue.md(per_label.to_markdown(index=False, floatfmt=".2f")
                                                   if len(per_label) else "none"),
        })


    @dg.asset(
        partitions_def=parts.lines,
        backfill_policy=line_backfill,
        group_name="lines", tags=stage(DAILY_SCORING),
        io_manager_key="lake_io_manager",
        ins={"line_views": dg.AssetIn(partition_mapping=views_of_window, metadata=VIEWS_MATCHED),
             "endpoint_signatures": dg.AssetIn()},
        check_specs=[dg.AssetCheckSpec("line_inventory_changed", asset="line_inventory",
                                       description="Lines on which a device model (or manufacturer) appeared that "
                                                   "yesterday's inventory did not have.")],
    )
    def line_inventory(context: dg.AssetExecutionContext, line_views: LazyDays,
                       endpoint_signatures: pd.DataFrame, line_settings: LineSettings):
        """Per line: the device models (or manufacturers) present over the sliding window, with evidence."""
        out, news, rate = {}, [], min(line_settings.rates)
        window_keys = _by_shard(line_views, parts)
        for shard, keys in _by_shard(context.partition_keys, parts).items():
            # A line's inventory reads that line's views only: a shard's, from the same shard's views of the window.
            views = (line_views[key] for key, _ in window_keys.get(shard, []))
            by_day, new, rate = _inventories(views, endpoint_signatures, [day for _, day in keys], line_settings,
                                             parts.line_window_days)
            for key, day in keys:
                out[key] = by_day[day]
                attach(context, "line_inventory", key, line_metadata(by_day[day], day))
            news.append(new)
        new = pd.concat(news, ignore_index=True) if news else pd.DataFrame(columns=["day", "line_id", "label"])
        yield dg.Output(out, metadata={**_inventory_metadata(out, endpoint_signatures, parts.line_window_days),
                                       "shards": parts.line_shards})
        yield _changed_check("line_inventory_changed", "line_inventory", new, rate)


    @dg.asset(group_name="lines", tags=stage(REPORTS), io_manager_key="lake_io_manager",
              ins={"line_inventory": EVERY_BUILT_DAY})
    def line_first_detected(context: dg.AssetExecutionContext, line_inventory: LazyDays) -> dg.Output:
        """Per sampling rate, line and model: when the inventory first named it, and the last day it did."""
        table = lines.first_detected(_frames(line_inventory))
        return dg.Output(table, metadata={"rows": len(table), "lines": int(table["line_id"].nunique()) if len(table) else 0})


    # The metrics are a versioned JSON document like the models they judge: the model report shows them.
    @dg.asset(group_name="lines", tags=stage(REPORTS), io_manager_key="model_io_manager",
              ins={"line_views": dg.AssetIn(metadata={**EVERY_BUILT_DAY.metadata, **VIEWS_MATCHED}),
                   "line_truth": EVERY_BUILT_DAY, "endpoint_signatures": dg.AssetIn()})
    def line_metrics(context: dg.AssetExecutionContext, line_views: LazyDays,
                     line_truth: LazyDays, endpoint_signatures: pd.DataFrame,
                     line_settings: LineSettings, model_settings: ModelSettings, reports: ReportFiles):
        """Recall, precision, false presences and time to detect per sampling rate, on the evaluation days."""
        truth = _frames(line_truth)
        trained_to = str(endpoint_signatures["trained_to"].max())
        eval_days = sorted(d for d in truth["day"].unique() if d > trained_to)
        if not eval_days:
            raise ValueError(f"no line_truth day after the signatures' training range (to {trained_to}): nothing to evaluate")
        episodes = model_settings.read_episodes()
        # The evaluation days' views, matched a day at a time (`lines.evaluate` on them all at once, in less memory).
        rates: set[int] = set()

        def eval_views():
            for day in eval_days:
                for key in keys_of_days(parts.lines, [day]):
                    if key in line_views:
                        view = line_views[key]
                        rates.update(view["sampling_rate"].unique().tolist())
                        yield view

        units = lines.evidence_units_of(eval_views(), endpoint_signatures)
        metrics = lines.evaluate_units(units, truth, lines.known_models(endpoint_signatures), sorted(rates), eval_days,
                                       int(truth["line_id"].nunique()), parts.line_window_days, line_settings.threshold,
                                       episodes=episodes)
        metrics["train_range"] = [str(endpoint_signatures["trained_from"].min()), trained_to]
        metrics["signatures_version"] = lines.signatures_version(endpoint_signatures)
        json_path = reports.write_json("line_metrics.json", metrics)
        html_path = reports.write_text("line_metrics.html", page("iot-assets: device models behind the NAT",
                                                                 [metrics_fragment_html(metrics)]))
        rates = metrics["sampling"]
        headline = rates.get("100") or next(iter(rates.values()), {})
        return dg.Output(JsonDocument(metrics), metadata={
            "recall_1_100": headline.get("recall"), "precision_1_100": headline.get("precision"),
            "ttd_hours_median_1_100": headline.get("ttd_hours_median"),
            "eval_range": dg.MetadataValue.json(metrics["eval_range"]), "lines": metrics["lines"],
            "table": dg.MetadataValue.md(metrics_table_markdown(metrics)),
            "metrics": dg.MetadataValue.path(str(json_path)), "report_section": dg.MetadataValue.path(str(html_path)),
        })

    return [line_membership, line_views, endpoint_signatures, line_inventory, line_first_detected, line_metrics]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build(current_deployment().partitions))
