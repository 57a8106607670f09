"""Fuzz suite (issue 7, item 9): mutated archives from generated samples, decoded one by one.

For every case (see `mutate.py`; seeded, so a failure is reproduced by its number):
no traceback, no hang (a time limit), and the ledger holds: every line read is a flow,
stats or tombstone line; every flow line read is decoded or rejected, with its true line
number; content mutations get exactly the rejects they must get and nothing else is
lost; after byte damage every line zlib can inflate before the damage is read, the lines
before the first changed byte decode as in the clean archive, and `unreadable` and
`damaged_at_line` say what was lost. The bombs run in a subprocess whose peak RSS is
measured. One case of every kind runs in the fast tier; the rest, and the big bombs, are
`slow`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import signal
import subprocess
import sys
import tarfile
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from iot_assets.core import line_blocks
from iot_assets.core.archive import find_archives
from iot_assets.core.ingest import decode_archive, read_summary
from iot_assets.core.reject_share import first_reject, reject_share_problem
from iot_assets.synthetic import sample
from iot_assets_tests.support.mutate import (
    INTACT,
    KINDS,
    Base,
    Case,
    bomb,
    make_case,
    readable_prefix,
)
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY

FAST_CASES = len(KINDS)  # one of every kind, on the first base
ALL_CASES = 6 * len(KINDS)  # 336: every kind six times, on both bases, with different choices
CASE_SECONDS = 60
MAX_RSS_BYTES = 1 << 30
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bases(tmp_path_factory) -> list[Base]:
    """Two generated archives: a small one (nature_remo, about 400 lines) and a larger one
    (google_home_gen1, about 2,700 lines, several blocks when decoded in small blocks)."""
    out = tmp_path_factory.mktemp("fuzz-bases")
    sample.generate(out, date(2019, 7, 1), 1, scale=0.3, seed=11, devices=["nature_remo"])
    sample.generate(out, date(2019, 7, 1), 1, scale=0.05, seed=11, devices=["google_home_gen1"])
    return [Base.load(out / "nature_remo.tar.gz"), Base.load(out / "google_home_gen1.tar.gz")]


@pytest.fixture(scope="session")
def clean(bases, tmp_path_factory) -> dict[str, dict]:
    """The clean decode of each base: decoded line numbers (every flow line) and nothing rejected."""
    results = {}
    for base in bases:
        raw = tmp_path_factory.mktemp(f"clean-{base.name}")
        (raw / f"{base.name}.tar.gz").write_bytes(base.gz)
        (archive,), _ = find_archives(raw)
        summary = decode_archive(archive, raw / "out", FIRST_DAY, LAST_DAY)
        assert summary.reconciled and summary.rejected == 0
        lines = pq.read_table(raw / "out" / "flows.parquet", columns=["line_number"]).column("line_number")
        assert sorted(lines.to_pylist()) == [i + 1 for i in base.flow_indexes]
        results[base.name] = {"decoded": set(lines.to_pylist())}
    return results


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail a case that hangs: SIGALRM interrupts the main thread's wait."""
    def expire(signum, frame):
        raise TimeoutError(f"no result after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_parts(case: Case, raw: Path) -> None:
    raw.mkdir(parents=True)
    if len(case.parts) == 1:
        (raw / f"{case.name}.tar.gz").write_bytes(case.parts[0])
    else:
        for i, part in enumerate(case.parts):
            (raw / f"{case.name}.tar.gz{i:02d}").write_bytes(part)


def flow_start_ms(text: str) -> int:
    moment = datetime.strptime(text + ("" if "." in text else ".0"), "%Y-%m-%d %H:%M:%S.%f")
    return int(moment.replace(tzinfo=timezone.utc).timestamp() * 1000)


def run_case(case: Case, bases: list[Base], clean: dict, tmp_path: Path, monkeypatch) -> None:
    write_parts(case, tmp_path / "raw")
    archives, errors = find_archives(tmp_path / "raw")
    if case.kind.startswith("name:"):  # never staged: one error naming the file
        (error,) = errors
        assert archives == [] and str(error).startswith(f"{case.name}.tar.gz: ") and case.error[0] in str(error)
        return
    base = next(b for b in bases if b.name == case.name)
    assert not errors and len(archives) == 1
    if case.block_bytes:
        monkeypatch.setattr(line_blocks, "BLOCK_BYTES", case.block_bytes)
    out = tmp_path / "out"
    with time_limit(CASE_SECONDS):
        summary = decode_archive(archives[0], out, FIRST_DAY, LAST_DAY)

    # The ledger, whatever happened.
    flows = pq.read_table(out / "flows.parquet")
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert read_summary(out) == summary
    assert summary.lines == summary.flow_records + summary.stats_lines + summary.tombstone_lines
    assert summary.decoded + summary.rejected == summary.flow_records
    assert (flows.num_rows, len(rejects)) == (summary.decoded, summary.rejected)
    decoded = flows.column("line_number").to_pylist()
    rejected = {r["line_number"]: r["reason"] for r in rejects}
    assert len(set(decoded)) == len(decoded) and len(rejected) == len(rejects)
    assert not set(decoded) & set(rejected)
    assert all(1 <= n <= summary.lines for n in list(decoded) + list(rejected))
    # Every failure has its own reason: the decoder's fallback for its own errors was never needed.
    assert "decode_error" not in summary.rejects_by_reason, rejects
    assert not [w for w in summary.warnings if "internal error" in w], summary.warnings
    assert summary.reconciled == (summary.error is None and summary.stats_exported == summary.flow_records)
    if summary.error is None:
        assert summary.unreadable == 0 and summary.damaged_at_line is None

    # An archive fails for its rejects only when its format changed (every record rejected).
    problem = reject_share_problem(summary, 0.5, first_reject(out / "rejects.parquet")) if summary.rejected else None
    if case.fails_as:
        assert problem.startswith(f"all {summary.flow_records:,} flow lines rejected") and case.fails_as in problem, problem
    elif case.lines is not None:
        assert problem is None, problem

    if case.lines is not None:
        check_content(case, base, summary, flows, rejected)
    elif case.error is None:
        check_byte_damage(case, base, clean[base.name], summary, decoded)
    if case.error is not None:
        assert summary.error is not None and any(text in summary.error for text in case.error), summary.error
        if case.lines is None:
            assert (summary.lines, summary.damaged_at_line, summary.unreadable) == (0, 1, None)


def check_content(case: Case, base: Base, summary, flows, rejected: dict[int, str]) -> None:
    """Line by line: what must be rejected is, with its reason; everything else decodes, as it was."""
    if case.error is None:
        assert summary.error is None, summary.error
    else:  # the member's lines were all read, then the archive's end was wrong
        assert summary.unreadable == 0
    assert summary.lines == len(case.lines)
    must_reject, maybe, must_decode = {}, {}, set()
    stats = tombstones = 0
    for number, line in enumerate(case.lines, start=1):
        expect = line.expect
        if expect == INTACT:
            expect = ("decode" if line.data.startswith(b'{"flows"') else
                      "stats" if line.data.startswith(b'{"stats"') else "tombstone")
        if expect == "decode":
            must_decode.add(number)
        elif expect == "reject":
            must_reject[number] = line.reasons
        elif expect == "maybe":
            maybe[number] = line.reasons
        elif expect == "stats":
            stats += 1
        else:
            tombstones += 1
    for number, reasons in must_reject.items():
        assert rejected.get(number) in reasons, (number, rejected.get(number), reasons)
    for number, reason in rejected.items():
        assert number in must_reject or reason in maybe.get(number, ()), (number, reason)
    decoded = flows.column("line_number").to_pylist()
    assert set(decoded) == must_decode | (set(maybe) - set(rejected))
    assert (summary.stats_lines, summary.tombstone_lines) == (stats, tombstones)
    assert summary.stats_exported == case.expected_stats(base)
    if case.unknown_field:
        assert case.unknown_field in summary.unknown_fields
    # The decoded rows are the records of their lines.
    got = {row["line_number"]: row for row in flows.select(
        ["line_number", "src_port", "dst_port", "packets", "bytes", "protocol", "collector_name", "flow_start"]
    ).to_pylist()}
    for number in must_decode:
        record = json.loads(case.lines[number - 1].data)["flows"]
        row = got[number]
        assert (row["src_port"], row["dst_port"], row["packets"], row["bytes"], row["protocol"]) == (
            record["sourceTransportPort"], record["destinationTransportPort"], record["packetTotalCount"],
            record["octetTotalCount"], record["protocolIdentifier"]), number
        assert row["collector_name"] == record.get("collectorName")
        assert int(row["flow_start"].timestamp() * 1000) == flow_start_ms(record["flowStartMilliseconds"])


def check_byte_damage(case: Case, base: Base, clean: dict, summary, decoded: list[int]) -> None:
    """Against zlib: the lines it can inflate before the damage are read, the ones before the
    first changed byte decode as in the clean archive; the summary says what was lost."""
    original = gzip.decompress(base.gz)
    data_offset = tarfile.open(fileobj=io.BytesIO(original)).firstmember.offset_data
    size = len(base.body)
    out, whole = readable_prefix(b"".join(case.parts))
    if out[:data_offset] != original[:data_offset]:  # the tar header itself is damaged or missing
        assert summary.error is not None and summary.lines == 0
        return
    member = out[data_offset : data_offset + size]
    every_line_read = len(member) == size
    # The end of the member ends its last line, whether or not a newline does.
    complete_lines = member.count(b"\n") + (every_line_read and not member.endswith(b"\n"))
    intact = whole and out == original
    assert (summary.error is None) == intact, summary.error
    assert summary.lines == complete_lines, (summary.lines, complete_lines, summary.error)
    first_change = next((i for i, (a, b) in enumerate(zip(member, base.body)) if a != b), len(member))
    unchanged_lines = base.body[:first_change].count(b"\n")
    assert {n for n in decoded if n <= unchanged_lines} == {n for n in clean["decoded"] if n <= unchanged_lines}
    if summary.error is not None:
        assert summary.damaged_at_line == (None if every_line_read else complete_lines + 1)
        assert summary.error.startswith("damaged after its last line" if every_line_read
                                        else f"damaged at line {complete_lines + 1:,}")
        stats = summary.stats_exported
        if summary.stats_lines and stats is not None and stats >= summary.flow_records:
            assert summary.unreadable == stats - summary.flow_records
        else:
            assert summary.unreadable is None


@pytest.mark.parametrize("seed", range(FAST_CASES))
def test_fuzz_every_kind_once(seed, bases, clean, tmp_path, monkeypatch):
    run_case(make_case(bases[:1], seed), bases, clean, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FAST_CASES, ALL_CASES))
def test_fuzz(seed, bases, clean, tmp_path, monkeypatch):
    run_case(make_case(bases, seed), bases, clean, tmp_path, monkeypatch)


# ---------------------------------------------------------------- a re-export beside its original (issue 23)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_a_partial_reexport_is_counted_once(seed, bases, tmp_path):
    """A second archive of the same device holding a random subset of its flow lines (and a few of
    its own): after cleaning, every shared flow is a copy of the original's, the rest are kept."""
    import random

    from iot_assets.core.clean import to_device_centric
    from iot_assets.core.duplicates import archive_rank, cross_archive_duplicates
    from iot_assets_tests.support.mutate import archive_bytes

    rng = random.Random(seed)
    base = bases[seed % len(bases)]
    flows = base.flow_indexes
    shared = sorted(rng.sample(flows, rng.randint(1, len(flows))))
    def later(text: str, ms: int) -> str:
        moment = datetime.strptime(text + ("" if "." in text else ".0"), "%Y-%m-%d %H:%M:%S.%f") + timedelta(milliseconds=ms)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    own = []  # FICTIONAL flows only the re-export has: an original's, started a few ms later
    for n, i in enumerate(rng.sample(flows, 3)):
        record = json.loads(base.lines[i])["flows"]
        for name in ("flowStartMilliseconds", "flowEndMilliseconds"):
            record[name] = later(record[name], 3 + n)
        own.append(json.dumps({"flows": record}).encode() + b"\n")
    body = b"".join(base.lines[i] for i in shared) + b"".join(own)
    stats = json.dumps({"stats": {"exportedFlowTotalCount": len(shared) + len(own)}}).encode() + b"\n"
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{base.name}.tar.gz").write_bytes(base.gz)
    (raw / f"{base.name}_reexport.tar.gz").write_bytes(archive_bytes(base.member, body + stats))
    archives, errors = find_archives(raw)
    assert not errors and len(archives) == 2
    decoded = []
    for archive in archives:
        decode_archive(archive, tmp_path / archive.name, FIRST_DAY, LAST_DAY)
        decoded.append(pq.read_table(tmp_path / archive.name / "flows.parquet").to_pandas())
    from iot_assets.contracts import catalogue

    mac = catalogue.BY_ARCHIVE[base.name].mac
    local_macs = {base.name: mac, f"{base.name}_reexport": mac}
    import pandas as pd

    clean, _ = to_device_centric(pd.concat(decoded, ignore_index=True), local_macs)
    duplicate_of = cross_archive_duplicates(clean, archive_rank(list(local_macs), local_macs))
    copies = clean[duplicate_of.notna()]
    original_lines = {i + 1 for i in shared}
    present = set(clean.loc[clean["archive"] == base.name, "line_number"])
    assert set(copies["archive"]) <= {f"{base.name}_reexport"}
    assert len(copies) == len(original_lines & present)
    assert {line for _, line in duplicate_of[duplicate_of.notna()]} == original_lines & present
    assert int((clean["archive"] == f"{base.name}_reexport").sum()) - len(copies) == len(own)


# ---------------------------------------------------------------- bombs, in a subprocess

_BOMB = """
import json, sys, time
from datetime import date
from pathlib import Path
from iot_assets.core.archive import find_archives
from iot_assets.core.ingest import decode_archive
raw, out, ratio = sys.argv[1:]
(archive,), _ = find_archives(Path(raw))
t0 = time.perf_counter()
summary = decode_archive(archive, Path(out), date(2019, 6, 25), date(2019, 10, 10),
                         max_inflation_ratio=None if ratio == "none" else float(ratio))
seconds = time.perf_counter() - t0
# VmHWM is this process's own peak: ru_maxrss after fork+exec starts at the parent's RSS.
peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak_kb * 1024, **summary.to_json()}))
"""


def decode_in_subprocess(path: Path, out: Path, ratio: str = "200", timeout_s: int = 300) -> tuple[dict, int]:
    """The summary, and the peak RSS in bytes of the process that decoded."""
    proc = subprocess.Popen([sys.executable, "-c", _BOMB, str(path.parent), str(out), ratio], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(timeout_s, proc.kill)
    killer.start()
    try:
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
        status = proc.wait()
    finally:
        killer.cancel()
    assert status == 0, f"the decoding process failed (killed after {timeout_s} s?): {stderr.decode()[-2000:]}"
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    return summary, summary.pop("peak_rss_bytes")


@pytest.fixture(scope="session")
def bomb_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bombs")


def test_bomb_2gb_of_spaces_ends_as_damage_quickly(bomb_dir, tmp_path):
    path = bomb(bomb_dir / "spaces" / "nature_remo.tar.gz", 2 << 30, b" ")
    summary, rss = decode_in_subprocess(path, tmp_path / "out")
    assert "max_inflation_ratio" in summary["error"] and summary["damaged_at_line"] == 1
    assert (summary["lines"], summary["decoded"], summary["rejected"], summary["unreadable"]) == (0, 0, 0, None)
    assert summary["seconds"] < 10 and rss < MAX_RSS_BYTES


@pytest.mark.slow
def test_bomb_2gb_of_spaces_without_caps_is_one_long_line(bomb_dir, tmp_path):
    path = bomb(bomb_dir / "spaces" / "nature_remo.tar.gz", 2 << 30, b" ")
    summary, rss = decode_in_subprocess(path, tmp_path / "out", ratio="none")
    assert summary["error"] is None and summary["rejects_by_reason"] == {"line_too_long": 1}
    (reject,) = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert (reject["line_number"], reject["detail"].split(" ")[0]) == (1, f"{2 << 30:,}")
    assert summary["seconds"] < 60 and rss < MAX_RSS_BYTES


@pytest.mark.slow
def test_bomb_16mb_of_empty_lines_is_streamed_rejects(bomb_dir, tmp_path):
    path = bomb(bomb_dir / "nl16" / "nature_remo.tar.gz", 16 << 20, b"\n")
    summary, rss = decode_in_subprocess(path, tmp_path / "out")
    assert summary["error"] is None and summary["rejects_by_reason"] == {"empty_line": 16 << 20}
    assert (summary["lines"], summary["decoded"], summary["rejected"]) == (16 << 20, 0, 16 << 20)
    assert pq.ParquetFile(tmp_path / "out" / "rejects.parquet").metadata.num_rows == 16 << 20
    assert rss < MAX_RSS_BYTES


@pytest.mark.slow
def test_bomb_64mb_of_empty_lines_ends_at_the_ratio_cap(bomb_dir, tmp_path):
    path = bomb(bomb_dir / "nl64" / "nature_remo.tar.gz", 64 << 20, b"\n")
    summary, rss = decode_in_subprocess(path, tmp_path / "out")
    assert "max_inflation_ratio" in summary["error"]
    assert summary["rejected"] == summary["lines"] > 32 << 20 and summary["damaged_at_line"] == summary["lines"] + 1
    assert rss < MAX_RSS_BYTES
