"""The sample generator writes the published format, deterministically, with every quirk."""

import hashlib
import io
import json
import tarfile
from datetime import date

import pandas as pd
import pytest

from iot_assets.core.archive import find_archives
from iot_assets.core.ingest import decode_archive
from iot_assets.synthetic import sample
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY


def json_lines(path) -> list[dict]:
    with tarfile.open(path, "r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.name == path.name.replace(".tar.gz", ".json") and member.isreg()
        return [json.loads(line) for line in tar.extractfile(member)]


def test_archive_layout_is_the_published_one(sample_dir):
    records = json_lines(sample_dir / "nature_remo.tar.gz")
    assert list(records[-2]) == ["stats"] and list(records[-1]) == ["tombstone"]
    flows = [r["flows"] for r in records[:-2]]
    assert all(list(r) == ["flows"] for r in records[:-2])
    assert records[-2]["stats"]["exportedFlowTotalCount"] == len(flows)


def test_generated_records_carry_the_quirks(sample_dir):
    flows = [r["flows"] for r in json_lines(sample_dir / "nature_remo.tar.gz")[:-2]]
    df = pd.DataFrame(flows)
    assert df["sourceMacAddress"].str.endswith(":").all()
    assert (df["sourceIPv4Address"] == "::").any()  # DHCP before an address is held
    assert set(df["flowEndReason"]) >= {"idle", "active"}
    assert df["flowDurationMilliseconds"].max() < 1800  # seconds, despite the name
    assert df["tcpSequenceNumber"].str.startswith("0x").all()
    assert set(df["initialTCPFlags"]) >= {"0"}
    field_counts = set(len(f) for f in flows)
    assert 43 in field_counts and (31 in field_counts or 54 in field_counts)
    starts = pd.to_datetime(df["flowStartMilliseconds"])
    assert (starts.diff().dt.total_seconds() < 0).any(), "records should be in export order, not start order"
    probes = (df["sourceMacAddress"] == "38:d5:47:0c:25:d4:") & (df["destinationTransportPort"] == 137)
    assert probes.sum() > 50 and (df.loc[probes, "octetTotalCount"] == 156).all()


def test_generation_is_deterministic_for_a_seed(tmp_path):
    digests = []
    for run in ("a", "b"):
        lines = sample.device_day_lines(sample.PROFILES["xiaomi_mijia_led"], date(2019, 7, 1), seed=3, scale=0.1,
                                        first_day=FIRST_DAY)
        digests.append(hashlib.sha256("".join(lines).encode()).hexdigest())
    other = sample.device_day_lines(sample.PROFILES["xiaomi_mijia_led"], date(2019, 7, 1), seed=4, scale=0.1,
                                    first_day=FIRST_DAY)
    assert digests[0] == digests[1] != hashlib.sha256("".join(other).encode()).hexdigest()


def test_large_archives_are_split_into_parts(tmp_path):
    written = sample.generate(tmp_path, FIRST_DAY, 1, scale=0.2, seed=1, devices=["qrio_hub"], part_bytes=20_000)
    names = sorted(p.name for p in written[0].paths)
    assert names[0] == "qrio_hub.tar.gz00" and len(names) > 1
    (archive,), errors = find_archives(tmp_path)
    summary = decode_archive(archive, tmp_path / "staged", FIRST_DAY, LAST_DAY)
    assert summary.reconciled and summary.parts == len(names)


def test_every_profile_generates_and_decodes(tmp_path):
    sample.generate(tmp_path, FIRST_DAY, 1, scale=0.02, seed=1)
    archives, errors = find_archives(tmp_path)
    assert len(archives) == 25 and not errors
    for archive in archives:
        summary = decode_archive(archive, tmp_path / "staged" / archive.name, FIRST_DAY, LAST_DAY)
        assert summary.reconciled and summary.rejected == 0, archive.name
        if summary.decoded:  # the Mouse hub is offline most days
            assert summary.dominant_mac == summary.local_mac, archive.name


def test_one_oems_cameras_look_alike_and_no_port_is_unique():
    ports: dict[int, set[str]] = {5678: {"*"}, 54321: {"*"}}  # LAN scans reach every device on these
    for name, profile in sample.PROFILES.items():
        for svc in profile.services:
            if svc.port:
                ports.setdefault(svc.port, set()).add(name)
    jvc, planex = sample.PROFILES["jvc_kenwood_hdtv_ip_camera"], sample.PROFILES["planex_smacam_pantilt"]
    assert jvc.device.mac[:8] == planex.device.mac[:8]  # one OEM
    assert {s.port for s in jvc.services} == {s.port for s in planex.services}
    # Every port a device's services use is used by at least one other device.
    unique = {port: names for port, names in ports.items() if len(names) == 1}
    assert not unique, unique


# ---------------------------------------------------------------- calibration against reality


def _daily_profile(path) -> dict:
    """Per-day statistics of an archive: the figures the generator is calibrated on."""
    with tarfile.open(path, "r:gz") as tar:
        member = tar.next()
        frame = pd.read_json(io.BytesIO(tar.extractfile(member).read()), lines=True)
    flows = pd.json_normalize(frame["flows"].dropna())
    start = pd.to_datetime(flows["flowStartMilliseconds"])
    flows["day"] = start.dt.date
    flows["probe"] = (flows["sourceMacAddress"] == "38:d5:47:0c:25:d4:") & (flows["destinationTransportPort"] == 137)
    flows["udp"] = flows["protocolIdentifier"] == 17
    # Medians over days: a storm day (the au camera has one) must not set the norm.
    daily = flows.groupby("day").agg(flows=("probe", "size"), probe_share=("probe", "mean"), udp_share=("udp", "mean"))
    return {
        "flows_per_day": daily["flows"].median(),
        "probe_share": daily["probe_share"].median(),
        "probe_bytes": flows.loc[flows["probe"], "octetTotalCount"].median(),
        "udp_share": daily["udp_share"].median(),
        "out_of_order": (start.diff().dt.total_seconds() < 0).mean(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("device", ["nature_remo", "au_network_camera", "xiaomi_mijia_led"])
def test_generated_statistics_match_the_real_archive(real_data, tmp_path, device):
    real = _daily_profile(real_data / f"{device}.tar.gz")
    sample.generate(tmp_path, date(2019, 7, 1), 5, scale=1.0, seed=11, devices=[device])
    generated = _daily_profile(tmp_path / f"{device}.tar.gz")
    assert generated["flows_per_day"] == pytest.approx(real["flows_per_day"], rel=0.25)
    assert generated["probe_share"] == pytest.approx(real["probe_share"], abs=0.05)
    assert generated["probe_bytes"] == real["probe_bytes"]
    assert generated["udp_share"] == pytest.approx(real["udp_share"], abs=0.06)
    assert 0.005 < generated["out_of_order"] < 0.3
