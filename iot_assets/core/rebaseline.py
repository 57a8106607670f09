"""Re-baselining: a device whose behaviour changed for good gets a new normal.

A device has CHANGED on a day when its drift check is not `none` (drift.summarize) or at
least CHANGED_FLAGGED_SHARE of its windows were flagged. It is STABLE in the new state
when, over the last `stable_days` changed days in a row, its daily median score ratio
stays within a factor STABLE_FACTOR (a new steady behaviour, not an attack that comes and
goes). Then its detector and drift reference are refitted on the windows from the first
changed day on, and its alerts stop. The first day of a change is scored by the old
models, so a change that is itself an incident (a firmware change) is reported on that
day whatever happens after. An analyst can acknowledge a change (device_key, from_day):
that device is re-baselined at once on its windows from that day.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from iot_assets.core import drift
from iot_assets.core.anomaly import AnomalyDetector

STABLE_DAYS = 3
CHANGED_FLAGGED_SHARE = 0.25
STABLE_FACTOR = 2.0
SCORE_FLOOR = 0.25  # daily median score ratios below this count as this (all quiet is stable)
DAILY_COLUMNS = ["device_key", "day", "drift_level", "flagged_share", "median_score_ratio", "changed"]
DECISION_COLUMNS = ["device_key", "from_day", "decided_on", "reason", "evidence"]


def daily_status(drift_summary: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Per device and day: drift level, share of flagged windows, median score ratio, changed or not.

    `drift_summary` is `drift.summarize` of each day with a `day` column; `scores` the
    anomaly scores of the same days (device_key, window_start, anomaly, score_ratio).
    """
    day = scores["window_start"].dt.strftime("%Y-%m-%d")
    scored = scores[scores["score_ratio"].notna()]
    per_day = scored.groupby([scored["device_key"], day.loc[scored.index].rename("day")]).agg(
        flagged_share=("anomaly", "mean"), median_score_ratio=("score_ratio", "median")).reset_index()
    levels = drift_summary[["device_key", "day", "level"]].rename(columns={"level": "drift_level"})
    out = per_day.merge(levels, on=["device_key", "day"], how="outer")
    out["drift_level"] = out["drift_level"].fillna("none")
    out["flagged_share"] = out["flagged_share"].fillna(0.0)
    out["changed"] = (out["drift_level"] != "none") | (out["flagged_share"] >= CHANGED_FLAGGED_SHARE)
    return out[DAILY_COLUMNS].sort_values(["device_key", "day"]).reset_index(drop=True)


def decide(daily: pd.DataFrame, acknowledgements: pd.DataFrame | None = None, stable_days: int = STABLE_DAYS,
           since: dict[str, str] | None = None) -> pd.DataFrame:
    """Which devices to re-baseline after the last day of `daily` (DECISION_COLUMNS).

    `since` maps a device to the first day of its current baseline (days before it are
    ignored, so a re-baselined device is not re-baselined again for the same change);
    `acknowledgements` has device_key and from_day (an analyst's word: at once).
    """
    if stable_days < 1:
        raise ValueError(f"stable_days must be at least 1, got {stable_days}")
    since = since or {}
    decisions = []
    acknowledged = set()
    if acknowledgements is not None and len(acknowledgements):
        if "device_key" not in acknowledgements.columns:  # the analyst's CSV names a MAC-keyed device by its MAC
            acknowledgements = acknowledgements.rename(columns={"device_mac": "device_key"})
        missing = {"device_key", "from_day"} - set(acknowledgements.columns)
        if missing:
            raise ValueError(f"acknowledgements lack column(s) {', '.join(sorted(missing))}")
        for ack in acknowledgements.itertuples():
            from_day = pd.Timestamp(ack.from_day).strftime("%Y-%m-%d")
            if since.get(ack.device_key, "") >= from_day:
                continue  # already re-baselined from that day or later
            acknowledged.add(ack.device_key)
            decisions.append({"device_key": ack.device_key, "from_day": from_day, "decided_on": from_day,
                              "reason": "acknowledged", "evidence": "an analyst acknowledged the change"})
    for mac, days in daily.sort_values("day").groupby("device_key"):
        if mac in acknowledged:
            continue
        days = days[days["day"] >= since.get(mac, "")]
        if len(days) < stable_days:
            continue
        # The run of changed days that ends on the last day.
        changed = days["changed"].to_numpy()
        run = 0
        while run < len(changed) and changed[len(changed) - 1 - run]:
            run += 1
        if run < stable_days:
            continue
        recent = days.iloc[len(days) - stable_days:]
        level = np.maximum(recent["median_score_ratio"].fillna(0.0).to_numpy(), SCORE_FLOOR)
        if level.max() / level.min() > STABLE_FACTOR:
            continue  # still moving: not a new steady state yet
        first = days.iloc[len(days) - run]
        decisions.append({
            "device_key": mac, "from_day": first["day"], "decided_on": days["day"].iloc[-1], "reason": "stable change",
            "evidence": f"changed for {run} days from {first['day']} (drift {', '.join(recent['drift_level'])}; "
                        f"flagged {', '.join(f'{v:.0%}' for v in recent['flagged_share'])}); score level "
                        f"{level.min():.2f}-{level.max():.2f}x the threshold over the last {stable_days} days",
        })
    return pd.DataFrame(decisions, columns=DECISION_COLUMNS)


def own_windows(windows: pd.DataFrame, device_key: str, from_day: str) -> pd.DataFrame:
    """The device's windows from `from_day` on: its new normal."""
    days = windows["window_start"].dt.strftime("%Y-%m-%d")
    return windows[(windows["device_key"] == device_key) & (days >= from_day)]


def refit_detector(detector: AnomalyDetector, windows: pd.DataFrame, device_key: str, from_day: str,
                   seed: int, services: pd.DataFrame | None = None) -> AnomalyDetector:
    """A new detector with `device_key` refitted on its windows from `from_day` on.

    The other devices are untouched (shared, not copied: models are immutable once fitted). A
    detector with endpoint evidence needs the windows' `services` rows: the device's server ports are relearnt.
    """
    own = own_windows(windows, device_key, from_day)
    refit = AnomalyDetector(detector.kind, detector.target_fpr, list(detector.features)).fit(
        own, seed, services=services if detector.known_ports is not None else None)
    if device_key not in refit.devices:
        raise ValueError(f"cannot re-baseline {device_key} from {from_day}: {len(own)} windows since, "
                         f"the detector needs at least two days (48 hourly windows)")
    new_detector = copy.copy(detector)
    new_detector.devices = {**detector.devices, device_key: refit.devices[device_key]}
    if detector.known_ports is not None:
        new_detector.known_ports = {**detector.known_ports, device_key: refit.known_ports.get(device_key, set())}
    return new_detector


def refit_reference(reference: dict, windows: pd.DataFrame, device_key: str, from_day: str) -> dict:
    """The drift reference with `device_key` described by its windows from `from_day` on."""
    new_reference = dict(reference)
    fresh = drift.build_reference(own_windows(windows, device_key, from_day))
    if device_key in fresh:
        new_reference[device_key] = fresh[device_key]
    else:
        new_reference.pop(device_key, None)  # under two days: no reference rather than a stale one
    return new_reference


def refit_device(detector: AnomalyDetector, reference: dict, windows: pd.DataFrame, device_key: str,
                 from_day: str, seed: int) -> tuple[AnomalyDetector, dict]:
    """A new detector and drift reference with `device_key` refitted on its windows from `from_day` on."""
    return (refit_detector(detector, windows, device_key, from_day, seed),
            refit_reference(reference, windows, device_key, from_day))


def replay(windows: pd.DataFrame, detector: AnomalyDetector, reference: dict, days: list[str], seed: int,
           stable_days: int = STABLE_DAYS, acknowledgements: pd.DataFrame | None = None,
           rebaseline: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score `days` one after the other as the daily assets would, re-baselining as decided.

    Returns (events: DECISION_COLUMNS, one per re-baseline; per device and day: windows,
    flagged windows, drift level, whether the device was under a re-baselined model).
    With `rebaseline=False` the same days are scored by the original models, for comparison.
    """
    day_of = windows["window_start"].dt.strftime("%Y-%m-%d")
    since: dict[str, str] = {}
    history, events, rows = [], [], []
    for day in days:
        today = windows[day_of == day]
        if today.empty:
            continue
        scores = detector.score(today)
        summary = drift.summarize(drift.day_drift(today, reference)).assign(day=day)
        history.append(daily_status(summary, scores))
        for mac, part in scores.groupby("device_key"):
            level = summary.loc[summary["device_key"] == mac, "level"]
            rows.append({"device_key": mac, "day": day, "windows": int(len(part)),
                         "flagged": int(part["anomaly"].fillna(False).sum()),
                         "drift_level": level.iloc[0] if len(level) else "none",
                         "rebaselined": mac in since})
        if not rebaseline:
            continue
        acks = None
        if acknowledgements is not None and len(acknowledgements):
            acks = acknowledgements[pd.to_datetime(acknowledgements["from_day"]).dt.strftime("%Y-%m-%d") <= day]
        for decision in decide(pd.concat(history, ignore_index=True), acks, stable_days, since).itertuples():
            seen = windows[(day_of >= decision.from_day) & (day_of <= day)]
            try:
                detector, reference = refit_device(detector, reference, seen, decision.device_key,
                                                   decision.from_day, seed)
            except ValueError:
                continue  # too few windows yet: decided again tomorrow
            since[decision.device_key] = day  # the new baseline starts after today
            events.append(decision._asdict() | {"decided_on": day})
    events_frame = pd.DataFrame(events, columns=["Index", *DECISION_COLUMNS]).drop(columns="Index")
    return events_frame, pd.DataFrame(rows)
