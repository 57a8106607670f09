"""Which device model is behind a MAC: XGBoost on device windows, evaluated on a time split.

The time split is in `splits`, the open-set model in `novelty`, the day-level inventory
in `device_inventory`.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
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

from iot_assets.core.device_inventory import INVENTORY_DAYS, day_level_scores, day_verdicts, verdicts_from
from iot_assets.core.features import FEATURES
from iot_assets.core.novelty import (
    EndpointModel,
    NoveltyModel,
    fit_endpoints,
    fit_novelty,
    services_outside_attacks,
)
from iot_assets.core.splits import TimeSplit, window_days


def _json_file(files: dict[str, bytes], name: str, model: str) -> dict:
    """A JSON document from a model's files, or a clear error: nothing else is ever parsed."""
    if name not in files:
        raise ValueError(f"{model}: file {name!r} is missing (files: {sorted(files)})")
    try:
        return json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{model}: {name!r} is not a JSON document ({error}); refusing to load it") from None


@dataclass
class DeviceClassifier:
    booster: xgb.XGBClassifier | None
    labels: list[str]
    features: list[str]
    # Anything else worth keeping beside the model (window_minutes, train_range): JSON values.
    info: dict = field(default_factory=dict)
    novelty: NoveltyModel | None = None
    endpoints: EndpointModel | None = None

    MODEL_FILE = "model.json"
    META_FILE = "meta.json"
    NOVELTY_FILE = "novelty.npz"
    ENDPOINTS_FILE = "endpoints.json"

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
        if self.endpoints is not None:
            files[self.ENDPOINTS_FILE] = json.dumps(self.endpoints.to_json()).encode()
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
        endpoints = None
        if cls.ENDPOINTS_FILE in files:
            endpoints = EndpointModel.from_json(_json_file(files, cls.ENDPOINTS_FILE, "device classifier"))
        return cls(booster, labels, features, meta, novelty, endpoints)

    def save(self, path: Path, extra: dict) -> None:
        """The files of `to_files` beside each other: `path` (the model), `.meta.json`, `.novelty.npz`."""
        files = DeviceClassifier(self.booster, self.labels, self.features, {**self.info, **extra}, self.novelty,
                                 self.endpoints).to_files()
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (path if name == self.MODEL_FILE else path.with_suffix("." + name)).write_bytes(data)

    @classmethod
    def load(cls, path: Path) -> "DeviceClassifier":
        names = [cls.MODEL_FILE, cls.META_FILE, cls.NOVELTY_FILE, cls.ENDPOINTS_FILE]
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
                       attacked: pd.Series | None = None,
                       endpoint_services: pd.DataFrame | None = None) -> tuple[DeviceClassifier, dict, pd.DataFrame]:
    """Fit on the earlier days' windows, score the later days'. Returns model, metrics, eval predictions.

    Windows inside injected attack episodes (`attacked`) are left out of both sides: the
    classifier learns and is judged on devices behaving as themselves. The model carries
    its novelty model (open set) and, given the backend services each MAC contacted per window
    (`endpoint_services`: `novelty.service_flows` rows, the `device_services` asset), its
    endpoint model fitted on the training days' services outside attack episodes;
    `metrics["day_level"]` judges the day-level inventory.
    """
    excluded = int(attacked.sum()) if attacked is not None else 0
    labelled = labelled_windows(windows, attacked)
    in_train = split.is_train(labelled)
    train, evaluation = labelled[in_train], labelled[~in_train]
    booster, labels = fit(train, "device_name", FEATURES, seed)
    model = DeviceClassifier(booster, labels, list(FEATURES), novelty=fit_novelty(train, "device_name", FEATURES))
    if endpoint_services is not None:
        endpoint_services = services_outside_attacks(endpoint_services, windows, attacked)
        model.endpoints = fit_endpoints(endpoint_services[endpoint_services["day"].isin(split.train_days)],
                                        INVENTORY_DAYS)
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
        "day_level": day_level_scores(day_verdicts(model, known, endpoint_services=endpoint_services), known),
        # The same with each day on its own: what pooling a MAC's week (INVENTORY_DAYS) changes.
        "day_level_single_day": day_level_scores(day_verdicts(model, known, pool_days=1,
                                                              endpoint_services=endpoint_services), known),
        "inventory_days": INVENTORY_DAYS,
        "novelty": {k: v for k, v in model.novelty.calibration.items() if k != "distances"}
                   | {"threshold": model.novelty.threshold, "models": len(model.novelty.labels)},
        "endpoints": None if model.endpoints is None else
                     {k: v for k, v in model.endpoints.calibration.items() if k not in ("coverage", "truth")}
                     | {"threshold": model.endpoints.threshold},
        "features": list(FEATURES),
        "feature_importance": dict(sorted(((names.get(k, k), float(v)) for k, v in importance.items()),
                                          key=lambda kv: -kv[1])),
    })
    predictions = known[["device_key", "window_start", "device_name"]].assign(predicted=predicted)
    return model, metrics, predictions


# ---------------------------------------------------------------- open set: leave one device out


def open_set_evaluation(windows: pd.DataFrame, split: TimeSplit, seed: int, attacked: pd.Series | None = None,
                        booster_params: dict | None = None, model: DeviceClassifier | None = None,
                        endpoint_services: pd.DataFrame | None = None) -> dict:
    """Leave one device out: for each device, train without it and score the later days of every device.

    Per left-out device: the share of its evaluation days called `unknown`, and the model
    it was nearest to. Over all rounds: the share of the KNOWN devices' evaluation days
    still named correctly (known and the right name). The novelty profiles are per model,
    so dropping one equals a refit: the open-set figures are exact either way. The names
    of known devices come from a refit booster per device (LODO_BOOSTER, or
    `booster_params`), or, given the full `model`, from its probabilities with the left-out
    model's column removed and the rest renormalised: no refits (what the pipeline does,
    25 refits cost minutes), a close approximation of the refit that `method` names.
    Given the services contacted (`endpoint_services`), endpoint evidence joins the verdicts: each
    model's services are its own, so dropping one equals a refit too (`EndpointModel.without`).
    """
    labelled = labelled_windows(windows, attacked)
    in_train = split.is_train(labelled)
    train, evaluation = labelled[in_train], labelled[~in_train]
    # The trained model's own novelty model was fitted on these same windows; refit only without it
    # (a model loaded from the store keeps no calibration distances to recalibrate from).
    fresh = model is not None and model.novelty is not None and model.novelty.calibration.get("distances") is not None
    novelty = model.novelty if fresh else fit_novelty(train, "device_name", FEATURES)
    truth = evaluation.groupby([evaluation["device_key"], window_days(evaluation).rename("day")])["device_name"].first()
    full_proba = pd.DataFrame(model.predict_proba(evaluation), columns=model.labels, index=evaluation.index) \
        if model is not None else None
    left_out, known_days, known_right = {}, 0, 0
    trained = sorted(train["device_name"].unique())
    profiles = novelty.day_profiles(evaluation, INVENTORY_DAYS)  # the same in every round
    endpoints = coverage = None
    if endpoint_services is not None:
        endpoint_services = services_outside_attacks(endpoint_services, windows, attacked)
        fresh_endpoints = model is not None and model.endpoints is not None \
            and model.endpoints.calibration.get("coverage") is not None
        endpoints = model.endpoints if fresh_endpoints else \
            fit_endpoints(endpoint_services[endpoint_services["day"].isin(split.train_days)], INVENTORY_DAYS)
        coverage = endpoints.coverage(endpoint_services[endpoint_services["day"].isin(split.eval_days)], INVENTORY_DAYS)
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
        endpoints_without = endpoints.without(device) if endpoints is not None else None
        verdicts = verdicts_from(proba, without, evaluation, INVENTORY_DAYS, profiles=profiles,
                                 endpoints=endpoints_without,
                                 coverage=coverage.drop(columns=[device], errors="ignore") if coverage is not None else None)
        true_name = truth.reindex(pd.MultiIndex.from_frame(verdicts[["device_key", "day"]])).to_numpy()
        mine = verdicts[true_name == device]
        hints = Counter(mine["nearest_known"].dropna())
        left_out[device] = {
            "eval_days": int(len(mine)),
            "unknown_share": float((mine["status"] == "unknown").mean()),
            "nearest_known": hints.most_common(1)[0][0] if hints else None,
            "novelty_median": float(mine["novelty"].median()),
            "threshold": without.threshold,
            "endpoint_threshold": endpoints_without.threshold if endpoints_without is not None else None,
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
                     else "one refit booster per left-out device")
                  + ("; unknown also when the named model's training services carry too little of the MAC's "
                     "Internet flows (endpoint evidence)" if endpoints is not None else ""),
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
