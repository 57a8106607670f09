"""Attack episodes injected into a copy of an archive, in the same format."""

import tarfile

import pandas as pd
import pyarrow.parquet as pq
from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets.core.archive import find_archives
from iot_assets.core.ingest import decode_archive
from iot_assets.synthetic import sample
from iot_assets.synthetic.inject import EPISODE_TYPES, inject, read_episodes
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY


def test_inject_adds_every_episode_type_and_stays_decodable(tmp_path):
    raw = tmp_path / "raw"
    sample.generate(raw, FIRST_DAY, 10, scale=0.05, seed=2, devices=["nature_remo"])
    (archive,), _ = find_archives(raw)
    original = decode_archive(archive, tmp_path / "original", FIRST_DAY, LAST_DAY)
    out = tmp_path / "injected"
    path, episodes = inject(archive, out, seed=4)
    assert sorted(e.type for e in episodes) == sorted(EPISODE_TYPES)
    assert list((raw).iterdir()) == [archive.parts[0]]  # nothing written into the raw zone
    with tarfile.open(path, "r:gz") as tar:
        assert [m.name for m in tar.getmembers()] == ["nature_remo.json"]
    (copy,), _ = find_archives(out)
    summary = decode_archive(copy, tmp_path / "staged", FIRST_DAY, LAST_DAY)
    assert summary.reconciled and summary.rejected == 0 and summary.decoded > original.decoded

    table = read_episodes(out / "episodes.csv")
    assert list(table.columns) == ["device", "type", "start", "end"] and (table["device"] == "Nature Remo").all()
    # Episodes fall in the last 30% of days: the models train on clean days.
    assert table["start"].min() >= pd.Timestamp("2019-07-01", tz="UTC")
    flows = pq.read_table(tmp_path / "staged" / "flows.parquet").to_pandas()
    scan = table[table["type"] == "scan"].iloc[0]
    in_scan = flows[(flows["flow_start"] >= scan["start"]) & (flows["flow_start"] < scan["end"])]
    assert (in_scan["dst_port"].isin([23, 2323])).sum() > 1000
    change = table[table["type"] == "firmware_change"].iloc[0]
    after = flows[(flows["flow_start"] >= change["start"]) & (flows["src_mac"] == "60:01:94:54:6b:e8")]
    before = flows[(flows["flow_start"] < change["start"]) & (flows["src_mac"] == "60:01:94:54:6b:e8")]
    assert 443 in set(before["dst_port"]) and 443 not in set(after["dst_port"]) and 8443 in set(after["dst_port"])


def test_inject_command_refuses_the_landing_zone(tmp_path, monkeypatch):
    raw = tmp_path / "data" / "raw"
    sample.generate(raw, FIRST_DAY, 2, scale=0.02, seed=2, devices=["qrio_hub"])
    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(main, ["inject", str(raw / "qrio_hub.tar.gz"), "--out", str(raw)])
    assert result.exit_code == 2 and "landing zone" in result.output


def test_exposure_episodes_are_written_like_the_others(tmp_path):
    from iot_assets.synthetic.inject import ALL_EPISODE_TYPES, EXPOSURE_EPISODE_TYPES

    raw = tmp_path / "raw"
    sample.generate(raw, FIRST_DAY, 10, scale=0.05, seed=2, devices=["nature_remo"])
    (archive,), _ = find_archives(raw)
    _, anomaly_only = inject(archive, tmp_path / "a", seed=4)
    path, everything = inject(archive, tmp_path / "b", seed=4, types=ALL_EPISODE_TYPES)
    # Exposure episodes draw from their own stream: the anomaly episodes of the seed do not move.
    assert [e for e in everything if e.type in EPISODE_TYPES] == anomaly_only
    table = pd.read_csv(tmp_path / "b" / "episodes.csv")
    assert sorted(table["type"]) == sorted(ALL_EPISODE_TYPES)
    assert sorted(read_episodes(tmp_path / "b" / "episodes.csv")["type"]) == sorted(EPISODE_TYPES)
    exposure_episodes = read_episodes(tmp_path / "b" / "episodes.csv", EXPOSURE_EPISODE_TYPES).set_index("type")
    last = pd.Timestamp(FIRST_DAY, tz="UTC") + pd.Timedelta(days=10)
    assert exposure_episodes.loc["open_telnet", "end"] == last == exposure_episodes.loc["dns_hijack", "end"]
    reflector = exposure_episodes.loc["reflector"]
    assert reflector["end"] - reflector["start"] == pd.Timedelta(hours=6)

    (copy,), _ = find_archives(tmp_path / "b")
    assert decode_archive(copy, tmp_path / "staged", FIRST_DAY, LAST_DAY).rejected == 0
    flows = pq.read_table(tmp_path / "staged" / "flows.parquet").to_pandas()
    mac, ip = "60:01:94:54:6b:e8", "192.168.1.225"
    telnet = flows[(flows["dst_mac"] == mac) & (flows["dst_port"] == 23)]
    assert len(telnet) > 50 and (telnet["reverse_packets"] > 0).all() and (telnet["initial_tcp_flags"] == 2).all()
    assert telnet["flow_start"].min() >= exposure_episodes.loc["open_telnet", "start"]
    answered = flows[(flows["dst_mac"] == mac) & flows["dst_port"].isin([1900, 123])
                     & ~flows["src_ip"].str.startswith("192.168.")]
    assert len(answered) == 6 * 360 and (answered["reverse_bytes"] > answered["bytes"]).all()
    hijack = exposure_episodes.loc["dns_hijack", "start"]
    dns = flows[((flows["src_mac"] == mac) & (flows["dst_port"] == 53)) | ((flows["dst_mac"] == mac)
                                                                          & (flows["src_port"] == 53))]
    after = dns[dns["flow_start"] >= hijack]
    resolvers = set(after["dst_ip"]) | set(after["src_ip"])
    assert "192.168.1.1" not in resolvers and len(resolvers - {ip}) == 1
    assert len(after) >= int((last - hijack) / pd.Timedelta(hours=1))  # at least one lookup an hour
    assert set(dns.loc[dns["flow_start"] < hijack, "dst_ip"]) <= {"192.168.1.1"}


def test_inject_command_chooses_episode_types(tmp_path, monkeypatch):
    raw = tmp_path / "data" / "raw"
    sample.generate(raw, FIRST_DAY, 4, scale=0.02, seed=2, devices=["qrio_hub"])
    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "episodes"
    result = CliRunner().invoke(main, ["inject", str(raw / "qrio_hub.tar.gz"), "--out", str(out),
                                       "--episodes", "exposure,scan"])
    assert result.exit_code == 0, result.output
    assert sorted(pd.read_csv(out / "episodes.csv")["type"]) == ["dns_hijack", "open_telnet", "reflector", "scan"]
    result = CliRunner().invoke(main, ["inject", str(raw / "qrio_hub.tar.gz"), "--out", str(out),
                                       "--episodes", "telnet"])
    assert result.exit_code == 2 and "unknown episode type 'telnet'" in result.output
