"""The `iot-assets` command line."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import date, timedelta
from pathlib import Path

import click

from iot_assets.config import Settings, SettingsError

SAMPLE_DAYS = 14
SAMPLE_SCALE = 0.05


@click.group()
def main() -> None:
    """iot-assets: IoT device inventory, anomalies and drift from IPFIX flow archives."""


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default="2019-06-25", show_default=True)
@click.option("--days", type=click.IntRange(1, 400), default=SAMPLE_DAYS, show_default=True)
@click.option("--scale", type=click.FloatRange(0.001, 10), default=SAMPLE_SCALE, show_default=True,
              help="Records per device-day relative to the real dataset (long-lived connections are not scaled).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--devices", default="", help="Comma-separated archive names; default all 25.")
def sample(out_dir: Path, start, days: int, scale: float, seed: int, devices: str) -> None:
    """Write sample archives in the published KDDI-IoT-2019 format."""

    written = _write_sample(out_dir, start.date(), days, scale, seed, [d for d in devices.split(",") if d] or None)
    click.echo(f"wrote {len(written)} archives to {out_dir}")


def _write_sample(out_dir: Path, first_day: date, days: int, scale: float, seed: int, devices=None):
    from tqdm import tqdm

    from iot_assets.synthetic.sample import PROFILES, generate

    t0 = time.perf_counter()
    names = devices or list(PROFILES)
    with tqdm(total=len(names) * days, unit="device-day", desc="sample", file=sys.stderr) as bar:
        written = generate(out_dir, first_day, days, scale=scale, seed=seed, devices=names,
                           on_progress=lambda *_: bar.update(1))
    seconds = time.perf_counter() - t0
    json_mb = sum(w.json_bytes for w in written) / 1e6
    flows = sum(w.flows for w in written)
    click.echo(f"sample: {flows:,} flows, {json_mb:,.1f} MB of JSON in {seconds:.1f} s ({json_mb / seconds:,.1f} MB/s)")
    return written


@main.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
def decode(archives: tuple[Path, ...], out_dir: Path) -> None:
    """Decode archives (single or split parts) to Parquet, without Dagster.

    Writes OUT/<archive>/flows.parquet, rejects.parquet and summary.json; records outside
    IOT_ASSETS_START_DATE..IOT_ASSETS_END_DATE are rejected as outside_date_range. MACs and
    home addresses are pseudonymised as in the pipeline (IOT_ASSETS_PSEUDONYMISE*). Every
    archive is decoded even if another fails; each one that fails, does not reconcile, or
    rejects every record or more than IOT_ASSETS_MAX_REJECT_SHARE of them gets one `error:`
    line on stderr, and the command then exits 1.
    """
    from iot_assets.core.archive import group_archives
    from iot_assets.core.decode_values import skip_pyarrow_pandas_check
    from iot_assets.core.ingest import decode_archive
    from iot_assets.core.reject_share import first_reject, reject_share_problem

    skip_pyarrow_pandas_check()
    settings = _settings()
    pseudonymiser = _pseudonymiser(settings)
    found, errors = group_archives(list(archives))
    failures = [f"error: {error}" for error in errors]
    for archive in found:
        t0 = time.perf_counter()
        with _bytes_bar(archive.name) as bar:
            summary = decode_archive(archive, out_dir / archive.name, settings.first_day, settings.last_day,
                                     on_progress=None if bar is None else bar.update, pseudonymiser=pseudonymiser)
        seconds = time.perf_counter() - t0
        unreadable = "unknown" if summary.unreadable is None else f"{summary.unreadable:,}"
        click.echo(
            f"{archive.name}: {summary.flow_records:,} flow lines read, {summary.decoded:,} decoded, "
            f"{summary.rejected:,} rejected, {unreadable} unreadable; stats say {summary.stats_exported}; "
            f"{seconds:.1f} s; {'ok' if summary.reconciled else 'NOT RECONCILED'}"
        )
        for reason, count in summary.rejects_by_reason.items():
            click.echo(f"  rejected {count:,} x {reason}")
        for warning in summary.warnings:
            click.echo(f"  warning: {warning}")
        problem = None
        if summary.rejected and summary.error is None:
            problem = reject_share_problem(summary, settings.max_reject_share,
                                           first_reject(out_dir / archive.name / "rejects.parquet"))
        if problem:
            failures.append(f"error: {archive.name}: {problem}")
        if not summary.reconciled:
            failures.append(f"error: {archive.name}: " + (summary.error or (
                f"{summary.decoded:,} decoded + {summary.rejected:,} rejected = {summary.flow_records:,} flow lines, "
                f"but the stats record says {summary.stats_exported}")))
    for failure in failures:
        click.echo(failure, err=True)
    sys.exit(1 if failures else 0)


def _bytes_bar(name: str):
    """A progress bar of bytes decoded on a terminal; none into a pipe or a log (which would
    get its redraws), and then tqdm is not even imported."""
    if not sys.stderr.isatty():
        return nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=None, unit="B", unit_scale=True, desc=name, file=sys.stderr)


@main.command()
@click.argument("archive", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--episodes", "episode_types", default="anomaly", show_default=True,
              help="anomaly (scan, flood, exfiltration, beaconing, firmware_change), exposure (open_telnet, "
                   "reflector, dns_hijack), all, or a comma-separated list of types.")
def inject(archive: tuple[Path, ...], out_dir: Path, seed: int, episode_types: str) -> None:
    """Copy an archive (single or its split parts) with attack or exposure episodes for its device.

    Writes OUT/<archive>.tar.gz and appends the episodes to OUT/episodes.csv (device, type,
    start, end). Point IOT_ASSETS_EPISODES at that file for the anomaly and exposure metrics.
    """
    from iot_assets.core.archive import group_archives
    from iot_assets.synthetic.inject import inject as inject_archive
    from iot_assets.synthetic.inject import parse_episode_types

    try:
        types = parse_episode_types(episode_types)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    found, errors = group_archives(list(archive))
    if errors or len(found) != 1:
        raise click.UsageError("; ".join(str(e) for e in errors) or "give the parts of exactly one archive")
    settings = _settings()
    if str(out_dir.resolve()) == f"{settings.data_dir}/raw":
        raise click.UsageError("--out must not be the landing zone: the copy would sit beside its original")
    path, episodes = inject_archive(found[0], out_dir, seed, types)
    for ep in episodes:
        click.echo(f"{ep.device}: {ep.type} {ep.start:%Y-%m-%d %H:%M} .. {ep.end:%Y-%m-%d %H:%M}")
    click.echo(f"wrote {path} and {out_dir / 'episodes.csv'}")


# Devices that get attack episodes in the sample `iot-assets run` writes.
SAMPLE_ATTACKED = ("nature_remo", "google_home_gen1", "planex_smacam_pantilt")


@main.command()
@click.option("--data-dir", help="The base location, a folder or s3://bucket/prefix [env IOT_ASSETS_DATA_DIR; ./data].")
@click.option("--start", help="First day, YYYY-MM-DD [env IOT_ASSETS_START_DATE; the dataset's 2019-06-25].")
@click.option("--end", help="Last day, YYYY-MM-DD [env IOT_ASSETS_END_DATE; the dataset's 2019-10-10, or the "
                            "sample's last day].")
@click.option("--sample-days", type=click.IntRange(1, 400), default=SAMPLE_DAYS, show_default=True,
              help="Days of sample to write when the landing zone is empty.")
@click.option("--sample-scale", type=click.FloatRange(0.001, 10), default=SAMPLE_SCALE, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--strict", is_flag=True, help="Exit non-zero when an ERROR-level asset check fails, too.")
def run(data_dir: str | None, start: str | None, end: str | None, sample_days: int, sample_scale: float, seed: int,
        strict: bool) -> None:
    """Materialize what is not built yet, for every day of the range, on Dagster's execution.

    When the landing zone (<data dir>/raw) holds no archive, a sample is written first and its
    days are the range (remembered with the sample, so a second run builds the same days). A
    second run on an unchanged landing zone builds nothing. Runs are recorded in the Dagster
    instance at DAGSTER_HOME (default <data dir>/dagster_home), the one the UI shows; one run at a
    time per data location. Exits non-zero if any run failed or a record may be lost; failed
    ERROR-level checks are printed as ALERT lines and, with --strict, fail the command too. Every
    other setting is an environment variable (IOT_ASSETS_DAYS_PER_RUN, IOT_ASSETS_EPISODES,
    IOT_ASSETS_PSEUDONYMISE*, IOT_ASSETS_FEEDS_DIR, IOT_ASSETS_REPORTS_URL, IOT_ASSETS_AUTO_PROMOTE,
    ...): see the README's configuration table.
    """
    from iot_assets.io.collectors import CollectorStore
    from iot_assets.io.location import base_path
    from iot_assets.io.lock import DataLocationLock, LocationBusy

    env = dict(os.environ)
    for name, value in (("IOT_ASSETS_DATA_DIR", data_dir), ("IOT_ASSETS_START_DATE", start),
                        ("IOT_ASSETS_END_DATE", end)):
        if value:
            env[name] = value
    settings = _settings(env)
    if not settings.is_local and not env.get("DAGSTER_HOME"):
        raise click.UsageError("with an object-store IOT_ASSETS_DATA_DIR, set DAGSTER_HOME to the Dagster instance "
                               "folder (or a dagster.yaml for PostgreSQL, see deploy/)")
    _check_folders(settings, env)
    home = _instance_home(settings, env)
    landing = base_path(settings.raw_url)
    lock_folder = Path(settings.data_dir) if settings.is_local else home
    try:
        with DataLocationLock(lock_folder, settings.data_dir):
            # Empty: neither archives nor collector files (nfcapd, IPFIX) anywhere under raw/.
            if not landing.exists() or not (any(".tar.gz" in p.name for p in landing.iterdir())
                                            or CollectorStore(settings.data_dir).find()):
                days = min(sample_days, (settings.last_day - settings.first_day).days + 1)
                click.echo(f"{landing} is empty: writing a {days}-day sample at scale {sample_scale}")
                _sample_landing_zone(settings, days, sample_scale, seed)
            env.update({k: v for k, v in _sample_range(settings).items() if not env.get(k)})
            ok = _materialize(_settings(env), home, strict)
    except LocationBusy as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        from iot_assets.io.preflight import environment_problem

        problem = environment_problem(exc)
        if problem is None:
            raise
        click.echo(f"error: {problem}, under {settings.data_dir}: free some space (or make the folder writable) "
                   f"and run again", err=True)
        sys.exit(2)
    sys.exit(0 if ok else 1)


def _check_folders(settings: Settings, env: dict) -> None:
    """The data folder (and a DAGSTER_HOME of its own) exist, are writable and have room: else one line each, exit 2."""
    from iot_assets.io.preflight import FIX_LOCATION, folder_problems

    problems = []
    if settings.is_local:
        problems += folder_problems(Path(settings.data_dir), "data folder", FIX_LOCATION, settings.min_free_gb)
    home = env.get("DAGSTER_HOME")
    if home and "://" not in home and not problems:
        problems += folder_problems(Path(home), "Dagster instance folder (DAGSTER_HOME)",
                                    "set DAGSTER_HOME to a folder you can write")
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(2)


def _instance_home(settings: Settings, env: dict) -> Path:
    """DAGSTER_HOME (default <data dir>/dagster_home), created with the embedded instance's queue if new."""
    from iot_assets.materialize import instance_yaml

    home = Path(env.get("DAGSTER_HOME") or Path(settings.data_dir) / "dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(instance_yaml())
    elif "granularity: run" not in config.read_text() and "QueuedRunCoordinator" in config.read_text():
        # Written by an older iot-assets (or by hand): its queue does not hold the UI's asset backfills.
        click.echo(f"warning: {config} has no run-granularity concurrency pools, so a backfill launched from the UI "
                   "can run beside the automation's runs on the same data: add the `concurrency:` block of "
                   "iot_assets.materialize.instance_yaml (or delete the file: the next command writes it)", err=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


SAMPLE_RANGE = ".sample-range.json"  # in the landing zone, beside the sample's archives


def _sample_range(settings: Settings) -> dict[str, str]:
    """The settings a sample in the landing zone was written for (its last day, its episodes), or none."""
    from iot_assets.io.location import base_path

    path = base_path(f"{settings.raw_url}/{SAMPLE_RANGE}")
    return json.loads(path.read_text()) if path.exists() else {}


def _materialize(settings: Settings, home: Path, strict: bool) -> bool:
    """Every stage, for what is not built yet; says what failed and what needs attention."""
    import dagster as dg

    from iot_assets.core.memory import freeze_long_lived
    from iot_assets.definitions import build_definitions
    from iot_assets.materialize import Outcome, materialize_missing

    defs = build_definitions(settings)
    instance = dg.DagsterInstance.get()
    freeze_long_lived()  # as the `defs` Dagster loads does: the collections between days skip the code location
    outcome = Outcome(click.echo, strict)
    days = defs.resolve_job_def("daily_flows_job").partitions_def.get_partition_keys()
    materialize_missing(defs, instance, days, outcome, settings.days_per_run, settings.data_dir)
    click.echo(f"outputs: lake {settings.data_dir}/lake, models {settings.data_dir}/models, "
               f"reports {settings.data_dir}/reports, Dagster instance {home}")
    for alert in outcome.alerts:
        click.echo(f"ALERT {alert}")
    for problem in outcome.problems:
        click.echo(f"FAILED {problem}")
    for line in _pending_proposals(settings.data_dir):
        click.echo(line)
    click.echo(f"the UI: DAGSTER_HOME={home} {Path(sys.executable).parent / 'iot-assets'} ui  "
               f"(then http://127.0.0.1:3000; reports at {settings.reports_url})")
    return not outcome.problems


def _pending_proposals(data_dir: str) -> list[str]:
    """A line per model version proposed and not yet decided on: what it is, why, and the command that serves it."""
    from iot_assets.io.model_labels import NAMES
    from iot_assets.io.models import ModelStore

    store = ModelStore(data_dir)
    return [f"PROPOSED {NAMES[asset]} {entry['to_version']} to replace {entry['from_version']}: {entry['reason']}; "
            f"serve it with `iot-assets models use {asset} {entry['to_version']}`"
            for asset in NAMES for entry in store.pending_proposals(asset)]


def _sample_landing_zone(settings: Settings, days: int, scale: float, seed: int) -> str | None:
    """Write a sample into the landing zone (through a local folder when the lake is an object store);
    returns the episodes file the sample's attacked devices got, if any."""
    from iot_assets.io.location import base_path

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(settings.data_dir) if settings.is_local else Path(tmp)
        _write_sample(local / "raw", settings.first_day, days, scale, seed)
        episodes = _attack_sample(local, seed) if days >= 7 else None
        if not settings.is_local:
            for folder in ("raw", "episodes"):
                target = base_path(f"{settings.data_dir}/{folder}")
                for file in sorted((local / folder).glob("*")) if (local / folder).exists() else []:
                    target.fs.put_file(str(file), f"{target.path}/{file.name}")
        remembered = {"IOT_ASSETS_END_DATE": (settings.first_day + timedelta(days=days - 1)).isoformat()}
        if episodes:
            remembered["IOT_ASSETS_EPISODES"] = f"{settings.data_dir}/episodes/episodes.csv"
        base_path(f"{settings.raw_url}/{SAMPLE_RANGE}").write_text(json.dumps(remembered))
        return remembered.get("IOT_ASSETS_EPISODES")


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True,
              help="Port of the Dagster UI on 127.0.0.1.")
@click.option("--reports-port", type=click.IntRange(0, 65535), default=None,
              help="Port of the reports' http server on 127.0.0.1; default the port of IOT_ASSETS_REPORTS_URL "
                   "(8765) when it is free, else a free one; 0: a free one.")
def ui(port: int, reports_port: int | None) -> None:
    """Open the Dagster UI: the webserver, the daemon and an http server for the reports, on localhost.

    Uses the Dagster instance `iot-assets run` uses ($DAGSTER_HOME, default
    $IOT_ASSETS_DATA_DIR/dagster_home) and the same IOT_ASSETS_* settings (set IOT_ASSETS_END_DATE
    as for the run). Reports are linked from the UI at IOT_ASSETS_REPORTS_URL (default
    http://127.0.0.1:8765), which this command serves for a local data folder. SIGTERM or Ctrl-C
    stops all three.
    """
    from urllib.parse import urlparse

    from iot_assets.config import DEFAULT_REPORTS_PORT
    from iot_assets.ui import UiError, free_port, port_is_free, serve

    settings = _settings()
    if not settings.is_local:
        raise click.UsageError("`iot-assets ui` serves the reports of a local data folder; with an object store, "
                               "start `dagster-webserver` and `dagster-daemon` yourself and serve the reports from a "
                               "static web endpoint (IOT_ASSETS_REPORTS_URL), see docs/dagster-ui.md")
    # The instance `iot-assets run` uses, created the same way when new: the daemon this starts must queue
    # runs one per data location and retry the ones whose worker died, as the CLI's runs do.
    home = _instance_home(settings, dict(os.environ))
    env = dict(os.environ, DAGSTER_HOME=str(home))
    configured = urlparse(settings.reports_url).port or DEFAULT_REPORTS_PORT
    if reports_port is None:
        reports_port = configured if port_is_free(configured) else free_port()
        if reports_port != configured:
            click.echo(f"port {configured} is taken: serving the reports on {reports_port}; the links of reports "
                       f"built before point at {configured}: rebuild them, or set IOT_ASSETS_REPORTS_URL and "
                       f"--reports-port alike", err=True)
    elif reports_port == 0:
        reports_port = free_port()
    try:
        code = serve(env, Path(settings.data_dir) / "reports", port, reports_port, click.echo)
    except UiError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


@main.command()
@click.argument("product", type=click.Choice(["inventory", "incidents", "exposure"]))
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]), default=None,
              help="The day to show; default the last day built.")
@click.option("--width", type=click.IntRange(20, 400), default=60, show_default=True,
              help="Cut cells longer than this many characters.")
def show(product: str, day, width: int) -> None:
    """Print a day's device inventory, incidents or exposure worklist: the tables the UI shows."""
    from iot_assets.show import ShowError, render_day

    try:
        text = render_day(_settings().data_dir, product, day.date().isoformat() if day else None, width)
    except ShowError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(text)


@main.group()
def models() -> None:
    """Model versions: list them, or choose the one in use (roll back)."""


MODEL_ASSETS = ("device_classifier", "anomaly_detector", "drift_reference")


@models.command("list")
@click.argument("asset", required=False, type=click.Choice(MODEL_ASSETS))
def models_list(asset: str | None) -> None:
    """Each version of ASSET (default: every model): trained on, headline metric, served since and why; * marks the
    one in use. Versions proposed by a retrain or a challenge say so; `models use` serves one."""
    from iot_assets.io.model_labels import version_rows
    from iot_assets.io.models import ModelStore, PromotionLogError

    settings = _settings()
    store = ModelStore(settings.data_dir)
    for name in (asset,) if asset else MODEL_ASSETS:
        try:
            rows = version_rows(store, name)
        except PromotionLogError as exc:
            raise click.ClickException(str(exc)) from None
        policy = "on" if settings.auto_promote else "off (IOT_ASSETS_AUTO_PROMOTE)"
        click.echo(f"{name}: {len(rows)} version(s); automatic promotion {policy}")
        if not rows:
            click.echo("  not trained yet")
            continue
        header = {"version": "version", "trained_on": "trained on", "headline": "headline metric",
                  "served_since": "served since", "reason": "reason"}
        widths = {key: max(len(str(r[key])) for r in [header, *rows]) for key in ("version", "trained_on", "headline",
                                                                                   "served_since")}
        for row in [header, *rows]:
            mark = "*" if row.get("served") is True else " "
            click.echo(f"{mark} " + "  ".join(str(row[key]).ljust(widths[key]) for key in widths) + f"  {row['reason']}")


@models.command("use")
@click.argument("asset", type=click.Choice(MODEL_ASSETS))
@click.argument("version")
@click.option("--reason", default="", help="Why (recorded in the promotion log); default: a proposal promoted, "
                                           "or a rollback.")
def models_use(asset: str, version: str, reason: str) -> None:
    """Serve VERSION of ASSET from now on (promote a proposed version, or roll back), recorded in the model's
    promotion log; rescore with daily_scoring_job."""
    from iot_assets.core import promotion
    from iot_assets.io.models import ModelStore, PromotionLogError

    settings = _settings()
    store = ModelStore(settings.data_dir)
    try:
        served = store.current_or_none(asset)
        why = reason or promotion.user_reason(store.promotions(asset), version, served)
        entry = store.promote(asset, version, why, kind=promotion.USER)
    except (FileNotFoundError, PromotionLogError) as exc:
        raise click.ClickException(str(exc)) from None
    if entry is None:
        click.echo(f"{asset}: {version} is served already; nothing changed")
        return
    click.echo(f"{asset}: now serving {version} instead of {served or 'none'} ({why})")
    _report_promotion(settings, entry)
    if asset == "anomaly_detector":
        _follow_with_drift_reference(store, version)


def _follow_with_drift_reference(store, detector_version: str) -> None:
    """Serve the drift reference built for the detector now served, if one was; else say how to build it."""
    from iot_assets.core import promotion

    built_for = [r for r in store.promotions("drift_reference") if r.get("follows") == detector_version]
    if built_for:
        entry = store.promote("drift_reference", built_for[-1]["to_version"],
                              f"follows anomaly_detector {detector_version} (served by user)",
                              kind=promotion.FOLLOWS, follows=detector_version)
        if entry:
            click.echo(f"drift_reference: now serving {entry['to_version']}, built for {detector_version}")
        return
    click.echo(f"drift_reference: none was built for {detector_version} yet; build it so that drift is judged "
               f"against the same days: `dagster asset materialize -m iot_assets.definitions --select drift_reference` "
               f"(or Materialize drift_reference in the UI)")


def _report_promotion(settings, entry: dict) -> None:
    """An observation on the model asset, so that the UI shows a promotion made here (when the instance exists)."""
    import dagster as dg

    home = Path(os.environ.get("DAGSTER_HOME") or Path(settings.data_dir) / "dagster_home")
    if not settings.is_local or not (home / "dagster.yaml").exists():
        return
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.report_runless_asset_event(dg.AssetObservation(
            asset_key=entry["asset"], metadata={"served_version": entry["to_version"], "served_since": entry["at"],
                                                "served_reason": entry["reason"],
                                                "previous_version": entry["from_version"] or "none"}))


def _attack_sample(folder: Path, seed: int) -> Path:
    """Give a few sample devices in `folder`/raw attack episodes, so the anomaly metrics have ground truth."""
    from iot_assets.core.archive import find_archives
    from iot_assets.synthetic.inject import inject as inject_archive

    out = folder / "episodes"
    (out / "episodes.csv").unlink(missing_ok=True)
    archives, _ = find_archives(folder / "raw")
    for archive in archives:
        if archive.name in SAMPLE_ATTACKED:
            path, _ = inject_archive(archive, out, seed)
            os.replace(path, archive.parts[0])
    click.echo(f"attack episodes for {', '.join(SAMPLE_ATTACKED)}: {out / 'episodes.csv'} (IOT_ASSETS_EPISODES)")
    return out / "episodes.csv"


@main.command()
@click.argument("pseudonym")
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]), help="A day the pseudonym was seen (gives its key period).")
@click.option("--period", help="The key period instead: YYYY (rotation year) or YYYY-MM (rotation month).")
@click.option("--reason", required=True, help="Why this subscriber is re-identified (goes into the audit log).")
@click.option("--operator", default="", help="Who asks (goes into the audit log); default: the login name.")
@click.option("--candidates", "candidates_file", type=click.Path(dir_okay=False, path_type=Path),
              help="A file of real MACs, one a line, to match a MAC pseudonym against (e.g. from DHCP leases).")
@click.option("--catalogue", "use_catalogue", is_flag=True, help="Match a MAC pseudonym against the device catalogue too.")
def reveal(pseudonym: str, day, period: str | None, reason: str, operator: str, candidates_file: Path | None,
           use_catalogue: bool) -> None:
    """Turn PSEUDONYM back into the real address or MAC, with the key, and log that it was done.

    An address is decrypted. A MAC pseudonym cannot be (it is a keyed hash): it is matched against
    the candidate MACs given (--candidates, --catalogue). Every attempt appends one line to the
    audit log (IOT_ASSETS_REVEAL_AUDIT_LOG) before anything is printed; the real value never goes there.
    """
    import getpass

    from iot_assets.contracts import catalogue
    from iot_assets.core.pseudonymise import PseudonymiseError

    try:
        settings = Settings.from_env()
        if (day is None) == (period is None):
            raise SettingsError("give exactly one of --day and --period")
        if not (settings.pseudonymise_key_file or settings.pseudonymise_key
                or Path(settings.pseudonymise_default_key_file).exists()):
            raise SettingsError(f"no pseudonymisation key is configured and {settings.pseudonymise_default_key_file} "
                                "does not exist: nothing can be revealed")
        pseudonymiser = _pseudonymiser(settings, usage_error=False)
        if period is None:
            period = pseudonymiser.period(day.date())
        elif len(period) != (4 if pseudonymiser.rotation == "year" else 7):
            raise SettingsError(f"--period {period}: the keys rotate per {pseudonymiser.rotation} "
                                f"({'YYYY' if pseudonymiser.rotation == 'year' else 'YYYY-MM'})")
        candidates = _read_candidates(candidates_file) if candidates_file else []
        if use_catalogue:
            candidates += [d.mac for d in catalogue.DEVICES] + [catalogue.GATEWAY_MAC]
        if not operator:
            try:
                operator = getpass.getuser()
            except (KeyError, OSError):  # no login name (a container without a user entry)
                raise SettingsError("the login name is unknown: give --operator for the audit log") from None
        real = pseudonymiser.reveal(pseudonym, period, operator, reason, candidates)
    except (SettingsError, PseudonymiseError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(real)
    click.echo(f"logged to {pseudonymiser.audit_log}", err=True)


def _read_candidates(path: Path) -> list[str]:
    """The MACs of a candidates file: one a line; blank lines and # comments skipped."""
    from iot_assets.contracts.schemas import MAC_PATTERN

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read the candidate MACs ({exc})") from None
    macs = []
    for number, line in enumerate(lines, start=1):
        text = line.strip().lower().rstrip(":")
        if not text or text.startswith("#"):
            continue
        if not re.match(MAC_PATTERN, text):
            raise SettingsError(f"{path} line {number}: {line.strip()!r} is not a MAC address")
        macs.append(text)
    return macs


def _pseudonymiser(settings: Settings, usage_error: bool = True):
    """The deployment's pseudonymiser (its key loaded, or created on first use)."""
    from iot_assets.core.pseudonymiser import Pseudonymiser

    try:
        return Pseudonymiser.from_settings(settings)
    except SettingsError as exc:
        if usage_error:
            raise click.UsageError(str(exc)) from exc
        raise


def _settings(env: dict | None = None) -> Settings:
    try:
        return Settings.from_env(env)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc


if __name__ == "__main__":
    main()
