"""Faults that used to pass silently (issue 23): each test failed before its fix.

Double counting across archives, archives rejected wholesale, the up-front check of the data
folder, archive names that would escape `staging/`, model versions edited after they were
saved, stale reports and work folders, duplicated lines inside an archive.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets.core.archive import find_archives, group_archives
from iot_assets.io.models import JsonDocument, ModelStore, ModelTampered
from iot_assets.io.staging import ArchiveStore
from iot_assets_tests.support.records import flow_line, json_archive, trailer

# ---------------------------------------------------------------- names that would escape staging/


@pytest.mark.parametrize("name", ["...tar.gz", "..tar.gz", ".work.tar.gz", "...tar.gz00"])
def test_an_archive_name_that_would_escape_staging_is_rejected_naming_the_file(tmp_path, name):
    raw = tmp_path / "raw"
    json_archive(raw / name, flow_line() + trailer(1), member="x.json")
    json_archive(raw / "nature_remo.tar.gz", flow_line() + trailer(1))
    archives, errors = find_archives(raw)
    assert [a.name for a in archives] == ["nature_remo"]
    (error,) = errors
    assert name in str(error) and "not a plain device name" in str(error)


def test_staging_keys_stay_inside_staging(tmp_path):
    store = ArchiveStore(base_url=str(tmp_path), first_day="2019-06-25", last_day="2019-06-26")
    (archive,), _ = group_archives([json_archive(tmp_path / "raw" / "nature_remo.tar.gz", flow_line() + trailer(1))])
    key = store.staged_key(archive, "ab" * 32)
    assert (store.staging / key).resolve().is_relative_to(store.staging.resolve())
    forged = type(archive)("..", archive.parts)
    with pytest.raises(ValueError, match="'..' is not a plain device name"):
        store.staged_key(forged, "ab" * 32)


def test_decode_of_a_file_named_dot_dot_is_a_clear_error_not_a_traceback(tmp_path):
    path = json_archive(tmp_path / "in" / "...tar.gz", flow_line() + trailer(1), member="x.json")
    result = CliRunner().invoke(main, ["decode", str(path), "--out", str(tmp_path / "out" / "deep")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "error: ...tar.gz" in result.output and "not a plain device name" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- model versions verified on load


def test_a_model_file_edited_after_saving_is_refused_naming_the_file(tmp_path):
    store = ModelStore(str(tmp_path))
    version, directory = store.save("drift_reference", JsonDocument({"mean": [1.0, 2.0]}))
    assert store.load("drift_reference", version) == {"mean": [1.0, 2.0]}
    (Path(directory.path) / "document.json").write_text(json.dumps({"mean": [9.0, 2.0]}))
    with pytest.raises(ModelTampered, match=r"document\.json") as caught:
        store.load("drift_reference", version)
    assert version in str(caught.value) and "changed since it was saved" in str(caught.value)


def test_a_model_file_added_or_removed_is_refused(tmp_path):
    store = ModelStore(str(tmp_path))
    version, directory = store.save("drift_reference", JsonDocument({"mean": [1.0]}))
    (Path(directory.path) / "extra.npz").write_bytes(b"x")
    with pytest.raises(ModelTampered, match=r"extra\.npz"):
        store.load("drift_reference", version)
    (Path(directory.path) / "extra.npz").unlink()
    (Path(directory.path) / "document.json").unlink()
    with pytest.raises(ModelTampered, match=r"document\.json"):
        store.load("drift_reference", version)


# ---------------------------------------------------------------- stale reports and work folders


def ingest(data: Path, **env):
    """raw_archives alone, on an ephemeral instance: (its metadata, the run result)."""
    import dagster as dg

    from iot_assets_tests.support.definitions import definitions_for

    defs = definitions_for(data, **env)
    result = defs.resolve_job_def("ingest_archives_job").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    (materialization,) = result.asset_materializations_for_node("raw_archives")
    return materialization.metadata, result


def test_daily_reports_outside_a_shrunk_range_are_removed_with_their_partitions(tmp_path):
    from iot_assets.synthetic import sample

    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 2, scale=0.01, seed=3, devices=["nature_remo"])
    for day in ("2019-06-25", "2019-06-26", "2019-06-27"):
        (data / "reports" / "daily").mkdir(parents=True, exist_ok=True)
        (data / "reports" / "daily" / f"{day}.html").write_text("<html>old</html>")
        (data / "lake" / "clean_flows" / f"day={day}").mkdir(parents=True)
    (data / "reports" / "model_report.html").write_text("<html>models</html>")
    metadata, _ = ingest(data, IOT_ASSETS_END_DATE="2019-06-26")
    assert sorted(p.name for p in (data / "reports" / "daily").iterdir()) == ["2019-06-25.html", "2019-06-26.html"]
    assert sorted(p.name for p in (data / "lake" / "clean_flows").iterdir()) == ["day=2019-06-25", "day=2019-06-26"]
    assert (data / "reports" / "model_report.html").exists()
    pruned = metadata["pruned_outside_range"].value
    assert pruned["clean_flows"] == ["2019-06-27"] and pruned["daily_report"] == ["2019-06-27"]


def test_a_killed_runs_work_folder_is_collected_on_the_next_run_a_live_ones_is_not(tmp_path):
    import os
    import subprocess
    import sys

    from iot_assets.io.staging import work_folder_name
    from iot_assets.synthetic import sample

    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 1, scale=0.01, seed=3, devices=["nature_remo"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    work = data / "staging" / ".work"
    (work / work_folder_name(dead.pid) / "staged").mkdir(parents=True)
    (work / work_folder_name(dead.pid) / "staged" / "flows.parquet").write_bytes(b"half")
    (work / work_folder_name(os.getppid())).mkdir()  # a live process's (pytest's parent): still working
    ingest(data, IOT_ASSETS_END_DATE="2019-06-25")
    assert sorted(p.name for p in work.iterdir()) == [work_folder_name(os.getppid())]


# ---------------------------------------------------------------- the data folder, checked before any work


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this process cannot write into: chmod for a user, the immutable attribute for root."""
    import os
    import shutil
    import subprocess

    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False).returncode:
        pytest.skip("root without chattr +i: no way to make a folder unwritable here")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def run_command(tmp_path, *args, env=None):
    env = {"DAGSTER_HOME": "", "IOT_ASSETS_MIN_FREE_GB": "", **(env or {})}
    return CliRunner().invoke(main, ["run", *args], env=env)


def test_run_stops_with_one_line_when_the_data_folder_cannot_be_created(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_command(tmp_path, "--data-dir", str(tmp_path / "a-file" / "data"))
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: the data folder {tmp_path / 'a-file' / 'data'} cannot be created")
    assert "IOT_ASSETS_DATA_DIR" in line and "Traceback" not in result.output


def test_run_stops_with_one_line_when_the_data_folder_is_not_writable(tmp_path, unwritable_folder):
    result = run_command(tmp_path, "--data-dir", str(unwritable_folder))
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: the data folder {unwritable_folder} is not writable")
    assert "IOT_ASSETS_DATA_DIR" in line
    assert list(unwritable_folder.iterdir()) == []  # nothing was started


def test_run_stops_with_one_line_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 << 30, (100 << 30) - (300 << 20), 300 << 20))
    result = run_command(tmp_path, "--data-dir", str(tmp_path / "data"), env={"IOT_ASSETS_MIN_FREE_GB": "0.5"})
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line == (f"error: the data folder {tmp_path / 'data'} has 0.31 GB free, IOT_ASSETS_MIN_FREE_GB=0.5 "
                    f"asks for 0.5 GB: free some space, or lower IOT_ASSETS_MIN_FREE_GB")
    assert not (tmp_path / "data" / "raw").exists()


def test_a_full_disk_during_the_run_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    import sqlite3

    from iot_assets import cli

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(cli, "_materialize", full)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "nature_remo.tar.gz").write_bytes(b"x")
    result = run_command(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: database or disk is full (sqlite3.OperationalError), under {tmp_path / 'data'}: "
        f"free some space (or make the folder writable) and run again")


# ---------------------------------------------------------------- archives rejected wholesale


def renamed_field_archive(path: Path, lines: int = 5) -> Path:
    """A changed format: every record's flowStartMilliseconds renamed (FICTIONAL records)."""
    body = b"".join(flow_line(flowStartMilliseconds=..., flowStartMs="2019-06-25 08:36:47.096",
                              sourceTransportPort=40000 + i) for i in range(lines))
    return json_archive(path, body + trailer(lines))


def test_decode_fails_an_archive_whose_every_record_is_rejected_naming_the_cause(tmp_path):
    path = renamed_field_archive(tmp_path / "in" / "qrio_hub.tar.gz", lines=7)
    result = CliRunner().invoke(main, ["decode", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert ("error: qrio_hub: all 7 flow lines rejected, first reason missing_field:flowStartMilliseconds (line 1): "
            "a changed format (a field renamed, removed or re-nested)?") in result.output


def test_reject_share_counts_past_the_threshold_and_not_the_days_outside_the_range():
    from iot_assets.core.ingest import ArchiveSummary
    from iot_assets.core.reject_share import reject_share_problem

    def summary(**counts):
        return ArchiveSummary(archive="qrio_hub", flow_records=100, **counts)

    first = {"line_number": 3, "reason": "bad_timestamp:flowStartMilliseconds", "detail": "1561451807096"}
    assert reject_share_problem(summary(decoded=50, rejected=50, rejects_by_reason={"bad_timestamp:x": 50}),
                                0.5, first) is None
    problem = reject_share_problem(summary(decoded=40, rejected=60, rejects_by_reason={"bad_timestamp:x": 60}),
                                   0.5, first)
    assert problem == ("60 of 100 flow lines rejected (60% > IOT_ASSETS_MAX_REJECT_SHARE 0.5), first reason "
                       "bad_timestamp:flowStartMilliseconds (line 3, '1561451807096'): a changed time format "
                       "(epoch numbers, another layout)?")
    # Days outside the configured range are not the archive's fault: they are not counted.
    assert reject_share_problem(summary(decoded=10, rejected=90, rejects_by_reason={"outside_date_range": 90}),
                                0.5, first) is None
    # Every record rejected fails whatever the threshold.
    assert reject_share_problem(summary(decoded=0, rejected=100, rejects_by_reason={"bad_timestamp:x": 100}),
                                1.0, first).startswith("all 100 flow lines rejected")


def test_an_archive_rejected_wholesale_fails_with_an_alert_and_the_others_land(tmp_path):
    from iot_assets.defs.ingest.assets import read_day
    from iot_assets.materialize import Outcome
    from iot_assets.synthetic import sample

    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 1, scale=0.01, seed=3, devices=["nature_remo"])
    renamed_field_archive(data / "raw" / "qrio_hub.tar.gz")
    _, result = ingest(data, IOT_ASSETS_END_DATE="2019-06-25")
    (check,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "archives_decode"]
    assert not check.passed and check.severity.value == "ERROR"
    assert check.description == ("qrio_hub: all 5 flow lines rejected, first reason "
                                 "missing_field:flowStartMilliseconds (line 1): a changed format (a field renamed, "
                                 "removed or re-nested)?")
    messages = []
    outcome = Outcome(messages.append, strict=False)
    outcome.record("ingest_archives_job", result)
    assert len(outcome.alerts) == 1 and "qrio_hub: all 5 flow lines rejected" in outcome.alerts[0]
    assert outcome.problems  # `iot-assets run` exits 1
    manifest = result.output_for_node("raw_archives")
    failed = manifest.set_index("archive").loc["qrio_hub"]
    assert failed["staged_key"] is None and "all 5 flow lines rejected" in failed["error"]
    store = ArchiveStore(base_url=str(data), first_day="2019-06-25", last_day="2019-06-25")
    table, expected = read_day(manifest, store, "2019-06-25")
    assert set(table.column("archive").to_pylist()) == {"nature_remo"} and list(expected) == ["nature_remo"]
    assert table.num_rows == manifest.set_index("archive").loc["nature_remo", "decoded"] > 0


# ---------------------------------------------------------------- duplicated lines inside one archive


def test_repeated_records_inside_an_archive_are_rejected_even_with_an_adjusted_stats_count(tmp_path):
    import pyarrow.parquet as pq

    from iot_assets.core.ingest import decode_archive

    lines = [flow_line(sourceTransportPort=40001), flow_line(sourceTransportPort=40002),
             flow_line(sourceTransportPort=40003), flow_line(sourceTransportPort=40004, octetTotalCount=999)]
    record = json.loads(lines[1])["flows"]
    reordered = json.dumps({"flows": dict(reversed(list(record.items())))}).encode() + b"\n"
    # Line 2 again twice (once as it was, once re-serialised), line 3 again much later; stats say 7.
    body = lines[0] + lines[1] + lines[1] + lines[2] + reordered + lines[3] + lines[2]
    (archive,), _ = group_archives([json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body + trailer(7))])
    summary = decode_archive(archive, tmp_path / "out", date(2019, 6, 25), date(2019, 10, 10))
    assert summary.reconciled  # the ledger holds, and the repeats are in it as rejects
    assert (summary.decoded, summary.rejected, summary.rejects_by_reason) == (4, 3, {"duplicate_record": 3})
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert sorted((r["line_number"], r["reason"], r["detail"]) for r in rejects) == [
        (3, "duplicate_record", "the same record as line 2"),
        (5, "duplicate_record", "the same record as line 2"),
        (7, "duplicate_record", "the same record as line 4")]
    kept = pq.read_table(tmp_path / "out" / "flows.parquet").column("line_number").to_pylist()
    assert sorted(kept) == [1, 2, 4, 6]


def test_repeated_records_are_found_across_decoding_blocks(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from iot_assets.core import line_blocks
    from iot_assets.core.ingest import decode_archive

    monkeypatch.setattr(line_blocks, "BLOCK_BYTES", 4096)
    lines = [flow_line(sourceTransportPort=30000 + i) for i in range(60)]
    body = b"".join(lines) + b"".join(lines[:10])  # the first ten again, blocks later
    (archive,), _ = group_archives([json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body + trailer(70))])
    summary = decode_archive(archive, tmp_path / "out", date(2019, 6, 25), date(2019, 10, 10))
    assert (summary.decoded, summary.rejected) == (60, 10)
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert sorted((r["line_number"], r["detail"]) for r in rejects) == [
        (61 + i, f"the same record as line {1 + i}") for i in range(10)]


# ---------------------------------------------------------------- one flow in two archives


def test_cross_archive_duplicates_keep_the_canonical_archive_and_name_it():
    import pandas as pd

    from iot_assets.core.duplicates import cross_archive_duplicates

    start = pd.Timestamp("2019-06-25 08:00:00")

    def rows(archive, ports, mac="60:01:94:54:6b:e8"):
        return [{"archive": archive, "line_number": i + 1, "device_mac": mac, "protocol": 6,
                 "device_ip": "192.168.1.225", "device_port": p, "remote_ip": "203.0.113.9", "remote_port": 443,
                 "flow_start": start} for i, p in enumerate(ports)]

    clean = pd.DataFrame(rows("nature_remo_copy", [2, 3, 4]) + rows("nature_remo", [1, 2, 3])
                         + rows("qrio_hub", [2], mac="aa:bb:cc:00:00:01"))
    duplicate_of = cross_archive_duplicates(clean, {"nature_remo": 0, "nature_remo_copy": 1, "qrio_hub": 2})
    assert duplicate_of.tolist() == [("nature_remo", 2), ("nature_remo", 3), None, None, None, None, None]


def test_the_same_flows_in_two_archives_are_counted_once_and_the_overlap_reported(tmp_path):
    import shutil

    import dagster as dg
    import pandas as pd

    from iot_assets.synthetic import sample
    from iot_assets_tests.support.definitions import definitions_for, pseudonymiser_for

    data = tmp_path / "data"
    sample.generate(data / "raw", date(2019, 6, 25), 2, scale=0.01, seed=3, devices=["nature_remo", "qrio_hub"])
    shutil.copy(data / "raw" / "nature_remo.tar.gz", data / "raw" / "nature_remo_reexport.tar.gz")
    defs = definitions_for(data, IOT_ASSETS_END_DATE="2019-06-26")
    instance = dg.DagsterInstance.ephemeral()
    ingest_run = defs.resolve_job_def("ingest_archives_job").execute_in_process(instance=instance)
    manifest = ingest_run.output_for_node("raw_archives").set_index("archive")
    per_day = json.loads(manifest.loc["nature_remo", "rows_per_day"])
    (overlap,) = json.loads((data / "reports" / "reconciliation.json").read_text())["overlaps"]
    remo_mac = pseudonymiser_for(data, IOT_ASSETS_END_DATE="2019-06-26").mac("60:01:94:54:6b:e8", "2019-06-26")
    assert overlap == {"device_mac": remo_mac, "kept": "nature_remo", "dropped": "nature_remo_reexport",
                       "records": int(manifest.loc["nature_remo", "decoded"]), "days": sorted(per_day)}

    day = "2019-06-25"
    flows_run = defs.resolve_job_def("daily_flows_job").execute_in_process(instance=instance, partition_key=day)
    clean = pd.read_parquet(data / "lake" / "clean_flows" / f"day={day}")
    rejects = pd.read_parquet(data / "lake" / "clean_rejects" / f"day={day}")
    decoded = pd.read_parquet(data / "lake" / "decoded_flows" / f"day={day}")
    assert set(clean["archive"]) == {"nature_remo", "qrio_hub"}
    remo = clean[clean["archive"] == "nature_remo"]
    assert len(remo) == per_day[day] - int((rejects["archive"] == "nature_remo").sum())
    copies = rejects[rejects["archive"] == "nature_remo_reexport"]
    assert len(copies) == per_day[day] - int((rejects["archive"] == "nature_remo").sum())
    assert set(copies["reason"]) == {"duplicate_of:nature_remo"}
    assert len(decoded) == len(clean) + len(rejects)  # the ledger of the day holds
    checks = {c.check_name: c for c in flows_run.get_asset_check_evaluations()}
    assert checks["day_reconciles"].passed
    overlap_check = checks["flows_counted_once"]
    assert not overlap_check.passed and overlap_check.severity.value == "WARN"
    assert overlap_check.description == (f"{day}: {len(copies):,} records of nature_remo_reexport are "
                                         f"nature_remo's, counted once")


# ---------------------------------------------------------------- a short soak


@pytest.mark.slow
def test_a_short_soak_with_killed_runs_and_reexports_loses_nothing(tmp_path):
    """benchmarks/soak.py, short: two days of history, two simulated days, runs killed and a re-export landing."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "soak.py"), "--days", "2", "--history", "2",
                           "--devices", "2", "--kill-chance", "0.5", "--reexport-chance", "1", "--seed", "1",
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "records lost: 0;" in done.stdout
    result = json.loads(done.stdout[done.stdout.index("\n{\n"):])
    assert result["days_missing"] == [] and result["duplicate_flows"] == 0 and result["reexport_rows_clean"] == 0
    assert result["reexport_rows_rejected_as_copies"] > 0


def test_overlaps_read_only_archives_of_one_device_whose_days_meet():
    import pandas as pd

    from iot_assets.core.duplicates import FLOW_KEY, archive_overlaps

    def keys(ports, day):
        return pd.DataFrame({"device_mac": "m", "protocol": 6, "device_ip": "192.168.1.2", "device_port": ports,
                             "remote_ip": "203.0.113.1", "remote_port": 443,
                             "flow_start": pd.Timestamp(f"{day} 01:00"), "day": day})[FLOW_KEY + ["day"]]

    flows = {"x_0625": keys([1, 2], "2019-06-25"), "x_0626": keys([1, 2], "2019-06-26"),
             "x_0625_copy": keys([2, 3], "2019-06-25")}
    read = []
    days = {"x_0625": {"2019-06-25"}, "x_0626": {"2019-06-26"}, "x_0625_copy": {"2019-06-25"}}
    overlaps = archive_overlaps(lambda a: read.append(a) or flows[a], dict.fromkeys(flows, "m"),
                                {"x_0625": 0, "x_0625_copy": 1, "x_0626": 2}, days)
    assert overlaps == [{"device_mac": "m", "kept": "x_0625", "dropped": "x_0625_copy", "records": 1,
                         "days": ["2019-06-25"]}]
    assert sorted(read) == ["x_0625", "x_0625_copy"]  # the other day's archive is never read
