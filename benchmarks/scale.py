"""Throughput and memory past one machine, in one run: device-days per second of the daily jobs
in process and on 1 and 2 Celery workers, on local disk and on an S3 lake, and peak RSS per step.

    python benchmarks/scale.py --scale 1 --days 2            # all 25 devices
    python benchmarks/scale.py --scale 0.1 --days 2 --devices 5   # a quick look

What it does, on real servers started here (iot_assets_tests/services.py: SeaweedFS S3, PostgreSQL,
Redis, Celery workers; loopback only, all stopped at the end):

1. writes a sample of `--devices` devices over `--days` days at `--scale` into a work folder, and
   copies its archives into a local lake and into an S3 lake (a bucket prefix on SeaweedFS);
2. on each lake, embedded (in-process executor, SQLite instance): `ingest_archives_job`, then
   `daily_flows_job` over every day in one run (the ranged backfill's run), `training_job`, and
   `daily_scoring_job` over every day: the flows and scoring runs are the measured daily work;
3. the same two daily runs again with the Celery executor (deploy/celery_run_config.yaml) on a
   PostgreSQL instance (deploy/dagster.yaml) with 1 and then 2 workers, on each lake, replacing
   the partitions with identical ones (the models of step 2 stay);
4. prints device-days per second per configuration, ratios to the embedded local run, and the
   peak RSS of every step: a success hook on every step reads the step process's VmHWM and resets
   it (Linux /proc), so each figure is the process's peak during that step alone.

Every figure is from this one run; nothing is compared with numbers measured elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(ROOT))  # not first: Dagster drops sys.path[0] (the script folder) when it imports this module

import dagster as dg  # noqa: E402
import yaml  # noqa: E402

from iot_assets.defs.automation.jobs import stage_selection  # noqa: E402
from iot_assets.defs.stages import DAILY_FLOWS, DAILY_SCORING, TRAINING  # noqa: E402
from iot_assets.materialize import QUIET, peak_rss_mb, reset_peak_rss  # noqa: E402

DEPLOY = ROOT / "deploy"
FIRST_DAY = date(2019, 6, 25)
RSS_MARK = "peak-rss-mb"
STAGES = {"ingest_archives_job": dg.AssetSelection.assets("raw_archives", "line_membership"),
          "daily_flows_job": stage_selection(DAILY_FLOWS), "training_job": stage_selection(TRAINING),
          "daily_scoring_job": stage_selection(DAILY_SCORING)}
DAILY = ("daily_flows_job", "daily_scoring_job")
# dagster-celery registers its task again for every run submitted from one process; harmless here.
warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")


@dg.success_hook(name="peak_rss")
def peak_rss(context: dg.HookContext) -> None:
    """The step process's peak resident memory since the last step (or its start), then a new measurement."""
    mb = peak_rss_mb()
    reset_peak_rss()
    context.log.info(f"{RSS_MARK} {context.step_key} {os.getpid()} {mb:.0f}")


def bench_defs(executor: str) -> dg.Definitions:
    """The code location (settings from the environment) with the stage jobs, each step hooked, on `executor`."""
    from dagster_celery import celery_executor

    from iot_assets.config import Settings
    from iot_assets.definitions import build_definitions

    base = build_definitions(Settings.from_env())
    jobs = [dg.define_asset_job(name, selection=selection, hooks={peak_rss}) for name, selection in STAGES.items()]
    return dg.Definitions(assets=base.assets, asset_checks=base.asset_checks, jobs=jobs, resources=base.resources,
                          executor=celery_executor if executor == "celery" else dg.in_process_executor)


def bench_job(job_name: str, executor: str) -> dg.JobDefinition:
    """What a Celery worker rebuilds for each step (`dg.build_reconstructable_job`)."""
    return bench_defs(executor).resolve_job_def(job_name)


def range_tags(days: list[str]) -> dict[str, str]:
    from iot_assets.defs.automation.sensors import range_tags as tags

    return tags(days[0], days[-1])


@contextlib.contextmanager
def environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def step_figures(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """Per step of a run: seconds (start to success), the pid that ran it, its peak RSS from the hook."""
    steps: dict[str, dict] = {}
    for record in instance.all_logs(run_id):
        event, key = record.dagster_event, record.step_key
        if key is None:
            continue
        figures = steps.setdefault(key, {})
        if event is not None and event.event_type == dg.DagsterEventType.STEP_START:
            figures["start"], figures["pid"] = record.timestamp, event.pid
        elif event is not None and event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            figures["end"] = record.timestamp
        elif event is None and record.user_message.startswith(RSS_MARK):
            _, _, pid, mb = record.user_message.split()
            figures["rss_mb"], figures["rss_pid"] = float(mb), int(pid)
    for figures in steps.values():
        figures["seconds"] = figures.get("end", 0) - figures.get("start", 0)
    return steps


def run_embedded(job_name: str, instance: dg.DagsterInstance, days: list[str]) -> tuple[float, dict]:
    job = bench_job(job_name, "in_process")
    reset_peak_rss()
    began = time.perf_counter()
    result = job.execute_in_process(instance=instance, run_config=QUIET,
                                    tags=range_tags(days) if job_name in DAILY else {}, raise_on_error=True)
    seconds = time.perf_counter() - began
    return seconds, step_figures(instance, result.run_id)


def run_celery(job_name: str, instance: dg.DagsterInstance, days: list[str], run_config: dict) -> tuple[float, dict]:
    job = dg.build_reconstructable_job("benchmarks.scale", "bench_job", reconstructable_args=(job_name, "celery"))
    began = time.perf_counter()
    with dg.execute_job(job, instance=instance, run_config=run_config, tags=range_tags(days)) as result:
        if not result.success:
            raise RuntimeError(f"{job_name} failed on Celery: see run {result.run_id}")
        run_id = result.run_id
    return time.perf_counter() - began, step_figures(instance, run_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--devices", type=int, default=25, help="the first N sample devices (25: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", default="1,2", help="Celery worker counts to measure")
    parser.add_argument("--lakes", default="local,s3", help="lakes to measure: local, s3 or both")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="iot-assets-scale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows, device_days, devices, days, total_s = measure(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report(rows, device_days, devices, days, args, total_s)


def measure(args, work: Path) -> tuple[list[dict], int, list[str], list[str], float]:
    from iot_assets.synthetic import sample
    from iot_assets_tests import services

    devices = list(sample.PROFILES)[:args.devices]
    days = [(FIRST_DAY + timedelta(days=i)).isoformat() for i in range(args.days)]
    device_days = len(devices) * len(days)
    lakes = [lake for lake in args.lakes.split(",") if lake]
    worker_counts = [int(n) for n in args.workers.split(",") if n]
    began = time.perf_counter()
    t0 = time.perf_counter()
    raw = work / "raw"
    if raw.exists():
        shutil.rmtree(raw)
    written = sample.generate(raw, FIRST_DAY, len(days), scale=args.scale, seed=args.seed, devices=devices)
    json_mb = sum(getattr(w, "json_bytes", 0) for w in written) / 1e6
    print(f"sample: {len(devices)} devices x {len(days)} days at scale {args.scale} "
          f"({sum(p.stat().st_size for p in raw.rglob('*') if p.is_file()) / 1e6:.0f} MB of archives"
          f"{f', {json_mb:.0f} MB of JSON' if json_mb else ''}) in {time.perf_counter() - t0:.0f} s", flush=True)

    rows: list[dict] = []  # one per (configuration, stage)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("IOT_ASSETS_")}
    for k in [k for k in os.environ if k.startswith("IOT_ASSETS_")]:
        os.environ.pop(k)
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(services.seaweedfs(work / "seaweedfs")) if "s3" in lakes else None
        pg = stack.enter_context(services.postgresql())
        redis = stack.enter_context(services.redis(work / "redis"))
        lake_urls = {}
        if "local" in lakes:
            local = work / "local"
            shutil.rmtree(local, ignore_errors=True)
            shutil.copytree(raw, local / "raw")
            lake_urls["local"] = str(local)
        if s3 is not None:
            import s3fs

            os.environ.update(s3.env)
            url = s3.url(f"scale-{os.getpid()}")
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.storage_options)
            for archive in sorted(raw.iterdir()):
                fs.put_file(str(archive), f"{url.removeprefix('s3://')}/raw/{archive.name}")
            lake_urls["s3"] = url

        # Embedded: SQLite instance in a DAGSTER_HOME of its own, in-process executor, this process.
        for lake, url in lake_urls.items():
            home = work / f"home-embedded-{lake}"
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")  # otherwise the SQLite default
            with environment({"IOT_ASSETS_DATA_DIR": url, "DAGSTER_HOME": str(home)}), \
                    dg.DagsterInstance.from_config(str(home)) as instance:
                for stage in STAGES:
                    seconds, steps = run_embedded(stage, instance, days)
                    rows.append({"config": "embedded", "lake": lake, "workers": 0, "stage": stage,
                                 "seconds": seconds, "steps": steps})
                    print(f"embedded {lake:5} {stage:20} {seconds:7.1f} s", flush=True)

        # Celery: PostgreSQL instance from deploy/dagster.yaml, workers from deploy/celery_run_config.yaml.
        run_config = {**yaml.safe_load((DEPLOY / "celery_run_config.yaml").read_text()), **QUIET}
        for lake, url in lake_urls.items():
            for count in worker_counts:
                db = f"scale_{lake}_{count}"
                pg.create_database(db)
                home = work / f"home-celery-{lake}-{count}"
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir()
                shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
                env = {**pg.env(db), "IOT_ASSETS_MAX_CONCURRENT_RUNS": "4", **redis.celery_env,
                       **(s3.env if s3 is not None else {}), "IOT_ASSETS_DATA_DIR": url, "DAGSTER_HOME": str(home)}
                with environment(env), dg.DagsterInstance.from_config(str(home)) as instance:
                    with services.celery_workers(redis, DEPLOY / "celery_run_config.yaml", work / f"workers-{lake}-{count}",
                                                 env={**base_env, **env}, cwd=ROOT, count=count) as workers:
                        for stage in DAILY:
                            seconds, steps = run_celery(stage, instance, days, run_config)
                            rows.append({"config": "celery", "lake": lake, "workers": count, "stage": stage,
                                         "seconds": seconds, "steps": steps,
                                         "worker_pids": {w.pid for w in workers}})
                            print(f"celery x{count} {lake:5} {stage:20} {seconds:7.1f} s", flush=True)
    return rows, device_days, devices, days, time.perf_counter() - began


def report(rows: list[dict], device_days: int, devices: list[str], days: list[str], args, total_s: float) -> None:
    configs = []
    for row in rows:
        key = (row["config"], row["lake"], row["workers"])
        if key not in configs:
            configs.append(key)

    def daily_seconds(key) -> float:
        return sum(r["seconds"] for r in rows if (r["config"], r["lake"], r["workers"]) == key and r["stage"] in DAILY)

    reference = daily_seconds(("embedded", "local", 0)) if ("embedded", "local", 0) in configs else None
    print(f"\n## {len(devices)} devices x {len(days)} days = {device_days} device-days, scale {args.scale}, "
          f"{os.cpu_count()} cores (load average at the end {os.getloadavg()[0]:.1f}); whole run {total_s / 60:.1f} min\n")
    print("| executor | lake | workers | daily_flows_job s | daily_scoring_job s | device-days/s | "
          "s per device-day | vs embedded local | largest step peak RSS MB | steps on each worker |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for key in configs:
        config, lake, workers = key
        stage = {r["stage"]: r for r in rows if (r["config"], r["lake"], r["workers"]) == key}
        total = daily_seconds(key)
        peaks = [s.get("rss_mb", 0) for st in DAILY for s in stage[st]["steps"].values()]
        spread = ""
        if config == "celery":
            per_pid: dict[int, int] = {}
            for st in DAILY:
                for s in stage[st]["steps"].values():
                    per_pid[s.get("pid")] = per_pid.get(s.get("pid"), 0) + 1
            spread = " / ".join(str(n) for _, n in sorted(per_pid.items(), key=lambda kv: str(kv[0])))
        ratio = f"{reference / total:.2f}x" if reference else "-"
        print(f"| {'in-process' if config == 'embedded' else 'Celery'} | {lake} | {workers or '-'} | "
              f"{stage['daily_flows_job']['seconds']:.1f} | {stage['daily_scoring_job']['seconds']:.1f} | "
              f"{device_days / total:.2f} | {total / device_days:.2f} | {ratio} | {max(peaks):,.0f} | {spread} |")
    for lake in ("local", "s3"):
        one, two = daily_seconds(("celery", lake, 1)), daily_seconds(("celery", lake, 2))
        inproc = daily_seconds(("embedded", lake, 0))
        if one and two:
            print(f"\n{lake} lake: 2 Celery workers vs 1: {one / two:.2f}x the device-days per second; "
                  f"seconds per device-day {one / device_days:.2f} -> {two / device_days:.2f} "
                  f"({'falling' if two < one else 'not falling'})")
        if inproc and lake != "local" and reference:
            print(f"{lake} lake in process vs local disk in process: {reference / inproc:.2f}x")
    for key in configs:
        if key[0] != "embedded":
            continue
        other = {r["stage"]: r for r in rows if (r["config"], r["lake"], r["workers"]) == key}
        print(f"\nnot in the daily figures ({key[1]} lake, embedded): ingest_archives_job "
              f"{other['ingest_archives_job']['seconds']:.1f} s, training_job {other['training_job']['seconds']:.1f} s")
    # Peak RSS per step, per configuration: the step's own process (this one in process, a worker on Celery).
    step_keys: list[str] = []
    for row in rows:
        for step in row["steps"]:
            if step not in step_keys:
                step_keys.append(step)
    headers = [f"{'in-process' if c == 'embedded' else f'Celery x{w}'} {lake}" for c, lake, w in configs]
    print("\n### Peak RSS per step, MB (and seconds)\n")
    print("| step | " + " | ".join(headers) + " |")
    print("|---|" + "---:|" * len(configs))
    for step in step_keys:
        cells = []
        for key in configs:
            found = [r["steps"][step] for r in rows if (r["config"], r["lake"], r["workers"]) == key and step in r["steps"]]
            cells.append(f"{found[0].get('rss_mb', 0):,.0f} ({found[0]['seconds']:.1f} s)" if found else "")
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
