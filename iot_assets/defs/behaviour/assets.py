"""Device behaviour: features per window, backend services, the device classifier, the anomaly detector, drift."""


import warnings
from datetime import date, timedelta

import dagster as dg
import pandas as pd

from iot_assets.contracts.calendar import previous_day
from iot_assets.contracts.schemas import AnomalyIncidents, column_schema
from iot_assets.core import anomaly, classifier, drift, incidents, novelty, promotion, rebaseline, splits
from iot_assets.core import champion as champion_module
from iot_assets.core.device_inventory import INVENTORY_DAYS, inventory_days, predict_inventory
from iot_assets.core.exploration import exploration
from iot_assets.core.features import (
    CONTEXT_HOURS,
    FEATURES,
    FLOW_COLUMNS,
    build_windows,
)
from iot_assets.defs.automation.sensors import AFTER_ITS_INPUTS
from iot_assets.defs.behaviour.training import (
    TrainingConfig,
    attacked_windows,
    challenge_metadata,
    rebaselined_detector,
    settle_challenge,
    training_split,
    version_output,
)
from iot_assets.defs.day_metadata import attach, incidents_metadata, inventory_metadata
from iot_assets.defs.loading import current_deployment
from iot_assets.defs.partitions import EVERY_BUILT_DAY, Partitions
from iot_assets.defs.resources import ModelSettings
from iot_assets.defs.stages import DAILY_FLOWS, DAILY_SCORING, REPORTS, TRAINING, stage
from iot_assets.io.lake import DaysBuilt, LazyDays, concat_days
from iot_assets.io.models import JsonDocument, ServedModels
from iot_assets.io.reports import ReportFiles

with warnings.catch_warnings():
    # The parameter is beta in Dagster 1.13; the first day has no day before it.
    warnings.simplefilter("ignore", dg.BetaWarning)
    DAY_AND_DAY_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-1, allow_nonexistent_upstream_partitions=True)
    # The deviations of a day and the day before, whose first hours' 24-hour endpoint shares reach one day further.
    DAY_AND_TWO_BEFORE = dg.TimeWindowPartitionMapping(start_offset=-2, allow_nonexistent_upstream_partitions=True)
    # A MAC's inventory verdict pools its windows of the day and the days before it.
    INVENTORY_WEEK = dg.TimeWindowPartitionMapping(start_offset=-(INVENTORY_DAYS - 1),
                                                   allow_nonexistent_upstream_partitions=True)



SCORE_COLUMNS = ["device_key", "window_start", "score", "threshold", "top_features", "network_features", "has_model",
                 "anomaly", "score_ratio", "device_name", "model_version"]


def _scores_metadata(scores: pd.DataFrame) -> dict:
    """anomaly_scores' figures of one day."""
    modelled = scores[scores["has_model"].astype(bool)] if len(scores) else scores
    flagged = scores[scores["anomaly"].astype(bool)] if len(scores) else scores
    network = anomaly.network_windows(scores)
    return {
        "windows": len(scores), "anomalies": len(flagged),
        "anomaly_rate": float(modelled["anomaly"].astype(bool).mean()) if len(modelled) else 0.0,
        "without_model": int((~scores["has_model"].astype(bool)).sum()) if len(scores) else 0,
        "flagged": dg.MetadataValue.md(flagged[["device_name", "device_key", "window_start", "score_ratio",
                                                "top_features"]].head(20).to_markdown(index=False)
                                       if len(flagged) else "none"),
        "network_windows": len(network),
        "network_moves": dg.MetadataValue.md(
            network.groupby("window_start").agg(devices=("device_key", "size"), features=("network_features", "first"))
            .reset_index().head(20).to_markdown(index=False) if len(network) else "none"),
    }


def _services(device_services: LazyDays, days: list[str] | None = None) -> pd.DataFrame:
    """The `device_services` rows of `days` (every day read when None), SERVICE_COLUMNS even when there are none."""
    services = concat_days({d: f for d, f in device_services.items() if days is None or d in days})
    return services if len(services) else pd.DataFrame(columns=novelty.SERVICE_COLUMNS)


def _aligned_deviations(detector: anomaly.AnomalyDetector, windows: pd.DataFrame, scores: pd.DataFrame,
                        services: pd.DataFrame) -> pd.DataFrame:
    """The detector's deviations of `windows`, on the rows of `scores` (matched by device and window)."""
    deviations = detector.deviations(windows, services)
    deviations.index = pd.MultiIndex.from_frame(windows[["device_key", "window_start"]])
    keys = pd.MultiIndex.from_frame(scores[["device_key", "window_start"]])
    return deviations.reindex(keys).set_axis(scores.index)


def build(parts: Partitions) -> list:
    """This group's definitions over the partitions resolved at load."""

    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="behaviour", tags=stage(DAILY_FLOWS),
        io_manager_key="lake_io_manager",
        # Only the columns the features are built from: a third less to read and hold of each day.
        ins={"clean_flows": dg.AssetIn(partition_mapping=DAY_AND_DAY_BEFORE, metadata={"columns": FLOW_COLUMNS})},
    )
    def device_windows(context: dg.AssetExecutionContext, clean_flows: LazyDays,
                       model_settings: ModelSettings) -> dg.Output:
        """Behavioural features per device and window, with the trailing 24 hours as context."""
        minutes = model_settings.window_minutes
        for day in context.partition_keys:
            if day not in clean_flows:
                raise FileNotFoundError(f"clean_flows {day} is missing: materialize it first")
        windows = []

        def build(day: str) -> pd.DataFrame:  # each day as the lake writes it: a ranged run holds one day's flows
            frame = build_windows(clean_flows[day], clean_flows.get(previous_day(day)), day, minutes)
            windows.append(len(frame))
            attach(context, "device_windows", day, {"windows": len(frame), "devices": int(frame["device_key"].nunique())})
            return frame

        return dg.Output(DaysBuilt(context.partition_keys, build, lambda: {"windows": sum(windows)}),
                         metadata={"features": len(FEATURES), "window_minutes": minutes})


    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="behaviour", tags=stage(DAILY_FLOWS),
        io_manager_key="lake_io_manager",
        ins={"clean_flows": dg.AssetIn(metadata={"columns": novelty.ENDPOINT_FLOW_COLUMNS, "keep_days": 0})},
    )
    def device_services(context: dg.AssetExecutionContext, clean_flows: LazyDays,
                        model_settings: ModelSettings) -> dg.Output:
        """Per MAC and window, the backend services its Internet flows went to (remote /24, server
        port, protocol; DNS and NTP left out): the endpoint evidence of the device inventory."""
        minutes = model_settings.window_minutes
        rows = []

        def build(day: str) -> pd.DataFrame:
            if day not in clean_flows:
                raise FileNotFoundError(f"device_services[{day}]: clean_flows of {day} is not built")
            frame = novelty.service_flows(clean_flows[day], minutes)
            rows.append(len(frame))
            attach(context, "device_services", day, {"rows": len(frame), "devices": int(frame["device_key"].nunique()),
                                                     "services": int(frame["service"].nunique())})
            return frame

        return dg.Output(DaysBuilt(context.partition_keys, build, lambda: {"rows_total": sum(rows)}),
                         metadata={"window_minutes": minutes})


    @dg.asset(
        group_name="behaviour", tags=stage(TRAINING),
        io_manager_key="model_io_manager",
        ins={"device_windows": EVERY_BUILT_DAY, "flow_sample": EVERY_BUILT_DAY, "device_services": EVERY_BUILT_DAY},
        check_specs=[dg.AssetCheckSpec("classifier_accuracy", asset="device_classifier",
                                       description="Accuracy on the later days' windows is at least 0.9.")],
    )
    def device_classifier(context: dg.AssetExecutionContext, config: TrainingConfig, device_windows: LazyDays,
                          flow_sample: LazyDays, device_services: LazyDays, model_settings: ModelSettings,
                          reports: ReportFiles, served_models: ServedModels):
        """XGBoost device classifier, trained on the earlier days, evaluated on the later ones; with its
        novelty profiles and the backend services of each model (endpoint evidence for the open set)."""
        windows = concat_days(device_windows)
        champion = served_models.champion("device_classifier") if config.challenge else None
        windows, split = training_split(windows, config, model_settings, champion)
        attacked = attacked_windows(windows, model_settings)
        services = concat_days({d: f for d, f in device_services.items() if d in split.train_days + split.eval_days})
        services = services if len(services) else pd.DataFrame(columns=novelty.SERVICE_COLUMNS)
        model, metrics, _ = classifier.train_and_evaluate(windows, split, model_settings.seed, attacked,
                                                          endpoint_services=services)
        metrics["open_set"] = classifier.open_set_evaluation(windows, split, model_settings.seed, attacked, model=model,
                                                             endpoint_services=services)
        metrics["window"] = f"{model_settings.window_minutes}min"
        metrics["baseline_per_flow"] = classifier.per_flow_baseline(
            concat_days({d: f for d, f in flow_sample.items() if d in split.train_days}),
            concat_days({d: f for d, f in flow_sample.items() if d in split.eval_days}), model.labels, model_settings.seed)
        labelled = windows[windows["device_name"].notna()]
        report, explored = exploration(labelled[split.is_train(labelled)])
        metrics["exploration"] = explored
        metrics["days_used"] = sorted(device_windows)
        model.metrics = metrics
        challenge = None
        if champion is not None:
            holdout = classifier.labelled_windows(windows, attacked)
            model, challenge = settle_challenge(context, reports, "classifier_challenge.json", champion, model, split,
                                                champion_module.compare_classifiers(
                                                    champion, model, holdout[~split.is_train(holdout)], split.eval_range))
            metrics = model.metrics
        metrics_path = reports.write_json("classifier_metrics.json", metrics)
        exploration_path = reports.write_text("feature_exploration.md", report)
        context.log.info(f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
        yield version_output(model, {
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "baseline_per_flow_accuracy": metrics["baseline_per_flow"]["accuracy"],
            # A champion kept from a version older than the open-set figures has none.
            "day_level_accuracy": metrics.get("day_level", {}).get("accuracy"),
            "open_set_left_out_unknown_share": metrics.get("open_set", {}).get("left_out_unknown_share"),
            "open_set_known_days_named_correctly": metrics.get("open_set", {}).get("known_days_named_correctly"),
            "train_range": dg.MetadataValue.json(metrics["train_range"]),
            "eval_range": dg.MetadataValue.json(metrics["eval_range"]),
            "classes": len(model.labels),
            "metrics": dg.MetadataValue.path(str(metrics_path)),
            "exploration": dg.MetadataValue.path(str(exploration_path)),
            "top_features": dg.MetadataValue.json(dict(list(metrics["feature_importance"].items())[:10])),
            **challenge_metadata(challenge),
        })
        yield dg.AssetCheckResult(
            check_name="classifier_accuracy", passed=bool((metrics["accuracy"] or 0) >= 0.9),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "eval_windows": metrics["eval_windows"]},
        )


    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="behaviour", tags=stage(DAILY_SCORING),
        io_manager_key="lake_io_manager",
        # The days before a range's first day were built by earlier runs, or are missing for a
        # lake that starts later: a verdict pools the days there are. Each is read once.
        ins={"device_windows": dg.AssetIn(partition_mapping=INVENTORY_WEEK,
                                          metadata={"allow_missing_partitions": True,
                                                    "keep_days": INVENTORY_DAYS}),
             # The services each MAC contacted over the same week: endpoint evidence (missing days: none).
             "device_services": dg.AssetIn(partition_mapping=INVENTORY_WEEK,
                                           metadata={"allow_missing_partitions": True, "keep_days": INVENTORY_DAYS}),
             # Only for the UI's table: which subscriber line each MAC sits on (none while it is not built).
             "line_membership": dg.AssetIn(metadata={"allow_missing": True})},
        check_specs=[
            dg.AssetCheckSpec("inventory_agrees_with_catalogue", asset="device_inventory",
                              description="At least 90% of the catalogue MACs seen get their catalogue device."),
            dg.AssetCheckSpec("no_unknown_devices", asset="device_inventory",
                              description="Every MAC seen is in the catalogue."),
            dg.AssetCheckSpec("no_silent_devices", asset="device_inventory",
                              description="Every device the classifier was trained on is seen."),
        ],
    )
    def device_inventory(context: dg.AssetExecutionContext, device_windows: LazyDays, device_services: LazyDays,
                         device_classifier: classifier.DeviceClassifier, line_membership: pd.DataFrame | None):
        """Per MAC seen that day: the predicted device (or `unknown`) and category with confidence,
        from its windows of the last week (`INVENTORY_DAYS`), against the catalogue. `unknown` when
        its behaviour is far from every known model, or when too little of its Internet flows went to
        the backend services of the model named (a model without endpoints: behaviour alone)."""
        model = device_classifier
        out, frames, services = {}, {}, {}  # the frames of the week, each converted once however many days pool it
        for day in context.partition_keys:
            if day not in device_windows:
                raise FileNotFoundError(f"device_inventory[{day}]: device_windows of {day} is not built")
            week = [d for d in inventory_days(day) if d in device_windows]
            frames = {d: frames[d] if d in frames else device_windows[d] for d in week}
            services = {d: services[d] if d in services else device_services[d]
                        for d in inventory_days(day) if d in device_services}
            week_services = concat_days(services) if services else pd.DataFrame(columns=novelty.SERVICE_COLUMNS)
            out[day] = predict_inventory(model, concat_days(frames), day,
                                         endpoint_services=week_services).assign(model_version=model.version)
            attach(context, "device_inventory", day, inventory_metadata(out[day], day, line_membership))
        inventory = concat_days(out)
        known = inventory[inventory["in_catalogue"].astype(bool)] if len(inventory) else inventory
        agreement = float((~known["disagrees"].astype(bool)).mean()) if len(known) else None
        yield dg.Output(out, metadata={
            "macs": len(inventory), "model_version": model.version,
            "not_in_catalogue": int((~inventory["in_catalogue"].astype(bool)).sum()) if len(inventory) else 0,
            "disagreements": int(inventory["disagrees"].astype(bool).sum()) if len(inventory) else 0,
            "agreement": agreement,
        })
        unknown = inventory[~inventory["in_catalogue"].astype(bool)] if len(inventory) else inventory
        yield dg.AssetCheckResult(
            check_name="no_unknown_devices", passed=unknown.empty, severity=dg.AssetCheckSeverity.WARN,
            description=", ".join(sorted({f"{r.device_key} (looks like {r.predicted_device}, {r.confidence:.0%})"
                                          for r in unknown.itertuples()})) or "every MAC is in the catalogue",
            metadata={"unknown_macs": dg.MetadataValue.json(sorted(set(unknown["device_key"])) if len(unknown) else [])},
        )
        silent = {day: sorted(set(model.labels) - set(frame["catalogue_device"].dropna())) for day, frame in out.items()}
        silent = {day: names for day, names in silent.items() if names}
        yield dg.AssetCheckResult(
            check_name="no_silent_devices", passed=not silent, severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(f"{day}: {', '.join(names)}" for day, names in sorted(silent.items()))[:2000]
            or "every trained device was seen",
            metadata={"silent": dg.MetadataValue.json(silent), "trained": len(model.labels)},
        )
        yield dg.AssetCheckResult(
            check_name="inventory_agrees_with_catalogue", passed=agreement is None or agreement >= 0.9,
            severity=dg.AssetCheckSeverity.WARN,
            description=None if agreement is None else f"{agreement:.1%} of {len(known)} catalogue MAC-days agree",
            metadata={"agreement": agreement, "disagreeing": dg.MetadataValue.json(
                known.loc[known["disagrees"].astype(bool), ["day", "device_key", "catalogue_device", "predicted_device"]]
                .head(50).to_dict("records") if len(known) else [])},
        )


    @dg.asset(
        group_name="behaviour", tags=stage(TRAINING),
        io_manager_key="model_io_manager",
        ins={"device_windows": EVERY_BUILT_DAY, "device_services": EVERY_BUILT_DAY},
    )
    def anomaly_detector(context: dg.AssetExecutionContext, config: TrainingConfig, device_windows: LazyDays,
                         device_services: LazyDays, model_settings: ModelSettings, reports: ReportFiles,
                         served_models: ServedModels):
        """PyOD detectors per device, compared on the later days, the best kept; thresholds at the target FPR.

        Each device's detector also watches its endpoint evidence (`features.SERVICE_FEATURES`): the
        share of its Internet flows to backends it never used on its training days.
        """
        windows = concat_days(device_windows)
        services = _services(device_services)
        if config.rebaseline:
            return rebaselined_detector(context, config, windows, model_settings, reports, served_models, services)
        champion = served_models.champion("anomaly_detector") if config.challenge else None
        windows, split = training_split(windows, config, model_settings, champion)
        episodes = model_settings.read_episodes()
        labels = anomaly.evaluation_labels(windows, episodes, model_settings.window_minutes, pd.Timedelta(hours=CONTEXT_HOURS))
        train = split.is_train(windows)
        evaluation = windows[~train]
        detector, metrics = anomaly.compare_and_fit(
            windows[train], labels[train], evaluation, labels[~train], model_settings.target_fpr, model_settings.seed,
            services=services)
        scored = detector.score(evaluation, services=services).assign(device_name=evaluation["device_name"])
        metrics["per_device"] = anomaly.per_device_fpr(scored, labels[~train])
        found = incidents.group_incidents(scored, detector.deviations(evaluation, services), model_settings.window_minutes)
        metrics["incidents"] = incidents.incident_metrics(found, episodes, evaluation, model_settings.window_minutes,
                                                          pd.Timedelta(hours=CONTEXT_HOURS))
        metrics.update({"threshold": f"per device: quantile {1 - model_settings.target_fpr:g} of its held-out scores",
                        "target_fpr": model_settings.target_fpr, "train_range": split.train_range,
                        "eval_range": split.eval_range, "devices_modelled": len(detector.devices),
                        "window_minutes": model_settings.window_minutes, "episodes": model_settings.episodes or None})
        detector.metrics = metrics
        challenge = None
        if champion is not None:
            detector, challenge = settle_challenge(context, reports, "anomaly_challenge.json", champion, detector, split,
                                                   champion_module.compare_detectors(
                                                       champion, detector, evaluation, labels[~train], split.eval_range,
                                                       services))
            metrics = detector.metrics
        metrics_path = reports.write_json("anomaly_metrics.json", metrics)
        return version_output(detector, {
            "detector": metrics["detector"], "fpr_clean": metrics["fpr_clean"], "roc_auc": metrics["roc_auc"],
            "devices_modelled": len(detector.devices),
            # A champion kept from a version older than the incident figures has none.
            "false_incidents_per_device_month": metrics.get("incidents", {}).get("false_incidents_per_device_month"),
            "incident_recall": dg.MetadataValue.json({kind: v["recall"] for kind, v in
                                                      metrics.get("incidents", {}).get("per_episode_type", {}).items()}),
            "compared": dg.MetadataValue.json(metrics["detectors_compared"]),
            "metrics": dg.MetadataValue.path(str(metrics_path)),
            **challenge_metadata(challenge),
        })


    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="behaviour", tags=stage(DAILY_SCORING),
        io_manager_key="lake_io_manager",
        check_specs=[dg.AssetCheckSpec("anomaly_rate_in_bounds", asset="anomaly_scores",
                                       description="The day's share of flagged windows is at most five times the target FPR.")],
        # The day before: the first hours' 24-hour share of flows to unseen backends.
        ins={"device_services": dg.AssetIn(partition_mapping=DAY_AND_DAY_BEFORE)},
    )
    def anomaly_scores(context: dg.AssetExecutionContext, device_windows: LazyDays, device_services: LazyDays,
                       anomaly_detector: anomaly.AnomalyDetector, model_settings: ModelSettings):
        """Anomaly score, flag and the most deviating features per device-window."""
        detector = anomaly_detector
        windows = concat_days({d: device_windows[d] for d in context.partition_keys})
        if len(windows):
            # Scored once for every day of the run: the detectors are per device, not per day.
            scores = detector.score(windows, services=_services(device_services)).assign(device_name=windows["device_name"].to_numpy(),
                                                    model_version=detector.version)
        else:
            scores = pd.DataFrame(columns=SCORE_COLUMNS)
        days = scores["window_start"].dt.strftime("%Y-%m-%d") if len(scores) else pd.Series(dtype=str)
        out = {day: scores[days == day].reset_index(drop=True)[SCORE_COLUMNS] for day in context.partition_keys}
        modelled = scores[scores["has_model"].astype(bool)] if len(scores) else scores
        rates = {day: float(f.loc[f["has_model"].astype(bool), "anomaly"].astype(bool).mean())
                 for day, f in out.items() if f["has_model"].astype(bool).any()}
        bound = 5 * model_settings.target_fpr
        over = {day: rate for day, rate in rates.items() if rate > bound}
        flagged = scores[scores["anomaly"].astype(bool)] if len(scores) else scores
        network = anomaly.network_windows(scores)
        for day, table in out.items():
            attach(context, "anomaly_scores", day, _scores_metadata(table))
        yield dg.Output(out, metadata={
            "windows": len(scores), "anomalies": len(flagged), "model_version": detector.version,
            "anomaly_rate": float(modelled["anomaly"].astype(bool).mean()) if len(modelled) else 0.0,
            "without_model": int((~scores["has_model"].astype(bool)).sum()) if len(scores) else 0,
            "flagged": dg.MetadataValue.md(flagged[["device_name", "device_key", "window_start", "score_ratio", "top_features"]]
                                           .head(20).to_markdown(index=False) if len(flagged) else "none"),
            # Moves most devices made together (a LAN host's broadcasts): discounted from the scores, shown here.
            "network_windows": len(network),
            "network_moves": dg.MetadataValue.md(
                network.groupby("window_start").agg(devices=("device_key", "size"), features=("network_features", "first"))
                .reset_index().head(20).to_markdown(index=False) if len(network) else "none"),
        })
        yield dg.AssetCheckResult(
            check_name="anomaly_rate_in_bounds", passed=not over, severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(f"{d}: {r:.2%} flagged" for d, r in sorted(over.items())) + f" (bound {bound:.2%})"
            if over else f"every day at most {bound:.2%} flagged",
            metadata={"bound": bound, "rates": dg.MetadataValue.json(rates), "anomalies": len(flagged)},
        )


    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="behaviour", tags=stage(DAILY_SCORING),
        io_manager_key="lake_io_manager",
        # Each day is read again as the next day's day before: the last two days stay read.
        ins={"anomaly_scores": dg.AssetIn(partition_mapping=DAY_AND_DAY_BEFORE),
             "device_windows": dg.AssetIn(partition_mapping=DAY_AND_DAY_BEFORE),
             "device_services": dg.AssetIn(partition_mapping=DAY_AND_TWO_BEFORE),
             "clean_flows": dg.AssetIn(partition_mapping=DAY_AND_DAY_BEFORE, metadata={"columns": incidents.FLOW_COLUMNS})},
    )
    def anomaly_incidents(context: dg.AssetExecutionContext, anomaly_scores: LazyDays, device_windows: LazyDays,
                          device_services: LazyDays, clean_flows: LazyDays, anomaly_detector: anomaly.AnomalyDetector,
                          model_settings: ModelSettings) -> dg.Output:
        """Incidents: a device's flagged windows grouped, with a guessed kind and the flows behind them.

        An incident going on at midnight is listed on both days under the same `incident`, with
        its start on the first (`incidents.day_incidents`).
        """
        out = {}
        for day in context.partition_keys:
            days = [d for d in (previous_day(day), day) if d in anomaly_scores]
            scores = concat_days({d: anomaly_scores[d] for d in days})
            windows = concat_days({d: device_windows[d] for d in days if d in device_windows})
            services = _services(device_services, [previous_day(days[0]), *days] if days else [])
            found = incidents.day_incidents(scores, _aligned_deviations(anomaly_detector, windows, scores, services), day,
                                            model_settings.window_minutes)
            flows = concat_days({d: clean_flows[d] for d in days if d in clean_flows})
            found = incidents.incident_evidence(found, flows)
            out[day] = AnomalyIncidents.validate(found.assign(model_version=anomaly_detector.version))
            attach(context, "anomaly_incidents", day, incidents_metadata(out[day], day))
        # Each day's table and counts are on its own partition (`attach`); the run's are the days'.
        return dg.Output(out, metadata={
            "model_version": anomaly_detector.version, "days_in_run": len(out),
            "dagster/column_schema": column_schema(AnomalyIncidents),
        })


    @dg.asset(group_name="behaviour", tags=stage(TRAINING), io_manager_key="model_io_manager",
              ins={"device_windows": EVERY_BUILT_DAY})
    def drift_reference(context: dg.AssetExecutionContext, device_windows: LazyDays, anomaly_detector: anomaly.AnomalyDetector,
                        model_settings: ModelSettings):
        """Per device and feature, the training distribution and how far single training days strayed."""
        # The reference describes the same days as the detector it goes with (after a challenge: the
        # served one's), so that drift and anomalies judge a day against one normal.
        train_range = anomaly_detector.metrics["train_range"]
        baselines = anomaly_detector.metrics.get("baselines") or {}
        first_needed = min([train_range[0], *(b["from_day"] for b in baselines.values())])
        windows = concat_days({d: f for d, f in device_windows.items() if first_needed <= d})
        days = splits.window_days(windows)
        train = days.between(*train_range) & ~attacked_windows(windows, model_settings) \
            & ~windows["device_key"].isin(list(baselines))
        devices = drift.build_reference(windows[train])
        for device_key, baseline in baselines.items():  # re-baselined devices: their new normal
            devices = rebaseline.refit_reference(devices, windows[days <= baseline["until"]], device_key,
                                                 baseline["from_day"])
        reference = JsonDocument({"train_range": train_range, "baselines": baselines, "devices": devices})
        reference.candidate = promotion.Candidate(promotion.FOLLOWS, f"follows anomaly_detector {anomaly_detector.version}",
                                                  {"follows": anomaly_detector.version})
        return version_output(reference, {"devices": len(reference["devices"]), "features": len(FEATURES),
                                           "train_range": dg.MetadataValue.json(train_range),
                                           "baselines": dg.MetadataValue.json(baselines),
                                           "anomaly_detector": anomaly_detector.version})


    @dg.asset(group_name="behaviour", tags=stage(REPORTS), io_manager_key="lake_io_manager",
              automation_condition=AFTER_ITS_INPUTS,
              ins={"anomaly_scores": EVERY_BUILT_DAY, "feature_drift": EVERY_BUILT_DAY})
    def rebaseline_decisions(context: dg.AssetExecutionContext, anomaly_scores: LazyDays, feature_drift: LazyDays,
                             anomaly_detector: anomaly.AnomalyDetector, drift_reference: JsonDocument,
                             model_settings: ModelSettings) -> dg.Output:
        """Devices whose behaviour changed for good (stable in the new state) or that an analyst acknowledged: to re-baseline."""
        metrics = anomaly_detector.metrics or {}
        since = {mac: (date.fromisoformat(b["until"]) + timedelta(days=1)).isoformat()
                 for mac, b in (metrics.get("baselines") or {}).items()}
        # Only days after training, judged by the models served now: a re-baselined device starts afresh.
        days = [d for d in sorted(anomaly_scores) if d > metrics["train_range"][1]]
        scores = concat_days({d: anomaly_scores[d] for d in days})
        summaries = [drift.summarize(table[table["model_version"] == drift_reference.version]).assign(day=day)
                     for day, table in ((d, feature_drift[d]) for d in days if d in feature_drift)]
        if len(scores):
            scores = scores[scores["model_version"] == anomaly_detector.version]
            drift_days = pd.concat(summaries, ignore_index=True) if summaries else \
                pd.DataFrame(columns=["device_key", "day", "level"])
            daily = rebaseline.daily_status(drift_days, scores)
        else:
            daily = pd.DataFrame(columns=rebaseline.DAILY_COLUMNS)
        decisions = rebaseline.decide(daily, model_settings.read_acknowledgements(), model_settings.stable_days, since)
        names = dict(zip(scores["device_key"], scores["device_name"])) if len(scores) else {}
        decisions.insert(1, "device_name", decisions["device_key"].map(names))
        return dg.Output(decisions, metadata={
            "decisions": dg.MetadataValue.json(decisions.to_dict("records")),
            "days_judged": len(days), "devices_changed_last_day": int(daily.loc[daily["day"] == max(days, default=""),
                                                                                "changed"].sum()) if len(daily) else 0,
            "table": dg.MetadataValue.md(decisions.to_markdown(index=False) if len(decisions) else "no device to re-baseline"),
        })


    @dg.asset(
        partitions_def=parts.daily,
        backfill_policy=parts.ranged_backfill,
        group_name="behaviour", tags=stage(DAILY_SCORING),
        io_manager_key="lake_io_manager",
        check_specs=[dg.AssetCheckSpec("feature_drift", asset="feature_drift",
                                       description="Every device's features and service mix against the training reference: "
                                                   "WARN on moderate drift, ERROR on major drift.")],
    )
    def feature_drift(context: dg.AssetExecutionContext, device_windows: LazyDays,
                      drift_reference: JsonDocument):
        """The day's Jensen–Shannon distance to the training reference, per device and feature."""
        out, summaries = {}, []
        for day in context.partition_keys:
            table = drift.day_drift(device_windows[day], drift_reference["devices"]).assign(model_version=drift_reference.version)
            out[day] = table
            summaries.append(drift.summarize(table).assign(day=day))
        summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
        for day_summary in summaries:
            day = day_summary["day"].iloc[0] if len(day_summary) else None
            if day is not None:
                attach(context, "feature_drift", day, {
                    "devices": len(day_summary), "drifted_devices": int((day_summary["level"] != "none").sum()),
                    "drifted_features": int(out[day]["drifted"].sum()),
                    "summary": dg.MetadataValue.md(day_summary.drop(columns="day").to_markdown(index=False,
                                                                                              floatfmt=".2f"))})
        major = summary[summary["level"] == "major"] if len(summary) else summary
        moderate = summary[summary["level"] == "moderate"] if len(summary) else summary
        per_day = {day: {"devices": int(len(part)), "drifted": int((part["level"] != "none").sum())}
                   for day, part in summary.groupby("day")} if len(summary) else {}
        yield dg.Output(out, metadata={
            "devices": int(summary["device_key"].nunique()) if len(summary) else 0, "model_version": drift_reference.version,
            "drifted_devices_per_day": dg.MetadataValue.json(per_day),
            "drifted_features": int(sum(t["drifted"].sum() for t in out.values())),
            "summary": dg.MetadataValue.md(summary.to_markdown(index=False, floatfmt=".2f") if len(summary) else "no device"),
        })
        severity = dg.AssetCheckSeverity.ERROR if len(major) else dg.AssetCheckSeverity.WARN
        flagged = pd.concat([major, moderate])
        yield dg.AssetCheckResult(
            check_name="feature_drift", passed=flagged.empty, severity=severity,
            description="; ".join(f"{r.day} {r.device_name or r.device_key}: {r.level} ({r.drifted_share:.0%} of features, "
                                  f"mix x{r.mix_ratio:.1f})" for r in flagged.itertuples())[:2000] or "no device drifted",
            metadata={
                "devices_major": len(major), "devices_moderate": len(moderate),
                "drifted_feature_share_max": float(summary["drifted_share"].max()) if len(summary) else 0.0,
                "per_device": dg.MetadataValue.json(flagged[["day", "device_name", "drifted_share", "mix_ratio", "level"]]
                                                    .fillna("").to_dict("records") if len(flagged) else []),
            },
        )

    return [device_windows, device_services, device_classifier, device_inventory, anomaly_detector, anomaly_scores, anomaly_incidents, drift_reference, rebaseline_decisions, feature_drift]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=build(current_deployment().partitions))
