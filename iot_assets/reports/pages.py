"""The daily report and the model report as single HTML pages. Rendering only: frames in, HTML out."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from iot_assets.core import anomaly, drift
from iot_assets.core.features import CONTEXT_HOURS
from iot_assets.core.incidents import GAP_WINDOWS, SINGLE_WINDOW_MIN_RATIO
from iot_assets.reports.html import heatmap, incident_anchor, page, plt, png, svg_heatmap, table

# Every column the daily report shows, explained once (the legend under each table).
COLUMN_LEGEND = {
    "device_key": "the device: its MAC address, ip:<private address> when the flows carry no MAC, "
                  "line:<address> when only the subscriber line is known",
    "identity": "what the device key is: mac, private_ip or line",
    "catalogue_device": "the catalogue's device for the MAC (empty: not in the catalogue)",
    "status": "known: the classifier names a model it was trained on; unknown: the MAC resembles none of them",
    "predicted_device": "the model the classifier names from the MAC's windows of the last week",
    "predicted_category": "the named model's kind of device",
    "confidence": "the classifier's probability for the named model, 0..1",
    "nearest_known": "the trained model the MAC's traffic is closest to (named even when the status is unknown)",
    "novelty": "how unlike every trained model the traffic is: 0 typical, 1 or more as far as the left-out devices "
               "of the open-set test; above the threshold the MAC is unknown",
    "runner_up": "the second most probable model",
    "windows": "the MAC's windows (hours) the verdict pools",
    "disagrees": "the named model is not the catalogue's device (highlighted)",
    "device": "the catalogue device, or the MAC",
    "device_name": "the catalogue device of the MAC (empty: not in the catalogue)",
    "start": "start of the first flagged window (UTC; a date when it began the day before)",
    "end": "end of the last flagged window (UTC; 24:00 when it runs into the next day)",
    "windows_flagged": "windows (hours) above the device's threshold in the incident",
    "peak_score_ratio": "the highest anomaly score over the device's threshold (1 = at the threshold)",
    "kind": "what the deviations look like (scan-like, flood-like, service-mix, new-endpoint, volume, other)",
    "kind_reason": "the rule that named the kind, with the deviations behind it",
    "top_features": "the features that moved most in the peak window, in the device's usual spreads",
    "evidence_peers": "remote peers of the device's flows during the incident (flows, MB out, MB in)",
    "evidence_ports": "services (protocol/server port) during the incident; ICMP carries a type and code, not a port",
    "usual_ports": "the device's services outside the incident that day",
    "new_peers": "peers during the incident never seen outside it that day",
    "drifted_share": "share of the device's behaviour features whose distribution moved past the drift limit "
                     "(Jensen-Shannon distance to the training reference)",
    "mix_ratio": "how far the device's most moved mix (services, ports, endpoints) is from the reference, in "
                 "multiples of its limit (above 1: moved)",
    "level": "major: 30% or more of the features drifted, or the services mix moved twice its limit; moderate: "
             "10% or more, or a mix past its limit; none",
    "why": "what made the level",
    "top_drifted": "the features that moved most, with their distance",
    "window": "the window (UTC hour) the move happened in",
    "devices": "the devices that moved together (exposure: the line's devices)",
    "features": "the features they moved",
    "score": "the device's exposure score: the sum over its findings of high 10, medium 3, low 1, info 0",
    "severity": "high: reachable or abusable from the Internet; medium: credentials, commands or video in "
                "cleartext; low: metadata leaks; info: not a fault",
    "first_seen": "the first day the device had this finding",
    "new_today": "new: the device never had this finding before today (highlighted when high)",
    "flows": "the device's flows that day that prove the finding (0 for an advisory: it follows from the model)",
    "remote_peers": "distinct Internet peers in those flows",
    "evidence": "examples of those flows (peer:port, or peer -> device:port when the peer opened it), or the "
                "advisories of the device's model",
    "explained_by_incident": "the device's incidents that day whose span overlaps those flows (a link to the "
                             "incident's row): the finding is likely the incident's side effect",
    "line": "the subscriber line (by default the home gateway the device's traffic goes through)",
}
EXPOSURE_LEGEND = ["score", "device", "kind", "severity", "first_seen", "new_today", "flows", "remote_peers",
                   "evidence", "explained_by_incident", "line", "devices"]


def legend(columns) -> str:
    """The columns' explanations, under a table."""
    items = "".join(f"<dt>{html.escape(c)}</dt><dd>{html.escape(COLUMN_LEGEND[c])}</dd>"
                    for c in columns if c in COLUMN_LEGEND)
    return f"<details class='legend'><summary>columns explained</summary><dl>{items}</dl></details>" if items else ""


def drift_reason(summary: pd.DataFrame) -> pd.Series:
    """Why each device's drift level is what it is: the drifted share or the mix that moved."""
    def reason(row) -> str:
        if row.level == "none":
            return ""
        if row.drifted_share >= drift.MODERATE:
            return f"{row.drifted_share:.0%} of features drifted"
        return f"a traffic mix moved {row.mix_ratio:.1f}x its limit ({row.drifted_share:.0%} of features drifted)"
    return pd.Series([reason(r) for r in summary.itertuples()], index=summary.index, dtype=object)


def model_line(version: str, labels: dict[str, str]) -> str:
    return labels.get(version, version)


def needs_attention(day: str, inventory: pd.DataFrame, incidents: pd.DataFrame, drift_summary: pd.DataFrame,
                    exposure_changes: pd.DataFrame | None) -> list[tuple[str, str]]:
    """(section anchor, sentence) per thing an analyst should look at today: incidents, new or worse exposure
    findings, drift, unknown devices; in that order."""
    items = []
    midnight = pd.Timestamp(day, tz="UTC")
    for r in incidents.sort_values("start").itertuples() if len(incidents) else ():
        start = pd.Timestamp(r.start)
        since = f"since {start:%m-%d %H:%M}" if start < midnight else f"from {start:%H:%M}"
        name = r.device_name if isinstance(r.device_name, str) else r.device_key
        items.append(("incidents", f"{name}: {r.kind} incident {since} to {pd.Timestamp(r.end):%H:%M}, "
                                   f"peak {r.peak_score_ratio:.1f}x its threshold"))
    if exposure_changes is not None and len(exposure_changes):
        baseline = int((exposure_changes["change"] == "baseline").sum())
        if baseline:
            items.append(("exposure", f"the first day of exposure history: {baseline} finding(s) are the baseline, "
                                      "later days report what changes"))
        for r in exposure_changes[exposure_changes["change"].isin(["new", "worse"])].itertuples():
            what = "new" if r.change == "new" else "worse"
            items.append(("exposure", f"{r.device}: {what} {r.severity} exposure finding {r.finding} "
                                      f"({r.meaning})"))
    for r in drift_summary[drift_summary["level"] != "none"].itertuples() if len(drift_summary) else ():
        name = r.device_name if isinstance(r.device_name, str) else r.device_key
        items.append(("drift", f"{name}: {r.level} drift, {r.why}"))
    unknown = inventory[(inventory["status"] == "unknown") | ~inventory["in_catalogue"].astype(bool)] \
        if len(inventory) else inventory
    for r in unknown.itertuples():
        items.append(("inventory", f"{r.device_key}: "
                                   + ("not in the catalogue" if not r.in_catalogue else "an unknown model")
                                   + f", nearest known model {r.nearest_known} (novelty {r.novelty:.2f})"))
    return items


def _attention_html(items: list[tuple[str, str]]) -> str:
    if not items:
        return ("<section id='attention'><h2>Needs attention</h2><p>Nothing today: no incident, no new or worse "
                "exposure finding, no drift, every device a known model.</p></section>")
    rows = "".join(f"<li><a href='#{anchor}'>{html.escape(anchor)}</a>: {html.escape(text)}</li>" for anchor, text in items)
    return f"<section id='attention'><h2>Needs attention</h2><ul>{rows}</ul></section>"


def _advisories_html(advisories: list[dict]) -> str:
    """The advisories as a table of their own fields, each linked."""
    head = "".join(f"<th>{c}</th>" for c in ("device", "advisory", "severity", "title", "affected versions",
                                              "fixed version"))
    rows = "".join(
        "<tr>" + f"<td>{html.escape(str(a.get('device', '')))}</td>"
        + f"<td><a href='{html.escape(a['url'], quote=True)}'>{html.escape(a['advisory_id'])}</a></td>"
        + "".join(f"<td>{html.escape(str(a.get(k) or ''))}</td>" for k in ("severity", "title", "affected_versions"))
        + f"<td>{html.escape(a.get('fixed_version') or 'none published')}</td></tr>"
        for a in advisories)
    return f"<table><tr>{head}</tr>{rows}</table>"


def daily_page(day: str, inventory: pd.DataFrame, scores: pd.DataFrame, incidents: pd.DataFrame,
               feature_drift: pd.DataFrame, windows: pd.DataFrame, extra_sections: list[str] = (),
               exposure_section: str = "", exposure_changes: pd.DataFrame | None = None,
               model_labels: dict[str, str] | None = None, advisories: list[dict] = ()) -> str:
    """The day in one HTML page: what needs attention first, then incidents, exposure, drift, inventory,
    the anomaly timeline and each device's traffic.

    `exposure_changes`: the day's exposure worklist as `day_tables.exposure_table` rows (finding, severity,
    change, meaning); `model_labels`: version -> a name with its training range, date and metric;
    `advisories`: the advisories behind the day's `known_advisory` findings (`exposure.advisory_details`, with
    the `device`).
    """
    labels = model_labels or {}
    if exposure_changes is not None:
        exposure_changes = exposure_changes.rename(columns={"what it means": "meaning", "what to do": "remedy"})
    summary = drift.summarize(feature_drift)
    summary = summary.assign(why=drift_reason(summary)) if len(summary) else summary.assign(why=pd.Series(dtype=object))
    versions = _versions(inventory, scores, feature_drift)
    body = [_attention_html(needs_attention(day, inventory, incidents, summary, exposure_changes))]
    body.append(f"<p class='note'>{len(inventory)} MACs, {len(windows)} device-windows. Models that scored this "
                "day:</p><ul class='note'>" + "".join(f"<li>{html.escape(model_line(v, labels))}</li>" for v in versions)
                + "</ul>")

    body.append("<section id='incidents'><h2>Incidents</h2>")
    flagged_count = int(scores["anomaly"].astype(bool).sum()) if len(scores) else 0
    body.append(f"<p class='note'>{flagged_count} flagged windows make {len(incidents)} incidents (flagged windows "
                f"of a device with at most {GAP_WINDOWS} quiet windows between them; a lone window under "
                f"{SINGLE_WINDOW_MIN_RATIO:g}x the threshold is none).</p>")
    incident_columns = ["device", "start", "end", "windows_flagged", "peak_score_ratio", "kind", "kind_reason",
                        "top_features", "evidence_peers", "evidence_ports", "usual_ports", "new_peers"]
    if len(incidents):
        start, end = pd.to_datetime(incidents["start"], utc=True), pd.to_datetime(incidents["end"], utc=True)
        midnight = pd.Timestamp(day, tz="UTC")
        # An incident going on since the day before shows that day; one ending at the next midnight, 24:00.
        shown = incidents.assign(device=incidents["device_name"].fillna(incidents["device_key"]),
                                 start=start.dt.strftime("%H:%M").where(start >= midnight, start.dt.strftime("%m-%d %H:%M")),
                                 end=end.dt.strftime("%H:%M").where(end < midnight + pd.Timedelta(days=1), "24:00"))
        # Each row a link target: an exposure finding the incident explains links to it.
        body.append(table(shown[incident_columns], digits=1,
                          row_ids=[incident_anchor(i) for i in incidents["incident"].astype(str)]))
        body.append(legend(incident_columns))
    else:
        body.append("<p class='note'>no incident</p>")
    body.append("</section>")

    body.append(f"<section id='exposure'>{exposure_section or '<h2>Exposure</h2><p class=note>not built</p>'}")
    if exposure_changes is not None and len(exposure_changes):
        kinds = exposure_changes.drop_duplicates("finding")
        body.append("<h3>What the findings mean and what to do</h3>")
        body.append(table(kinds[["finding", "meaning", "remedy"]].rename(
            columns={"meaning": "what it means", "remedy": "what to do"})))
    if advisories:
        body.append("<h3>Advisories of the devices' models</h3>" + _advisories_html(advisories))
    if exposure_section:
        body.append(legend(EXPOSURE_LEGEND))
    body.append("</section>")

    body.append("<section id='drift'><h2>Drift against the training reference</h2>")
    drift_columns = ["device_key", "device_name", "level", "why", "drifted_share", "mix_ratio", "top_drifted"]
    body.append(table(summary[[c for c in drift_columns if c in summary]],
                      flag=summary["level"] == "major" if len(summary) else None))
    body.append(legend(drift_columns) + "</section>")

    body.append("<section id='inventory'><h2>Inventory</h2>")
    inventory_columns = [c for c in ("device_key", "identity", "catalogue_device", "status", "predicted_device",
                                     "predicted_category", "confidence", "nearest_known", "novelty", "runner_up",
                                     "windows", "disagrees") if c in inventory]
    body.append(table(inventory[inventory_columns], flag=inventory["disagrees"].astype(bool)
                      | inventory["catalogue_device"].isna() if len(inventory) else None))
    body.append(legend(inventory_columns) + "</section>")

    body.append("<section id='anomalies'><h2>Anomaly scores</h2>")
    if len(scores) and scores["has_model"].astype(bool).any():
        scores = scores.assign(label=scores["device_name"].fillna(scores["device_key"]),
                               window=scores["window_start"].dt.strftime("%H:%M"))
        timeline = scores.pivot_table(index="label", columns="window", values="score_ratio", aggfunc="max")
        flagged = scores[scores["anomaly"].astype(bool)]
        body.append(svg_heatmap(np.log2(timeline.clip(lower=1e-3)), "anomaly score / device threshold per window, "
                                "x = flagged", "log2", cmap="coolwarm", vmin=-3, vmax=3,
                                marks=set(zip(flagged["label"], flagged["window"]))))
        network = anomaly.network_windows(scores)
        if len(network):
            body.append("<h3>Moves of the whole network</h3><p class='note'>Most devices moved these features the same "
                        "way in the same window (a host on the LAN, the gateway, the collector): discounted from each "
                        "device's score.</p>")
            moves = network.groupby("window").agg(devices=("label", lambda names: ", ".join(sorted(set(names)))),
                                                  features=("network_features", "first")).reset_index()
            body.append(table(moves) + legend(["window", "devices", "features"]))
    else:
        body.append("<p class='note'>no anomaly model for these devices yet</p>")
    body.append("</section>")

    body.append("<section id='traffic'><h2>Traffic profile</h2>")
    if len(windows):
        profile = windows.assign(label=windows["device_name"].fillna(windows["device_key"]),
                                 hour=windows["window_start"].dt.hour)
        body.append(svg_heatmap(profile.pivot_table(index="label", columns="hour", values="w_log_own_flows"),
                                "own flows per hour (gateway probes left out)", "log(1 + flows)"))
        body.append(svg_heatmap(profile.pivot_table(index="label", columns="hour", values="w_log_bytes_out"),
                                "bytes out of the device per hour", "log(1 + bytes)", cmap="magma"))
    body.append("</section>")
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
            f"{metrics['eval_range'][0]} .. {metrics['eval_range'][1]} ({metrics['window']} windows). Model versions:"
            + "</p><ul class='note'>" + "".join(f"<li>{html.escape(v)}</li>" for v in versions.values()) + "</ul>"]
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
        body.append(table(pd.DataFrame(baselines).T.reset_index(names="device_key")))

    body.append("<h2>Drift over time</h2>")
    if len(drifts):
        daily = pd.concat([drift.summarize(part).assign(day=day) for day, part in drifts.groupby("day")])
        matrix = daily.pivot_table(index="device_name", columns="day", values="drifted_share")
        body.append(png(heatmap(matrix, "share of drifted features per device and day", "share", cmap="Reds")))
    body.extend(extra_sections)
    return page("iot-assets model report", body)
