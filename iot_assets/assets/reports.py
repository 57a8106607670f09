"""Reports people read: one HTML page per day, and one for the models. Charts are PNGs
embedded in the page, so a report is a single file that opens in any browser."""

import base64
import glob
import html
import io
import json
from pathlib import Path

import dagster as dg
import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from iot_assets import anomaly  # noqa: E402
from iot_assets.assets.behaviour import episodes_of  # noqa: E402
from iot_assets.features import CONTEXT_HOURS  # noqa: E402
from iot_assets.partitions import daily_partitions  # noqa: E402
from iot_assets.resources import DataLake  # noqa: E402

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f4f4f4; } tr.flag td { background: #fde2e2; } img { max-width: 100%; }
.note { color: #666; font-size: 0.9em; }
"""


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(df: pd.DataFrame, flag: pd.Series | None = None, digits: int = 3) -> str:
    if df.empty:
        return "<p class='note'>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, (_, row) in enumerate(df.iterrows()):
        cells = "".join(f"<td>{html.escape(f'{v:.{digits}f}' if isinstance(v, float) else str(v))}</td>" for v in row)
        css = " class='flag'" if flag is not None and bool(flag.iloc[i]) else ""
        rows.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _page(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>")


def _heatmap(matrix: pd.DataFrame, title: str, label: str, cmap: str = "viridis"):
    fig, ax = plt.subplots(figsize=(12, 0.3 * max(len(matrix), 4) + 1.5))
    image = ax.imshow(matrix.to_numpy(dtype=float), aspect="auto", cmap=cmap)
    ax.set_yticks(range(len(matrix)), [str(i) for i in matrix.index], fontsize=7)
    step = max(1, len(matrix.columns) // 24)
    ax.set_xticks(range(0, len(matrix.columns), step), [str(c) for c in matrix.columns[::step]], fontsize=7, rotation=90)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label)
    return fig


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@dg.asset(partitions_def=daily_partitions, group_name="reports")
def daily_report(context: dg.AssetExecutionContext, lake: DataLake, device_inventory: pd.DataFrame,
                 anomaly_scores: pd.DataFrame, feature_drift: pd.DataFrame, device_windows: pd.DataFrame):
    """The day in one HTML page: inventory, anomalies on a timeline, drift, each device's traffic."""
    from iot_assets import drift

    day = context.partition_key
    body = [f"<p class='note'>{len(device_inventory)} MACs, {len(device_windows)} device-windows.</p>"]

    body.append("<h2>Inventory</h2>")
    inventory = device_inventory[["device_mac", "catalogue_device", "predicted_device", "predicted_category",
                                  "confidence", "runner_up", "windows", "disagrees"]]
    body.append(_table(inventory, flag=inventory["disagrees"] | inventory["catalogue_device"].isna()))

    body.append("<h2>Anomalies</h2>")
    scores = anomaly_scores.assign(label=anomaly_scores["device_name"].fillna(anomaly_scores["device_mac"]),
                                   hour=anomaly_scores["window_start"].dt.hour)
    if len(scores) and scores["has_model"].any():
        timeline = scores.pivot_table(index="label", columns="hour", values="score_ratio", aggfunc="max")
        fig, ax = plt.subplots(figsize=(12, 0.3 * max(len(timeline), 4) + 1.5))
        image = ax.imshow(np.log2(timeline.clip(lower=1e-3).to_numpy(dtype=float)), aspect="auto", cmap="coolwarm",
                          vmin=-3, vmax=3)
        flagged = scores[scores["anomaly"].astype(bool)]
        rows = {name: i for i, name in enumerate(timeline.index)}
        ax.scatter(flagged["hour"], flagged["label"].map(rows), marker="x", color="black", s=40, label="flagged")
        ax.set_yticks(range(len(timeline)), timeline.index, fontsize=7)
        ax.set_xticks(range(24))
        ax.set_xlabel("hour (UTC)")
        ax.set_title("anomaly score / device threshold (log2): red above, blue below")
        fig.colorbar(image, ax=ax)
        body.append(_png(fig))
        body.append(_table(flagged[["label", "window_start", "score_ratio", "top_features"]]))
    else:
        body.append("<p class='note'>no anomaly model for these devices yet</p>")

    body.append("<h2>Drift against the training reference</h2>")
    summary = drift.summarize(feature_drift)
    body.append(_table(summary, flag=summary["level"] == "major"))

    body.append("<h2>Traffic profile</h2>")
    if len(device_windows):
        profile = device_windows.assign(label=device_windows["device_name"].fillna(device_windows["device_mac"]),
                                        hour=device_windows["window_start"].dt.hour)
        body.append(_png(_heatmap(profile.pivot_table(index="label", columns="hour", values="w_log_own_flows"),
                                  "own flows per hour (log, gateway probes left out)", "log(1 + flows)")))
        body.append(_png(_heatmap(profile.pivot_table(index="label", columns="hour", values="w_log_bytes_out"),
                                  "bytes out of the device per hour (log)", "log(1 + bytes)", cmap="magma")))
    path = lake.reports_dir / "daily" / f"{day}.html"
    _write(path, _page(f"iot-assets daily report {day}", body))
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.path(str(path)), "url": dg.MetadataValue.url(path.as_uri()),
        "anomalies": int(scores["anomaly"].astype(bool).sum()) if len(scores) else 0,
        "devices_drifting": int((summary["level"] != "none").sum()) if len(summary) else 0,
    })


def _partitions(lake: DataLake, asset: str) -> pd.DataFrame:
    paths = sorted(glob.glob(str(Path(lake.data_dir) / "lake" / asset / "day=*" / "part-0.parquet")))
    frames = [pd.read_parquet(p).assign(day=Path(p).parent.name.removeprefix("day=")) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@dg.asset(group_name="reports", deps=["device_classifier", "anomaly_detector", "anomaly_scores", "feature_drift"])
def model_report(context: dg.AssetExecutionContext, lake: DataLake):
    """The models in one HTML page: exploration, confusion matrix, scores, importance, ROC curves, drift."""
    metrics = json.loads((lake.reports_dir / "classifier_metrics.json").read_text())
    anomaly_metrics = json.loads((lake.reports_dir / "anomaly_metrics.json").read_text())
    body = [f"<p class='note'>Trained on {metrics['train_range'][0]} .. {metrics['train_range'][1]}, evaluated on "
            f"{metrics['eval_range'][0]} .. {metrics['eval_range'][1]} ({metrics['window']} windows).</p>"]

    body.append("<h2>Exploration: which features separate devices</h2>")
    explored = metrics["exploration"]
    body.append(_table(pd.DataFrame(list(explored["top_separating"].items()), columns=["feature", "ANOVA F"])))
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
        body.append(_png(fig))
    per_device = pd.DataFrame(metrics["per_device"]).T.reset_index(names="device").astype({"support": int})
    body.append(_table(per_device, flag=per_device["f1"] < 0.9))
    importance = pd.Series(metrics["feature_importance"]).head(20)[::-1]
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.barh(importance.index, importance.to_numpy())
    ax.set_title("feature importance (gain), top 20")
    ax.tick_params(axis="y", labelsize=7)
    body.append(_png(fig))

    body.append("<h2>Anomaly detector</h2>")
    compared = pd.DataFrame(anomaly_metrics["detectors_compared"]).T.reset_index(names="detector")
    body.append(f"<p>kept <b>{anomaly_metrics['detector']}</b>; false positives on clean windows "
                f"{(anomaly_metrics['fpr_clean'] or 0):.2%}.</p>")
    body.append(_table(compared, flag=compared["detector"] == anomaly_metrics["detector"]))
    scores = _partitions(lake, "anomaly_scores")
    episodes = episodes_of(lake)
    if len(scores) and episodes is not None:
        scores = scores[scores["has_model"].astype(bool) & (scores["day"] >= metrics["eval_range"][0])].reset_index(drop=True)
        labels_ = anomaly.evaluation_labels(scores, episodes, lake.window_minutes, pd.Timedelta(hours=CONTEXT_HOURS))
        fig, ax = plt.subplots(figsize=(6, 6))
        clean = labels_.isna()
        for kind in sorted(set(labels_.dropna()) - {anomaly.AFTERMATH}):
            mask = clean | (labels_ == kind)
            fpr, tpr, _ = roc_curve(labels_[mask] == kind, scores.loc[mask, "score_ratio"].fillna(0))
            ax.plot(fpr, tpr, label=kind)
        ax.plot([0, 1], [0, 1], color="#aaa", linestyle=":")
        ax.axvline(lake.target_fpr, color="red", linestyle="--", label=f"target FPR {lake.target_fpr:g}")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title("ROC per episode type (evaluation days)")
        ax.legend(fontsize=8)
        body.append(_png(fig))
        per_type = pd.DataFrame(anomaly_metrics["per_episode_type"]).T.reset_index(names="episode type")
        body.append(_table(per_type))
    else:
        body.append("<p class='note'>no episodes file (IOT_ASSETS_EPISODES): no ROC curves</p>")

    body.append("<h2>Drift over time</h2>")
    drifts = _partitions(lake, "feature_drift")
    if len(drifts):
        from iot_assets import drift

        daily = pd.concat([drift.summarize(part).assign(day=day) for day, part in drifts.groupby("day")])
        matrix = daily.pivot_table(index="device_name", columns="day", values="drifted_share")
        body.append(_png(_heatmap(matrix, "share of drifted features per device and day", "share", cmap="Reds")))
    path = lake.reports_dir / "model_report.html"
    _write(path, _page("iot-assets model report", body))
    return dg.MaterializeResult(metadata={"report": dg.MetadataValue.path(str(path)),
                                          "url": dg.MetadataValue.url(path.as_uri())})
