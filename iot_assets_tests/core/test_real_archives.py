"""The three real archives in ../shared decode with exact counts (skipped where absent);
damaged copies of nature_remo (in the test's temporary directory) keep every line read."""

import pyarrow.parquet as pq
import pytest

from iot_assets.core.archive import find_archives
from iot_assets.core.ingest import decode_archive
from iot_assets_tests.support.archives import complete_lines_in_readable_prefix
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY

EXPECTED = {"nature_remo": 126_048, "au_network_camera": 175_731, "xiaomi_mijia_led": 128_801}


@pytest.mark.slow
def test_real_archives_decode_exactly(real_data, tmp_path):
    archives, errors = find_archives(real_data)
    assert not errors
    for archive in archives:
        summary = decode_archive(archive, tmp_path / archive.name, FIRST_DAY, LAST_DAY)
        assert summary.decoded == EXPECTED[archive.name] == summary.stats_exported, archive.name
        assert summary.rejected == 0 and summary.unreadable == 0 and summary.reconciled and not summary.unknown_fields
        assert summary.dominant_mac == summary.local_mac
        assert len(summary.days) >= 107


def damaged_copy(real_data, tmp_path, damage) -> tuple:
    data = damage(bytearray((real_data / "nature_remo.tar.gz").read_bytes()))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "nature_remo.tar.gz").write_bytes(bytes(data))
    (archive,), _ = find_archives(raw)
    return decode_archive(archive, tmp_path / "staged", FIRST_DAY, LAST_DAY), bytes(data)


@pytest.mark.slow
def test_real_archive_truncated_at_half_keeps_every_readable_line(real_data, tmp_path):
    """Issue 7: truncated at 50%, nature_remo has 56,476 readable flow lines; 40,387 were kept."""
    summary, data = damaged_copy(real_data, tmp_path, lambda d: d[: len(d) // 2])
    assert complete_lines_in_readable_prefix(data) == 56_476
    assert (summary.lines, summary.flow_records, summary.decoded, summary.rejected) == (56_476, 56_476, 56_476, 0)
    assert summary.damaged_at_line == 56_477 and summary.unreadable is None and not summary.reconciled
    assert summary.error.startswith("damaged at line 56,477; lines 1-56,476 (")


@pytest.mark.slow
def test_real_archive_with_a_checksum_error_keeps_every_line(real_data, tmp_path):
    def break_crc(data):
        data[-8] ^= 0x01
        return data

    summary, _ = damaged_copy(real_data, tmp_path, break_crc)
    assert (summary.decoded, summary.rejected, summary.unreadable, summary.stats_exported) == (126_048, 0, 0, 126_048)
    assert summary.damaged_at_line is None and "every line was read" in summary.error and not summary.reconciled


@pytest.mark.slow
def test_real_archive_with_a_flipped_byte_accounts_for_every_line_read(real_data, tmp_path):
    original = (real_data / "nature_remo.tar.gz").read_bytes()
    where = len(original) // 3

    def flip(data):
        data[where] ^= 0xFF
        return data

    summary, data = damaged_copy(real_data, tmp_path, flip)
    assert summary.error is not None and "gzip stream is damaged" in summary.error
    assert summary.lines == complete_lines_in_readable_prefix(data)
    assert summary.decoded + summary.rejected == summary.flow_records
    # Every line inflated from the bytes before the flipped one is decoded as it was.
    intact = complete_lines_in_readable_prefix(original[:where]) - 1
    decoded = pq.read_table(tmp_path / "staged" / "flows.parquet", columns=["line_number"]).column("line_number")
    assert intact > 30_000 and set(range(1, intact + 1)) <= set(decoded.to_pylist())
