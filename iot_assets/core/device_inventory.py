"""The device inventory: one verdict per MAC and day, pooling the MAC's windows of the last week.

From a `classifier.DeviceClassifier`'s window probabilities and its novelty model
(`novelty.NoveltyModel`): the model named, or `unknown`, with its evidence.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from iot_assets.contracts import catalogue
from iot_assets.core.splits import window_days

if TYPE_CHECKING:
    from iot_assets.core.classifier import DeviceClassifier
    from iot_assets.core.novelty import EndpointModel, NoveltyModel

# `device_key` is the device (its MAC, ip:<private address> or line:<address>), `identity` says which;
# `device_mac` is the MAC of a MAC-known device (null otherwise), for the products matched by MAC.
INVENTORY_COLUMNS = ["day", "device_key", "identity", "device_mac", "windows", "predicted_device", "predicted_category",
                     "confidence",
                     "runner_up", "runner_up_confidence", "catalogue_device", "in_catalogue", "disagrees",
                     "status", "nearest_known", "novelty"]


INVENTORY_DAYS = 7


def inventory_days(day: str) -> list[str]:
    """The days a MAC's verdict of `day` pools, oldest first."""
    last = date.fromisoformat(day)
    return [(last - timedelta(days=back)).isoformat() for back in range(INVENTORY_DAYS - 1, -1, -1)]


_DAY_SPAN = 1_000_000  # more days than any date up to year 4700 counts since 1970


def pooled_days(windows: pd.DataFrame, pool_days: int, days: list[str] | None = None) -> tuple[np.ndarray, list[pd.Series]]:
    """Which windows each MAC's verdict of a day pools: its windows of that day and of the
    `pool_days - 1` days before it. Returns the rows (positions in `windows`, a row once
    per day it counts for) and the grouping keys of those rows (device_key, day). Verdicts
    are made for the (MAC, day) pairs that have windows, and only for `days` when given.
    """
    mac_code, macs = pd.factorize(windows["device_key"])
    start = windows["window_start"]
    if start.dt.tz is not None:
        start = start.dt.tz_convert("UTC").dt.tz_localize(None)
    # A (MAC, day) pair as one integer: MAC code * _DAY_SPAN + days since 1970.
    key = mac_code.astype(np.int64) * _DAY_SPAN + start.to_numpy().astype("datetime64[D]").astype(np.int64)
    present = np.unique(key)
    if days is not None:
        present = present[np.isin(present % _DAY_SPAN, np.array(days, dtype="datetime64[D]").astype(np.int64))]
    rows, targets = [], []
    for offset in range(pool_days):
        hit = np.flatnonzero(np.isin(key + offset, present))
        rows.append(hit)
        targets.append(key[hit] + offset)
    rows, target = np.concatenate(rows), np.concatenate(targets)
    mac = pd.Series(np.asarray(macs, dtype=object)[target // _DAY_SPAN], name="device_key")
    day = pd.Series((target % _DAY_SPAN).astype("datetime64[D]").astype(str), name="day")
    return rows, [mac, day]


def day_verdicts(model: DeviceClassifier, windows: pd.DataFrame, pool_days: int | None = None,
                 days: list[str] | None = None, endpoint_services: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per MAC and day (INVENTORY_COLUMNS), for `days` (all days of `windows` when None).

    The model behind a MAC does not change from one day to the next, so a MAC's verdict of
    a day pools its windows of the last `pool_days` days in `windows` (`pooled_days`): a
    day or two of odd behaviour (the real au camera's doubled DNS on 2019-09-16 and 17) is
    the detector's business, while a new model is far from every known one from its first
    day. The named model is the classifier's: the mean of the pooled window probabilities.
    `novelty` is the distance of the pooled profile to the NEAREST known model over the
    novelty threshold: above 1 the status is `unknown`, the predicted device and category
    are empty and `nearest_known` is the hint. A model without a novelty model (or one not
    calibrated) calls everything known. `windows` counts the day's own windows.
    `pool_days` is INVENTORY_DAYS unless given. Given the backend services the MACs contacted
    on the same days (`endpoint_services`: `novelty.service_flows` rows, the `device_services`
    asset) and a model with endpoints, a day is also `unknown` when the named model's backend
    services carry too little of its Internet flows (`novelty.EndpointModel`); `nearest_known`
    is then the model nearest in behaviour, the hint.
    """
    if windows.empty:
        return pd.DataFrame(columns=INVENTORY_COLUMNS)
    proba = pd.DataFrame(model.predict_proba(windows), columns=model.labels, index=windows.index)
    endpoints = model.endpoints if endpoint_services is not None else None
    coverage = endpoints.coverage(endpoint_services, pool_days or INVENTORY_DAYS, days) if endpoints is not None else None
    return verdicts_from(proba, model.novelty, windows, pool_days, days, endpoints=endpoints, coverage=coverage)


def verdicts_from(proba: pd.DataFrame, novelty_model: NoveltyModel | None, windows: pd.DataFrame,
                  pool_days: int | None = None, days: list[str] | None = None,
                  profiles: pd.DataFrame | None = None, endpoints: EndpointModel | None = None,
                  coverage: pd.DataFrame | None = None) -> pd.DataFrame:
    """`day_verdicts` from window probabilities (one column per known model, rows as `windows`);
    `profiles` are the novelty model's pooled day profiles when already computed; `coverage`
    is `endpoints.coverage(...)` of the same MACs and days (a MAC-day without flows in it has
    no endpoint evidence)."""
    if windows.empty:
        return pd.DataFrame(columns=INVENTORY_COLUMNS)
    labels = list(proba.columns)
    pool_days = pool_days or INVENTORY_DAYS
    rows, keys = pooled_days(windows, pool_days, days)
    per_mac = pd.DataFrame(proba.to_numpy()[rows], columns=labels).groupby(keys).mean()
    counts = windows.groupby([windows["device_key"], window_days(windows).rename("day")]).size().reindex(per_mac.index)
    ranked = np.argsort(-per_mac.to_numpy(), axis=1)
    best = ranked[:, 0]
    second = ranked[:, 1] if per_mac.shape[1] > 1 else ranked[:, 0]
    if novelty_model is not None and novelty_model.labels:
        if profiles is None:
            profiles = novelty_model.day_profiles(windows, pool_days, days)
        distance = novelty_model.distances(profiles.reindex(per_mac.index))
        nearest = distance.idxmin(axis=1).to_numpy()
        novelty = (distance.min(axis=1) / novelty_model.threshold).to_numpy()
    else:
        nearest = np.full(len(per_mac), None, dtype=object)
        novelty = np.zeros(len(per_mac))
    if endpoints is not None and coverage is not None:
        far_from_backend = endpoints.unknown(coverage.reindex(per_mac.index), np.asarray(labels, dtype=object)[best])
    else:
        far_from_backend = np.zeros(len(per_mac), dtype=bool)
    categories = {d.name: d.category for d in catalogue.DEVICES}
    # The catalogue device as cleaning named it (through the same mapping as the MACs, pseudonymised or not).
    catalogue_names = windows.dropna(subset=["device_name"]).groupby("device_key")["device_name"].first()
    # Which identity the key is (mac, private_ip, line); windows written before keys had one are MAC-keyed.
    identities = windows.groupby("device_key")["identity"].first() if "identity" in windows else pd.Series(dtype=object)
    rows = []
    for i, (mac, day) in enumerate(per_mac.index):
        known = catalogue.BY_NAME.get(catalogue_names.get(mac))
        unknown = bool(novelty[i] > 1.0 or far_from_backend[i])
        predicted = None if unknown else labels[best[i]]
        rows.append({
            "day": day, "device_key": mac, "identity": identities.get(mac, "mac"),
            "device_mac": mac if identities.get(mac, "mac") == "mac" else None, "windows": int(counts.iat[i]),
            "predicted_device": predicted, "predicted_category": categories.get(predicted),
            "confidence": float(per_mac.iat[i, best[i]]), "runner_up": labels[second[i]],
            "runner_up_confidence": float(per_mac.iat[i, second[i]]),
            "catalogue_device": known.name if known else None, "in_catalogue": known is not None,
            "disagrees": bool(known is not None and known.name != predicted),
            "status": "unknown" if unknown else "known", "nearest_known": nearest[i], "novelty": float(novelty[i]),
        })
    return pd.DataFrame(rows, columns=INVENTORY_COLUMNS)


def predict_inventory(model: DeviceClassifier, windows: pd.DataFrame, day: str,
                      endpoint_services: pd.DataFrame | None = None) -> pd.DataFrame:
    """The day's inventory: per MAC seen on `day`, the device named (or `unknown`) with its
    evidence, pooled with the MAC's windows (and services contacted) of the days before it (`day_verdicts`)."""
    return day_verdicts(model, windows, days=[day], endpoint_services=endpoint_services)


def day_level_scores(verdicts: pd.DataFrame, windows: pd.DataFrame) -> dict:
    """Day-level inventory against the truth (`device_name` of the windows): a device-day is
    right when it is called known AND named correctly."""
    if verdicts.empty:
        return {"accuracy": None, "unknown_share": None, "device_days": 0}
    truth = windows.groupby([windows["device_key"], window_days(windows).rename("day")])["device_name"].first()
    truth = truth.reindex(pd.MultiIndex.from_frame(verdicts[["device_key", "day"]])).to_numpy()
    named = np.where(verdicts["status"] == "unknown", None, verdicts["predicted_device"])
    return {
        "accuracy": float(np.mean(named == truth)),
        "unknown_share": float((verdicts["status"] == "unknown").mean()),
        "device_days": int(len(verdicts)),
    }
