"""Models on devices they have never seen (issue 24): open set, anomalies, incidents in time.

    python benchmarks/unseen_devices.py --work /tmp/unseen/work --days 21 --scale 0.05

Sources: the generated sample (all 25 devices, `--days` days from 2019-07-01 at `--scale`)
and the real archives of /work/shared/data/kddi-iot-2019/ when present (skipped otherwise).
Every archive gets the anomaly episodes of `iot_assets.synthetic.inject` (`unseen_data`).
Each source is built twice, with and without those episodes (the same flows otherwise). The
split is the pipeline's time split (`--train-fraction`, 0.7 of the days train).

(a) open set, on the archives without episodes: each device left out of training in turn
    (`classifier.open_set_evaluation`, one refit booster per device): the share of its
    evaluation device-days said `unknown`; and the full model's day-level accuracy on the
    known devices' evaluation days. With endpoint evidence unless `--no-endpoints`.
(b) anomalies: per device, the detector kind chosen by `anomaly.choose_kind` on the OTHER
    devices' figures (never on the device judged), fitted on the clean training windows:
    ROC-AUC, recall per episode type and clean false-positive rate on its evaluation windows.
    With the endpoint features (`features.SERVICE_FEATURES`, each MAC's training services)
    unless `--no-anomaly-endpoints`.
(c) incidents in time: the incidents of each evaluation day as the pipeline lists them
    (`incidents.day_incidents` over the day and the day before): the share of short episodes
    matched by an incident, how far the incidents reach beyond their episode, ids and kinds
    per episode across days; and the incidents listed on the same days of the archives
    without episodes (all false), per device per 30 device-days.
(d) with `--parts d`: the firmware change seen by endpoint evidence (`firmware_coverage`).
Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import unseen_data  # noqa: E402

from iot_assets.core import anomaly, classifier, incidents, novelty, splits  # noqa: E402
from iot_assets.core.device_inventory import day_verdicts  # noqa: E402
from iot_assets.core.features import ANOMALY_FEATURES, CONTEXT_HOURS  # noqa: E402

WINDOW_MINUTES = 60
SHORT_TYPES = ("scan", "flood", "exfiltration", "beaconing")
CONTEXT = pd.Timedelta(hours=CONTEXT_HOURS)


# ---------------------------------------------------------------- (a) open set


def open_set(windows: pd.DataFrame, split: splits.TimeSplit, attacked: pd.Series, seed: int,
             endpoint_flows: pd.DataFrame | None) -> tuple[pd.DataFrame, dict]:
    """Per device: unknown share when left out, and day-level accuracy as a known device."""
    # Endpoint evidence only when given: the baseline is the window features alone. The services
    # per MAC and window, as the `device_services` asset holds them.
    extra = {} if endpoint_flows is None else {
        "endpoint_services": novelty.service_flows(endpoint_flows, WINDOW_MINUTES)}
    model, metrics, _ = classifier.train_and_evaluate(windows, split, seed, attacked, **extra)
    labelled = classifier.labelled_windows(windows, attacked)
    known = labelled[~split.is_train(labelled)]
    verdicts = day_verdicts(model, known, **extra)
    truth = known.groupby([known["device_key"], splits.window_days(known).rename("day")])["device_name"].first()
    verdicts["truth"] = truth.reindex(pd.MultiIndex.from_frame(verdicts[["device_key", "day"]])).to_numpy()
    verdicts["right"] = (verdicts["status"] == "known") & (verdicts["predicted_device"] == verdicts["truth"])
    left = classifier.open_set_evaluation(windows, split, seed, attacked, **extra)
    rows = []
    for device, part in verdicts.groupby("truth"):
        out = left["left_out"].get(device, {})
        rows.append({"device": device, "known_days": len(part), "known_accuracy": part["right"].mean(),
                     "known_said_unknown": (part["status"] == "unknown").mean(),
                     "left_out_days": out.get("eval_days", 0), "left_out_unknown": out.get("unknown_share", np.nan),
                     "nearest_known": out.get("nearest_known")})
    overall = {"known_day_accuracy": float(verdicts["right"].mean()), "known_device_days": int(len(verdicts)),
               "left_out_unknown_share": left["left_out_unknown_share"],
               "left_out_device_days": left["left_out_device_days"],
               "known_named_correctly_in_rounds": left["known_days_named_correctly"], "method": left["method"]}
    return pd.DataFrame(rows), overall


# ---------------------------------------------------------------- (b) anomalies, kind chosen without the device


def _worst(result: dict, measure: str) -> float:
    per_type = result["per_episode_type"]
    return min(v[measure] for v in per_type.values()) if per_type else 0.0


def anomalies_left_out(windows: pd.DataFrame, split: splits.TimeSplit, labels: pd.Series, clean_eval: pd.DataFrame,
                       target_fpr: float, seed: int, services: pd.DataFrame | None = None,
                       clean_services: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict, dict, dict]:
    """Per device, the figures of the kind chosen on the other devices. Returns the table, the
    pooled figures and the chosen kinds' (scores, deviations) on the evaluation windows with
    episodes and on `clean_eval` (the same devices and days without episodes). With `services`
    and `clean_services` (`novelty.service_flows` of each), the detectors watch endpoint evidence."""
    train = split.is_train(windows)
    evaluation, eval_labels = windows[~train], labels[~train]
    scored, deviations, clean_scored, clean_deviations = {}, {}, {}, {}
    for kind in anomaly.DETECTORS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector = anomaly.AnomalyDetector(kind, target_fpr, list(ANOMALY_FEATURES)).fit(
                windows[train & labels.isna()], seed, services=services)
            scored[kind] = detector.score(evaluation, services=services).assign(device_name=evaluation["device_name"])
            deviations[kind] = detector.deviations(evaluation, services)
            clean_scored[kind] = detector.score(clean_eval, services=clean_services).assign(
                device_name=clean_eval["device_name"])
            clean_deviations[kind] = detector.deviations(clean_eval, clean_services)
    devices = sorted(evaluation["device_name"].dropna().unique())
    rows, chosen, chosen_clean = [], [], []
    for device in devices:
        mine = evaluation["device_name"] == device
        figures = {}
        for kind, scores in scored.items():
            result = anomaly.evaluate(scores[~mine], eval_labels[~mine])
            figures[kind] = {"fpr_clean": result["fpr_clean"], "worst_recall": _worst(result, "recall"),
                             "worst_roc_auc": _worst(result, "roc_auc")}
        kind = anomaly.choose_kind(figures, target_fpr)
        result = anomaly.evaluate(scored[kind][mine], eval_labels[mine])
        row = {"device": device, "kind": kind, "roc_auc": result["roc_auc"], "fpr": result["fpr_clean"]}
        row.update({t: result["per_episode_type"].get(t, {}).get("recall", np.nan) for t in anomaly.EPISODE_TYPES})
        rows.append(row)
        chosen.append((scored[kind][mine], deviations[kind][mine]))
        clean_mine = clean_eval["device_name"] == device
        chosen_clean.append((clean_scored[kind][clean_mine], clean_deviations[kind][clean_mine]))
    with_episodes = (pd.concat([s for s, _ in chosen]), pd.concat([d for _, d in chosen]))
    without = (pd.concat([s for s, _ in chosen_clean]), pd.concat([d for _, d in chosen_clean]))
    pooled = anomaly.evaluate(with_episodes[0], eval_labels.loc[with_episodes[0].index])
    overall = {"roc_auc": pooled["roc_auc"], "fpr": pooled["fpr_clean"],
               **{t: v["recall"] for t, v in pooled["per_episode_type"].items()}}
    return pd.DataFrame(rows), overall, with_episodes, without


# ---------------------------------------------------------------- (c) incidents in time


def daily_incidents(scores: pd.DataFrame, deviations: pd.DataFrame, days: list[str]) -> pd.DataFrame:
    """The incidents each day lists (`day_incidents` on the day and the day before), one row per day and incident."""
    start_day = splits.window_days(scores)
    out = []
    for i, day in enumerate(days):
        keep = start_day.isin(days[max(0, i - 1):i + 1])
        found = incidents.day_incidents(scores[keep], deviations[keep], day, WINDOW_MINUTES)
        if len(found):
            out.append(found.assign(listed_on=day))
    if not out:
        return pd.DataFrame(columns=incidents.INCIDENT_COLUMNS + ["listed_on"])
    return pd.concat(out, ignore_index=True)


def incidents_in_time(listed: pd.DataFrame, episodes: pd.DataFrame, evaluation: pd.DataFrame,
                      listed_clean: pd.DataFrame, clean_eval: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per device: short episodes matched, hours beyond the episode, ids and kinds per episode
    across the days that list them; incidents on the same days without episodes, per 30 device-days."""
    names = evaluation.groupby("device_key")["device_name"].first()
    in_eval = episodes[episodes["start"] >= evaluation["window_start"].min()]
    per_episode = []
    for ep in in_eval[in_eval["type"].isin(SHORT_TYPES)].itertuples():
        macs = names.index[names == ep.device]
        hits = listed[listed["device_key"].isin(macs) & (listed["start"] < ep.end) & (listed["end"] > ep.start)]
        entry = {"device": ep.device, "type": ep.type, "matched": len(hits) > 0, "ids": hits["incident"].nunique(),
                 "kinds": hits["kind"].nunique(), "beyond_hours": np.nan}
        if len(hits):
            beyond = max(pd.Timedelta(0), hits["end"].max() - ep.end) + max(pd.Timedelta(0), ep.start - hits["start"].min())
            entry["beyond_hours"] = beyond / pd.Timedelta(hours=1)
        per_episode.append(entry)
    per_episode = pd.DataFrame(per_episode)
    clean_days = clean_eval.groupby("device_name")["window_start"].agg(lambda s: s.dt.floor("D").nunique())
    false = listed_clean.drop_duplicates("incident").groupby("device_name").size()
    rows = []
    for device, part in per_episode.groupby("device"):
        hit = part[part["matched"]]
        days = int(clean_days.get(device, 0))
        rows.append({"device": device, "episodes": len(part), "matched": part["matched"].mean(),
                     "beyond_h_median": hit["beyond_hours"].median(),
                     "one_id": (hit["ids"] == 1).mean() if len(hit) else np.nan,
                     "one_kind": (hit["kinds"] == 1).mean() if len(hit) else np.nan,
                     "clean_days": days, "clean_incidents": int(false.get(device, 0)),
                     "per_30d": 30.0 * false.get(device, 0) / days if days else np.nan})
    hit = per_episode[per_episode["matched"]] if len(per_episode) else per_episode
    overall = {"short_episodes": len(per_episode),
               "matched_share": float(per_episode["matched"].mean()) if len(per_episode) else None,
               "beyond_hours_median": float(hit["beyond_hours"].median()) if len(hit) else None,
               "one_id_share": float((hit["ids"] == 1).mean()) if len(hit) else None,
               "one_kind_share": float((hit["kinds"] == 1).mean()) if len(hit) else None,
               "clean_incidents_per_device_30d": 30.0 * float(false.sum()) / max(int(clean_days.sum()), 1)}
    return pd.DataFrame(rows), overall


# ---------------------------------------------------------------- (d) the firmware change, seen by endpoints


def firmware_coverage(windows: pd.DataFrame, episodes: pd.DataFrame, flows: pd.DataFrame, split: splits.TimeSplit,
                      labels: pd.Series, seed: int) -> tuple[pd.DataFrame, float]:
    """Per device with a firmware change: the share of each evaluation day's Internet flows that went to
    its own model's training services, lowest before the change and highest after it; the threshold."""
    services = novelty.service_flows(flows, WINDOW_MINUTES)
    model, _, _ = classifier.train_and_evaluate(windows, split, seed, labels.notna(), endpoint_services=services)
    # The short episodes' services out; the firmware change's kept: it is what is looked at.
    kept = novelty.services_outside_attacks(services, windows, labels.notna() & (labels != "firmware_change"))
    kept = kept[kept["day"].isin(split.eval_days)]
    coverage = model.endpoints.coverage(kept, 1)
    names = windows.groupby("device_key")["device_name"].first()
    rows = []
    for ep in episodes[episodes["type"] == "firmware_change"].itertuples():
        change_day = ep.start.strftime("%Y-%m-%d")
        for mac in names.index[names == ep.device]:
            if mac not in coverage.index.get_level_values("device_key") or ep.device not in coverage.columns:
                continue
            own = coverage.loc[mac]
            before = own.loc[own.index < change_day]
            after = own.loc[own.index >= change_day]
            rows.append({"device": ep.device, "change_day": change_day,
                         "days_before": len(before), "own_before_min": before[ep.device].min() if len(before) else np.nan,
                         "days_after": len(after), "own_after_max": after[ep.device].max() if len(after) else np.nan})
    return pd.DataFrame(rows), model.endpoints.threshold


# ---------------------------------------------------------------- printing


def table(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def evaluate_source(name: str, injected: tuple, clean: tuple, train_fraction: float, target_fpr: float, seed: int,
                    endpoints: bool, parts: str = "abcd", anomaly_endpoints: bool = True) -> None:
    """Print (a), (b) and (c) for one source: `injected` and `clean` are `unseen_data.load` with and without episodes."""
    windows, episodes, _ = injected
    clean_windows, _, clean_flows = clean
    split = splits.TimeSplit.of(windows, train_fraction)
    labels = anomaly.evaluation_labels(windows, episodes, WINDOW_MINUTES, CONTEXT)
    print(f"\n=== {name}: {windows['device_name'].nunique()} devices, {len(split.train_days) + len(split.eval_days)} days; "
          f"time split ({train_fraction:g} of the days train): train {split.train_range[0]}..{split.train_range[1]}, "
          f"evaluate {split.eval_range[0]}..{split.eval_range[1]}; {len(episodes)} injected episodes")
    if "d" in parts:
        table_d, threshold = firmware_coverage(windows, episodes, injected[2], split, labels, seed)
        print(f"\n(d) the firmware change seen by endpoints: per evaluation day, the share of the device's Internet "
              f"flows to its own model's training services (days with Internet flows; the inventory's threshold "
              f"{threshold:.3f} applies to 7 pooled days)")
        print(table(table_d))
        if len(table_d):
            print(f"overall: {int((table_d['own_after_max'] < threshold).sum())} of {len(table_d)} devices under the "
                  f"threshold on every day after the change; {int((table_d['own_before_min'] >= threshold).sum())} "
                  f"at or over it on every day before")
    if "a" in parts:
        open_set_part(clean_windows, clean_flows, train_fraction, seed, endpoints)
    if not set(parts) & set("bc"):  # b and c are printed together
        return
    started = time.monotonic()
    clean_eval = clean_windows[~split.is_train(clean_windows)]
    services = clean_services = None
    if anomaly_endpoints:
        services = novelty.service_flows(injected[2], WINDOW_MINUTES)
        clean_services = novelty.service_flows(clean_flows, WINDOW_MINUTES)
    per_device, overall, (scores, deviations), (clean_scores, clean_deviations) = anomalies_left_out(
        windows, split, labels, clean_eval, target_fpr, seed, services, clean_services)
    print(f"\n(b) anomalies, each device's detector kind chosen on the other devices, target FPR {target_fpr:g} "
          f"(window recall; ROC-AUC of score/threshold, episode windows against clean ones; 24-hour aftermath "
          f"windows on neither side; {'with' if anomaly_endpoints else 'without'} endpoint features) "
          f"[{time.monotonic() - started:.0f} s]")
    print(table(per_device))
    print("overall: " + ", ".join(f"{k} {v:.3f}" for k, v in overall.items() if v is not None))
    evaluation = windows[~split.is_train(windows)]
    listed = daily_incidents(scores, deviations, split.eval_days)
    listed_clean = daily_incidents(clean_scores, clean_deviations, split.eval_days)
    per_device, overall = incidents_in_time(listed, episodes, evaluation, listed_clean, clean_eval)
    print(f"\n(c) incidents in time, as listed day by day (a day and the day before); short episodes: "
          f"{', '.join(SHORT_TYPES)}; clean incidents: on the same evaluation days without episodes")
    print(table(per_device))
    print("overall: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in overall.items()))


def open_set_part(clean_windows: pd.DataFrame, clean_flows: pd.DataFrame, train_fraction: float, seed: int,
                  endpoints: bool) -> None:
    """Print (a) for one source's archives without episodes."""
    started = time.monotonic()
    clean_split = splits.TimeSplit.of(clean_windows, train_fraction)
    no_attack = pd.Series(False, index=clean_windows.index)
    per_device, overall = open_set(clean_windows, clean_split, no_attack, seed, clean_flows if endpoints else None)
    print(f"\n(a) open set on the archives without episodes, each device left out of training in turn "
          f"({overall['method']}); known = the full model on the evaluation days [{time.monotonic() - started:.0f} s]")
    print(table(per_device))
    print(f"overall: left-out device-days said unknown {overall['left_out_unknown_share']:.3f} "
          f"of {overall['left_out_device_days']}; known devices' day-level accuracy {overall['known_day_accuracy']:.3f} "
          f"of {overall['known_device_days']} (named right in the leave-out rounds: "
          f"{overall['known_named_correctly_in_rounds']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/unseen/work"), help="cache of the built windows")
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--sources", default="sample,real")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-endpoints", action="store_true", help="open set from the window features alone")
    parser.add_argument("--no-anomaly-endpoints", action="store_true",
                        help="anomaly detectors on the window features alone (no SERVICE_FEATURES)")
    parser.add_argument("--parts", default="abc", help="which parts to print: a, b and c (b and c together), d")
    args = parser.parse_args()
    for source in args.sources.split(","):
        if source == "real" and not unseen_data.REAL_ARCHIVES.exists():
            print(f"\n=== real: {unseen_data.REAL_ARCHIVES} absent, skipped")
            continue
        started = time.monotonic()
        injected = unseen_data.load(source, args.work, args.days, args.scale)
        clean = unseen_data.load(source, args.work, args.days, args.scale, with_episodes=False)
        label = f"sample ({args.days} days, scale {args.scale:g})" if source == "sample" else "real archives"
        print(f"\n[{source}: windows ready in {time.monotonic() - started:.0f} s]")
        evaluate_source(label, injected, clean, args.train_fraction, args.target_fpr, args.seed, not args.no_endpoints,
                        args.parts, not args.no_anomaly_endpoints)


if __name__ == "__main__":
    main()
