"""The anomaly detector kinds compared per device, and each device left out in turn, on a lake.

    python benchmarks/detectors_eval.py --lake /tmp/real2/lake --episodes /tmp/real2/episodes/episodes.csv
    python benchmarks/detectors_eval.py --lake /tmp/lake3/lake --episodes /tmp/lake3/episodes/episodes.csv

Reads `<lake>/device_windows`, splits the days as training does (`IOT_ASSETS_TRAIN_FRACTION`,
0.7), fits every kind of `anomaly.DETECTORS` on the clean training windows as
`anomaly.compare_and_fit` does, scores the evaluation windows (aftermath windows left out, as
in the metrics) and prints per kind the clean false-positive rate (all devices and the worst
device) and the window recall per episode type. With at most `--leave-out-max` devices it then
leaves each device out in turn: the kind is chosen by `compare_and_fit`'s rule (best worst-case
recall among the kinds within the alert budget) on the other devices' windows, and the chosen
kind's figures are printed for the device left out: a choice never made on the device it is
judged on. With `<lake>/device_services` built, the detectors watch the endpoint evidence too
(`features.SERVICE_FEATURES`) unless `--no-endpoints`. Not a test.
"""

from __future__ import annotations

import argparse
import glob
import warnings

import numpy as np
import pandas as pd

from iot_assets.core import anomaly, splits
from iot_assets.core.features import ANOMALY_FEATURES, CONTEXT_HOURS


def per_device_counts(windows: pd.DataFrame, episodes: pd.DataFrame, train_fraction: float, target_fpr: float,
                      seed: int, services: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per kind and device: clean windows, false positives, episode windows and hits per type."""
    split = splits.TimeSplit.of(windows, train_fraction)
    labels = anomaly.evaluation_labels(windows, episodes, 60, pd.Timedelta(hours=CONTEXT_HOURS))
    train = split.is_train(windows)
    evaluation, eval_labels = windows[~train], labels[~train]
    rows = []
    for kind in anomaly.DETECTORS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector = anomaly.AnomalyDetector(kind, target_fpr, list(ANOMALY_FEATURES)).fit(
                windows[train & labels.isna()], seed, services=services)
        scored = detector.score(evaluation, services=services).assign(device_name=evaluation["device_name"], label=eval_labels)
        scored = scored[scored["has_model"] & (scored["label"] != anomaly.AFTERMATH)]
        for name, part in scored.groupby("device_name"):
            clean = part["label"].isna()
            row = {"kind": kind, "device": name, "clean": int(clean.sum()), "false_positives": int(part.loc[clean, "anomaly"].sum())}
            for episode_type, episode in part[~clean].groupby("label"):
                row[f"{episode_type}:windows"] = len(episode)
                row[f"{episode_type}:hits"] = int(episode["anomaly"].sum())
            rows.append(row)
    return pd.DataFrame(rows).fillna(0)


def figures(counts: pd.DataFrame, types: list[str]) -> dict:
    out = {"fpr": counts["false_positives"].sum() / max(counts["clean"].sum(), 1)}
    for episode_type in types:
        n = counts[f"{episode_type}:windows"].sum()
        out[episode_type] = counts[f"{episode_type}:hits"].sum() / n if n else np.nan
    return out


def choose(counts: pd.DataFrame, types: list[str], target_fpr: float) -> str:
    """`anomaly.choose_kind` on these devices' figures (window recall; no ROC-AUC to break ties)."""
    by_kind = {kind: figures(part, types) for kind, part in counts.groupby("kind")}
    return anomaly.choose_kind({kind: {"fpr_clean": f["fpr"], "worst_recall": np.nanmin([f[t] for t in types] or [0.0])}
                                for kind, f in by_kind.items()}, target_fpr)


def line(f: dict, types: list[str]) -> str:
    return f"clean FPR {f['fpr']:.2%}, recall " + ", ".join(f"{t} {f[t]:.2f}" for t in types if not np.isnan(f[t]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", required=True)
    parser.add_argument("--episodes", required=True, help="episodes.csv written by `iot-assets inject` or the sample")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leave-out-max", type=int, default=5)
    parser.add_argument("--no-endpoints", action="store_true", help="window features alone, even with device_services")
    args = parser.parse_args()
    files = sorted(glob.glob(f"{args.lake}/device_windows/day=*/*.parquet"))
    if not files:
        raise SystemExit(f"{args.lake}: no device_windows partitions")
    windows = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    episodes = pd.read_csv(args.episodes, parse_dates=["start", "end"])
    service_files = sorted(glob.glob(f"{args.lake}/device_services/day=*/*.parquet"))
    services = pd.concat([pd.read_parquet(f) for f in service_files], ignore_index=True) \
        if service_files and not args.no_endpoints else None
    counts = per_device_counts(windows, episodes, args.train_fraction, args.target_fpr, args.seed, services)
    types = sorted({c.split(":")[0] for c in counts.columns if c.endswith(":windows")})
    print(f"{counts['device'].nunique()} devices, {len(files)} days, endpoint evidence "
          f"{'on' if services is not None else 'off'}; every kind on all devices:")
    for kind, part in counts.groupby("kind"):
        worst = (part["false_positives"] / part["clean"].clip(lower=1)).max()
        print(f"  {kind:8s} {line(figures(part, types), types)}; worst device FPR {worst:.2%}")
    print(f"  kept by the rule: {choose(counts, types, args.target_fpr)}")
    if counts["device"].nunique() <= args.leave_out_max:
        print("each device left out in turn (kind chosen on the others):")
        for device in sorted(counts["device"].unique()):
            kind = choose(counts[counts["device"] != device], types, args.target_fpr)
            mine = counts[(counts["device"] == device) & (counts["kind"] == kind)]
            print(f"  {device}: {kind}, {line(figures(mine, types), types)}")


if __name__ == "__main__":
    main()
