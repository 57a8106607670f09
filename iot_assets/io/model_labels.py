"""Model versions named for people: what they were trained on, when, and how good they were."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from iot_assets.core import promotion
from iot_assets.io.location import base_path

NAMES = {"device_classifier": "device classifier", "anomaly_detector": "anomaly detector",
         "drift_reference": "drift reference"}


def _headline(asset: str, metrics: dict) -> str:
    if asset == "device_classifier" and metrics.get("accuracy") is not None:
        return f"accuracy {metrics['accuracy']:.3f} on {'..'.join(metrics.get('eval_range') or [])}"
    if asset == "anomaly_detector" and metrics.get("fpr_clean") is not None:
        auc = f", ROC AUC {metrics['roc_auc']:.3f}" if metrics.get("roc_auc") is not None else ""
        return f"{metrics.get('detector', '')} flags {metrics['fpr_clean']:.2%} of clean windows{auc}".strip()
    return ""


def _written_on(path) -> str:
    """The day a file was written: a version stores no training date of its own."""
    try:
        info = path.fs.info(path.path)
    except (OSError, FileNotFoundError):
        return ""
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(stamp, (int, float)):
        stamp = datetime.fromtimestamp(stamp, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%d") if isinstance(stamp, datetime) else ""


def _metrics(directory, asset: str) -> dict:
    document = directory / ("document.json" if asset == "drift_reference" else "metrics.json")
    try:
        return (json.loads(document.read_text()) or {}) if document.exists() else {}
    except ValueError:
        return {}


def version_rows(store, asset: str) -> list[dict]:
    """Per saved version of `asset` (a ModelStore's), oldest first: version, served (bool), trained on, headline,
    served since (or when proposed) and the reason of its latest promotion record."""
    records = store.promotions(asset)
    served = store.current_or_none(asset)
    order = {r["to_version"]: i for i, r in reversed(list(enumerate(records)))}  # first record naming each
    rows = []
    for version in store.versions(asset):
        directory = store.root / asset / version
        metrics = _metrics(directory, asset)
        last, since = promotion.last_event(records, version), promotion.served_since(records, version)
        if version == served and since is not None:
            when, reason = since["at"], since["reason"]
        elif last is not None:
            when = f"{last['event']} {last['at']}" if last["event"] == promotion.PROPOSED else f"was served from {last['at']}"
            reason = last["reason"]
        else:
            when, reason = "", "not recorded (saved before the promotion log)"
        headline = _headline(asset, metrics) or (f"{len(metrics.get('devices') or {})} devices"
                                                 if asset == "drift_reference" else "")
        rows.append({"version": version, "served": version == served,
                     "trained_on": "..".join(metrics.get("train_range") or []), "headline": headline,
                     "served_since": when, "reason": reason,
                     "_order": (order.get(version, -1), _written_on(directory / "kind.json"))})
    rows.sort(key=lambda r: r.pop("_order"))
    return rows


def model_label(base_url: str, asset: str, version: str) -> str:
    """`anomaly detector baa89e86acf2 (trained on 2019-06-25..2019-07-04, built 2026-12-07, ...)`; the bare
    name and version when the store does not hold it."""
    directory = base_path(base_url) / "models" / asset / version
    name = f"{NAMES.get(asset, asset)} {version}"
    document = directory / ("document.json" if asset == "drift_reference" else "metrics.json")
    if not document.exists():
        return name
    try:
        metrics = json.loads(document.read_text()) or {}
    except ValueError:
        return name
    parts = []
    if metrics.get("train_range"):
        parts.append(f"trained on {'..'.join(metrics['train_range'])}")
    built = str(metrics.get("trained_at", ""))[:10] or _written_on(directory / "kind.json")
    if built:
        parts.append(f"built {built}")
    headline = _headline(asset, metrics)
    if headline:
        parts.append(headline)
    return f"{name} ({', '.join(parts)})" if parts else name


def model_labels(base_url: str, versions: dict[str, list[str]]) -> dict[str, str]:
    """version -> label for each asset's versions (`{"anomaly_detector": ["baa89e86acf2"], ...}`)."""
    return {v: model_label(base_url, asset, v) for asset, vs in versions.items() for v in vs}
