"""Which model version is served changes only by a recorded decision.

A training or re-baselining run makes a candidate version; whether it is served is decided here:

- the first version of a model is served (there is nothing else to serve);
- a re-baseline is served: the run was asked for (by hand, or by `rebaseline_sensor`, which is off
  until someone turns it on) and names the devices whose new normal it fits;
- the drift reference follows the detector it was built for (it has no quality of its own);
- a challenger that beat the served version, and a retrain on the time split, are PROPOSED: the served
  version stays until `iot-assets models use ASSET VERSION` promotes it, unless automatic promotion is
  on (IOT_ASSETS_AUTO_PROMOTE=on), a policy one turns on, never a default.

Every change of the served version, and every proposal, is one record of the model's promotion log:
asset, event (`promoted` or `proposed`), from_version, to_version, at (UTC), reason, and the headline
metrics of both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

PROMOTED, PROPOSED = "promoted", "proposed"
# How a candidate came about: decides whether it is served without someone deciding so.
FIRST_TRAINING, CHALLENGE, RETRAIN, REBASELINE, FOLLOWS, USER = (
    "first_training", "challenge", "retrain", "rebaseline", "follows", "user")
ALWAYS_SERVED = {FIRST_TRAINING, REBASELINE, FOLLOWS, USER}


@dataclass(frozen=True)
class Candidate:
    """Why a version was built: its kind (the constants above), the reason in words, the figures behind it."""

    kind: str
    reason: str
    details: dict = field(default_factory=dict)  # e.g. the challenge's holdout figures, the detector followed


def decide(candidate_kind: str, has_served_version: bool, auto_promote: bool) -> str:
    """PROMOTED or PROPOSED for a new version (module docstring)."""
    if not has_served_version or candidate_kind in ALWAYS_SERVED:
        return PROMOTED
    if candidate_kind not in (CHALLENGE, RETRAIN):
        raise ValueError(f"unknown candidate kind {candidate_kind!r}")
    return PROMOTED if auto_promote else PROPOSED


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def headline_metrics(asset: str, metrics: dict | None) -> dict:
    """The figures a promotion record keeps of one side: what it was trained on and how good it was."""
    metrics = metrics or {}
    keys = {"device_classifier": ("accuracy", "macro_f1"),
            "anomaly_detector": ("detector", "fpr_clean", "roc_auc", "devices_modelled"),
            "drift_reference": ()}.get(asset, ())
    out = {"train_range": metrics.get("train_range")}
    if asset == "device_classifier":
        out["day_level_accuracy"] = _round((metrics.get("day_level") or {}).get("accuracy"))
    if asset == "drift_reference":
        out["devices"] = len(metrics.get("devices") or {})
    out.update({key: _round(metrics.get(key)) for key in keys})
    if metrics.get("baselines"):
        out["baselines"] = metrics["baselines"]
    return out


def challenge_reason(challenge: dict) -> str:
    """`challenger better: <rule> (<figure> champion -> challenger, ...) on the holdout A..B`."""
    old, new = challenge["champion"], challenge["challenger"]
    if challenge["model"] == "device_classifier":
        names = ("day_accuracy", "window_accuracy")
    else:
        names = ("worst_recall", "fpr_clean")
    figures = ", ".join(f"{name} {_figure(old.get(name))} -> {_figure(new.get(name))}" for name in names)
    return f"challenger better: {challenge['reason']} ({figures}) on the holdout {'..'.join(challenge['holdout'])}"


def _figure(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def challenge_figures(challenge: dict) -> dict:
    """The holdout figures of both sides of a challenge, without the per-type detail."""
    def side(figures: dict) -> dict:
        return {k: _round(v) for k, v in figures.items() if k != "per_episode_type"}

    return {"holdout": challenge["holdout"], "champion": side(challenge["champion"]),
            "challenger": side(challenge["challenger"])}


def record(asset: str, event: str, from_version: str | None, to_version: str, reason: str, from_metrics: dict | None,
           to_metrics: dict, at: datetime | None = None, **details) -> dict:
    """One line of the promotion log."""
    at = at or datetime.now(timezone.utc)
    return {"asset": asset, "event": event, "from_version": from_version, "to_version": to_version,
            "at": at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "reason": reason,
            "from_metrics": from_metrics, "to_metrics": to_metrics, **details}


def served_since(records: list[dict], version: str) -> dict | None:
    """The promotion that made `version` the served one most recently (None: never promoted)."""
    promoted = [r for r in records if r["event"] == PROMOTED and r["to_version"] == version]
    return promoted[-1] if promoted else None


def last_event(records: list[dict], version: str) -> dict | None:
    """The latest record that names `version` as the one promoted or proposed."""
    named = [r for r in records if r["to_version"] == version]
    return named[-1] if named else None


def user_reason(records: list[dict], version: str, served: str | None) -> str:
    """Why a user's `models use` serves `version`: a proposal promoted, a rollback, or a version never recorded."""
    last = last_event(records, version)
    if last is None:
        return "chosen by user (a version the promotion log never named)"
    if last["event"] == PROPOSED and served_since(records, version) is None:
        return f"promoted by user: proposed {last['at']} ({last['reason']})"
    return f"rollback by user from {served}" if served else "rollback by user"
