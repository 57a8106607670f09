"""Which device model is behind a MAC: XGBoost on device windows, evaluated on a time split."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from iot_assets.features import FEATURES


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


@dataclass
class DeviceClassifier:
    booster: xgb.XGBClassifier
    labels: list[str]
    features: list[str]
    # Anything else worth keeping beside the model (window_minutes, train_range): JSON values.
    info: dict = field(default_factory=dict)

    MODEL_FILE = "model.json"
    META_FILE = "meta.json"

    def predict_proba(self, windows: pd.DataFrame) -> np.ndarray:
        """One column per label. Trained on one device only, the model has nothing to tell apart: every
        window is that device (XGBoost would still answer with two columns)."""
        if len(self.labels) == 1:
            return np.ones((len(windows), 1))
        return self.booster.predict_proba(windows[self.features].to_numpy(dtype=np.float32))

    def to_files(self) -> dict[str, bytes]:
        """XGBoost's own JSON model and a JSON meta (labels, features, info): no pickles."""
        with tempfile.TemporaryDirectory() as tmp:
            # The scikit-learn wrapper's save_model keeps its own attributes (classes) in the JSON.
            path = Path(tmp) / self.MODEL_FILE
            self.booster.save_model(path)
            model = path.read_bytes()
        meta = {"labels": self.labels, "features": self.features, **self.info}
        return {self.MODEL_FILE: model, self.META_FILE: json.dumps(meta, indent=2).encode()}

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "DeviceClassifier":
        """The classifier back from `to_files`; refuses anything that is not JSON."""
        meta = _json_file(files, cls.META_FILE, "device classifier")
        _json_file(files, cls.MODEL_FILE, "device classifier")  # XGBoost's JSON, checked before XGBoost reads it
        booster = xgb.XGBClassifier()
        booster.load_model(bytearray(files[cls.MODEL_FILE]))
        labels, features = meta.pop("labels"), meta.pop("features")
        return cls(booster, labels, features, meta)

    def save(self, path: Path, extra: dict) -> None:
        """The files of `to_files` at `path` (the model) and beside it (`.meta.json`)."""
        files = DeviceClassifier(self.booster, self.labels, self.features, {**self.info, **extra}).to_files()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[self.MODEL_FILE])
        path.with_suffix(".meta.json").write_bytes(files[self.META_FILE])

    @classmethod
    def load(cls, path: Path) -> "DeviceClassifier":
        return cls.from_files({cls.MODEL_FILE: path.read_bytes(), cls.META_FILE: path.with_suffix(".meta.json").read_bytes()})


def fit(train: pd.DataFrame, labels_column: str, features: list[str], seed: int) -> tuple[xgb.XGBClassifier, list[str]]:
    labels = sorted(train[labels_column].unique())
    y = train[labels_column].map({label: i for i, label in enumerate(labels)}).to_numpy()
    # Each device counts the same, however many windows it has.
    counts = np.bincount(y, minlength=len(labels))
    weight = (len(y) / (len(labels) * counts))[y]
    booster = xgb.XGBClassifier(
        n_estimators=300, max_depth=6, learning_rate=0.1, subsample=0.8, colsample_bytree=0.5,
        min_child_weight=1, tree_method="hist", random_state=seed, n_jobs=2,
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


def train_and_evaluate(windows: pd.DataFrame, split: TimeSplit, seed: int,
                       attacked: pd.Series | None = None) -> tuple[DeviceClassifier, dict, pd.DataFrame]:
    """Fit on the earlier days' windows, score the later days'. Returns model, metrics, eval predictions.

    Windows inside injected attack episodes (`attacked`) are left out of both sides: the
    classifier learns and is judged on devices behaving as themselves.
    """
    excluded = int(attacked.sum()) if attacked is not None else 0
    if attacked is not None:
        windows = windows[~attacked]
    labelled = windows[windows["device_name"].notna()]
    in_train = split.is_train(labelled)
    train, evaluation = labelled[in_train], labelled[~in_train]
    booster, labels = fit(train, "device_name", FEATURES, seed)
    model = DeviceClassifier(booster, labels, list(FEATURES))
    known = evaluation[evaluation["device_name"].isin(labels)]
    predicted = [labels[i] for i in model.predict_proba(known).argmax(axis=1)] if len(known) else []
    metrics = evaluate(known["device_name"].tolist(), predicted, labels)
    importance = booster.get_booster().get_score(importance_type="gain")
    names = {f"f{i}": name for i, name in enumerate(FEATURES)}
    metrics.update({
        "train_range": split.train_range,
        "eval_range": split.eval_range,
        "train_windows": int(len(train)),
        "eval_windows": int(len(known)),
        "eval_windows_of_devices_unseen_in_training": int(len(evaluation) - len(known)),
        "windows_excluded_as_attack_episodes": excluded,
        "features": list(FEATURES),
        "feature_importance": dict(sorted(((names.get(k, k), float(v)) for k, v in importance.items()),
                                          key=lambda kv: -kv[1])),
    })
    predictions = known[["device_mac", "window_start", "device_name"]].assign(predicted=predicted)
    return model, metrics, predictions


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


def per_flow_baseline(train_flows: pd.DataFrame, eval_flows: pd.DataFrame, labels: list[str], seed: int) -> dict:
    """A per-flow classifier on the same split, for comparison with the window classifier."""
    train_flows = train_flows[train_flows["device_name"].isin(labels)]
    eval_flows = eval_flows[eval_flows["device_name"].isin(labels)]
    if train_flows.empty or eval_flows.empty:
        return {"accuracy": None, "macro_f1": None, "train_flows": 0, "eval_flows": 0}
    x_train = flow_features(train_flows).assign(device_name=train_flows["device_name"].to_numpy())
    booster, flow_labels = fit(x_train, "device_name", [c for c in x_train.columns if c != "device_name"], seed)
    predicted_idx = booster.predict(flow_features(eval_flows).to_numpy(dtype=np.float32))
    predicted = [flow_labels[int(i)] for i in predicted_idx]
    scores = evaluate(eval_flows["device_name"].tolist(), predicted, flow_labels)
    return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "train_flows": int(len(train_flows)), "eval_flows": int(len(eval_flows))}
