"""How the training assets train: the time split or a challenge to the served version, re-baselines, and the
model output every training asset yields."""

import dagster as dg
import pandas as pd

from iot_assets.core import anomaly, promotion, rebaseline, splits
from iot_assets.core import champion as champion_module
from iot_assets.core.features import CONTEXT_HOURS
from iot_assets.defs.resources import ModelSettings
from iot_assets.io.models import ServedModels, model_version
from iot_assets.io.reports import ReportFiles


def attacked_windows(windows: pd.DataFrame, settings: ModelSettings) -> pd.Series:
    """Windows in an injected episode or within the 24-hour context after one: not the device's normal."""
    return anomaly.label_windows(windows, settings.read_episodes(), settings.window_minutes,
                                 lookback=pd.Timedelta(hours=CONTEXT_HOURS)).notna()


def version_output(model, metadata: dict) -> dg.Output:
    """A model as an asset output: its content hash is its version and its data version."""
    version = model_version(model)
    return dg.Output(model, data_version=dg.DataVersion(version), metadata={"version": version, **metadata})


class TrainingConfig(dg.Config):
    """How a training run builds its model: on the time split, or as a challenger to the version in use."""

    challenge: bool = False  # train on the recent window; serve it only if it beats the served version after it
    window_days: int = 28  # the challenger's training days: the latest before the holdout
    holdout_days: int = 7  # the days after the window both models are judged on
    # DEVICE_MAC@FROM_DAY: refit only these devices of the served detector on their windows from that
    # day on (rebaseline_sensor sets it from rebaseline_decisions).
    rebaseline: list[str] = []


def training_split(windows: pd.DataFrame, config: TrainingConfig, model_settings: ModelSettings,
                   champion) -> tuple[pd.DataFrame, splits.TimeSplit]:
    """The windows and split to train on: the time split, or (challenging a champion) the sliding window and its holdout."""
    if champion is None:
        return windows, splits.TimeSplit.of(windows, model_settings.train_fraction)
    window, holdout = champion_module.sliding_split(splits.window_days(windows).unique().tolist(),
                                                    config.window_days, config.holdout_days)
    return windows[splits.window_days(windows).isin(window + holdout)], splits.TimeSplit(window, holdout)


def settle_challenge(context: dg.AssetExecutionContext, reports: ReportFiles, report_name: str, champion, challenger,
                     split: splits.TimeSplit, compared: tuple[str, dict]):
    """(the model to serve, the challenge's figures): the champion as it was, or the challenger with them in its metrics."""
    keep, challenge = compared
    reports.write_json(report_name, challenge)
    context.log.info(f"champion {champion.version} against a challenger on {split.train_range}: "
                     f"{keep} kept ({challenge['reason']})")
    if keep == "champion":
        return champion, challenge
    challenger.metrics["challenge"] = challenge
    # Served at once only under automatic promotion; else proposed (iot_assets.core.promotion).
    challenger.candidate = promotion.Candidate(promotion.CHALLENGE, promotion.challenge_reason(challenge),
                                               {"challenge": promotion.challenge_figures(challenge)})
    return challenger, challenge


def challenge_metadata(challenge: dict | None) -> dict:
    if challenge is None:
        return {"decision": "first training or no challenge: trained on the time split"}
    # The comparison's outcome only: whether a better challenger is served or just proposed is the
    # promotion log's decision, shown beside it as `this_version` by the model IO manager.
    outcome = ("champion kept" if challenge["decision"] == "champion"
               else "challenger better (served or proposed: see this_version)")
    return {"decision": f"{outcome}: {challenge['reason']}", "challenge": dg.MetadataValue.json(challenge)}


def rebaselined_detector(context: dg.AssetExecutionContext, config: TrainingConfig, windows: pd.DataFrame,
                          model_settings: ModelSettings, reports: ReportFiles, served_models: ServedModels,
                          services: pd.DataFrame | None = None) -> dg.Output:
    """The served detector with the requested devices refitted on their new normal: a new version.
    `services`: the windows' `device_services` rows (a detector with endpoint evidence relearns the
    device's backends too)."""
    detector = served_models.champion("anomaly_detector")
    if detector is None:
        raise dg.Failure("anomaly_detector: nothing to re-baseline before the first training")
    metrics = dict(detector.metrics or {})
    baselines = dict(metrics.get("baselines") or {})
    until = splits.window_days(windows).max()
    refitted = {}
    for request in config.rebaseline:
        device_key, _, from_day = request.partition("@")
        detector = rebaseline.refit_detector(detector, windows, device_key, from_day, model_settings.seed, services)
        refitted[device_key] = baselines[device_key] = {"from_day": from_day, "until": until}
    metrics["baselines"] = baselines
    detector.metrics = metrics
    detector.candidate = promotion.Candidate(
        promotion.REBASELINE, "rebaseline of " + ", ".join(f"{mac} from {b['from_day']}" for mac, b in refitted.items()),
        {"rebaselined": refitted})
    context.log.info("re-baselined " + ", ".join(f"{mac} from {b['from_day']}" for mac, b in refitted.items()))
    metrics_path = reports.write_json("anomaly_metrics.json", metrics)
    return version_output(detector, {
        "detector": metrics.get("detector"), "devices_modelled": len(detector.devices),
        "decision": f"re-baselined {len(refitted)} device(s)", "rebaselined": dg.MetadataValue.json(refitted),
        "baselines": dg.MetadataValue.json(baselines), "metrics": dg.MetadataValue.path(str(metrics_path)),
    })
