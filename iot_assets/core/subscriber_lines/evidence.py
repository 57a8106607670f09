"""Matching and inventory: rule hits in line views, evidence per rule, line and day, and the line inventory.

Per line and day, the models (or manufacturers) whose rules the line's flows hit within a
sliding window of days, with their evidence and the time of detection.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

import numpy as np
import pandas as pd

from iot_assets.contracts.schemas import UtcMs
from iot_assets.core.subscriber_lines.manufacturers import manufacturer_of
from iot_assets.core.subscriber_lines.signatures import SignatureParams, day_strings, remote_prefix

HIT_COLUMNS = ["sampling_rate", "line_id", "day", "time", "rule_id", "level", "label", "weight"]
INVENTORY_COLUMNS = ["day", "sampling_rate", "line_id", "level", "label", "detected", "evidence", "confidence",
                     "rules_hit", "flows", "first_hit", "last_hit", "detected_at", "superseded_by"]


# The columns of line views `rule_hits` reads.
MATCHED_COLUMNS = ["sampling_rate", "line_id", "flow_start", "flow_end", "remote_ip", "remote_port", "protocol"]


def rule_hits(views: pd.DataFrame, signatures: pd.DataFrame, params: SignatureParams = SignatureParams()) -> pd.DataFrame:
    """Every (flow, rule) match in line views; `time` is the flow's end, when the collector has the record."""
    rules = signatures[signatures["level"].isin(["model", "manufacturer"]) & (signatures["weight"] > 0)]
    if views.empty or rules.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in HIT_COLUMNS})
    v = pd.DataFrame({
        "sampling_rate": views["sampling_rate"].to_numpy(), "line_id": views["line_id"].to_numpy(),
        "day": day_strings(views["flow_start"]), "time": views["flow_end"].to_numpy(dtype="datetime64[ms]"),
        "prefix": remote_prefix(views["remote_ip"], params.v4_prefix_bits, params.v6_prefix_bits).to_numpy(),
        "remote_port": views["remote_port"].to_numpy(), "protocol": views["protocol"].to_numpy(),
    })
    v["flow"] = np.arange(len(v))
    keep = ["rule_id", "level", "label", "weight"]
    services = rules[rules["kind"] == "service"]
    prefixes = rules[rules["kind"] == "prefix"]
    by_service = v.merge(services[["prefix", "remote_port", "protocol", *keep]], on=["prefix", "remote_port", "protocol"])
    by_prefix = v.merge(prefixes[["prefix", *keep]], on="prefix")
    # A flow is one piece of evidence per label: its service rule, or the bare prefix when
    # the label has no rule for that service (a port it was not seen using there).
    covered = pd.MultiIndex.from_frame(by_service[["flow", "label"]])
    by_prefix = by_prefix[~pd.MultiIndex.from_frame(by_prefix[["flow", "label"]]).isin(covered)]
    hits = pd.concat([by_service, by_prefix], ignore_index=True)
    return hits[HIT_COLUMNS]


UNIT_COLUMNS = ["sampling_rate", "line_id", "level", "label", "rule_id", "day", "time", "last", "weight", "flows"]
_GROUP = ["sampling_rate", "line_id", "level", "label"]


def evidence_units(hits: pd.DataFrame) -> pd.DataFrame:
    """One unit of evidence per rule, line and day, at the rule's first hit that day."""
    if hits.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in UNIT_COLUMNS})
    units = hits.groupby([*_GROUP, "rule_id", "day"], as_index=False, sort=False).agg(
        time=("time", "min"), last=("time", "max"), weight=("weight", "first"), flows=("time", "size"))
    return units[UNIT_COLUMNS]


def evidence_units_of(views: Iterable[pd.DataFrame], signatures: pd.DataFrame, params: SignatureParams = SignatureParams(),
                      chunk_rows: int = 200_000) -> pd.DataFrame:
    """`evidence_units(rule_hits(all the views))`, matched `chunk_rows` views at a time.

    A flow's hits depend on that flow only, and a unit's figures (first and last hit, weight,
    hits) are the minimum, maximum, weight and sum over its chunks' units: the same units, while
    only a chunk's hits (a flow can hit many rules: more rows than its views) are in memory.
    """
    parts = []
    for frame in views:
        for start in range(0, len(frame), chunk_rows):
            units = evidence_units(rule_hits(frame.iloc[start:start + chunk_rows], signatures, params))
            if len(units):
                parts.append(units)
    if not parts:
        return evidence_units(pd.DataFrame(columns=HIT_COLUMNS))
    if len(parts) == 1:
        return parts[0]
    units = pd.concat(parts, ignore_index=True).groupby([*_GROUP, "rule_id", "day"], as_index=False, sort=False).agg(
        time=("time", "min"), last=("last", "max"), weight=("weight", "first"), flows=("flows", "sum"))
    return units[UNIT_COLUMNS]


def inventory(hits: pd.DataFrame, day: str, window_days: int, threshold: float = 1.0,
              window_start: str | None = None, confidence_at_threshold: float = 0.95) -> pd.DataFrame:
    """Per sampling rate, line and model (or manufacturer) with evidence in the window ending on `day`.

    Evidence accumulates over the `window_days` days up to `day` (not before `window_start`):
    each rule counts its weight once per day it is hit, so a quiet device's daily trickle
    adds up. Detected when the evidence reaches `threshold`; `detected_at` is when it did.
    Confidence maps evidence e to 1-(1-c)^(e/threshold), c the confidence at the threshold.
    A manufacturer detection is superseded when a model of that manufacturer is detected.
    """
    return inventory_from_units(evidence_units(hits), day, window_days, threshold, window_start,
                                confidence_at_threshold)


def inventory_from_units(units: pd.DataFrame, day: str, window_days: int, threshold: float = 1.0,
                         window_start: str | None = None, confidence_at_threshold: float = 0.95) -> pd.DataFrame:
    """`inventory` from precomputed `evidence_units` (of any days: the window is taken here)."""
    first = (date.fromisoformat(day) - timedelta(days=window_days - 1)).isoformat()
    if window_start and window_start > first:
        first = window_start
    units = units[(units["day"] >= first) & (units["day"] <= day)]
    if units.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in INVENTORY_COLUMNS})
    units = units.sort_values([*_GROUP, "time", "rule_id"], kind="mergesort")
    cumulative = units.groupby(_GROUP, sort=False)["weight"].cumsum()
    crossing = units[cumulative >= threshold - 1e-9].groupby(_GROUP)["time"].min().rename("detected_at")
    rows = units.groupby(_GROUP).agg(
        evidence=("weight", "sum"), rules_hit=("rule_id", "nunique"), flows=("flows", "sum"),
        first_hit=("time", "min"), last_hit=("last", "max"))
    rows = rows.join(crossing).reset_index()
    rows["evidence"] = rows["evidence"].round(4)
    rows["detected"] = rows["evidence"] >= threshold - 1e-9
    rows["confidence"] = (1.0 - (1.0 - confidence_at_threshold) ** (rows["evidence"] / threshold)).round(4)
    rows["day"] = day
    # A brand name adds nothing when the model itself is named.
    models = rows[(rows["level"] == "model") & rows["detected"]]
    named = models.assign(manufacturer=models["label"].map(manufacturer_of)).groupby(
        ["sampling_rate", "line_id", "manufacturer"])["label"].agg(lambda s: ";".join(sorted(s)))
    key = pd.MultiIndex.from_frame(rows[["sampling_rate", "line_id", "label"]])
    superseded = pd.Series(named.reindex(key).to_numpy(), index=rows.index)
    rows["superseded_by"] = superseded.where(rows["level"] == "manufacturer")
    rows.loc[rows["superseded_by"].notna(), "detected"] = False
    for column in ("first_hit", "last_hit", "detected_at"):
        rows[column] = pd.to_datetime(rows[column]).dt.tz_localize("UTC").astype(UtcMs)
    rows["flows"] = rows["flows"].astype(np.int64)
    rows["rules_hit"] = rows["rules_hit"].astype(np.int64)
    return rows[INVENTORY_COLUMNS].sort_values(_GROUP).reset_index(drop=True)


def inventory_changes(today: pd.DataFrame, yesterday: pd.DataFrame) -> pd.DataFrame:
    """Detections of today's inventory that yesterday's did not have: a new model on the line."""
    key = ["sampling_rate", "line_id", "level", "label"]
    now = today[today["detected"].astype(bool)]
    before = yesterday[yesterday["detected"].astype(bool)][key].drop_duplicates() if len(yesterday) else None
    if before is None or before.empty:
        return now.reset_index(drop=True)
    merged = now.merge(before.assign(_before=True), on=key, how="left")
    return merged[merged["_before"].isna()].drop(columns="_before").reset_index(drop=True)


def first_detected(inventories: pd.DataFrame) -> pd.DataFrame:
    """Per sampling rate, line and model: when it was first detected, and the last day it still was."""
    detected = inventories[inventories["detected"].astype(bool)]
    if detected.empty:
        return pd.DataFrame(columns=["sampling_rate", "line_id", "level", "label", "first_detected", "last_day"])
    return detected.groupby(["sampling_rate", "line_id", "level", "label"], as_index=False).agg(
        first_detected=("detected_at", "min"), last_day=("day", "max"))
