"""The daily report and the model report as single HTML pages. Rendering only: frames in, HTML out."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from iot_assets.core import anomaly, drift
from iot_assets.core.features import CONTEXT_HOURS
from iot_assets.core.incidents import GAP_WINDOWS, SINGLE_WINDOW_MIN_RATIO
from iot_assets.reports.html import heatmap, page, plt, png, svg_heatmap, table


def daily_page(day: str, inventory: pd.DataFrame, scores: pd.DataFrame, incidents: pd.DataFrame,
               feature_drift: pd.DataFrame, windows: pd.DataFrame, extra_sections: list[str] = ()) -> str:
    """The day in one HTML page: inventory, anomalies on a timeline and as incidents, drift, each device's traffic."""
    body = [f"<p class='note'>{len(inventory)} MACs, {len(windows)} device-windows; model versions: "
            f"{html.escape(', '.join(_versions(inventory, scores, feature_drift)))}.</p>"]
    body.append("<h2>Inventory</h2>")
    shown = inventory[[c for c in ("device_mac", "catalogue_device", "status", "predicted_device", "predicted_category",
                                   "confidence", "nearest_known", "novelty", "runner_up", "windows", "disagrees")
                       if c in inventory]]
    body.append(table(shown, flag=inventory["disagrees"].astype(bool) | inventory["catalogue_device"].isna()
                      if len(inventory) else None))

    body.append("<h2>Anomalies</h2>")
    if len(scores) and scores["has_model"].astype(bool).any():
        scores = scores.assign(label=scores["device_name"].fillna(scores["device_mac"]),
                               window=scores["window_start"].dt.strftime("%H:%M"))
        timeline = scores.pivot_table(index="label", columns="window", values="score_ratio", aggfunc="max")
        flagged = scores[scores["anomaly"].astype(bool)]
        body.append(svg_heatmap(np.log2(timeline.clip(lower=1e-3)), "anomaly score / device threshold per window, "
                                "x = flagged", "log2", cmap="coolwarm", vmin=-3, vmax=3,
                                marks=set(zip(flagged["label"], flagged["window"]))))
        body.append(f"<h3>Incidents</h3><p class='note'>{len(flagged)} flagged windows make {len(incidents)} "
                    f"incidents (flagged windows of a device with at most {GAP_WINDOWS} quiet windows between them; "
                    f"a lone window under {SINGLE_WINDOW_MIN_RATIO:g}x the threshold is none).</p>")
        start, end = pd.to_datetime(incidents["start"], utc=True), pd.to_datetime(incidents["end"], utc=True)
        midnight = pd.Timestamp(day, tz="UTC")
        # An incident going on since the day before shows that day; one ending at the next midnight, 24:00.
        shown = incidents.assign(device=incidents["device_name"].fillna(incidents["device_mac"]),
                                 start=start.dt.strftime("%H:%M").where(start >= midnight, start.dt.strftime("%m-%d %H:%M")),
                                 end=end.dt.strftime("%H:%M").where(end < midnight + pd.Timedelta(days=1), "24:00"))
        body.append(table(shown[["device", "start", "end", "windows_flagged", "peak_score_ratio", "kind", "kind_reason",
                                 "top_features", "evidence_peers", "evidence_ports", "usual_ports", "new_peers"]],
                          digits=1))
        network = anomaly.network_windows(scores)
        if len(network):
            body.append("<h3>Moves of the whole network</h3><p class='note'>Most devices moved these features the same "
                        "way in the same window (a host on the LAN, the gateway, the collector): discounted from each "
                        "device's score.</p>")
            moves = network.groupby("window").agg(devices=("label", lambda names: ", ".join(sorted(set(names)))),
                                                  features=("network_features", "first")).reset_index()
            body.append(table(moves))
    else:
        body.append("<p class='note'>no anomaly model for these devices yet</p>")

    body.append("<h2>Drift against the training reference</h2>")
    summary = drift.summarize(feature_drift)
    body.append(table(summary, flag=summary["level"] == "major" if len(summary) else None))

    body.append("<h2>Traffic profile</h2>")
    if len(windows):
        profile = windows.assign(label=windows["device_name"].fillna(windows["device_mac"]),
                                 hour=windows["window_start"].dt.hour)
        body.append(svg_heatmap(profile.pivot_table(index="label", columns="hour", values="w_log_own_flows"),
                                "own flows per hour (gateway probes left out)", "log(1 + flows)"))
        body.append(svg_heatmap(profile.pivot_table(index="label", columns="hour", values="w_log_bytes_out"),
                                "bytes out of the device per hour", "log(1 + bytes)", cmap="magma"))
    body.extend(extra_sections)
    return page(f"iot-assets daily report {day}", body)


def _open_set_section(metrics: dict) -> str:
    """The day-level inventory and the leave-one-device-out figures: is an unseen model called unknown?"""
    parts = []
    day_level = metrics.get("day_level") or {}
    if day_level.get("accuracy") is not None:
        pool = metrics.get("inventory_days", 1)
        single = metrics.get("day_level_single_day") or {}
        alone = (f" Each day judged alone: accuracy {single['accuracy']:.4f}, {single['unknown_share']:.1%} called "
                 f"unknown." if single.get("accuracy") is not None and pool > 1 else "")
        pooled = f"the day and the {pool - 1} days before it" if pool > 1 else "a day"
        parts.append(f"<p>day-level inventory (a MAC's windows of {pooled} together): accuracy "
                     f"<b>{day_level['accuracy']:.4f}</b> over {day_level['device_days']} device-days, "
                     f"{day_level['unknown_share']:.1%} of known devices' days called unknown.{alone}</p>")
    open_set = metrics.get("open_set")
    if open_set and open_set["left_out"]:
        parts.append(f"<h3>Unknown device models (leave one device out)</h3><p>left-out devices' days called "
                     f"unknown: <b>{open_set['left_out_unknown_share'] or 0:.1%}</b> of "
                     f"{open_set['left_out_device_days']}; known devices' days still named correctly: "
                     f"<b>{open_set['known_days_named_correctly'] or 0:.1%}</b> of {open_set['known_device_days']}. "
                     f"{html.escape(open_set['method'])}.</p>")
        left_out = pd.DataFrame(open_set["left_out"]).T.reset_index(names="left out")
        parts.append(table(left_out[["left out", "eval_days", "unknown_share", "nearest_known", "novelty_median"]],
                           flag=left_out["unknown_share"] < 0.9, digits=2))
    return "".join(parts)


def _incident_section(anomaly_metrics: dict, target_fpr: float) -> str:
    """Incidents and false positives on the evaluation days, per episode type and per device."""
    found = anomaly_metrics.get("incidents")
    if not found:
        return ""
    parts = [f"<h3>Incidents on the evaluation days</h3><p>{found['incidents']} incidents, {found['false_incidents']} "
             f"of them on clean days: <b>{found['false_incidents_per_device_month'] or 0:.2f}</b> false incidents "
             f"per device-month over {found['clean_device_days']} clean device-days.</p>"]
    if found["per_episode_type"]:
        parts.append(table(pd.DataFrame(found["per_episode_type"]).T.reset_index(names="episode type"), digits=2))
    per_device = pd.DataFrame(anomaly_metrics.get("per_device", {})).T.reset_index(names="device")
    incidents_by_device = found["per_device"]
    if len(per_device):
        per_device["false_incidents"] = [incidents_by_device.get(d, {}).get("false_incidents", 0)
                                         for d in per_device["device"]]
        parts.append("<p class='note'>per device: clean windows flagged (target "
                     f"{target_fpr:.1%}) and false incidents</p>")
        parts.append(table(per_device.astype({"clean_windows": int}), flag=per_device["fpr_clean"] > target_fpr,
                           digits=4))
    return "".join(parts)


def _versions(*frames: pd.DataFrame) -> list[str]:
    return sorted({str(v) for f in frames if "model_version" in f for v in f["model_version"].dropna().unique()})


def model_page(metrics: dict, anomaly_metrics: dict, versions: dict[str, str], scores: pd.DataFrame,
               episodes: pd.DataFrame | None, drifts: pd.DataFrame, window_minutes: int, target_fpr: float,
               extra_sections: list[str] = ()) -> str:
    """The models in one HTML page: exploration, confusion matrix, scores, importance, ROC curves, drift."""
    body = [f"<p class='note'>Trained on {metrics['train_range'][0]} .. {metrics['train_range'][1]}, evaluated on "
            f"{metrics['eval_range'][0]} .. {metrics['eval_range'][1]} ({metrics['window']} windows). Model versions: "
            + ", ".join(f"{html.escape(a)} <b>{html.escape(v)}</b>" for a, v in versions.items()) + ".</p>"]
    for served in (metrics, anomaly_metrics):
        challenge = served.get("challenge")
        if challenge:
            body.append(f"<p class='note'>{html.escape(challenge['model'])}: this version won a challenge against "
                        f"{html.escape(str(challenge['champion']['version']))} on the holdout days "
                        f"{' .. '.join(challenge['holdout'])} ({html.escape(challenge['reason'])}).</p>")

    body.append("<h2>Exploration: which features separate devices</h2>")
    explored = metrics["exploration"]
    body.append(table(pd.DataFrame(list(explored["top_separating"].items()), columns=["feature", "ANOVA F"])))
    body.append(f"<p class='note'>{explored['redundant_pairs']} redundant pairs (|Spearman| &gt; 0.95); constant in "
                f"training: {html.escape(', '.join(explored['constant_features']) or 'none')}. Full write-up: "
                f"feature_exploration.md.</p>")

    body.append("<h2>Device classifier</h2>")
    body.append(f"<p>accuracy <b>{metrics['accuracy']:.4f}</b>, macro F1 <b>{metrics['macro_f1']:.4f}</b> on "
                f"{metrics['eval_windows']:,} windows; per-flow baseline accuracy "
                f"{metrics['baseline_per_flow']['accuracy'] or 0:.4f}.</p>")
    labels = metrics["labels"]
    matrix = np.asarray(metrics["confusion_matrix"], dtype=float)
    if matrix.size:
        normalised = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(10, 9))
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("confusion matrix (share of each true device's windows)")
        body.append(png(fig))
    per_device = pd.DataFrame(metrics["per_device"]).T.reset_index(names="device").astype({"support": int})
    body.append(table(per_device, flag=per_device["f1"] < 0.9))
    body.append(_open_set_section(metrics))
    importance = pd.Series(metrics["feature_importance"]).head(20)[::-1]
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.barh(importance.index, importance.to_numpy())
    ax.set_title("feature importance (gain), top 20")
    ax.tick_params(axis="y", labelsize=7)
    body.append(png(fig))

    body.append("<h2>Anomaly detector</h2>")
    compared = pd.DataFrame(anomaly_metrics["detectors_compared"]).T.reset_index(names="detector")
    body.append(f"<p>kept <b>{anomaly_metrics['detector']}</b>; false positives on clean windows "
                f"{(anomaly_metrics['fpr_clean'] or 0):.2%}.</p>")
    body.append(table(compared, flag=compared["detector"] == anomaly_metrics["detector"]))
    if len(scores) and episodes is not None:
        days = scores["window_start"].dt.strftime("%Y-%m-%d")
        scores = scores[scores["has_model"].astype(bool) & (days >= metrics["eval_range"][0])].reset_index(drop=True)
        labels_ = anomaly.evaluation_labels(scores, episodes, window_minutes, pd.Timedelta(hours=CONTEXT_HOURS))
        fig, ax = plt.subplots(figsize=(6, 6))
        clean = labels_.isna()
        for kind in sorted(set(labels_.dropna()) - {anomaly.AFTERMATH}):
            mask = clean | (labels_ == kind)
            fpr, tpr, _ = roc_curve(labels_[mask] == kind, scores.loc[mask, "score_ratio"].fillna(0))
            ax.plot(fpr, tpr, label=kind)
        ax.plot([0, 1], [0, 1], color="#aaa", linestyle=":")
        ax.axvline(target_fpr, color="red", linestyle="--", label=f"target FPR {target_fpr:g}")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title("ROC per episode type (evaluation days)")
        ax.legend(fontsize=8)
        body.append(png(fig))
        per_type = pd.DataFrame(anomaly_metrics["per_episode_type"]).T.reset_index(names="episode type")
        body.append(table(per_type))
    else:
        body.append("<p class='note'>no episodes file (IOT_ASSETS_EPISODES): no ROC curves</p>")
    body.append(_incident_section(anomaly_metrics, target_fpr))
    baselines = anomaly_metrics.get("baselines") or {}
    if baselines:
        body.append("<h3>Re-baselined devices</h3><p class='note'>their detector and drift reference were refitted "
                    "on their windows from the day their behaviour changed (rebaseline_decisions).</p>")
        body.append(table(pd.DataFrame(baselines).T.reset_index(names="device_mac")))

    body.append("<h2>Drift over time</h2>")
    if len(drifts):
        daily = pd.concat([drift.summarize(part).assign(day=day) for day, part in drifts.groupby("day")])
        matrix = daily.pivot_table(index="device_name", columns="day", values="drifted_share")
        body.append(png(heatmap(matrix, "share of drifted features per device and day", "share", cmap="Reds")))
    body.extend(extra_sections)
    return page("iot-assets model report", body)
