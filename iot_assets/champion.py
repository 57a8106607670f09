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
"""

from __future__ import annotations

import pandas as pd

from iot_assets import anomaly, classifier, drift
from iot_assets.features import FEATURES

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


def classifier_challenge(windows: pd.DataFrame, champion: classifier.DeviceClassifier, window_days: int,
                         holdout_days: int, seed: int, attacked: pd.Series | None = None
                         ) -> tuple[classifier.DeviceClassifier, dict]:
    """Train a challenger classifier on the recent window; (the model to keep, the figures)."""
    days = classifier.window_days(windows)
    window, holdout = sliding_split(days.unique().tolist(), window_days, holdout_days)
    labelled = classifier._labelled(windows, attacked)
    labelled_days = classifier.window_days(labelled)
    train, evaluation = labelled[labelled_days.isin(window)], labelled[labelled_days.isin(holdout)]
    booster, labels = classifier.fit(train, "device_name", FEATURES, seed)
    challenger = classifier.DeviceClassifier(booster, labels, list(FEATURES),
                                             {**champion.info, "train_range": [window[0], window[-1]]},
                                             classifier.fit_novelty(train, "device_name", FEATURES))

    def figures(model: classifier.DeviceClassifier) -> dict:
        known = evaluation[evaluation["device_name"].isin(model.labels)]
        predicted = [model.labels[i] for i in model.predict_proba(known).argmax(axis=1)] if len(known) else []
        window_accuracy = float((known["device_name"].to_numpy() == predicted).mean()) if len(known) else None
        day = classifier.day_level_scores(classifier.day_verdicts(model, known), known)
        return {"window_accuracy": window_accuracy, "day_accuracy": day["accuracy"],
                "day_unknown_share": day["unknown_share"], "device_days": day["device_days"],
                "labels": len(model.labels), "train_range": model.info.get("train_range")}

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
    return (challenger if keep == "challenger" else champion), {
        "model": "device_classifier", "decision": keep, "reason": reason,
        "window": [window[0], window[-1]], "holdout": [holdout[0], holdout[-1]],
        "champion": old, "challenger": new,
        "champion_saw_holdout": _saw(champion.info.get("train_range"), holdout),
    }


def detector_challenge(windows: pd.DataFrame, labels: pd.Series, champion: anomaly.AnomalyDetector,
                       champion_train_range: list[str] | None, window_days: int, holdout_days: int, seed: int
                       ) -> tuple[anomaly.AnomalyDetector, dict | None, dict]:
    """Train a challenger detector (and drift reference) on the recent window's clean windows.

    `labels` are `anomaly.evaluation_labels` of the windows. Returns (the detector to keep,
    the challenger's drift reference when it wins else None, the figures).
    """
    days = classifier.window_days(windows)
    window, holdout = sliding_split(days.unique().tolist(), window_days, holdout_days)
    train = windows[days.isin(window) & labels.isna()]
    evaluation_mask = days.isin(holdout)
    challenger = anomaly.AnomalyDetector(champion.kind, champion.target_fpr, champion.features).fit(train, seed)

    def figures(detector: anomaly.AnomalyDetector) -> dict:
        result = anomaly.evaluate(detector.score(windows[evaluation_mask]), labels[evaluation_mask])
        per_type = result["per_episode_type"]
        return {"fpr_clean": result["fpr_clean"], "roc_auc": result["roc_auc"],
                "worst_recall": min((v["recall"] for v in per_type.values()), default=None),
                "per_episode_type": per_type, "devices_modelled": len(detector.devices)}

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
    reference = drift.build_reference(train) if better else None
    return (challenger if better else champion), reference, {
        "model": "anomaly_detector", "decision": keep, "reason": reason,
        "window": [window[0], window[-1]], "holdout": [holdout[0], holdout[-1]],
        "champion": old, "challenger": new, "target_fpr": target,
        "champion_saw_holdout": _saw(champion_train_range, holdout),
    }
