"""A whole backfill, end to end, against the floor of the same work without Dagster.

    python benchmarks/backfill.py [--days 14] [--scale 1] [--data DIR]

Generates a sample (all 25 devices; `--scale 1` is the real dataset's volume, about 2.6 M flows
in 14 days) unless DIR/raw already holds archives, then in the same run:
  end to end  `iot-assets run` in its own process, as a user runs it: every stage on Dagster's
              execution, with the wall time and peak RSS it prints per stage;
  floor       the same stage functions called directly, in one process, one pass per stage:
              decode each archive, clean and featurize each day, train the three models,
              score and report each day.
and prints seconds per stage, flows per second, peak RSS per stage and the ratio floor / end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iot_assets import anomaly, classifier, drift, sample  # noqa: E402
from iot_assets.archive import find_archives  # noqa: E402
from iot_assets.assets.flows import flow_sample  # noqa: E402
from iot_assets.clean import to_device_centric  # noqa: E402
from iot_assets.decode import DECODED_SCHEMA  # noqa: E402
from iot_assets.exploration import exploration  # noqa: E402
from iot_assets.features import CONTEXT_HOURS, build_windows  # noqa: E402
from iot_assets.ingest import decode_archive  # noqa: E402
from iot_assets.partitions import day_bounds  # noqa: E402
from iot_assets.pipeline import peak_rss_mb, reset_peak_rss  # noqa: E402
from iot_assets.reports.pages import daily_page, model_page  # noqa: E402
from iot_assets.schemas import CleanFlows  # noqa: E402

STAGES = ("ingest_archives_job", "daily_flows_job", "training_job", "daily_scoring_job", "reports_job")
STAGE_LINE = re.compile(r"^(\w+_job): ([\d.]+) s.*peak RSS ([\d,]+) MB", re.M)


def end_to_end(data: Path, last_day: date) -> tuple[float, dict[str, tuple[float, float]]]:
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "IOT_ASSETS_END_DATE": last_day.isoformat(),
           "DAGSTER_HOME": str(data / "dagster_home")}
    env.pop("IOT_ASSETS_EPISODES", None)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run"], env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    stages = {m[1]: (float(m[2]), float(m[3].replace(",", ""))) for m in STAGE_LINE.finditer(done.stdout)}
    return seconds, stages


def floor(raw: Path, first_day: date, last_day: date, seed: int = 0) -> tuple[dict[str, tuple[float, float]], int]:
    """The same stage functions, called directly: no Dagster, no IO manager, one pass per stage."""
    times: dict[str, tuple[float, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="floor-"))

    def stage(name, fn):
        reset_peak_rss()
        t0 = time.perf_counter()
        result = fn()
        times[name] = (time.perf_counter() - t0, peak_rss_mb())
        return result

    archives, _ = find_archives(raw)
    summaries = stage("ingest_archives_job", lambda: {
        a.name: decode_archive(a, work / a.name, first_day, last_day) for a in archives})
    local_macs = {name: s.local_mac for name, s in summaries.items()}
    days = [(first_day + timedelta(days=i)).isoformat() for i in range((last_day - first_day).days + 1)]

    def flows():
        windows, samples, previous, n = {}, {}, None, 0
        for day in days:
            start, end = day_bounds(day)
            tables = [pq.read_table(work / name / "flows.parquet", schema=DECODED_SCHEMA,
                                    filters=[("flow_start", ">=", start), ("flow_start", "<", end)]) for name in summaries]
            decoded = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
            clean, _ = to_device_centric(decoded, local_macs)
            clean = CleanFlows.validate(clean, lazy=True).reset_index(drop=True)
            n += len(clean)
            windows[day] = build_windows(clean, previous, day, 60)
            samples[day] = flow_sample(clean, seed)
            previous = clean
        return windows, samples, n

    windows_by_day, samples, flow_count = stage("daily_flows_job", flows)
    windows = pd.concat(windows_by_day.values(), ignore_index=True)

    def train():
        split = classifier.TimeSplit.of(windows, 0.7)
        model, metrics, _ = classifier.train_and_evaluate(windows, split, seed)
        metrics["window"] = "60min"
        metrics["baseline_per_flow"] = classifier.per_flow_baseline(
            pd.concat([samples[d] for d in split.train_days]), pd.concat([samples[d] for d in split.eval_days]),
            model.labels, seed)
        labelled = windows[windows["device_name"].notna()]
        metrics["exploration"] = exploration(labelled[split.is_train(labelled)])[1]
        labels = anomaly.evaluation_labels(windows, None, 60, pd.Timedelta(hours=CONTEXT_HOURS))
        train_mask = split.is_train(windows)
        detector, anomaly_metrics = anomaly.compare_and_fit(windows[train_mask], labels[train_mask], windows[~train_mask],
                                                            labels[~train_mask], 0.01, seed)
        reference = drift.build_reference(windows[train_mask])
        return model, metrics, detector, anomaly_metrics, reference

    model, metrics, detector, anomaly_metrics, reference = stage("training_job", train)

    def score():
        scores = detector.score(windows).assign(device_name=windows["device_name"].to_numpy())
        score_days = scores["window_start"].dt.strftime("%Y-%m-%d")
        drifts = {}
        for day in days:
            inventory = classifier.predict_inventory(model, windows_by_day[day], day)
            drifts[day] = drift.day_drift(windows_by_day[day], reference)
            daily_page(day, inventory, scores[score_days == day], drifts[day], windows_by_day[day])
        return scores, drifts

    scores, drifts = stage("daily_scoring_job", score)
    stage("reports_job", lambda: model_page(
        metrics, anomaly_metrics, {}, scores, None,
        pd.concat([d.assign(day=day) for day, d in drifts.items()], ignore_index=True), 60, 0.01))
    return times, flow_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="backfill-"))
    raw = data / "raw"
    first_day = date(2019, 6, 25)
    last_day = first_day + timedelta(days=args.days - 1)
    if not raw.exists() or not any(raw.iterdir()):
        t0 = time.perf_counter()
        written = sample.generate(raw, first_day, args.days, scale=args.scale, seed=0)
        print(f"sample: {sum(w.flows for w in written):,} flows, {args.days} days, scale {args.scale} "
              f"in {time.perf_counter() - t0:.0f} s -> {raw}")
    total_e2e, stages = end_to_end(data, last_day)
    floors, flows = floor(raw, first_day, last_day)
    print(f"\n{flows:,} clean flows, {args.days} days, 25 devices; end to end {total_e2e:.1f} s "
          f"({flows / total_e2e:,.0f} flows/s), floor {sum(t for t, _ in floors.values()):.1f} s\n")
    rows = []
    for name in STAGES:
        e2e_s, e2e_rss = stages.get(name, (float("nan"), float("nan")))
        floor_s, floor_rss = floors[name]
        rows.append({"stage": name, "end_to_end_s": round(e2e_s, 1), "floor_s": round(floor_s, 1),
                     "floor/e2e": round(floor_s / e2e_s, 2) if e2e_s else None,
                     "peak_rss_MB": round(e2e_rss), "floor_peak_rss_MB": round(floor_rss)})
    stage_sum = sum(r["end_to_end_s"] for r in rows)
    floor_sum = sum(r["floor_s"] for r in rows)
    rows.append({"stage": "total (stages)", "end_to_end_s": round(stage_sum, 1), "floor_s": round(floor_sum, 1),
                 "floor/e2e": round(floor_sum / stage_sum, 2), "peak_rss_MB": max(r["peak_rss_MB"] for r in rows),
                 "floor_peak_rss_MB": max(r["floor_peak_rss_MB"] for r in rows)})
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    print(f"\nwhole command (imports, sample check, lock): {total_e2e:.1f} s; floor / whole command "
          f"{floor_sum / total_e2e:.2f}")
    (data / "backfill_benchmark.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
