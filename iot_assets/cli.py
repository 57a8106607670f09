"""The `iot-assets` command line."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
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
    IOT_ASSETS_START_DATE..IOT_ASSETS_END_DATE are rejected as outside_date_range. Every
    archive is decoded even if another fails; each one that fails or does not reconcile
    gets one `error:` line on stderr, and the command then exits 1.
    """
    from iot_assets.core.archive import group_archives
    from iot_assets.core.decode import skip_pyarrow_pandas_check
    from iot_assets.core.ingest import decode_archive

    skip_pyarrow_pandas_check()
    settings = _settings()
    found, errors = group_archives(list(archives))
    failures = [f"error: {error}" for error in errors]
    for archive in found:
        t0 = time.perf_counter()
        with _bytes_bar(archive.name) as bar:
            summary = decode_archive(archive, out_dir / archive.name, settings.first_day, settings.last_day,
                                     on_progress=None if bar is None else bar.update)
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
@click.option("--sample-days", type=click.IntRange(1, 400), default=SAMPLE_DAYS, show_default=True,
              help="Days of sample to write when the landing zone is empty.")
@click.option("--sample-scale", type=click.FloatRange(0.001, 10), default=SAMPLE_SCALE, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--strict", is_flag=True, help="Exit non-zero when an ERROR-level asset check fails, too.")
def run(sample_days: int, sample_scale: float, seed: int, strict: bool) -> None:
    """Materialize every asset for every day of the configured range, on Dagster's execution.

    When the landing zone ($IOT_ASSETS_DATA_DIR/raw) holds no archive, a sample is written
    first and, unless IOT_ASSETS_END_DATE is set, the range is the sample's days. Exits non-zero
    if any run failed or a record may be lost; failed ERROR-level checks are printed as ALERT
    lines and, with --strict, fail the command too.
    """
    from iot_assets.io.location import base_path

    settings = _settings()
    child_env = dict(os.environ)
    # OpenMP threads (XGBoost's) that sleep while they wait, not spin: see iot_assets.run.
    child_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not settings.is_local and not child_env.get("DAGSTER_HOME"):
        raise click.UsageError("with an object-store IOT_ASSETS_DATA_DIR, set DAGSTER_HOME to the Dagster instance "
                               "folder (or a dagster.yaml for PostgreSQL, see deploy/)")
    home = Path(child_env.setdefault("DAGSTER_HOME", str(Path(settings.data_dir) / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    landing = base_path(settings.raw_url)
    with _run_lock(home):
        if not landing.exists() or not any(".tar.gz" in p.name for p in landing.iterdir()):
            days = min(sample_days, (settings.last_day - settings.first_day).days + 1)
            click.echo(f"{landing} is empty: writing a {days}-day sample at scale {sample_scale}")
            episodes = _sample_landing_zone(settings, days, sample_scale, seed)
            if not child_env.get("IOT_ASSETS_END_DATE"):
                child_env["IOT_ASSETS_END_DATE"] = (settings.first_day + timedelta(days=days - 1)).isoformat()
            if episodes and not child_env.get("IOT_ASSETS_EPISODES"):
                child_env["IOT_ASSETS_EPISODES"] = episodes
        # The code location reads its configuration when it is imported: a child process gets this one.
        done = subprocess.run([sys.executable, "-m", "iot_assets.run", *(["--strict"] if strict else [])],
                              env=child_env)
    sys.exit(done.returncode)


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
        return f"{settings.data_dir}/episodes/episodes.csv" if episodes else None


@contextmanager
def _run_lock(home: Path):
    """One `iot-assets run` per Dagster instance at a time; a second one says who holds it and stops."""
    path = home / "iot-assets-run.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise click.ClickException(f"another iot-assets run is using {home} "
                                       f"({handle.read().strip() or 'pid unknown'}); wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    env = dict(os.environ)
    home = Path(env.setdefault("DAGSTER_HOME", str(Path(settings.data_dir) / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
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


@models.command("list")
@click.argument("asset")
def models_list(asset: str) -> None:
    """The versions of ASSET (device_classifier, anomaly_detector, drift_reference); * marks the one in use."""
    from iot_assets.io.models import ModelStore

    store = ModelStore(_settings().data_dir)
    current = store.current(asset) if store.versions(asset) else None
    for version in store.versions(asset):
        click.echo(f"{'*' if version == current else ' '} {version}")


@models.command("use")
@click.argument("asset")
@click.argument("version")
def models_use(asset: str, version: str) -> None:
    """Serve VERSION of ASSET from now on (a rollback); rescore with daily_scoring_job."""
    from iot_assets.io.models import ModelStore

    try:
        ModelStore(_settings().data_dir).use(asset, version)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{asset}: now serving {version}")


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


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc


if __name__ == "__main__":
    main()
