"""The three real archives in ../shared decode with exact counts (skipped where absent)."""


from iot_assets.archive import find_archives
from iot_assets.ingest import decode_archive
from iot_assets_tests.conftest import FIRST_DAY, LAST_DAY

EXPECTED = {"nature_remo": 126_048, "au_network_camera": 175_731, "xiaomi_mijia_led": 128_801}


def test_real_archives_decode_exactly(real_data, tmp_path):
    archives, errors = find_archives(real_data)
    assert not errors
    for archive in archives:
        summary = decode_archive(archive, tmp_path / archive.name, FIRST_DAY, LAST_DAY)
        assert summary.decoded == EXPECTED[archive.name] == summary.stats_exported, archive.name
        assert summary.rejected == 0 and summary.reconciled and not summary.unknown_fields
        assert summary.dominant_mac == summary.local_mac
        assert len(summary.days) >= 107
