"""Champion and challenger: a retrain replaces the current model only when it does better.

The challenger is trained on a sliding window of recent days (`window_days`, ending
before the last `holdout_days`); both the current model (the champion) and the challenger
are scored on the holdout days after that window, which the challenger never saw. The
challenger replaces the champion only when it is better by the rules below; otherwise the
champion stays and the figures say why. When the champion itself was trained on some
holdout days its figures are optimistic: the comparison is still made (the challenger
must beat it anyway) and `champion_saw_holdout` says so.

- classifier: it must know every device model the champion knows; then better day-level
  inventory accuracy (known and named correctly) by at least MARGIN, or on a tie within
  MARGIN better window accuracy by at least MARGIN;
- anomaly detector: it must model as many devices, and keep the clean false-positive rate
  within the target (or the champion's, if higher); then, with episodes in the holdout,
  a higher worst per-type recall (or the same with fewer false positives); without
  episodes, a clean false-positive rate lower by at least a tenth of the target. The
  drift reference is retrained on the same window and follows the detector's decision
  (it has no quality of its own to compare).

The training assets run this when asked to challenge (`TrainingConfig.challenge`, as the
weekly schedule does); a first training, or one without it, trains on the time split.
"""

from __future__ import annotations

import pandas as pd

from iot_assets.core import anomaly, classifier, device_inventory

MARGIN = 0.005


def sliding_split(days: list[str], window_days: int, holdout_days: int) -> tuple[list[str], list[str]]:
    """(the challenger's training days, the holdout days after them) from the days available."""
    days = sorted(days)
    if holdout_days < 1 or window_days < 2:
        raise ValueError(f"need window_days >= 2 and holdout_days >= 1, got {window_days} and {holdout_days}")
    if len(days) < 3:
        raise ValueError(f"a challenge needs at least three days of windows, got {len(days)}")
    holdout_days = min(holdout_days, len(days) - 2)
    holdout = days[-holdout_days:]
    window = days[:-holdout_days][-window_days:]
    return window, holdout


def _saw(train_range: list[str] | None, holdout: list[str]) -> bool:
    return bool(train_range) and train_range[1] >= holdout[0]


def compare_classifiers(champion: classifier.DeviceClassifier, challenger: classifier.DeviceClassifier,
                        holdout: pd.DataFrame, holdout_range: list[str]) -> tuple[str, dict]:
    """("champion" or "challenger", the figures) from both models on the holdout windows
    (labelled, attack windows left out), by the classifier rules of the module docstring."""
    def figures(model: classifier.DeviceClassifier) -> dict:
        known = holdout[holdout["device_name"].isin(model.labels)]
        predicted = [model.labels[i] for i in model.predict_proba(known).argmax(axis=1)] if len(known) else []
        window_accuracy = float((known["device_name"].to_numpy() == predicted).mean()) if len(known) else None
        day = device_inventory.day_level_scores(device_inventory.day_verdicts(model, known), known)
        return {"window_accuracy": window_accuracy, "day_accuracy": day["accuracy"],
                "day_unknown_share": day["unknown_share"], "device_days": day["device_days"],
                "labels": len(model.labels), "train_range": (getattr(model, "metrics", None) or {}).get("train_range"),
                "version": getattr(model, "version", None)}

    old, new = figures(champion), figures(challenger)

    def value(f: dict, key: str) -> float:
        return f[key] if f[key] is not None else -1.0

    if set(champion.labels) - set(challenger.labels):
        keep, reason = "champion", "the challenger knows fewer device models: " + ", ".join(
            sorted(set(champion.labels) - set(challenger.labels)))
    elif value(new, "day_accuracy") > value(old, "day_accuracy") + MARGIN:
        keep, reason = "challenger", "better day-level accuracy"
    elif abs(value(new, "day_accuracy") - value(old, "day_accuracy")) <= MARGIN \
            and value(new, "window_accuracy") > value(old, "window_accuracy") + MARGIN:
        keep, reason = "challenger", "same day-level accuracy, better window accuracy"
    else:
        keep, reason = "champion", "the challenger is not better on the holdout days"
    return keep, {"model": "device_classifier", "decision": keep, "reason": reason, "holdout": holdout_range,
                  "champion": old, "challenger": new, "champion_saw_holdout": _saw(old["train_range"], holdout_range)}


def compare_detectors(champion: anomaly.AnomalyDetector, challenger: anomaly.AnomalyDetector,
                      holdout: pd.DataFrame, labels: pd.Series, holdout_range: list[str],
                      services: pd.DataFrame | None = None) -> tuple[str, dict]:
    """("champion" or "challenger", the figures) from both detectors on the holdout windows and
    their `anomaly.evaluation_labels`, by the detector rules of the module docstring; `services`:
    the holdout's `device_services` rows, for a detector with endpoint evidence."""
    def figures(detector: anomaly.AnomalyDetector) -> dict:
        result = anomaly.evaluate(detector.score(holdout, services=services), labels)
        per_type = result["per_episode_type"]
        return {"fpr_clean": result["fpr_clean"], "roc_auc": result["roc_auc"],
                "worst_recall": min((v["recall"] for v in per_type.values()), default=None),
                "per_episode_type": per_type, "devices_modelled": len(detector.devices),
                "train_range": (getattr(detector, "metrics", None) or {}).get("train_range"),
                "version": getattr(detector, "version", None)}

    old, new = figures(champion), figures(challenger)
    target = champion.target_fpr
    old_fpr = old["fpr_clean"] if old["fpr_clean"] is not None else 1.0
    new_fpr = new["fpr_clean"] if new["fpr_clean"] is not None else 1.0
    within_budget = new_fpr <= max(target, old_fpr) and new["devices_modelled"] >= old["devices_modelled"]
    if new["worst_recall"] is not None and old["worst_recall"] is not None:
        better = within_budget and (new["worst_recall"] > old["worst_recall"]
                                    or (new["worst_recall"] == old["worst_recall"] and new_fpr < old_fpr))
        reason = ("higher worst recall within the false-positive budget" if better
                  else "the challenger does not recall more within the false-positive budget")
    else:
        better = within_budget and new_fpr < old_fpr - target / 10
        reason = ("fewer false positives on the holdout days" if better
                  else "the challenger has no fewer false positives on the holdout days")
    keep = "challenger" if better else "champion"
    return keep, {"model": "anomaly_detector", "decision": keep, "reason": reason, "holdout": holdout_range,
                  "champion": old, "challenger": new, "target_fpr": target,
                  "champion_saw_holdout": _saw(old["train_range"], holdout_range)}
