"""Line inventories against the known membership: device-day recall, precision, false presences
per line and month, time to detect."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iot_assets.core.subscriber_lines.evidence import (
    INVENTORY_COLUMNS,
    evidence_units,
    inventory_from_units,
    rule_hits,
)
from iot_assets.core.subscriber_lines.signatures import SignatureParams, day_strings, known_models


def _quantile_hours(hours: np.ndarray, q: float) -> float | None:
    """A quantile of times to detect where never-detected is infinite; None when it lands there."""
    if len(hours) == 0:
        return None
    value = float(np.quantile(hours, q, method="inverted_cdf"))
    return None if np.isinf(value) else round(value, 2)


def _inventories(units: pd.DataFrame, eval_days: list[str], window_days: int, threshold: float) -> pd.DataFrame:
    frames = [inventory_from_units(units, day, window_days, threshold, window_start=eval_days[0]) for day in eval_days]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INVENTORY_COLUMNS)


def evaluate(views: pd.DataFrame, truth: pd.DataFrame, signatures: pd.DataFrame, eval_days: list[str],
             lines: int, window_days: int, threshold: float = 1.0,
             params: SignatureParams = SignatureParams(), episodes: pd.DataFrame | None = None) -> dict:
    """Inventories of the evaluation days against the known membership, per sampling rate.

    `views` are line views (any days: only evaluation days are used, and the sliding
    window never reaches into the training days); `truth` is `line_truth` of every day.
    - device-day recall: (line, device, day) with Internet-bound traffic, of a model the
      signatures were trained on, whose model is in that day's inventory (or its
      manufacturer, when the inventory names the manufacturer only);
    - precision: detections whose model (manufacturer) had Internet-bound traffic on the
      line within the window;
    - false presences per line and 30 days;
    - time to detect: from a device's first Internet-bound flow on the line (or on the first
      evaluation day, if it was on the line before) to its detection; never detected counts
      as infinite, so a quantile that lands there is null.
    Device-days inside a known attack episode (`episodes`: device, start, end) are scored
    apart (`recall_in_episodes`), as the other models leave attacked windows out: a
    scanning device or a replaced firmware does not talk to the product's backend.
    """
    eval_days = sorted(eval_days)
    views = views[pd.Series(day_strings(views["flow_start"]), index=views.index).isin(eval_days)]
    rates = sorted(views["sampling_rate"].unique().tolist()) if len(views) else []
    return evaluate_hits(rule_hits(views, signatures, params), truth, known_models(signatures), rates, eval_days,
                         lines, window_days, threshold, episodes)


def in_episodes(truth: pd.DataFrame, episodes: pd.DataFrame | None) -> np.ndarray:
    """Per truth row (line, device, day): whether the device had a known attack episode that day."""
    inside = np.zeros(len(truth), dtype=bool)
    if episodes is None or episodes.empty or truth.empty:
        return inside
    day_start = pd.to_datetime(truth["day"]).dt.tz_localize("UTC")
    day_end = day_start + pd.Timedelta(days=1)
    for ep in episodes.itertuples():
        inside |= (((truth["model"] == ep.device) | (truth["device_mac"] == ep.device))
                   & (day_start < ep.end) & (day_end > ep.start)).to_numpy()
    return inside


def evaluate_hits(hits: pd.DataFrame, truth: pd.DataFrame, trained_models: list[str], rates: list[int],
                  eval_days: list[str], lines: int, window_days: int, threshold: float = 1.0,
                  episodes: pd.DataFrame | None = None) -> dict:
    """`evaluate` from rule hits of the evaluation days, which may come from signatures refreshed day by day."""
    return evaluate_units(evidence_units(hits[hits["day"].isin(eval_days)]), truth, trained_models, rates, eval_days,
                          lines, window_days, threshold, episodes)


def evaluate_units(units: pd.DataFrame, truth: pd.DataFrame, trained_models: list[str], rates: list[int],
                   eval_days: list[str], lines: int, window_days: int, threshold: float = 1.0,
                   episodes: pd.DataFrame | None = None) -> dict:
    """`evaluate` from the evidence units of the evaluation days (`evidence_units_of` the views, a day at a time)."""
    eval_days = sorted(eval_days)
    units = units[units["day"].isin(eval_days)]
    inventories = _inventories(units, eval_days, window_days, threshold)
    trained = set(trained_models)
    truth = truth.copy()
    truth["known"] = truth["model"].isin(trained)
    truth["in_episode"] = in_episodes(truth, episodes)
    active_all = truth[truth["internet_flows"] > 0]
    # An attacked device is still on its line (precision), but its device-days are scored apart.
    active = active_all[~active_all["in_episode"]]
    active_eval = active[active["day"].isin(eval_days)]
    attacked = active_all[active_all["in_episode"] & active_all["day"].isin(eval_days) & active_all["known"]]
    invisible = truth[(truth["internet_flows"] == 0) & truth["day"].isin(eval_days) & truth["known"]]
    day_index = {d: i for i, d in enumerate(eval_days)}

    # Which labels are truly on a line on a day: traffic of that model or manufacturer in the window.
    present_rows = []
    for row in active_all[active_all["day"].isin(eval_days) & active_all["model"].notna()].itertuples():
        i = day_index[row.day]
        for j in range(i, min(i + window_days, len(eval_days))):
            present_rows.append((row.line_id, eval_days[j], "model", row.model))
            present_rows.append((row.line_id, eval_days[j], "manufacturer", row.manufacturer))
    present = set(present_rows)

    result = {}
    for rate in rates:
        inv = inventories[(inventories["sampling_rate"] == rate) & inventories["detected"].astype(bool)]
        detected = set(zip(inv["line_id"], inv["day"], inv["level"], inv["label"]))
        # Recall over device-days of trained models.
        devices = active_eval[active_eval["known"]]
        by_model = [(r.line_id, r.day, "model", r.model) in detected for r in devices.itertuples()]
        by_maker = [(r.line_id, r.day, "manufacturer", r.manufacturer) in detected for r in devices.itertuples()]
        hit_model = np.array(by_model, dtype=bool)
        hit_any = hit_model | np.array(by_maker, dtype=bool)
        hit_attacked = np.array([(r.line_id, r.day, "model", r.model) in detected
                                 or (r.line_id, r.day, "manufacturer", r.manufacturer) in detected
                                 for r in attacked.itertuples()], dtype=bool)
        # Precision over detections.
        is_true = np.array([(r.line_id, r.day, r.level, r.label) in present for r in inv.itertuples()], dtype=bool)
        # Time to detect.
        ttd = _time_to_detect(active, inventories[inventories["sampling_rate"] == rate], eval_days, trained)
        per_model = {}
        for model in sorted(trained | set(inv.loc[inv["level"] == "model", "label"])):
            mine = (devices["model"] == model).to_numpy()
            labelled = (inv["label"] == model).to_numpy()
            events = ttd[ttd["model"] == model]["hours"].to_numpy()
            per_model[model] = {
                "device_days": int(mine.sum()),
                "recall": round(float(hit_any[mine].mean()), 4) if mine.any() else None,
                "detections": int(labelled.sum()),
                "false_detections": int((labelled & ~is_true).sum()),
                "precision": round(float(is_true[labelled].mean()), 4) if labelled.any() else None,
                "ttd_events": int(len(events)),
                "ttd_hours_median": _quantile_hours(events, 0.5),
                "ttd_hours_p90": _quantile_hours(events, 0.9),
            }
        for maker in sorted(set(inv.loc[inv["level"] == "manufacturer", "label"])):
            labelled = ((inv["label"] == maker) & (inv["level"] == "manufacturer")).to_numpy()
            per_model[f"{maker} (manufacturer)"] = {
                "detections": int(labelled.sum()), "false_detections": int((labelled & ~is_true).sum()),
                "precision": round(float(is_true[labelled].mean()), 4),
            }
        hours = ttd["hours"].to_numpy()
        joined = ttd[ttd["first_on_line"]]["hours"].to_numpy()
        result[str(rate)] = {
            "recall": round(float(hit_any.mean()), 4) if len(hit_any) else None,
            "recall_model_level": round(float(hit_model.mean()), 4) if len(hit_model) else None,
            "precision": round(float(is_true.mean()), 4) if len(is_true) else None,
            "false_per_line_month": round(float((~is_true).sum()) / (lines * len(eval_days)) * 30, 4),
            "ttd_hours_median": _quantile_hours(hours, 0.5),
            "ttd_hours_p90": _quantile_hours(hours, 0.9),
            "device_days": int(len(hit_any)),
            "detections": int(len(is_true)),
            "false_detections": int((~is_true).sum()),
            "ttd_events": int(len(hours)),
            "ttd_never_detected": int(np.isinf(hours).sum()),
            "ttd_hours_median_new_on_line": _quantile_hours(joined, 0.5),
            "ttd_events_new_on_line": int(len(joined)),
            "invisible_device_days": int(len(invisible)),
            "episode_device_days": int(len(attacked)),
            "recall_in_episodes": round(float(hit_attacked.mean()), 4) if len(hit_attacked) else None,
            "per_model": per_model,
        }
    unknown = active_eval[~active_eval["known"]]
    return {
        "sampling": result,
        "lines": int(lines),
        "eval_range": [eval_days[0], eval_days[-1]] if eval_days else [],
        "eval_days": len(eval_days),
        "window_days": window_days,
        "threshold": threshold,
        "models_trained": sorted(trained),
        "untrained_device_days": int(len(unknown)),
        "untrained_models": sorted(unknown["model"].fillna(unknown["device_mac"]).unique().tolist()),
    }


def _time_to_detect(active: pd.DataFrame, inv: pd.DataFrame, eval_days: list[str], trained: set[str]) -> pd.DataFrame:
    """Per (line, device) of a trained model active in the evaluation days: hours to its detection."""
    columns = ["line_id", "model", "first_on_line", "hours"]
    known = active[active["model"].isin(trained)]
    in_eval = known[known["day"].isin(eval_days)]
    if in_eval.empty:
        return pd.DataFrame(columns=columns)
    start = in_eval.groupby(["line_id", "device_mac", "model", "manufacturer"], as_index=False).agg(
        t0=("first_internet_flow", "min"), day0=("day", "min"))
    ever = known.groupby(["line_id", "device_mac"])["day"].min().rename("first_day")
    start = start.join(ever, on=["line_id", "device_mac"])
    detected = inv[inv["detected"].astype(bool)]
    first_by_label = detected.sort_values(["day", "detected_at"]).groupby(["line_id", "level", "label"])
    table = first_by_label[["day", "detected_at"]].apply(lambda g: list(zip(g["day"], g["detected_at"])))
    table = table.to_dict() if len(detected) else {}
    rows = []
    for r in start.itertuples():
        candidates = [(d, t) for level, label in (("model", r.model), ("manufacturer", r.manufacturer))
                      for d, t in table.get((r.line_id, level, label), []) if d >= r.day0]
        if candidates:
            _, at = min(candidates)
            hours = max((at - r.t0).total_seconds(), 0.0) / 3600
        else:
            hours = np.inf
        rows.append((r.line_id, r.model, r.first_day >= eval_days[0], hours))
    return pd.DataFrame(rows, columns=columns)
