"""A whole backfill, end to end, against the floor of the same work without Dagster.

    python benchmarks/backfill.py [--days 14] [--scale 1] [--data DIR] [--raw DIR] [--days-per-run N]

Generates a sample (all 25 devices; `--scale 1` is the real dataset's volume, about 2.6 M flows
in 14 days) unless DIR/raw already holds archives (or copies the archives of `--raw`, a sample
kept from an earlier run; the lake, staging and Dagster instance are always new), then in the same run:
  end to end  `iot-assets run` in its own process, as a user runs it: every stage on Dagster's
              execution, with the wall time and peak RSS it prints per stage;
  floor       the same stage functions called directly, in one process, one pass per stage:
              decode each archive; clean, validate, featurize, sample and build the line views
              and truth of each day; train the classifier (with its per-flow baseline), the
              detector (with its incident figures), the drift reference and the endpoint signatures; classify, score, group incidents,
              drift, exposure, line inventory and report each day; the model report.
              Not in the floor: the line metrics and the exposure report (reports_job), and
              the Parquet writes of every table (the floor holds them in memory).
and prints seconds per stage, flows per second, peak RSS per stage and the ratio floor / end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

# The floor runs its models with the same OpenMP wait policy as `iot-assets run` (iot_assets/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iot_assets.config import Settings  # noqa: E402
from iot_assets.contracts.calendar import day_bounds  # noqa: E402
from iot_assets.contracts.flows import DECODED_SCHEMA  # noqa: E402
from iot_assets.contracts.schemas import CleanFlows, DecodedFlows  # noqa: E402
from iot_assets.core import (
    anomaly,  # noqa: E402
    classifier,  # noqa: E402
    device_inventory,  # noqa: E402
    drift,  # noqa: E402
    exposure,  # noqa: E402
    incidents,  # noqa: E402
    splits,  # noqa: E402
)
from iot_assets.core import subscriber_lines as lines  # noqa: E402
from iot_assets.core.archive import find_archives  # noqa: E402
from iot_assets.core.clean import to_device_centric  # noqa: E402
from iot_assets.core.exploration import exploration  # noqa: E402
from iot_assets.core.features import CONTEXT_HOURS, build_windows  # noqa: E402
from iot_assets.core.ingest import decode_archive  # noqa: E402
from iot_assets.defs.ingest.assets import flow_sample  # noqa: E402
from iot_assets.defs.resources import ExposureSettings, LineSettings  # noqa: E402
from iot_assets.materialize import peak_rss_mb, reset_peak_rss  # noqa: E402
from iot_assets.reports.pages import daily_page, model_page  # noqa: E402
from iot_assets.synthetic import sample  # noqa: E402

STAGES = ("ingest_archives_job", "daily_flows_job", "training_job", "daily_scoring_job", "reports_job")
STAGE_LINE = re.compile(r"^(\w+_job): ([\d.]+) s.*?CPU ([\d.]+) s, peak RSS ([\d,]+) MB", re.M)


def end_to_end(data: Path, last_day: date, days_per_run: int | None = None
               ) -> tuple[float, dict[str, tuple[float, float, float]]]:
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "IOT_ASSETS_END_DATE": last_day.isoformat(),
           "DAGSTER_HOME": str(data / "dagster_home")}
    if days_per_run:
        env["IOT_ASSETS_DAYS_PER_RUN"] = str(days_per_run)
    env.pop("IOT_ASSETS_EPISODES", None)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run"], env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (data / "run.log").write_text(done.stdout + "\n" + done.stderr)
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
    for line in done.stdout.splitlines():
        if STAGE_LINE.match(line):
            print(f"  {line}")
    stages = {m[1]: (float(m[2]), float(m[3]), float(m[4].replace(",", ""))) for m in STAGE_LINE.finditer(done.stdout)}
    return seconds, stages


def floor(raw: Path, first_day: date, last_day: date, seed: int = 0) -> tuple[dict[str, tuple[float, float, float]], int]:
    """The same stage functions, called directly: no Dagster, no IO manager, one pass per stage."""
    from iot_assets.reports.exposure import exposure_section_html

    times: dict[str, tuple[float, float, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="floor-"))
    line_settings, window_days = LineSettings(), Settings.from_env().line_window_days

    def stage(name, fn):
        reset_peak_rss()
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = fn()
        times[name] = (time.perf_counter() - t0, time.process_time() - cpu0, peak_rss_mb())
        return result

    archives, _ = find_archives(raw)

    def ingest():
        summaries = {a.name: decode_archive(a, work / a.name, first_day, last_day) for a in archives}
        macs = sorted({s.local_mac for s in summaries.values() if s.local_mac})
        membership = lines.synthetic_lines(macs, first_day, last_day, lines=line_settings.synthetic_lines,
                                           max_devices=line_settings.max_devices_per_line,
                                           joining_share=line_settings.joining_share, seed=seed)
        return summaries, membership

    summaries, membership = stage("ingest_archives_job", ingest)
    local_macs = {name: s.local_mac for name, s in summaries.items()}
    days = [(first_day + timedelta(days=i)).isoformat() for i in range((last_day - first_day).days + 1)]

    def flows():
        clean_by_day, windows, samples, views, previous, n = {}, {}, {}, {}, None, 0
        for day in days:
            start, end = day_bounds(day)
            tables = [pq.read_table(work / name / "flows.parquet", schema=DECODED_SCHEMA,
                                    filters=[("flow_start", ">=", start), ("flow_start", "<", end)]) for name in summaries]
            decoded = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
            DecodedFlows.validate(decoded, lazy=True)
            clean, _ = to_device_centric(decoded, local_macs)
            clean = CleanFlows.validate(clean, lazy=True).reset_index(drop=True)
            n += len(clean)
            windows[day] = build_windows(clean, previous, day, 60)
            samples[day] = flow_sample(clean, seed)
            views[day] = lines.line_views(clean, membership, day, line_settings.rates, seed)
            lines.LineViews.validate(views[day], lazy=True)
            lines.line_truth(clean, membership, day)
            clean_by_day[day] = previous = clean
        return clean_by_day, windows, samples, views, n

    clean_by_day, windows_by_day, samples, views_by_day, flow_count = stage("daily_flows_job", flows)
    windows = pd.concat(windows_by_day.values(), ignore_index=True)

    def train():
        split = splits.TimeSplit.of(windows, 0.7)
        model, metrics, _ = classifier.train_and_evaluate(windows, split, seed)
        metrics["open_set"] = classifier.open_set_evaluation(windows, split, seed, model=model)
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
        evaluation = windows[~train_mask]
        scored = detector.score(evaluation).assign(device_name=evaluation["device_name"])
        anomaly_metrics["per_device"] = anomaly.per_device_fpr(scored, labels[~train_mask])
        anomaly_metrics["incidents"] = incidents.incident_metrics(
            incidents.group_incidents(scored, detector.deviations(evaluation), 60), None, evaluation, 60,
            pd.Timedelta(hours=CONTEXT_HOURS))
        reference = drift.build_reference(windows[train_mask])
        train_days, _ = splits.time_split(days, 0.7)
        signatures = lines.learn_signatures(pd.concat([clean_by_day[d] for d in train_days], ignore_index=True))
        return model, metrics, detector, anomaly_metrics, reference, signatures

    model, metrics, detector, anomaly_metrics, reference, signatures = stage("training_job", train)

    def score():
        scores = detector.score(windows).assign(device_name=windows["device_name"].to_numpy())
        deviations = detector.deviations(windows)
        score_days = scores["window_start"].dt.strftime("%Y-%m-%d")
        advisories, _ = exposure.read_advisories(ExposureSettings().advisories_path)
        views = pd.concat(views_by_day.values(), ignore_index=True)
        units = lines.evidence_units(lines.rule_hits(views, signatures))
        drifts, exposures, previous = {}, {}, None
        for day in days:
            week = [windows_by_day[d] for d in device_inventory.inventory_days(day) if d in windows_by_day]
            inventory = device_inventory.predict_inventory(model, pd.concat(week, ignore_index=True), day)
            drifts[day] = drift.day_drift(windows_by_day[day], reference)
            drift.summarize(drifts[day])
            flows_of_day = clean_by_day[day]
            today = exposure.day_findings(flows_of_day, inventory, advisories)
            exposures[day] = previous = exposure.carry_history(previous, today, day, exposure.device_lines(flows_of_day))
            for d in (day, (date.fromisoformat(day) - timedelta(days=1)).isoformat()):
                lines.inventory_from_units(units, d, window_days, line_settings.threshold)
            findings = exposures[day]
            recent = pd.concat([f for d, f in exposures.items() if d <= day], ignore_index=True)
            section = exposure_section_html(exposure.worklist(findings), exposure.findings_per_day(recent),
                                            exposure.line_scores(findings[findings["seen_today"].astype(bool)]))
            today_scores = scores[score_days == day]
            found = incidents.incident_evidence(
                incidents.group_incidents(today_scores, deviations.loc[today_scores.index], 60), flows_of_day)
            daily_page(day, inventory, today_scores, found, drifts[day], windows_by_day[day], [section])
        return scores, drifts

    scores, drifts = stage("daily_scoring_job", score)
    stage("reports_job", lambda: model_page(
        metrics, anomaly_metrics, {}, scores, None,
        pd.concat([d.assign(day=day) for day, d in drifts.items()], ignore_index=True), 60, 0.01))
    shutil.rmtree(work, ignore_errors=True)
    return times, flow_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--raw", type=Path, default=None,
                        help="take the archives of this folder (a sample of an earlier run) instead of generating")
    parser.add_argument("--days-per-run", type=int, default=None,
                        help="IOT_ASSETS_DAYS_PER_RUN for the end-to-end run (default: the setting's, 7)")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="backfill-"))
    raw = data / "raw"
    for folder in ("lake", "staging", "models", "reports", "dagster_home"):  # every run starts from the archives
        shutil.rmtree(data / folder, ignore_errors=True)
    first_day = date(2019, 6, 25)
    last_day = first_day + timedelta(days=args.days - 1)
    if args.raw and (not raw.exists() or not any(raw.iterdir())):
        raw.mkdir(parents=True, exist_ok=True)
        for archive in sorted(args.raw.glob("*.tar.gz*")):
            shutil.copy2(archive, raw / archive.name)
    if not raw.exists() or not any(raw.iterdir()):
        t0 = time.perf_counter()
        written = sample.generate(raw, first_day, args.days, scale=args.scale, seed=0)
        print(f"sample: {sum(w.flows for w in written):,} flows, {args.days} days, scale {args.scale} "
              f"in {time.perf_counter() - t0:.0f} s -> {raw}")
    total_e2e, stages = end_to_end(data, last_day, args.days_per_run)
    floors, flows = floor(raw, first_day, last_day)
    print(f"\n{flows:,} clean flows, {args.days} days, 25 devices, scale {args.scale}; end to end {total_e2e:.1f} s "
          f"({flows / total_e2e:,.0f} flows/s), floor {sum(t for t, _, _ in floors.values()):.1f} s; "
          f"load average {os.getloadavg()[0]:.1f} (2 cores shared: CPU seconds move less than wall seconds)\n")
    rows = []
    for name in STAGES:
        e2e_s, e2e_cpu, e2e_rss = stages.get(name, (float("nan"),) * 3)
        floor_s, floor_cpu, floor_rss = floors[name]
        rows.append({"stage": name, "end_to_end_s": round(e2e_s, 1), "floor_s": round(floor_s, 1),
                     "floor/e2e": round(floor_s / e2e_s, 2) if e2e_s else None,
                     "e2e_cpu_s": round(e2e_cpu, 1), "floor_cpu_s": round(floor_cpu, 1),
                     "floor/e2e_cpu": round(floor_cpu / e2e_cpu, 2) if e2e_cpu else None,
                     "peak_rss_MB": round(e2e_rss), "floor_peak_rss_MB": round(floor_rss)})
    total = {"stage": "total (stages)"}
    for key in ("end_to_end_s", "floor_s", "e2e_cpu_s", "floor_cpu_s"):
        total[key] = round(sum(r[key] for r in rows), 1)
    total["floor/e2e"] = round(total["floor_s"] / total["end_to_end_s"], 2)
    total["floor/e2e_cpu"] = round(total["floor_cpu_s"] / total["e2e_cpu_s"], 2)
    total["peak_rss_MB"] = max(r["peak_rss_MB"] for r in rows)
    total["floor_peak_rss_MB"] = max(r["floor_peak_rss_MB"] for r in rows)
    rows.append({key: total[key] for key in rows[0]})
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(f"\nwhole command (imports, sample check, lock): {total_e2e:.1f} s; floor / whole command "
          f"{total['floor_s'] / total_e2e:.2f}")
    (data / "backfill_benchmark.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
