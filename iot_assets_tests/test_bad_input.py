"""Bad input: a clear error or a reasoned reject naming archive and line; nothing lost."""

import gzip
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from iot_assets.archive import ArchiveError, find_archives, open_json_member
from iot_assets.ingest import decode_archive
from iot_assets_tests.conftest import FIRST_DAY, LAST_DAY, flow_line, json_archive, trailer, write_tar_gz


def decode_one(path: Path, tmp_path: Path):
    archives, errors = find_archives(path.parent)
    assert not errors, errors
    (archive,) = [a for a in archives if a.name == path.name.split(".tar.gz")[0]]
    return decode_archive(archive, tmp_path / "staged" / archive.name, FIRST_DAY, LAST_DAY)


def rejects(tmp_path: Path, name: str) -> list[dict]:
    return pq.read_table(tmp_path / "staged" / name / "rejects.parquet").to_pylist()


def good_body(n: int = 3) -> bytes:
    return b"".join(flow_line() for _ in range(n)) + trailer(n)


def test_good_archive_reconciles(tmp_path):
    summary = decode_one(json_archive(tmp_path / "raw" / "nature_remo.tar.gz", good_body()), tmp_path)
    assert (summary.flow_records, summary.decoded, summary.rejected, summary.stats_exported) == (3, 3, 0, 3)
    assert summary.reconciled and summary.device == "Nature Remo"


def test_truncated_gzip_keeps_what_came_before_and_says_where(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    body = b"".join(flow_line(sourceTransportPort=i) for i in range(20_000)) + trailer(20_000)
    path = json_archive(raw / "nature_remo.tar.gz", body)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    summary = decode_one(path, tmp_path)
    assert summary.error is not None and "damaged after line" in summary.error
    assert not summary.reconciled
    assert summary.decoded + summary.rejected == summary.flow_records


def test_corrupt_and_empty_archives_are_errors_not_crashes(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "qrio_hub.tar.gz").write_bytes(b"this is not gzip at all")
    (raw / "irobot_roomba.tar.gz").write_bytes(gzip.compress(b"not a tar stream either" * 40))
    write_tar_gz(raw / "sony_bravia.tar.gz", [])
    json_archive(raw / "nature_remo.tar.gz", good_body())
    archives, _ = find_archives(raw)
    results = {a.name: decode_archive(a, tmp_path / "staged" / a.name, FIRST_DAY, LAST_DAY) for a in archives}
    assert "gzip" in results["qrio_hub"].error
    assert "tar" in results["irobot_roomba"].error
    assert "no member" in results["sony_bravia"].error or "empty" in results["sony_bravia"].error
    assert results["nature_remo"].reconciled


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


def test_link_members_are_refused(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    link = tarfile.TarInfo("nature_remo.json")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    summary = decode_one(write_tar_gz(raw / "nature_remo.tar.gz", [(link, None)]), tmp_path)
    assert "not a regular file" in summary.error


def test_a_second_member_is_an_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    path = write_tar_gz(raw / "nature_remo.tar.gz", [(tarfile.TarInfo("nature_remo.json"), good_body()),
                                                     (tarfile.TarInfo("extra.json"), b"{}\n")])
    summary = decode_one(path, tmp_path)
    assert "more than one member" in summary.error and "extra.json" in summary.error


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
        flow_line(),                                        # 11 good
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
        10: "bad_value:unionTCPFlags",
    }
    assert summary.decoded == 2 and summary.rejected == 9
    assert summary.reconciled  # every line accounted for, and the stats agree
    flows = pq.read_table(tmp_path / "staged" / "nature_remo" / "flows.parquet").column("line_number").to_pylist()
    assert flows == [1, 11]


def test_stats_disagreeing_with_the_lines_does_not_reconcile(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    summary = decode_one(json_archive(raw / "nature_remo.tar.gz", b"".join([flow_line()] * 3) + trailer(5)), tmp_path)
    assert summary.decoded == 3 and summary.stats_exported == 5 and not summary.reconciled


def test_unknown_fields_are_reported_and_the_records_kept(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    body = flow_line(newYafField=7) + flow_line() + trailer(2)
    summary = decode_one(json_archive(raw / "nature_remo.tar.gz", body), tmp_path)
    assert summary.decoded == 2 and summary.unknown_fields == ["flows.newYafField"]


def test_open_json_member_names_the_archive(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "qrio_hub.tar.gz").write_bytes(b"junk")
    (archive,), _ = find_archives(raw)
    with pytest.raises(ArchiveError, match="qrio_hub"):
        with open_json_member(archive):
            pass
