"""Bad input: a clear error or a reasoned reject naming archive and line; nothing lost.

The ledger of every archive: decoded + rejected + unreadable = its flow lines.
"""

import gzip
import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets.core import archive as archive_module
from iot_assets.core import decode as decode_module
from iot_assets.core import line_blocks
from iot_assets.core.archive import (
    ArchiveError,
    ArchiveFile,
    find_archives,
    group_archives,
    open_json_member,
)
from iot_assets.core.decode import decode_block
from iot_assets.core.ingest import decode_archive, read_summary
from iot_assets.core.line_blocks import MAX_LINE_BYTES
from iot_assets_tests.support.archives import complete_lines_in_readable_prefix
from iot_assets_tests.support.records import (
    FIRST_DAY,
    LAST_DAY,
    flow_line,
    json_archive,
    trailer,
    write_tar_gz,
)


def decode_one(path: Path, tmp_path: Path, **caps):
    archives, errors = find_archives(path.parent)
    assert not errors, errors
    (archive,) = [a for a in archives if a.name == path.name.split(".tar.gz")[0]]
    return decode_archive(archive, tmp_path / "staged" / archive.name, FIRST_DAY, LAST_DAY, **caps)


def rejects(tmp_path: Path, name: str) -> list[dict]:
    return pq.read_table(tmp_path / "staged" / name / "rejects.parquet").to_pylist()


def decoded_lines(tmp_path: Path, name: str) -> list[int]:
    table = pq.read_table(tmp_path / "staged" / name / "flows.parquet", columns=["line_number"])
    return sorted(table.column("line_number").to_pylist())


def good_body(n: int = 3) -> bytes:
    return b"".join(flow_line() for _ in range(n)) + trailer(n)


_TEMPLATE = flow_line(sourceTransportPort=987654, tcpSequenceNumber="0x00000000").split(b"987654")


def numbered_line(k: int) -> bytes:
    """A good flow line with source port k (the same as flow_line(sourceTransportPort=k), faster)."""
    return b"%d".join(_TEMPLATE) % k


def numbered_body(n: int) -> bytes:
    """n flow lines told apart by their source port (line k has port k), then stats and tombstone."""
    return b"".join(numbered_line(k) for k in range(1, n + 1)) + trailer(n)




def test_good_archive_reconciles(tmp_path):
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", good_body()), tmp_path)
    assert (summary.flow_records, summary.decoded, summary.rejected, summary.stats_exported) == (3, 3, 0, 3)
    assert (summary.unreadable, summary.damaged_at_line, summary.error) == (0, None, None)
    assert summary.reconciled and summary.device == "Nature Remo"
    assert read_summary(tmp_path / "staged" / "nature_remo") == summary


# ---------------------------------------------------------------- 1. one bad value is one reject

BAD_VALUES = {  # line -> (field, value, reason)
    5_065: ("flowStartMilliseconds", "2019-13-45 25:61:61.000", "bad_timestamp:flowStartMilliseconds"),
    6_001: ("flowStartMilliseconds", "2019-02-30 10:00:00.000", "bad_timestamp:flowStartMilliseconds"),
    7_002: ("flowEndMilliseconds", "2019-06-25 24:00:00.000", "bad_timestamp:flowEndMilliseconds"),
    8_003: ("flowStartMilliseconds", "２０１９-06-25 08:36:47.096", "bad_timestamp:flowStartMilliseconds"),
    9_004: ("vlanId", "0x00é", "bad_hex:vlanId"),
    10_005: ("sourceMacAddress", "38:d5:47:0c:25:dé:", "bad_mac:sourceMacAddress"),
    11_006: ("destinationIPv4Address", "192.168.1.２２５", "bad_ip:destinationIPv4Address"),
    12_007: ("tcpSequenceNumber", "0xffffffffffffffff", "bad_hex:tcpSequenceNumber"),
    13_008: ("packetTotalCount", 2**64, "bad_number:packetTotalCount"),
    14_009: ("ingressInterface", -3, "negative_value:ingress_interface"),
    15_010: ("flowStartMilliseconds", 1561451807096, "wrong_type:flowStartMilliseconds"),
    16_011: ("octetTotalCount", "156", "wrong_type:octetTotalCount"),
}


def test_a_bad_value_is_a_reject_of_its_record_and_the_rest_decodes(tmp_path):
    """Issue 7, probe 1: on a 16,932-line archive the bad value on line 5,065 (and the others)
    is a reject of that line; the blocks around it decode in full."""
    n = 16_932
    lines = []
    for k in range(1, n + 1):
        if k in BAD_VALUES:
            name, value, _ = BAD_VALUES[k]
            lines.append(flow_line(sourceTransportPort=k, **{name: value}))
        else:
            lines.append(numbered_line(k))
    lines.insert(15_000, b'{"flows": {"flowDurationMilliseconds": NaN}}\n')  # line 15,001, not JSON
    body = b"".join(lines) + trailer(n + 1)
    summary = decode_one(json_archive(tmp_path / "raw" / "mouse_computer_room_hub.tar.gz", body), tmp_path)

    # Line numbers after the inserted line shift by one.
    expected = {(k if k <= 15_000 else k + 1): reason for k, (_, _, reason) in BAD_VALUES.items()}
    expected[15_001] = "bad_number:flowDurationMilliseconds"
    got = {r["line_number"]: r["reason"] for r in rejects(tmp_path, "mouse_computer_room_hub")}
    assert got == expected
    details = {r["line_number"]: r["detail"] for r in rejects(tmp_path, "mouse_computer_room_hub")}
    assert details[5_065] == "flowStartMilliseconds='2019-13-45 25:61:61.000'"
    assert details[9_004] == "vlanId='0x00é'"
    assert (summary.decoded, summary.rejected, summary.unreadable) == (n + 1 - len(expected), len(expected), 0)
    assert summary.error is None and summary.reconciled
    kept = decoded_lines(tmp_path, "mouse_computer_room_hub")
    assert kept == [k for k in range(1, n + 2) if k not in expected]


def test_bad_lines_are_rejected_with_line_and_reason(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [
        flow_line(),                                        # 1 good
        b"this is not json\n",                              # 2
        flow_line(packetTotalCount="12"),                   # 3 wrong type
        flow_line(sourceMacAddress=...),                    # 4 missing required field
        flow_line(octetTotalCount=-5),                      # 5 negative count
        flow_line(flowStartMilliseconds="2019-06-25 09:00:00.000",
                  flowEndMilliseconds="2019-06-25 08:00:00.000"),  # 6 end before start
        flow_line(flowStartMilliseconds="2031-01-01 00:00:00.000",
                  flowEndMilliseconds="2031-01-01 00:00:01.000"),  # 7 outside the date range
        b'{"surprise": {"a": 1}}\n',                        # 8 unknown record kind
        flow_line(destinationTransportPort=70000),          # 9 absurd port
        flow_line(unionTCPFlags="XYZ"),                      # 10 not TCP flag letters
        b"   \n",                                           # 11 blank
        flow_line(flowDurationMilliseconds=float("nan")),    # 12 NaN (json.dumps writes it; not JSON)
        flow_line(packetTotalCount=[1]),                     # 13 wrong type
        b'{"flows": {}} {"flows": {}}\n',                   # 14 two records on one line
        flow_line(),                                        # 15 good
    ]
    body = b"".join(lines) + trailer(len(lines))
    summary = decode_one(json_archive(raw / "nature_remo.tar.gz", body), tmp_path)
    by_line = {r["line_number"]: r["reason"] for r in rejects(tmp_path, "nature_remo")}
    assert by_line == {
        2: "invalid_json",
        3: "wrong_type:packetTotalCount",
        4: "missing_field:sourceMacAddress",
        5: "negative_count:bytes",
        6: "end_before_start",
        7: "outside_date_range",
        8: "unknown_record",
        9: "port_out_of_range:dst_port",
        10: "bad_tcp_flags:unionTCPFlags",
        11: "empty_line",
        12: "bad_number:flowDurationMilliseconds",
        13: "wrong_type:packetTotalCount",
        14: "invalid_json",
    }
    assert summary.decoded == 2 and summary.rejected == 13
    assert summary.reconciled  # every line accounted for, and the stats agree
    assert decoded_lines(tmp_path, "nature_remo") == [1, 15]


def test_a_block_that_pyarrow_takes_keeps_line_numbers_with_blank_lines(tmp_path):
    """A blank line beside a line holding two records must not shift the numbers of the others."""
    lines = [flow_line(sourceTransportPort=1), b"\n", flow_line(sourceTransportPort=3).rstrip(b"\n") + b" "
             + flow_line(sourceTransportPort=3), flow_line(sourceTransportPort=4)]
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", b"".join(lines) + trailer(4)), tmp_path)
    assert {r["line_number"]: r["reason"] for r in rejects(tmp_path, "nature_remo")} == {2: "empty_line", 3: "invalid_json"}
    table = pq.read_table(tmp_path / "staged" / "nature_remo" / "flows.parquet").to_pylist()
    assert sorted((r["line_number"], r["src_port"]) for r in table) == [(1, 1), (4, 4)]
    assert summary.reconciled


def test_stats_disagreeing_with_the_lines_does_not_reconcile(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    summary = decode_one(json_archive(raw / "nature_remo.tar.gz", b"".join(flow_line() for _ in range(3)) + trailer(5)), tmp_path)
    assert summary.decoded == 3 and summary.stats_exported == 5 and summary.unreadable == 0
    assert not summary.reconciled


@pytest.mark.parametrize("stats", [b'{"stats": {"exportedFlowTotalCount": "3"}}\n',
                                   b'{"stats": {"exportedFlowTotalCount": -3}}\n',
                                   b'{"stats": {"packetTotalCount": 10}}\n'])
def test_an_unusable_stats_record_is_a_warning_and_does_not_reconcile(tmp_path, stats):
    body = b"".join(flow_line() for _ in range(3)) + stats
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body), tmp_path)
    assert (summary.decoded, summary.rejected, summary.stats_lines, summary.stats_exported) == (3, 0, 1, None)
    assert any("line 4: stats record without a usable exportedFlowTotalCount" in w for w in summary.warnings)
    assert not summary.reconciled


def test_unknown_fields_are_reported_and_the_records_kept(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    body = flow_line(newYafField=7) + flow_line() + trailer(2)
    summary = decode_one(json_archive(raw / "nature_remo.tar.gz", body), tmp_path)
    assert summary.decoded == 2 and summary.unknown_fields == ["flows.newYafField"]


# ---------------------------------------------------------------- 2, 4. damage keeps what came before


def test_truncated_gzip_keeps_every_line_read_before_the_damage(tmp_path):
    """Issue 7, probe 4: truncated at 50%, every line inflatable from the first half is kept."""
    raw = tmp_path / "raw"
    raw.mkdir()
    n = 20_000
    path = json_archive(raw / "nature_remo.tar.gz", numbered_body(n))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    readable = complete_lines_in_readable_prefix(data[: len(data) // 2])
    assert 0 < readable < n
    summary = decode_one(path, tmp_path)
    assert (summary.lines, summary.decoded, summary.rejected) == (readable, readable, 0)
    assert summary.damaged_at_line == readable + 1
    assert summary.unreadable is None  # the stats record went with the damage
    assert summary.error.startswith(f"damaged at line {readable + 1:,}; lines 1-{readable:,} (")
    assert "truncated" in summary.error
    assert summary.member_bytes == len(numbered_body(n)) and 0 < summary.member_bytes_read < summary.member_bytes
    assert not summary.reconciled
    assert decoded_lines(tmp_path, "nature_remo") == list(range(1, readable + 1))


def test_a_checksum_error_keeps_every_line_and_fails_the_archive(tmp_path):
    """Issue 7, probe 4: a CRC error used to keep 51 of 16,932 lines; now every line is read,
    and the archive is still an error (its bytes fail their checksum)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    n = 16_932
    path = json_archive(raw / "mouse_computer_room_hub.tar.gz", numbered_body(n))
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    path.write_bytes(bytes(data))
    summary = decode_one(path, tmp_path)
    assert (summary.decoded, summary.rejected, summary.stats_exported, summary.unreadable) == (n, 0, n, 0)
    assert summary.damaged_at_line is None
    assert summary.error.startswith(f"damaged after its last line (line {n + 2:,}); every line was read")
    assert "checksum" in summary.error.lower() or "data check" in summary.error
    assert not summary.reconciled


def test_a_damaged_deflate_stream_is_damage_not_a_traceback(tmp_path):
    """Issue 7, probe 2: isal's own exception is damage, and the lines before it count."""
    raw = tmp_path / "raw"
    raw.mkdir()
    n = 5_000
    data = bytearray(json_archive(tmp_path / "whole.tar.gz", numbered_body(n)).read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = raw / "nature_remo.tar.gz"
    path.write_bytes(bytes(data))
    summary = decode_one(path, tmp_path)
    assert summary.error is not None and "gzip stream is damaged" in summary.error
    assert summary.decoded + summary.rejected == summary.flow_records
    readable = complete_lines_in_readable_prefix(bytes(data))
    assert summary.lines == readable
    # The lines before the damaged point are the original ones.
    assert decoded_lines(tmp_path, "nature_remo")[: readable // 3] == list(range(1, readable // 3 + 1))


def split(data: bytes, pieces: int) -> list[bytes]:
    size = -(-len(data) // pieces)
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("layout", ["duplicated", "swapped"])
def test_a_split_archive_with_a_duplicated_or_swapped_part_is_damage(tmp_path, layout):
    """Issue 7, probe 2: a part duplicated or two parts swapped; decode reports, never raises."""
    n = 4_000
    parts = split(json_archive(tmp_path / "whole.tar.gz", numbered_body(n)).read_bytes(), 4)
    if layout == "duplicated":
        parts = parts[:2] + [parts[1]] + parts[2:]
    else:
        parts[1], parts[2] = parts[2], parts[1]
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, piece in enumerate(parts):
        (raw / f"google_home_gen1.tar.gz{i:02d}").write_bytes(piece)
    summary = decode_one(raw / "google_home_gen1.tar.gz00", tmp_path)
    assert summary.error is not None and not summary.reconciled
    # The damage may be met inside the member, or (the parts still inflating to garbage) after it.
    every_line_read = summary.member_bytes_read >= summary.member_bytes
    assert summary.damaged_at_line == (None if every_line_read else summary.lines + 1)
    assert summary.lines == complete_lines_in_readable_prefix(b"".join(parts))
    assert 0 < summary.decoded and summary.decoded + summary.rejected == summary.flow_records
    assert summary.unreadable is None  # the stats record is lost in the damage


def test_the_decode_command_reports_each_failed_archive_and_decodes_the_others(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = json_archive(raw / "nature_remo.tar.gz", numbered_body(50))
    data = json_archive(tmp_path / "whole.tar.gz", numbered_body(2_000)).read_bytes()
    (raw / "qrio_hub.tar.gz").write_bytes(data[: len(data) // 2])
    (raw / "sony_bravia.tar.gz").write_bytes(b"not gzip")
    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(main, ["decode", str(raw / "qrio_hub.tar.gz"), str(good),
                                       str(raw / "sony_bravia.tar.gz"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0].startswith("error: qrio_hub: damaged at line ") and "truncated" in errors[0]
    assert errors[1].startswith("error: sony_bravia: damaged at line 1; no line was read: not a gzip stream")
    assert read_summary(tmp_path / "out" / "nature_remo").reconciled
    assert "nature_remo: 50 flow lines read, 50 decoded, 0 rejected, 0 unreadable; stats say 50" in result.stdout


def test_corrupt_and_empty_archives_are_errors_not_crashes(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "qrio_hub.tar.gz").write_bytes(b"this is not gzip at all")
    (raw / "irobot_roomba.tar.gz").write_bytes(gzip.compress(b"not a tar stream either" * 40))
    (raw / "planex_smacam_pantilt.tar.gz").write_bytes(b"")
    write_tar_gz(raw / "sony_bravia.tar.gz", [])
    json_archive(raw / "nature_remo.tar.gz", good_body())
    archives, _ = find_archives(raw)
    results = {a.name: decode_archive(a, tmp_path / "staged" / a.name, FIRST_DAY, LAST_DAY) for a in archives}
    assert "not a gzip stream" in results["qrio_hub"].error
    assert "not a readable tar stream" in results["irobot_roomba"].error
    assert "not a gzip stream (no data)" in results["planex_smacam_pantilt"].error
    assert "no member" in results["sony_bravia"].error or "empty" in results["sony_bravia"].error
    for name in ("qrio_hub", "irobot_roomba", "planex_smacam_pantilt", "sony_bravia"):
        assert results[name].damaged_at_line == 1 and results[name].unreadable is None
        assert pq.read_table(tmp_path / "staged" / name / "flows.parquet").num_rows == 0
    assert results["nature_remo"].reconciled


def test_garbage_after_the_gzip_stream_is_an_error_after_every_line(tmp_path):
    path = json_archive(tmp_path / "raw" / "nature_remo.tar.gz", numbered_body(10))
    path.write_bytes(path.read_bytes() + b"garbage")
    summary = decode_one(path, tmp_path)
    assert summary.decoded == 10 and summary.unreadable == 0 and summary.damaged_at_line is None
    assert "not gzip after the end of the gzip stream" in summary.error and not summary.reconciled


def test_two_gzip_members_and_zero_padding_read_as_one_stream(tmp_path):
    whole = gzip.decompress(json_archive(tmp_path / "whole.tar.gz", numbered_body(100)).read_bytes())
    path = tmp_path / "raw" / "nature_remo.tar.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(whole[:30_000]) + gzip.compress(whole[30_000:]) + b"\0" * 100)
    summary = decode_one(path, tmp_path)
    assert summary.reconciled and summary.decoded == 100


def test_missing_part_of_a_split_archive(tmp_path):
    for suffix in ("00", "02"):
        (tmp_path / f"google_home_gen1.tar.gz{suffix}").write_bytes(b"x")
    archives, errors = find_archives(tmp_path)
    assert not archives
    assert "google_home_gen1.tar.gz01" in str(errors[0])


def test_split_archive_parts_are_read_in_order(tmp_path):
    data = json_archive(tmp_path / "whole.tar.gz", good_body(50), member="nature_remo.json").read_bytes()
    raw = tmp_path / "raw"
    raw.mkdir()
    third = len(data) // 3
    for i, piece in enumerate([data[:third], data[third : 2 * third], data[2 * third :]]):
        (raw / f"nature_remo.tar.gz{i:02d}").write_bytes(piece)
    summary = decode_one(raw / "nature_remo.tar.gz00", tmp_path)
    assert summary.reconciled and summary.decoded == 50 and summary.parts == 3


def test_a_part_that_vanishes_is_the_archive_s_error(tmp_path):
    json_archive(tmp_path / "raw" / "nature_remo.tar.gz", good_body())
    (archive,), _ = find_archives(tmp_path / "raw")
    archive.parts[0].unlink()
    summary = decode_archive(archive, tmp_path / "staged" / "nature_remo", FIRST_DAY, LAST_DAY)
    assert "cannot read the archive" in summary.error and summary.damaged_at_line == 1


def test_archives_on_any_path_with_open_name_and_stat(tmp_path):
    """A `upath.UPath` (here the in-memory filesystem; s3:// the same way) works like a local Path."""
    upath = pytest.importorskip("upath")
    data = json_archive(tmp_path / "whole.tar.gz", numbered_body(30)).read_bytes()
    root = upath.UPath("memory://iot-assets-test/raw")
    root.mkdir(parents=True, exist_ok=True)
    for i, piece in enumerate(split(data, 2)):
        (root / f"nature_remo.tar.gz{i:02d}").write_bytes(piece)
    (root / "README.md").write_bytes(b"not an archive")
    archives, errors = find_archives(root)
    assert not errors and [a.name for a in archives] == ["nature_remo"] and len(archives[0].parts) == 2
    summary = decode_archive(archives[0], tmp_path / "staged" / "nature_remo", FIRST_DAY, LAST_DAY)
    assert summary.reconciled and summary.decoded == 30 and summary.size_bytes == len(data)


# ---------------------------------------------------------------- tar tricks


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("/etc/nature_remo.json"),
        tarfile.TarInfo("../../nature_remo.json"),
    ],
)
def test_unsafe_member_paths_are_refused(tmp_path, member):
    raw = tmp_path / "raw"
    raw.mkdir()
    summary = decode_one(write_tar_gz(raw / "nature_remo.tar.gz", [(member, good_body())]), tmp_path)
    assert "unsafe path" in summary.error
    assert not (tmp_path / "etc").exists() and not list(tmp_path.parent.glob("nature_remo.json"))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE])
def test_link_and_special_members_are_refused(tmp_path, kind):
    raw = tmp_path / "raw"
    raw.mkdir()
    link = tarfile.TarInfo("nature_remo.json")
    link.type = kind
    link.linkname = "/etc/passwd"
    summary = decode_one(write_tar_gz(raw / "nature_remo.tar.gz", [(link, None)]), tmp_path)
    assert "not a regular file" in summary.error and summary.damaged_at_line == 1


def test_a_second_member_is_an_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    path = write_tar_gz(raw / "nature_remo.tar.gz", [(tarfile.TarInfo("nature_remo.json"), good_body()),
                                                     (tarfile.TarInfo("extra.json"), b"{}\n")])
    summary = decode_one(path, tmp_path)
    assert "more than one member" in summary.error and "extra.json" in summary.error
    assert summary.decoded == 3 and summary.damaged_at_line is None and not summary.reconciled


def test_a_long_member_name_in_a_pax_header_is_read(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    info = tarfile.TarInfo("d" * 300 + "/nature_remo.json")
    data = numbered_body(5)
    info.size = len(data)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    (raw / "nature_remo.tar.gz").write_bytes(gzip.compress(buffer.getvalue()))
    summary = decode_one(raw / "nature_remo.tar.gz", tmp_path)
    assert summary.reconciled and summary.decoded == 5


def test_a_member_shorter_than_its_header_says_is_truncation(tmp_path):
    data = numbered_body(100)
    info = tarfile.TarInfo("nature_remo.json")
    info.size = len(data) + 5_000
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    path = tmp_path / "raw" / "nature_remo.tar.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(header + data))
    summary = decode_one(path, tmp_path)
    assert summary.decoded == 100 and summary.stats_exported == 100 and summary.unreadable == 0
    assert "ends 5,000 bytes before the end of its member" in summary.error
    assert summary.damaged_at_line == 103 and not summary.reconciled


def test_open_json_member_names_the_archive(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "qrio_hub.tar.gz").write_bytes(b"junk")
    (archive,), _ = find_archives(raw)
    with pytest.raises(ArchiveError, match="qrio_hub"):
        with open_json_member(archive):
            pass


# ---------------------------------------------------------------- 3. memory bounded


def test_a_million_empty_lines_are_streamed_rejects(tmp_path):
    """Each empty line is a reject with its line, written block by block (the 16 MB bomb of
    the issue took 4.4 GB as reject objects; tests/test_fuzz.py measures its memory)."""
    n = 1_000_000
    body = flow_line(sourceTransportPort=1) + b"\n" * n + flow_line(sourceTransportPort=2) + trailer(n + 2)
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body), tmp_path)
    assert (summary.decoded, summary.rejected, summary.rejects_by_reason) == (2, n, {"empty_line": n})
    assert summary.reconciled
    table = pq.read_table(tmp_path / "staged" / "nature_remo" / "rejects.parquet")
    assert table.column("line_number").to_pylist() == list(range(2, n + 2))
    assert decoded_lines(tmp_path, "nature_remo") == [1, n + 2]


def test_a_line_past_the_limit_is_one_reject_with_its_length(tmp_path):
    long_line = b'{"flows": {"collectorName": "' + b"x" * (3 * MAX_LINE_BYTES) + b'"}}'
    body = flow_line(sourceTransportPort=1) + long_line + b"\n" + flow_line(sourceTransportPort=3) + trailer(3)
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body), tmp_path)
    (reject,) = rejects(tmp_path, "nature_remo")
    assert (reject["line_number"], reject["reason"]) == (2, "line_too_long")
    assert reject["detail"].startswith(f"{len(long_line):,} bytes")
    assert decoded_lines(tmp_path, "nature_remo") == [1, 3] and summary.reconciled


def test_the_line_limit_is_an_argument(tmp_path):
    body = numbered_body(20)
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body), tmp_path, max_line_bytes=300)
    assert summary.rejects_by_reason == {"line_too_long": 20} and summary.stats_exported == 20
    assert summary.reconciled  # every flow line is a reject, and accounted for


def test_inflation_past_the_caps_ends_the_archive_as_damage(tmp_path, monkeypatch):
    path = json_archive(tmp_path / "raw" / "nature_remo.tar.gz", numbered_body(3_000))
    summary = decode_one(path, tmp_path, max_inflated_bytes=1_000_000)
    assert "past the cap of 1,000,000 bytes (max_inflated_bytes)" in summary.error
    assert 0 < summary.decoded == summary.lines < 3_000 and summary.damaged_at_line == summary.lines + 1

    # The ratio is checked past 32 MB by default; 512 KB keeps the test quick.
    monkeypatch.setattr(archive_module, "RATIO_CHECKED_AFTER_BYTES", 512 << 10)
    bomb = json_archive(tmp_path / "bomb" / "nature_remo.tar.gz", flow_line() + b"\n" * (2 << 20))
    summary = decode_one(bomb, tmp_path)
    assert "past the cap of 200 (max_inflation_ratio): a decompression bomb" in summary.error
    assert summary.decoded == 1 and summary.rejected == summary.lines - 1 > 500_000
    assert summary.unreadable is None and not summary.reconciled


def test_no_caps_when_the_caller_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "RATIO_CHECKED_AFTER_BYTES", 512 << 10)
    bomb = json_archive(tmp_path / "raw" / "nature_remo.tar.gz", b"\n" * (2 << 20) + trailer(2 << 20))
    summary = decode_one(bomb, tmp_path, max_inflation_ratio=None, max_inflated_bytes=None)
    assert summary.error is None and summary.rejected == 2 << 20 and summary.reconciled


def test_group_archives_takes_any_part_paths(tmp_path):
    paths = [tmp_path / "a.tar.gz01", tmp_path / "a.tar.gz00", tmp_path / "b.tar.gz"]
    archives, errors = group_archives(paths)
    assert not errors
    assert archives == [ArchiveFile("a", (paths[1], paths[0])), ArchiveFile("b", (paths[2],))]


def test_blocks_of_nothing_but_blank_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(line_blocks, "BLOCK_BYTES", 4096)  # many blocks, most of them blank
    body = numbered_line(1) + b"\n" * 20_000 + b"  \n" * 5_000 + numbered_line(25_002) + trailer(25_002)
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body), tmp_path)
    assert summary.rejects_by_reason == {"empty_line": 25_000} and summary.decoded == 2
    assert summary.reconciled and not summary.warnings


def test_an_internal_error_costs_one_line_not_the_block(monkeypatch):
    """Should the decoder itself fail on a record (a bug), that record becomes a `decode_error`
    reject and the block around it is decoded in halves."""
    real_convert = decode_module._convert

    def fragile(flows, line_numbers, *args):
        if 5 in line_numbers.tolist():
            raise RuntimeError("a bug")
        return real_convert(flows, line_numbers, *args)

    monkeypatch.setattr(decode_module, "_convert", fragile)
    block = decode_block(b"".join(numbered_line(k) for k in range(1, 10)), 1, "nature_remo", FIRST_DAY, LAST_DAY)
    assert block.flows.column("line_number").to_pylist() == [1, 2, 3, 4, 6, 7, 8, 9]
    assert block.rejects.select(["line_number", "reason", "detail"]).to_pylist() == [
        {"line_number": 5, "reason": "decode_error", "detail": "RuntimeError: a bug"}]
    assert block.lines == 9 and block.warnings == [
        "lines 1-9: decoded in parts after an internal error (RuntimeError: a bug)"]
