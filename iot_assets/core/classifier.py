"""Which device model is behind a MAC: XGBoost on device windows, evaluated on a time split."""

from __future__ import annotations

import io
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from iot_assets.contracts import catalogue
from iot_assets.core import anomaly
from iot_assets.core.features import FEATURES


def time_split(days: list[str], train_fraction: float) -> tuple[list[str], list[str]]:
    """Earlier days train, later days evaluate: devices and their clouds drift over months."""
    days = sorted(days)
    if len(days) < 2:
        raise ValueError(f"a time split needs at least two days of windows, got {len(days)}")
    cut = min(max(1, round(len(days) * train_fraction)), len(days) - 1)
    return days[:cut], days[cut:]


def window_days(windows: pd.DataFrame) -> pd.Series:
    return windows["window_start"].dt.strftime("%Y-%m-%d")


@dataclass(frozen=True)
class TimeSplit:
    """The one split every model uses: the earlier days train, the later days evaluate."""

    train_days: list[str]
    eval_days: list[str]

    @classmethod
    def of(cls, windows: pd.DataFrame, train_fraction: float) -> "TimeSplit":
        return cls(*time_split(window_days(windows).unique().tolist(), train_fraction))

    def is_train(self, windows: pd.DataFrame) -> pd.Series:
        return window_days(windows).isin(self.train_days)

    @property
    def train_range(self) -> list[str]:
        return [self.train_days[0], self.train_days[-1]]

    @property
    def eval_range(self) -> list[str]:
        return [self.eval_days[0], self.eval_days[-1]]


def _json_file(files: dict[str, bytes], name: str, model: str) -> dict:
    """A JSON document from a model's files, or a clear error: nothing else is ever parsed."""
    if name not in files:
        raise ValueError(f"{model}: file {name!r} is missing (files: {sorted(files)})")
    try:
        return json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{model}: {name!r} is not a JSON document ({error}); refusing to load it") from None


# ---------------------------------------------------------------- open set: is it any model we know?

NOVELTY_CAP = 3.0  # a feature counts at most three spreads: one wild feature does not make a device unknown
CALIBRATION_FRACTION = 0.3  # the last 30% of the training days calibrate the novelty threshold
MIN_MODEL_WINDOWS = 24  # a model's profile needs at least a day of windows
HELD_OUT_QUANTILE = 0.1
PROFILE_DAYS: int | None = 28  # novelty profiles from the last four weeks of training


@dataclass
class NoveltyModel:
    """How far a MAC's day is from each known model's usual behaviour, in that model's own spreads.

    A MAC's day is summarised by the median of each feature over its windows of the day
    (robust to an odd hour). Its distance to model k is the mean over features of
    min(|profile - centre_k| / spread_k, NOVELTY_CAP), with centre and spread (10th-90th
    percentile range, floored) over model k's training windows. A day is `unknown` when even
    the nearest model is further than `threshold`, which is chosen on held-out days of KNOWN
    devices (see `calibrate_threshold`).
    """

    labels: list[str]
    features: list[str]
    center: np.ndarray  # (labels, features)
    spread: np.ndarray  # (labels, features)
    threshold: float
    calibration: dict = field(default_factory=dict)

    def day_profiles(self, windows: pd.DataFrame, pool_days: int, days: list[str] | None = None) -> pd.DataFrame:
        """Median of each feature over each MAC's windows of each day, pooled with the days
        before it (`pooled_days`), indexed by (device_mac, day)."""
        rows, keys = pooled_days(windows, pool_days, days)
        x = pd.DataFrame(windows[self.features].to_numpy(dtype=float)[rows], columns=self.features)
        return x.groupby(keys).median()

    def distances(self, profiles: pd.DataFrame) -> pd.DataFrame:
        """Distance of each profile (row) to each known model (column).

        What most MACs of a day moved the same way, each against its nearest model, is the
        network's and left out (`anomaly.network_moves`): on 2019-09-16 and 09-17 the real
        Xiaomi light and au camera both sent several times their usual DNS, and both were
        called unknown.
        """
        z = _signed_spreads(profiles[self.features].to_numpy(dtype=float), self.center, self.spread)
        distance = _distance_of(z)
        if len(z) and len(self.labels):
            nearest = z[np.arange(len(z)), distance.argmin(axis=1)]
            network = anomaly.network_moves(nearest, profiles.index.get_level_values("day").to_numpy())
            if network.any():
                distance = _distance_of(np.where(network[:, None, :], 0.0, z))
        return pd.DataFrame(distance, index=profiles.index, columns=self.labels)

    def without(self, label: str) -> "NoveltyModel":
        """The model as if `label` had never been trained: its profile dropped, the threshold
        recalibrated without it. Each model's profile is fitted on its own windows only, so
        this equals a refit without that device."""
        keep = [i for i, name in enumerate(self.labels) if name != label]
        threshold, figures = calibrate_threshold(self.calibration.get("distances"), exclude=label)
        return NoveltyModel([self.labels[i] for i in keep], self.features, self.center[keep], self.spread[keep],
                            threshold, {**self.calibration, **figures})

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        figures = {k: v for k, v in self.calibration.items() if k != "distances"}
        meta = {"labels": self.labels, "features": self.features, "threshold": self.threshold,
                "cap": NOVELTY_CAP, "calibration": figures}
        return meta, {"center": self.center, "spread": self.spread}

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "NoveltyModel":
        shape = (len(meta["labels"]), len(meta["features"]))
        for name in ("center", "spread"):
            if arrays[name].shape != shape:
                raise ValueError(f"device classifier: novelty array {name!r} has shape {arrays[name].shape}, "
                                 f"expected {shape} (labels x features)")
        return cls(meta["labels"], meta["features"], arrays["center"], arrays["spread"], float(meta["threshold"]),
                   meta.get("calibration", {}))


def _signed_spreads(x: np.ndarray, center: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(profiles, models, features): how far each profile is from each model, in its spreads."""
    return (x[:, None, :] - center[None, :, :]) / spread[None, :, :]


def _distance_of(z: np.ndarray) -> np.ndarray:
    return np.minimum(np.abs(z), NOVELTY_CAP).mean(axis=2)


def _distances(x: np.ndarray, center: np.ndarray, spread: np.ndarray) -> np.ndarray:
    return _distance_of(_signed_spreads(x, center, spread))


def _profile_stats(windows: pd.DataFrame, labels_column: str, features: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    labels, centers, spreads = [], [], []
    for label, part in windows.groupby(labels_column):
        if len(part) < MIN_MODEL_WINDOWS:
            continue
        x = part[features].to_numpy(dtype=float)
        center = np.median(x, axis=0)
        spread = np.quantile(x, 0.9, axis=0) - np.quantile(x, 0.1, axis=0)
        # A feature that never varied for this model still has a scale: 5% of its value, at
        # least 0.02 (two points of a share, a few percent of a log count).
        labels.append(label)
        centers.append(center)
        spreads.append(np.maximum(spread, np.maximum(np.abs(center) * 0.05, 0.02)))
    return labels, np.array(centers).reshape(len(labels), len(features)), np.array(spreads).reshape(len(labels), len(features))


def calibrate_threshold(distances: pd.DataFrame | None, exclude: str | None = None) -> tuple[float, dict]:
    """The novelty threshold from calibration days of known devices.

    `distances` has one row per calibration device-day (index level `label`: the device's
    true model) and one column per model fitted on the earlier training days. Two figures
    come from it: how far known devices' days are from their OWN model (all must pass: the
    largest), and how far they are from the nearest OTHER model, as if they were unknown
    (held-out known devices: the 10th percentile). The threshold sits between the two
    (geometric mean) when they separate, else at the largest own distance, so that known
    devices stay named.
    """
    if distances is None or distances.empty:
        return float("inf"), {"threshold_rule": "not calibrated: too few training days or devices"}
    if exclude is not None:
        distances = distances.drop(columns=[exclude], errors="ignore")
        distances = distances[distances.index.get_level_values("label") != exclude]
    own, other = [], []
    for (label, *_), row in distances.iterrows():
        if label not in row.index:
            continue
        own.append(row[label])
        rest = row.drop(label)
        if len(rest):
            other.append(rest.min())
    if not own:
        return float("inf"), {"threshold_rule": "not calibrated: no calibration day of a modelled device"}
    own_max = float(np.max(own))
    other_low = float(np.quantile(other, HELD_OUT_QUANTILE)) if other else float("inf")
    separated = other_low > own_max and np.isfinite(other_low)
    threshold = float(np.sqrt(own_max * other_low)) if separated else own_max
    return threshold, {
        "threshold_rule": "geometric mean of the largest own distance and the 10th percentile of the nearest-other "
                          "distance on calibration days" if separated else
                          "largest own distance on calibration days (known and held-out distances overlap)",
        "calibration_device_days": len(own),
        "own_distance_max": own_max,
        "own_distance_median": float(np.median(own)),
        "held_out_distance_q10": other_low if other else None,
    }


def fit_novelty(train: pd.DataFrame, labels_column: str, features: list[str],
                calibration_fraction: float = CALIBRATION_FRACTION,
                profile_days: int | None = PROFILE_DAYS) -> NoveltyModel:
    """Profiles of every model on its recent training windows; the threshold from the later training days.

    Profiles describe how a model behaves NOW: the last `profile_days` training days (all
    of them when None). A device whose behaviour changed for good (the real Nature Remo
    stopped its HTTPS cloud flows in August) otherwise gets a profile spanning both states,
    wide enough to take in other quiet devices. Within those days the earlier ones fit
    provisional profiles and the last `calibration_fraction` are scored against them, which
    is what later days look like to a model: those distances set the threshold
    (`calibrate_threshold`).
    """
    days = sorted(window_days(train).unique())
    if profile_days is not None and len(days) > profile_days:
        days = days[-profile_days:]
        train = train[window_days(train).isin(days)]
    distances = None
    if len(days) >= 2:
        cut = min(max(1, round(len(days) * (1 - calibration_fraction))), len(days) - 1)
        early = window_days(train).isin(days[:cut])
        labels, center, spread = _profile_stats(train[early], labels_column, features)
        calibration = train[~early & train[labels_column].isin(labels)]
        if labels and len(calibration):
            profiles = calibration.groupby([calibration[labels_column].rename("label"),
                                            window_days(calibration).rename("day"), calibration["device_mac"]])[features].median()
            distances = pd.DataFrame(_distances(profiles.to_numpy(dtype=float), center, spread),
                                     index=profiles.index, columns=labels)
    threshold, figures = calibrate_threshold(distances)
    labels, center, spread = _profile_stats(train, labels_column, features)
    return NoveltyModel(labels, list(features), center, spread, threshold, {**figures, "distances": distances})


@dataclass
class DeviceClassifier:
    booster: xgb.XGBClassifier | None
    labels: list[str]
    features: list[str]
    # Anything else worth keeping beside the model (window_minutes, train_range): JSON values.
    info: dict = field(default_factory=dict)
    novelty: NoveltyModel | None = None

    MODEL_FILE = "model.json"
    META_FILE = "meta.json"
    NOVELTY_FILE = "novelty.npz"

    def predict_proba(self, windows: pd.DataFrame) -> np.ndarray:
        if self.booster is None:  # one known model: every window is it, as far as the booster can say
            return np.ones((len(windows), len(self.labels)))
        return self.booster.predict_proba(windows[self.features].to_numpy(dtype=np.float32))

    def to_files(self) -> dict[str, bytes]:
        """XGBoost's own JSON model, a JSON meta (labels, features, info, novelty settings) and
        the novelty profiles as a plain NPZ: no pickles."""
        meta = {"labels": self.labels, "features": self.features, **self.info}
        files = {}
        if self.booster is not None:  # one label: nothing to tell apart, no booster
            with tempfile.TemporaryDirectory() as tmp:
                # The scikit-learn wrapper's save_model keeps its own attributes (classes) in the JSON.
                path = Path(tmp) / self.MODEL_FILE
                self.booster.save_model(path)
                files[self.MODEL_FILE] = path.read_bytes()
        if self.novelty is not None:
            meta["novelty"], arrays = self.novelty.to_arrays()
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            files[self.NOVELTY_FILE] = buffer.getvalue()
        files[self.META_FILE] = json.dumps(meta, indent=2).encode()
        return files

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "DeviceClassifier":
        """The classifier back from `to_files`; refuses anything that is not JSON or a plain NPZ."""
        meta = _json_file(files, cls.META_FILE, "device classifier")
        booster = None
        if cls.MODEL_FILE in files or len(meta["labels"]) > 1:
            _json_file(files, cls.MODEL_FILE, "device classifier")  # XGBoost's JSON, checked before XGBoost reads it
            booster = xgb.XGBClassifier()
            booster.load_model(bytearray(files[cls.MODEL_FILE]))
        labels, features = meta.pop("labels"), meta.pop("features")
        novelty_meta = meta.pop("novelty", None)
        novelty = None
        if novelty_meta is not None:
            if cls.NOVELTY_FILE not in files:
                raise ValueError(f"device classifier: meta describes a novelty model but {cls.NOVELTY_FILE!r} is missing")
            novelty = NoveltyModel.from_arrays(novelty_meta, load_npz(files[cls.NOVELTY_FILE], "device classifier",
                                                                      cls.NOVELTY_FILE))
        return cls(booster, labels, features, meta, novelty)

    def save(self, path: Path, extra: dict) -> None:
        """The files of `to_files` beside each other: `path` (the model), `.meta.json`, `.novelty.npz`."""
        files = DeviceClassifier(self.booster, self.labels, self.features, {**self.info, **extra}, self.novelty).to_files()
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (path if name == self.MODEL_FILE else path.with_suffix("." + name)).write_bytes(data)

    @classmethod
    def load(cls, path: Path) -> "DeviceClassifier":
        names = [cls.MODEL_FILE, cls.META_FILE, cls.NOVELTY_FILE]
        paths = {name: path if name == cls.MODEL_FILE else path.with_suffix("." + name) for name in names}
        return cls.from_files({name: p.read_bytes() for name, p in paths.items() if p.exists()})


def load_npz(data: bytes, model: str, name: str) -> dict[str, np.ndarray]:
    """Arrays of an NPZ file; object arrays and pickles are refused (allow_pickle=False)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{model}: {name!r} is not a plain NPZ of numbers ({error}); refusing to load it") from None


BOOSTER = dict(n_estimators=300, max_depth=6, learning_rate=0.1, subsample=0.8, colsample_bytree=0.5, min_child_weight=1)
# Leave-one-device-out refits one classifier per device: 40 shallower trees at a higher
# learning rate (about a tenth of the work) name the known devices as well on the sample.
LODO_BOOSTER = dict(n_estimators=40, max_depth=4, learning_rate=0.3, subsample=0.8, colsample_bytree=0.5,
                    min_child_weight=1, max_bin=64)


def fit(train: pd.DataFrame, labels_column: str, features: list[str], seed: int,
        booster_params: dict | None = None) -> tuple[xgb.XGBClassifier | None, list[str]]:
    """XGBoost on the windows; None as booster when there is only one label (nothing to tell apart)."""
    labels = sorted(train[labels_column].unique())
    if len(labels) < 2:
        return None, labels
    # Rows in an order that does not depend on how MACs are named (in clear or pseudonymised):
    # the booster's row subsampling follows the row order.
    train = train.sort_values([labels_column, "window_start"], kind="stable") if "window_start" in train else train
    y = train[labels_column].map({label: i for i, label in enumerate(labels)}).to_numpy()
    # Each device counts the same, however many windows it has.
    counts = np.bincount(y, minlength=len(labels))
    weight = (len(y) / (len(labels) * counts))[y]
    booster = xgb.XGBClassifier(
        **(booster_params or BOOSTER), tree_method="hist", random_state=seed, n_jobs=2,
        objective="multi:softprob" if len(labels) > 2 else "binary:logistic",
    )
    booster.fit(train[features].to_numpy(dtype=np.float32), y, sample_weight=weight)
    return booster, labels


def evaluate(y_true: list[str], y_pred: list[str], labels: list[str]) -> dict:
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else None,
        "macro_f1": float(f1_score(y_true, y_pred, labels=[l for l, n in zip(labels, s) if n], average="macro",
                                   zero_division=0)) if len(y_true) else None,
        "labels": labels,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist() if len(y_true) else [],
        "per_device": {
            label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, label in enumerate(labels)
        },
    }


def labelled_windows(windows: pd.DataFrame, attacked: pd.Series | None) -> pd.DataFrame:
    """The windows a classifier learns from and is judged on: catalogue devices, outside attack episodes."""
    if attacked is not None:
        windows = windows[~attacked]
    return windows[windows["device_name"].notna()]


def train_and_evaluate(windows: pd.DataFrame, split: TimeSplit, seed: int,
                       attacked: pd.Series | None = None) -> tuple[DeviceClassifier, dict, pd.DataFrame]:
    """Fit on the earlier days' windows, score the later days'. Returns model, metrics, eval predictions.

    Windows inside injected attack episodes (`attacked`) are left out of both sides: the
    classifier learns and is judged on devices behaving as themselves. The model carries
    its novelty model (open set); `metrics["day_level"]` judges the day-level inventory.
    """
    excluded = int(attacked.sum()) if attacked is not None else 0
    labelled = labelled_windows(windows, attacked)
    in_train = split.is_train(labelled)
    train, evaluation = labelled[in_train], labelled[~in_train]
    booster, labels = fit(train, "device_name", FEATURES, seed)
    model = DeviceClassifier(booster, labels, list(FEATURES), novelty=fit_novelty(train, "device_name", FEATURES))
    known = evaluation[evaluation["device_name"].isin(labels)]
    predicted = [labels[i] for i in model.predict_proba(known).argmax(axis=1)] if len(known) else []
    metrics = evaluate(known["device_name"].tolist(), predicted, labels)
    importance = booster.get_booster().get_score(importance_type="gain") if booster is not None else {}
    names = {f"f{i}": name for i, name in enumerate(FEATURES)}
    metrics.update({
        "train_range": split.train_range,
        "eval_range": split.eval_range,
        "train_windows": int(len(train)),
        "eval_windows": int(len(known)),
        "eval_windows_of_devices_unseen_in_training": int(len(evaluation) - len(known)),
        "windows_excluded_as_attack_episodes": excluded,
        "day_level": day_level_scores(day_verdicts(model, known), known),
        # The same with each day on its own: what pooling a MAC's week (INVENTORY_DAYS) changes.
        "day_level_single_day": day_level_scores(day_verdicts(model, known, pool_days=1), known),
        "inventory_days": INVENTORY_DAYS,
        "novelty": {k: v for k, v in model.novelty.calibration.items() if k != "distances"}
                   | {"threshold": model.novelty.threshold, "models": len(model.novelty.labels)},
        "features": list(FEATURES),
        "feature_importance": dict(sorted(((names.get(k, k), float(v)) for k, v in importance.items()),
                                          key=lambda kv: -kv[1])),
    })
    predictions = known[["device_mac", "window_start", "device_name"]].assign(predicted=predicted)
    return model, metrics, predictions


# ---------------------------------------------------------------- inventory: one verdict per MAC and day

INVENTORY_COLUMNS = ["day", "device_mac", "windows", "predicted_device", "predicted_category", "confidence",
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
    per day it counts for) and the grouping keys of those rows (device_mac, day). Verdicts
    are made for the (MAC, day) pairs that have windows, and only for `days` when given.
    """
    mac_code, macs = pd.factorize(windows["device_mac"])
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
    mac = pd.Series(np.asarray(macs, dtype=object)[target // _DAY_SPAN], name="device_mac")
    day = pd.Series((target % _DAY_SPAN).astype("datetime64[D]").astype(str), name="day")
    return rows, [mac, day]


def day_verdicts(model: DeviceClassifier, windows: pd.DataFrame, pool_days: int | None = None,
                 days: list[str] | None = None) -> pd.DataFrame:
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
    `pool_days` is INVENTORY_DAYS unless given.
    """
    if windows.empty:
        return pd.DataFrame(columns=INVENTORY_COLUMNS)
    proba = pd.DataFrame(model.predict_proba(windows), columns=model.labels, index=windows.index)
    return verdicts_from(proba, model.novelty, windows, pool_days, days)


def verdicts_from(proba: pd.DataFrame, novelty_model: NoveltyModel | None, windows: pd.DataFrame,
                  pool_days: int | None = None, days: list[str] | None = None,
                  profiles: pd.DataFrame | None = None) -> pd.DataFrame:
    """`day_verdicts` from window probabilities (one column per known model, rows as `windows`);
    `profiles` are the novelty model's pooled day profiles when already computed."""
    if windows.empty:
        return pd.DataFrame(columns=INVENTORY_COLUMNS)
    labels = list(proba.columns)
    pool_days = pool_days or INVENTORY_DAYS
    rows, keys = pooled_days(windows, pool_days, days)
    per_mac = pd.DataFrame(proba.to_numpy()[rows], columns=labels).groupby(keys).mean()
    counts = windows.groupby([windows["device_mac"], window_days(windows).rename("day")]).size().reindex(per_mac.index)
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
    categories = {d.name: d.category for d in catalogue.DEVICES}
    # The catalogue device as cleaning named it (through the same mapping as the MACs, pseudonymised or not).
    catalogue_names = windows.dropna(subset=["device_name"]).groupby("device_mac")["device_name"].first()
    rows = []
    for i, (mac, day) in enumerate(per_mac.index):
        known = catalogue.BY_NAME.get(catalogue_names.get(mac))
        unknown = bool(novelty[i] > 1.0)
        predicted = None if unknown else labels[best[i]]
        rows.append({
            "day": day, "device_mac": mac, "windows": int(counts.iat[i]),
            "predicted_device": predicted, "predicted_category": categories.get(predicted),
            "confidence": float(per_mac.iat[i, best[i]]), "runner_up": labels[second[i]],
            "runner_up_confidence": float(per_mac.iat[i, second[i]]),
            "catalogue_device": known.name if known else None, "in_catalogue": known is not None,
            "disagrees": bool(known is not None and known.name != predicted),
            "status": "unknown" if unknown else "known", "nearest_known": nearest[i], "novelty": float(novelty[i]),
        })
    return pd.DataFrame(rows, columns=INVENTORY_COLUMNS)


def predict_inventory(model: DeviceClassifier, windows: pd.DataFrame, day: str) -> pd.DataFrame:
    """The day's inventory: per MAC seen on `day`, the device named (or `unknown`) with its
    evidence, pooled with the MAC's windows of the days before it in `windows` (`day_verdicts`)."""
    return day_verdicts(model, windows, days=[day])


def day_level_scores(verdicts: pd.DataFrame, windows: pd.DataFrame) -> dict:
    """Day-level inventory against the truth (`device_name` of the windows): a device-day is
    right when it is called known AND named correctly."""
    if verdicts.empty:
        return {"accuracy": None, "unknown_share": None, "device_days": 0}
    truth = windows.groupby([windows["device_mac"], window_days(windows).rename("day")])["device_name"].first()
    truth = truth.reindex(pd.MultiIndex.from_frame(verdicts[["device_mac", "day"]])).to_numpy()
    named = np.where(verdicts["status"] == "unknown", None, verdicts["predicted_device"])
    return {
        "accuracy": float(np.mean(named == truth)),
        "unknown_share": float((verdicts["status"] == "unknown").mean()),
        "device_days": int(len(verdicts)),
    }


def open_set_evaluation(windows: pd.DataFrame, split: TimeSplit, seed: int, attacked: pd.Series | None = None,
                        booster_params: dict | None = None, model: DeviceClassifier | None = None) -> dict:
    """Leave one device out: for each device, train without it and score the later days of every device.

    Per left-out device: the share of its evaluation days called `unknown`, and the model
    it was nearest to. Over all rounds: the share of the KNOWN devices' evaluation days
    still named correctly (known and the right name). The novelty profiles are per model,
    so dropping one equals a refit: the open-set figures are exact either way. The names
    of known devices come from a refit booster per device (LODO_BOOSTER, or
    `booster_params`), or, given the full `model`, from its probabilities with the left-out
    model's column removed and the rest renormalised: no refits (what the pipeline does,
    25 refits cost minutes), a close approximation of the refit that `method` names.
    """
    labelled = labelled_windows(windows, attacked)
    in_train = split.is_train(labelled)
    train, evaluation = labelled[in_train], labelled[~in_train]
    # The trained model's own novelty model was fitted on these same windows; refit only without it
    # (a model loaded from the store keeps no calibration distances to recalibrate from).
    fresh = model is not None and model.novelty is not None and model.novelty.calibration.get("distances") is not None
    novelty = model.novelty if fresh else fit_novelty(train, "device_name", FEATURES)
    truth = evaluation.groupby([evaluation["device_mac"], window_days(evaluation).rename("day")])["device_name"].first()
    full_proba = pd.DataFrame(model.predict_proba(evaluation), columns=model.labels, index=evaluation.index) \
        if model is not None else None
    left_out, known_days, known_right = {}, 0, 0
    trained = sorted(train["device_name"].unique())
    profiles = novelty.day_profiles(evaluation, INVENTORY_DAYS)  # the same in every round
    for device in trained:
        # With one trained model there is nothing left to name when it is left out.
        if len(trained) < 2 or not (evaluation["device_name"] == device).any():
            continue
        if full_proba is None:
            booster, labels = fit(train[train["device_name"] != device], "device_name", FEATURES, seed,
                                  booster_params or LODO_BOOSTER)
            proba = pd.DataFrame(DeviceClassifier(booster, labels, list(FEATURES)).predict_proba(evaluation),
                                 columns=labels, index=evaluation.index)
        else:
            proba = full_proba.drop(columns=[device], errors="ignore")
            proba = proba.div(proba.sum(axis=1).clip(lower=1e-12), axis=0)
            labels = list(proba.columns)
        without = novelty.without(device)
        verdicts = verdicts_from(proba, without, evaluation, INVENTORY_DAYS, profiles=profiles)
        true_name = truth.reindex(pd.MultiIndex.from_frame(verdicts[["device_mac", "day"]])).to_numpy()
        mine = verdicts[true_name == device]
        hints = Counter(mine["nearest_known"].dropna())
        left_out[device] = {
            "eval_days": int(len(mine)),
            "unknown_share": float((mine["status"] == "unknown").mean()),
            "nearest_known": hints.most_common(1)[0][0] if hints else None,
            "novelty_median": float(mine["novelty"].median()),
            "threshold": without.threshold,
        }
        others = verdicts[(true_name != device) & np.isin(true_name, labels)]
        others_truth = true_name[(true_name != device) & np.isin(true_name, labels)]
        known_days += len(others)
        known_right += int(((others["status"] == "known") & (others["predicted_device"] == others_truth)).sum())
    days_out = sum(v["eval_days"] for v in left_out.values())
    unknown_days = sum(v["eval_days"] * v["unknown_share"] for v in left_out.values())
    return {
        "method": f"leave one device out on the time split; day-level inventory over a MAC's last "
                  f"{INVENTORY_DAYS} evaluation days (mean of its window probabilities, median feature profile "
                  f"for novelty); names of known devices from "
                  + ("the full model with the left-out column removed" if model is not None
                     else "one refit booster per left-out device"),
        "lodo_booster": None if model is not None else booster_params or LODO_BOOSTER,
        "left_out": left_out,
        "left_out_device_days": days_out,
        "left_out_unknown_share": unknown_days / days_out if days_out else None,
        "known_device_days": known_days,
        "known_days_named_correctly": known_right / known_days if known_days else None,
        "threshold_full_model": novelty.threshold,
        "calibration": {k: v for k, v in novelty.calibration.items() if k != "distances"},
    }


# ---------------------------------------------------------------- per-flow baseline

_SCOPES = ["gateway", "lan", "internet", "broadcast", "multicast", "link_local", "unspecified"]
_REASONS = ["idle", "active", "eof", "end_detected"]


def flow_features(clean: pd.DataFrame) -> pd.DataFrame:
    """What a classifier of single flows sees: one flow's own numbers, no context."""
    dev = clean["device_initiated"].to_numpy()
    server_port = np.minimum(clean["remote_port"].to_numpy(), clean["device_port"].to_numpy())
    return pd.DataFrame({
        "protocol": clean["protocol"].to_numpy(float),
        "server_port": server_port.astype(float),
        "device_initiated": dev.astype(float),
        "scope": clean["remote_scope"].map({s: i for i, s in enumerate(_SCOPES)}).fillna(-1).to_numpy(float),
        "end_reason": clean["end_reason"].map({s: i for i, s in enumerate(_REASONS)}).fillna(-1).to_numpy(float),
        "ip_version": clean["ip_version"].to_numpy(float),
        "log_bytes_out": np.log1p(clean["bytes_out"].to_numpy(float)),
        "log_bytes_in": np.log1p(clean["bytes_in"].to_numpy(float)),
        "packets_out": clean["packets_out"].to_numpy(float),
        "packets_in": clean["packets_in"].to_numpy(float),
        "payload_per_pkt_out": (clean["payload_bytes_out"] / clean["non_empty_packets_out"].clip(lower=1)).to_numpy(float),
        "payload_per_pkt_in": (clean["payload_bytes_in"] / clean["non_empty_packets_in"].clip(lower=1)).to_numpy(float),
        "duration_ms": clean["duration_ms"].to_numpy(float),
        "tcp_flags_out": clean["union_tcp_flags_out"].to_numpy(float),
        "tcp_flags_in": clean["union_tcp_flags_in"].to_numpy(float),
    })


# The per-flow baseline is a comparison, not a model in use: it trains on a seeded sample of at
# most this many flows per device (the flow samples of every training day would grow with the
# days) with the light booster of the leave-one-device-out refits. On the 14-day sample at
# scale 0.1 (83k training flows) this kept the accuracy (0.413 with 300 full trees on every
# flow, 0.41 here) at a tenth of the time or less.
BASELINE_TRAIN_FLOWS_PER_DEVICE = 1000


def per_flow_baseline(train_flows: pd.DataFrame, eval_flows: pd.DataFrame, labels: list[str], seed: int) -> dict:
    """A per-flow classifier on the same split, for comparison with the window classifier."""
    train_flows = train_flows[train_flows["device_name"].isin(labels)]
    eval_flows = eval_flows[eval_flows["device_name"].isin(labels)]
    if train_flows.empty or eval_flows.empty:
        return {"accuracy": None, "macro_f1": None, "train_flows": 0, "eval_flows": 0}
    train_flows = train_flows.sample(frac=1.0, random_state=seed).groupby("device_name") \
        .head(BASELINE_TRAIN_FLOWS_PER_DEVICE)
    x_train = flow_features(train_flows).assign(device_name=train_flows["device_name"].to_numpy())
    booster, flow_labels = fit(x_train, "device_name", [c for c in x_train.columns if c != "device_name"], seed,
                               LODO_BOOSTER)
    # One label: no booster, every flow is that device.
    predicted_idx = booster.predict(flow_features(eval_flows).to_numpy(dtype=np.float32)) if booster is not None \
        else np.zeros(len(eval_flows), dtype=int)
    predicted = [flow_labels[int(i)] for i in predicted_idx]
    scores = evaluate(eval_flows["device_name"].tolist(), predicted, flow_labels)
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "train_flows": int(len(train_flows)), "eval_flows": int(len(eval_flows))}
