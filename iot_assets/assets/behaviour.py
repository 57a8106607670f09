"""Device behaviour: features per window, the device classifier, the anomaly detector."""

import json
import warnings
from pathlib import Path

import dagster as dg
import joblib
import numpy as np
import pandas as pd
from sklearn.feature_selection import f_classif

from iot_assets import anomaly, catalogue, classifier, drift
from iot_assets.features import CONTEXT_HOURS, FEATURES, build_windows
from iot_assets.inject import read_episodes
from iot_assets.partitions import daily_partitions
from iot_assets.resources import DataLake

CLASSIFIER_FILE = "device_classifier.json"
DETECTOR_FILE = "anomaly_detector.joblib"
BASELINE_FLOWS_PER_DEVICE_DAY = 400

with warnings.catch_warnings():
    # The parameter is beta in Dagster 1.13; the first day has no day before it.
    warnings.simplefilter("ignore", dg.BetaWarning)
    DAY_AND_DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, allow_nonexistent_upstream_partitions=True)


@dg.asset(
    partitions_def=daily_partitions,
    group_name="behaviour",
    io_manager_key="lake_io_manager",
    ins={"clean_flows": dg.AssetIn(partition_mapping=DAY_AND_DAY_BEFORE)},
)
def device_windows(context: dg.AssetExecutionContext, clean_flows: pd.DataFrame, lake: DataLake) -> dg.Output:
    """Behavioural features per device and window, with the trailing 24 hours as context."""
    day = context.partition_key
    days = clean_flows["flow_start"].dt.strftime("%Y-%m-%d")
    windows = build_windows(clean_flows[days == day], clean_flows[days < day], day, lake.window_minutes)
    return dg.Output(windows, metadata={
        "windows": len(windows), "devices": int(windows["device_mac"].nunique()) if len(windows) else 0,
        "features": len(FEATURES), "window_minutes": lake.window_minutes,
    })


def episodes_of(lake: DataLake) -> pd.DataFrame | None:
    return read_episodes(Path(lake.episodes)) if lake.episodes else None


def attacked_windows(windows: pd.DataFrame, lake: DataLake) -> pd.Series:
    """Windows in an injected episode or within the 24-hour context after one: not the device's normal."""
    return anomaly.label_windows(windows, episodes_of(lake), lake.window_minutes,
                                 lookback=pd.Timedelta(hours=CONTEXT_HOURS)).notna()


def _sample_flows(lake: DataLake, days: list[str], seed: int) -> pd.DataFrame:
    """Up to a few hundred clean flows per device and day, for the per-flow baseline."""
    frames = []
    for day in days:
        path = lake.table_path("clean_flows", day)
        if not path.exists():
            continue
        flows = pd.read_parquet(path)
        frames.append(flows.sample(frac=1.0, random_state=seed).groupby("device_mac").head(BASELINE_FLOWS_PER_DEVICE_DAY))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def exploration(train: pd.DataFrame) -> tuple[str, dict]:
    """Which features separate devices (ANOVA F across devices) and which repeat each other."""
    x = train[FEATURES].fillna(0.0)
    varying = [f for f in FEATURES if x[f].std() > 0]
    f_stat, _ = f_classif(x[varying], train["device_name"])
    separation = pd.Series(np.nan_to_num(f_stat, posinf=1e6), index=varying).sort_values(ascending=False)
    corr = x[varying].corr(method="spearman").abs()
    upper = corr.where(np.triu(np.ones(corr.shape, dtype=bool), k=1))
    redundant = upper.stack()
    redundant = redundant[redundant > 0.95].sort_values(ascending=False)
    constant = sorted(set(FEATURES) - set(varying))
    lines = [
        "# Feature exploration (training windows)", "",
        f"{len(train):,} windows of {train['device_name'].nunique()} devices, {len(FEATURES)} features.", "",
        "## Features that separate devices most (ANOVA F across devices)", "",
        "| feature | F |", "|---|---:|",
        *[f"| {name} | {value:,.1f} |" for name, value in separation.head(25).items()], "",
        "## Features that separate devices least", "",
        ", ".join(separation.tail(15).index), "",
        f"## Redundant pairs (|Spearman| > 0.95): {len(redundant)}", "",
        *[f"- {a} ~ {b}: {v:.3f}" for (a, b), v in redundant.head(30).items()], "",
        f"## Constant in training ({len(constant)})", "", ", ".join(constant) or "none", "",
    ]
    summary = {"top_separating": separation.head(25).round(2).to_dict(), "redundant_pairs": int(len(redundant)),
               "constant_features": constant}
    return "\n".join(lines), summary


@dg.asset(
    group_name="behaviour",
    ins={"device_windows": dg.AssetIn()},
    deps=["clean_flows"],
    check_specs=[dg.AssetCheckSpec("classifier_accuracy", asset="device_classifier",
                                   description="Accuracy on the later days' windows is at least 0.9.")],
)
def device_classifier(context: dg.AssetExecutionContext, device_windows: pd.DataFrame, lake: DataLake):
    """XGBoost device classifier, trained on the earlier days, evaluated on the later ones."""
    split = classifier.TimeSplit.of(device_windows, lake.train_fraction)
    model, metrics, _ = classifier.train_and_evaluate(device_windows, split, lake.seed,
                                                      attacked_windows(device_windows, lake))
    path = lake.models_dir / CLASSIFIER_FILE
    model.save(path, {"window_minutes": lake.window_minutes, "train_range": split.train_range})
    metrics["window"] = f"{lake.window_minutes}min"
    metrics["baseline_per_flow"] = classifier.per_flow_baseline(
        _sample_flows(lake, split.train_days, lake.seed), _sample_flows(lake, split.eval_days, lake.seed),
        model.labels, lake.seed)
    labelled = device_windows[device_windows["device_name"].notna()]
    report, explored = exploration(labelled[split.is_train(labelled)])
    metrics["exploration"] = explored
    lake.reports_dir.mkdir(parents=True, exist_ok=True)
    (lake.reports_dir / "classifier_metrics.json").write_text(json.dumps(metrics, indent=2))
    (lake.reports_dir / "feature_exploration.md").write_text(report)
    context.log.info(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    yield dg.MaterializeResult(metadata={
        "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
        "baseline_per_flow_accuracy": metrics["baseline_per_flow"]["accuracy"],
        "train_range": dg.MetadataValue.json(metrics["train_range"]),
        "eval_range": dg.MetadataValue.json(metrics["eval_range"]),
        "classes": len(model.labels), "model": dg.MetadataValue.path(str(path)),
        "metrics": dg.MetadataValue.path(str(lake.reports_dir / "classifier_metrics.json")),
        "exploration": dg.MetadataValue.path(str(lake.reports_dir / "feature_exploration.md")),
        "top_features": dg.MetadataValue.json(dict(list(metrics["feature_importance"].items())[:10])),
    })
    yield dg.AssetCheckResult(
        check_name="classifier_accuracy", passed=bool(metrics["accuracy"] >= 0.9),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "eval_windows": metrics["eval_windows"]},
    )


@dg.asset(
    partitions_def=daily_partitions,
    group_name="behaviour",
    io_manager_key="lake_io_manager",
    deps=["device_classifier"],
    check_specs=[
        dg.AssetCheckSpec("inventory_agrees_with_catalogue", asset="device_inventory",
                          description="At least 90% of the catalogue MACs seen get their catalogue device."),
        dg.AssetCheckSpec("no_unknown_devices", asset="device_inventory",
                          description="Every MAC seen is in the catalogue."),
        dg.AssetCheckSpec("no_silent_devices", asset="device_inventory",
                          description="Every device the classifier was trained on is seen."),
    ],
)
def device_inventory(context: dg.AssetExecutionContext, device_windows: pd.DataFrame, lake: DataLake):
    """Per MAC seen that day: the predicted device and category with confidence, against the catalogue."""
    model = classifier.DeviceClassifier.load(lake.models_dir / CLASSIFIER_FILE)
    inventory = predict_inventory(model, device_windows, context.partition_key)
    known = inventory[inventory["in_catalogue"]]
    agreement = float((~known["disagrees"]).mean()) if len(known) else None
    yield dg.Output(inventory, metadata={
        "macs": len(inventory), "not_in_catalogue": int((~inventory["in_catalogue"]).sum()),
        "disagreements": int(inventory["disagrees"].sum()), "agreement": agreement,
    })
    unknown = inventory[~inventory["in_catalogue"]]
    yield dg.AssetCheckResult(
        check_name="no_unknown_devices", passed=unknown.empty, severity=dg.AssetCheckSeverity.WARN,
        description=", ".join(f"{r.device_mac} (looks like {r.predicted_device}, {r.confidence:.0%})"
                              for r in unknown.itertuples()) or "every MAC is in the catalogue",
        metadata={"unknown_macs": dg.MetadataValue.json(unknown["device_mac"].tolist())},
    )
    seen = set(inventory["catalogue_device"].dropna())
    silent = sorted(set(model.labels) - seen)
    yield dg.AssetCheckResult(
        check_name="no_silent_devices", passed=not silent, severity=dg.AssetCheckSeverity.WARN,
        description=", ".join(silent) or "every trained device was seen",
        metadata={"silent": dg.MetadataValue.json(silent), "seen": len(seen), "trained": len(model.labels)},
    )
    yield dg.AssetCheckResult(
        check_name="inventory_agrees_with_catalogue", passed=agreement is None or agreement >= 0.9,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if agreement is None else f"{agreement:.1%} of {len(known)} catalogue MACs agree",
        metadata={"agreement": agreement, "disagreeing_macs": dg.MetadataValue.json(
            inventory.loc[inventory["disagrees"], ["device_mac", "catalogue_device", "predicted_device"]].to_dict("records"))},
    )


def predict_inventory(model: classifier.DeviceClassifier, windows: pd.DataFrame, day: str) -> pd.DataFrame:
    columns = ["day", "device_mac", "windows", "predicted_device", "predicted_category", "confidence",
               "runner_up", "runner_up_confidence", "catalogue_device", "in_catalogue", "disagrees"]
    if windows.empty:
        return pd.DataFrame(columns=columns)
    proba = pd.DataFrame(model.predict_proba(windows), columns=model.labels, index=windows.index)
    # A MAC's verdict is the mean of its windows' probabilities over the day.
    per_mac = proba.groupby(windows["device_mac"]).mean()
    ranked = np.argsort(-per_mac.to_numpy(), axis=1)
    categories = {d.name: d.category for d in catalogue.DEVICES}
    rows = []
    for i, mac in enumerate(per_mac.index):
        best, second = ranked[i, 0], ranked[i, 1] if per_mac.shape[1] > 1 else ranked[i, 0]
        known = catalogue.BY_MAC.get(mac)
        predicted = model.labels[best]
        rows.append({
            "day": day, "device_mac": mac, "windows": int((windows["device_mac"] == mac).sum()),
            "predicted_device": predicted, "predicted_category": categories.get(predicted),
            "confidence": float(per_mac.iat[i, best]), "runner_up": model.labels[second],
            "runner_up_confidence": float(per_mac.iat[i, second]),
            "catalogue_device": known.name if known else None, "in_catalogue": known is not None,
            "disagrees": bool(known is not None and known.name != predicted),
        })
    return pd.DataFrame(rows, columns=columns)


@dg.asset(group_name="behaviour", ins={"device_windows": dg.AssetIn()})
def anomaly_detector(context: dg.AssetExecutionContext, device_windows: pd.DataFrame, lake: DataLake):
    """PyOD detectors per device, compared on the later days, the best kept; thresholds at the target FPR."""
    split = classifier.TimeSplit.of(device_windows, lake.train_fraction)
    labels = anomaly.evaluation_labels(device_windows, episodes_of(lake), lake.window_minutes,
                                       pd.Timedelta(hours=CONTEXT_HOURS))
    train = split.is_train(device_windows)
    detector, metrics = anomaly.compare_and_fit(
        device_windows[train], labels[train], device_windows[~train], labels[~train], lake.target_fpr, lake.seed)
    path = lake.models_dir / DETECTOR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(detector, path)  # PyOD models are scikit-learn estimators: joblib is their format
    metrics.update({"threshold": f"per device: quantile {1 - lake.target_fpr:g} of its training scores",
                    "target_fpr": lake.target_fpr, "train_range": split.train_range,
                    "eval_range": split.eval_range, "devices_modelled": len(detector.devices),
                    "episodes": lake.episodes or None})
    lake.reports_dir.mkdir(parents=True, exist_ok=True)
    (lake.reports_dir / "anomaly_metrics.json").write_text(json.dumps(metrics, indent=2))
    return dg.MaterializeResult(metadata={
        "detector": metrics["detector"], "fpr_clean": metrics["fpr_clean"], "roc_auc": metrics["roc_auc"],
        "devices_modelled": len(detector.devices), "model": dg.MetadataValue.path(str(path)),
        "compared": dg.MetadataValue.json(metrics["detectors_compared"]),
        "metrics": dg.MetadataValue.path(str(lake.reports_dir / "anomaly_metrics.json")),
    })


@dg.asset(
    partitions_def=daily_partitions,
    group_name="behaviour",
    io_manager_key="lake_io_manager",
    deps=["anomaly_detector"],
    check_specs=[dg.AssetCheckSpec("anomaly_rate_in_bounds", asset="anomaly_scores",
                                   description="The day's share of flagged windows is at most five times the target FPR.")],
)
def anomaly_scores(context: dg.AssetExecutionContext, device_windows: pd.DataFrame, lake: DataLake):
    """Anomaly score, flag and the most deviating features per device-window."""
    detector: anomaly.AnomalyDetector = joblib.load(lake.models_dir / DETECTOR_FILE)
    scores = detector.score(device_windows) if len(device_windows) else pd.DataFrame(
        columns=["device_mac", "window_start", "score", "threshold", "top_features", "has_model", "anomaly", "score_ratio"])
    scores["device_name"] = device_windows["device_name"].to_numpy() if len(device_windows) else []
    rate = float(scores.loc[scores["has_model"].astype(bool), "anomaly"].mean()) if len(scores) else 0.0
    rate = 0.0 if np.isnan(rate) else rate
    flagged = scores[scores["anomaly"].astype(bool)]
    yield dg.Output(scores, metadata={
        "windows": len(scores), "anomalies": len(flagged), "anomaly_rate": rate,
        "without_model": int((~scores["has_model"].astype(bool)).sum()),
        "flagged": dg.MetadataValue.md(flagged[["device_name", "device_mac", "window_start", "score_ratio", "top_features"]]
                                       .head(20).to_markdown(index=False) if len(flagged) else "none"),
    })
    bound = 5 * lake.target_fpr
    yield dg.AssetCheckResult(
        check_name="anomaly_rate_in_bounds", passed=rate <= bound, severity=dg.AssetCheckSeverity.WARN,
        description=f"{rate:.2%} of windows flagged (bound {bound:.2%})",
        metadata={"anomaly_rate": rate, "bound": bound, "anomalies": len(flagged)},
    )


DRIFT_FILE = "drift_reference.json"


@dg.asset(group_name="behaviour", ins={"device_windows": dg.AssetIn()})
def drift_reference(context: dg.AssetExecutionContext, device_windows: pd.DataFrame, lake: DataLake):
    """Per device and feature, the training distribution and how far single training days strayed."""
    split = classifier.TimeSplit.of(device_windows, lake.train_fraction)
    train = split.is_train(device_windows) & ~attacked_windows(device_windows, lake)
    reference = drift.build_reference(device_windows[train])
    path = lake.models_dir / DRIFT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train_range": split.train_range, "devices": reference}))
    return dg.MaterializeResult(metadata={
        "devices": len(reference), "features": len(FEATURES), "train_range": dg.MetadataValue.json(split.train_range),
        "reference": dg.MetadataValue.path(str(path)),
    })


@dg.asset(
    partitions_def=daily_partitions,
    group_name="behaviour",
    io_manager_key="lake_io_manager",
    deps=["drift_reference"],
    check_specs=[dg.AssetCheckSpec("feature_drift", asset="feature_drift",
                                   description="Every device's features and service mix against the training reference: "
                                               "WARN on moderate drift, ERROR on major drift.")],
)
def feature_drift(context: dg.AssetExecutionContext, device_windows: pd.DataFrame, lake: DataLake):
    """The day's Jensen–Shannon distance to the training reference, per device and feature."""
    reference = json.loads((lake.models_dir / DRIFT_FILE).read_text())["devices"]
    table = drift.day_drift(device_windows, reference)
    summary = drift.summarize(table)
    major = summary[summary["level"] == "major"]
    moderate = summary[summary["level"] == "moderate"]
    yield dg.Output(table, metadata={
        "devices": len(summary), "drifted_features": int(table["drifted"].sum()),
        "summary": dg.MetadataValue.md(summary.to_markdown(index=False, floatfmt=".2f") if len(summary) else "no device"),
    })
    severity = dg.AssetCheckSeverity.ERROR if len(major) else dg.AssetCheckSeverity.WARN
    flagged = pd.concat([major, moderate])
    yield dg.AssetCheckResult(
        check_name="feature_drift", passed=flagged.empty, severity=severity,
        description="; ".join(f"{r.device_name or r.device_mac}: {r.level} ({r.drifted_share:.0%} of features, "
                              f"mix x{r.mix_ratio:.1f})" for r in flagged.itertuples()) or "no device drifted",
        metadata={
            "devices_major": len(major), "devices_moderate": len(moderate),
            "drifted_feature_share_max": float(summary["drifted_share"].max()) if len(summary) else 0.0,
            "per_device": dg.MetadataValue.json(summary[["device_name", "drifted_share", "mix_ratio", "level"]]
                                                .fillna("").to_dict("records")),
        },
    )
