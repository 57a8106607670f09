"""Pseudonymisation wired into the pipeline: nothing personal past staging, the same products, reveal.

The keys below are FICTIONAL test secrets. Crypto-PAn keeps the bits of an address whose
leading bits agree with the key's pad, so under some keys 192.168.1.0/24 maps back onto
itself (third octet 1 or 254 is far likelier than 1/256): the keys here are checked not to.
"""

import gzip
import json
import os
import shutil
import zipfile
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from iot_assets.cli import main
from iot_assets.config import Settings, SettingsError
from iot_assets.contracts import catalogue
from iot_assets.core.ingest import decode_archive
from iot_assets.core.pseudonymise import PseudonymiseError
from iot_assets.core.pseudonymiser import CLEAR_CATALOGUE, Pseudonymiser
from iot_assets.synthetic import sample
from iot_assets_tests.support.records import FIRST_DAY, json_archive

KEY_A = "a1" * 32  # FICTIONAL
KEY_B = "b2" * 32  # FICTIONAL
HOME_PREFIX = catalogue.LAN_PREFIX  # 192.168.1.
REAL_MACS = sorted({d.mac for d in catalogue.DEVICES} | {catalogue.GATEWAY_MAC})
DEVICES = ["nature_remo", "xiaomi_mijia_led", "planex_smacam_pantilt"]
SAMPLE_DAYS = 3


def pseudonymiser(key: str, **env) -> Pseudonymiser:
    return Pseudonymiser.from_settings(Settings.from_env({"IOT_ASSETS_PSEUDONYMISE_KEY": key, **env}))


@pytest.mark.parametrize("key", [KEY_A, KEY_B])
def test_the_test_keys_move_the_home_network(key):
    home = pseudonymiser(key).catalogue("2019-06-25")
    assert len(home.lan_prefixes) == 1 and home.lan_prefixes[0] != HOME_PREFIX
    assert home.lan_prefixes[0].startswith("192.168.")  # the private /16 is kept: still a LAN
    assert set(home.gateway_ips) != {catalogue.GATEWAY_IP}


# ---------------------------------------------------------------- settings and keys


def test_settings_default_to_on_with_yearly_rotation():
    settings = Settings.from_env({})
    assert settings.pseudonymise and settings.pseudonymise_rotation == "year" and not settings.pseudonymise_remote
    assert settings.pseudonymise_default_key_file == os.path.join(os.environ["XDG_CONFIG_HOME"], "iot-assets",
                                                                  "pseudonymise.key")
    assert KEY_A not in repr(Settings.from_env({"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A}))


@pytest.mark.parametrize(("env", "message"), [
    ({"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A, "IOT_ASSETS_PSEUDONYMISE_KEY_FILE": "/tmp/k"}, "both set: set one"),
    ({"IOT_ASSETS_PSEUDONYMISE": "maybe"}, "neither on nor off"),
    ({"IOT_ASSETS_PSEUDONYMISE_ROTATION": "week"}, "is not one of month, year"),
    ({"IOT_ASSETS_PSEUDONYMISE_NETWORKS": "10.0.0.0/8,10.1.0.0/16"}, "overlap"),
])
def test_bad_settings_are_one_clear_error(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_a_key_that_is_not_hex_is_a_settings_error():
    with pytest.raises(SettingsError, match="not hex text"):
        pseudonymiser("zz" * 32)


def test_first_use_creates_a_key_outside_the_data_folder_and_says_where(tmp_path, capsys):
    settings = Settings.from_env({"IOT_ASSETS_DATA_DIR": str(tmp_path / "data")})
    first = Pseudonymiser.from_settings(settings)
    created = Path(settings.pseudonymise_default_key_file)
    assert created.exists() and created.stat().st_mode & 0o777 == 0o600
    assert capsys.readouterr().err.strip().splitlines() == [
        f"iot-assets: pseudonymisation key: none configured, created {created} (mode 0600); keep it apart from the data"]
    again = Pseudonymiser.from_settings(settings)
    assert capsys.readouterr().err == ""  # said once, when created
    assert again.fingerprint == first.fingerprint and len(first.fingerprint) == 16
    assert not (tmp_path / "data").exists()  # nothing of the key went near the data folder


def test_a_key_another_process_creates_meanwhile_is_used(tmp_path, monkeypatch):
    import iot_assets.core.pseudonymise as core

    default, create = tmp_path / "config" / "pseudonymise.key", core.create_master_key_file

    def another_process_first(path, data_dir):
        create(path, data_dir)  # the other worker wins the race
        return create(path, data_dir)

    monkeypatch.setattr(core, "create_master_key_file", another_process_first)
    keys, source = core.load_keys(None, None, tmp_path / "data", default)
    assert source == f"pseudonymisation key: {default}"
    assert keys.fingerprint() == core.PseudonymKeys(bytes.fromhex(default.read_text())).fingerprint()
    assert [p.name for p in default.parent.iterdir()] == ["pseudonymise.key"]  # no temporary file left


def test_off_is_the_identity():
    off = Pseudonymiser.from_settings(Settings.from_env({"IOT_ASSETS_PSEUDONYMISE": "off"}))
    assert not off.enabled and off.fingerprint == ""
    assert off.mac(catalogue.GATEWAY_MAC, "2019-06-25") == catalogue.GATEWAY_MAC
    assert off.catalogue("2019-06-25") is CLEAR_CATALOGUE


def test_two_keys_give_unrelated_pseudonyms():
    a, b = pseudonymiser(KEY_A), pseudonymiser(KEY_B)
    macs_a = [a.mac(mac, "2019-07-01") for mac in REAL_MACS]
    macs_b = [b.mac(mac, "2019-07-01") for mac in REAL_MACS]
    assert not set(macs_a) & set(macs_b) and not set(macs_a) & set(REAL_MACS)
    assert a.catalogue("2019-07-01").lan_prefixes != b.catalogue("2019-07-01").lan_prefixes
    # Prefix preservation makes every key map a /25 onto a /25, so pseudonym values of two keys
    # correlate by construction; what must be unrelated is each key's decision at every node of
    # the address tree (flip bit k of the addresses with these k leading bits, or not).
    flips_a, flips_b = _host_flips(a), _host_flips(b)
    assert len(flips_a) == 255
    agreement = sum(flips_a[node] == flips_b[node] for node in flips_a) / len(flips_a)
    assert 0.4 < agreement < 0.6, agreement  # 0.5 expected; one binomial sd is 0.031
    assert a.fingerprint != b.fingerprint


def _host_flips(pz: Pseudonymiser) -> dict[tuple[int, int], int]:
    """Per node of the host-part tree of 192.168.1.0/24 (bit k, the k leading bits), whether the key flips bit k."""
    flips = {}
    for host in range(256):
        mapped = int(pz.ip(f"{HOME_PREFIX}{host}", "2019-07-01").rsplit(".", 1)[1])
        for k in range(8):
            flips[(k, host >> (8 - k))] = ((host ^ mapped) >> (7 - k)) & 1
    return flips


def test_yearly_keys_keep_a_device_across_months_and_monthly_keys_do_not():
    yearly, monthly = pseudonymiser(KEY_A), pseudonymiser(KEY_A, IOT_ASSETS_PSEUDONYMISE_ROTATION="month")
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    assert yearly.mac(remo, "2019-06-30") == yearly.mac(remo, "2019-07-01")
    assert monthly.mac(remo, "2019-06-30") != monthly.mac(remo, "2019-07-01")
    assert monthly.periods() == ["2019-06", "2019-07", "2019-08", "2019-09", "2019-10"]
    assert yearly.periods() == ["2019"]
    assert monthly.fingerprint != yearly.fingerprint  # another rotation stages anew
    names = monthly.catalogue_by_mac()
    assert {names[monthly.mac(remo, day)].name for day in ("2019-06-30", "2019-07-01")} == {"Nature Remo"}


def test_episodes_acknowledgements_and_lines_name_macs_as_the_flows_do():
    pz = pseudonymiser(KEY_A, IOT_ASSETS_PSEUDONYMISE_ROTATION="month")
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    episodes = pd.DataFrame({"device": ["Nature Remo", remo], "type": ["scan", "flood"],
                             "start": pd.to_datetime(["2019-07-02T01:00Z", "2019-07-31T23:00Z"], utc=True),
                             "end": pd.to_datetime(["2019-07-02T02:00Z", "2019-08-01T01:00Z"], utc=True)})
    assert pz.episodes(episodes)["device"].tolist() == ["Nature Remo", pz.mac(remo, "2019-07-31")]
    acks = pd.DataFrame({"device_mac": [remo], "from_day": ["2019-08-03"]})
    assert pz.acknowledgements(acks, "acks.csv")["device_mac"].tolist() == [pz.mac(remo, "2019-08-03")]
    with pytest.raises(PseudonymiseError, match=r"acks.csv line 2: .*not a MAC"):
        pz.acknowledgements(pd.DataFrame({"device_mac": ["remo"], "from_day": ["2019-08-03"]}), "acks.csv")
    membership = pd.DataFrame({"line_id": ["line-1"], "device_mac": [remo],
                               "since": pd.to_datetime(["2019-06-25"], utc=True)})
    named = pz.membership(membership)
    assert named["device_mac"].tolist() == [pz.mac(remo, f"2019-{m:02d}-01") for m in range(6, 11)]
    assert (named["line_id"] == "line-1").all() and named["since"].dtype == membership["since"].dtype


# ---------------------------------------------------------------- the edge


def test_decode_writes_pseudonyms_and_keeps_internet_peers(tmp_path):
    """A real-looking archive (the conftest's FICTIONAL-content records) decoded with a key."""
    from iot_assets_tests.support.records import flow_line, trailer

    body = flow_line() + flow_line(destinationIPv4Address="203.0.113.7", destinationMacAddress="38:d5:47:0c:25:d4:",
                                   sourceMacAddress="60:01:94:54:6b:e8:", sourceIPv4Address="192.168.1.225") + trailer(2)
    archive_path = json_archive(tmp_path / "raw" / "nature_remo.tar.gz", body)
    from iot_assets.core.archive import find_archives

    archives, _ = find_archives(tmp_path / "raw")
    pz = pseudonymiser(KEY_A)
    summary = decode_archive(archives[0], tmp_path / "out", FIRST_DAY, date(2019, 10, 10), pseudonymiser=pz)
    assert archive_path.exists() and summary.reconciled
    flows = pq.read_table(tmp_path / "out" / "flows.parquet").to_pandas()
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    assert set(flows["src_mac"]) | set(flows["dst_mac"]) == {pz.mac(remo, "2019-06-25"),
                                                             pz.mac(catalogue.GATEWAY_MAC, "2019-06-25")}
    home = {pz.ip(ip, "2019-06-25") for ip in ("192.168.1.1", "192.168.1.225")}
    assert set(flows["src_ip"]) == home and set(flows["dst_ip"]) == {pz.ip("192.168.1.225", "2019-06-25"), "203.0.113.7"}
    assert summary.local_mac == summary.dominant_mac == pz.mac(remo, "2019-06-25")
    assert summary.local_macs == {"2019": pz.mac(remo, "2019-06-25")} and set(summary.mac_counts) == {summary.local_mac}
    text = (tmp_path / "out" / "summary.json").read_text()
    assert remo not in text and catalogue.GATEWAY_MAC not in text


def test_another_key_stages_the_archive_anew(tmp_path):
    from iot_assets.defs.resources import build_resources
    from iot_assets_tests.support.records import flow_line, trailer

    json_archive(tmp_path / "data" / "raw" / "nature_remo.tar.gz", flow_line() + trailer(1))

    def stage(**env):
        settings = Settings.from_env({"IOT_ASSETS_DATA_DIR": str(tmp_path / "data"), **env})
        store = build_resources(settings)["archives"]
        found, _ = store.find()
        summary, key, decoded_now = store.stage(found[0])
        return summary, key, decoded_now

    first, key_a, decoded_a = stage(IOT_ASSETS_PSEUDONYMISE_KEY=KEY_A)
    again, key_again, decoded_again = stage(IOT_ASSETS_PSEUDONYMISE_KEY=KEY_A)
    other, key_b, decoded_b = stage(IOT_ASSETS_PSEUDONYMISE_KEY=KEY_B)
    clear, key_clear, _ = stage(IOT_ASSETS_PSEUDONYMISE="off")
    assert (decoded_a, decoded_again, decoded_b) == (True, False, True)
    assert key_a == key_again and len({key_a, key_b, key_clear}) == 3
    assert key_a.endswith("_p" + pseudonymiser(KEY_A).fingerprint) and "_p" not in key_clear.rsplit("_", 1)[1]
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    assert (first.local_mac, other.local_mac, clear.local_mac) == (
        pseudonymiser(KEY_A).mac(remo, "2019-06-25"), pseudonymiser(KEY_B).mac(remo, "2019-06-25"), remo)


# ---------------------------------------------------------------- reveal


def test_reveal_round_trip_through_the_cli(tmp_path):
    audit = tmp_path / "audit" / "reveal.jsonl"
    env = {"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A, "IOT_ASSETS_REVEAL_AUDIT_LOG": str(audit)}
    pz = pseudonymiser(KEY_A)
    address = pz.ip("192.168.1.225", "2019-07-03")
    runner = CliRunner()
    done = runner.invoke(main, ["reveal", address, "--day", "2019-07-03", "--reason", "notify: device in a botnet",
                                "--operator", "analyst-1"], env=env)
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == "192.168.1.225"
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    mac = pz.mac(remo, "2019-07-03")
    done = runner.invoke(main, ["reveal", mac, "--period", "2019", "--reason", "notify", "--operator", "analyst-1",
                                "--catalogue"], env=env)
    assert done.exit_code == 0 and done.stdout.strip() == remo
    done = runner.invoke(main, ["reveal", mac, "--period", "2019", "--reason", "notify", "--operator", "analyst-1"],
                         env=env)
    assert done.exit_code == 1 and done.stderr.strip().splitlines() == [
        f"error: {mac} (2019): not among candidates; a MAC is revealed only by matching it against the real MACs "
        "given as candidates"]
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["operator"], r["kind"], r["pseudonym"], r["period"], r["outcome"]) for r in records] == [
        ("analyst-1", "ip", address, "2019", "revealed"), ("analyst-1", "mac", mac, "2019", "revealed"),
        ("analyst-1", "mac", mac, "2019", "not_among_candidates")]
    assert records[0]["reason"] == "notify: device in a botnet"
    assert "192.168.1.225" not in audit.read_text() and remo not in audit.read_text()


def test_reveal_refuses_what_it_cannot_do_with_one_error_line(tmp_path):
    candidates = tmp_path / "leases.txt"
    candidates.write_text("# DHCP leases\n60:01:94:54:6b:e8\nnot-a-mac\n")
    runner = CliRunner()
    cases = [
        ({"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A, "IOT_ASSETS_PSEUDONYMISE_KEY_FILE": str(tmp_path / "k")},
         ["192.168.7.7", "--day", "2019-07-01", "--reason", "r"], "both set: set one"),
        ({"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A}, ["192.168.7.7", "--reason", "r"], "exactly one of --day and --period"),
        ({"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A}, ["192.168.7.7", "--period", "2019-07", "--reason", "r"],
         "rotate per year"),
        ({"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A}, ["02:11:22:33:44:55", "--period", "2019", "--reason", "r",
                                                  "--candidates", str(candidates)], f"{candidates} line 3"),
        ({}, ["192.168.7.7", "--period", "2019", "--reason", "r"], "no pseudonymisation key is configured"),
        ({"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_A, "IOT_ASSETS_REVEAL_AUDIT_LOG": "/proc/nowhere/audit.jsonl"},
         ["192.168.7.7", "--period", "2019", "--reason", "r"], "cannot write the audit log, so nothing is revealed"),
    ]
    for env, arguments, message in cases:
        done = runner.invoke(main, ["reveal", *arguments], env=env)
        lines = done.stderr.strip().splitlines()
        assert done.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
            (arguments, done.output)
        assert "192.168.7.7" not in done.stdout


# ---------------------------------------------------------------- the whole pipeline on a sample


def _files_holding(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """Every file under `root` (Parquet values, JSON/HTML/text, zip and gzip members, other bytes) that holds a needle."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                text = " ".join(archive.read(n).decode("latin-1") for n in archive.namelist())
        elif data[:2] == b"\x1f\x8b":
            text = gzip.decompress(data).decode("latin-1")
        else:
            text = data.decode("latin-1")
        hits = [n for n in needles if n in text.lower()]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


def _run_pipeline(raw: Path, data: Path, monkeypatch, first_day: date = FIRST_DAY, days: int = SAMPLE_DAYS,
                  **env) -> None:
    import dagster as dg

    from iot_assets.config import Settings
    from iot_assets.definitions import build_definitions
    from iot_assets.materialize import Outcome, materialize_missing

    shutil.copytree(raw, data / "raw")
    monkeypatch.setenv("IOT_ASSETS_DATA_DIR", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster_home"))
    monkeypatch.setenv("IOT_ASSETS_START_DATE", first_day.isoformat())
    monkeypatch.setenv("IOT_ASSETS_END_DATE", date.fromordinal(first_day.toordinal() + days - 1).isoformat())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (data / "dagster_home").mkdir(parents=True)
    (data / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    lines: list[str] = []
    settings = Settings.from_env()
    defs = build_definitions(settings)
    outcome = Outcome(lines.append, strict=False)
    days = defs.resolve_job_def("daily_flows_job").partitions_def.get_partition_keys()
    with dg.DagsterInstance.get() as instance:
        materialize_missing(defs, instance, days, outcome, settings.days_per_run, settings.data_dir)
    assert not outcome.problems, "\n".join(lines + outcome.problems)


@pytest.fixture(scope="module")
def sample_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pseudonymised_sample")
    sample.generate(out, FIRST_DAY, SAMPLE_DAYS, scale=0.02, seed=3, devices=DEVICES)
    return out


@pytest.mark.slow
def test_pipeline_outputs_hold_no_catalogue_mac_nor_home_address_and_the_same_figures(sample_raw, tmp_path,
                                                                                      monkeypatch):
    with monkeypatch.context() as patch:
        _run_pipeline(sample_raw, tmp_path / "on", patch, IOT_ASSETS_PSEUDONYMISE_KEY=KEY_A)
    with monkeypatch.context() as patch:
        _run_pipeline(sample_raw, tmp_path / "off", patch, IOT_ASSETS_PSEUDONYMISE="off")
    on, off = tmp_path / "on", tmp_path / "off"

    # (a) Nothing past staging names a catalogue MAC or a home address; the clear run does (the scan can fail).
    # The Dagster instance too: its run logs and metadata are what the UI shows the analysts.
    needles = [*REAL_MACS, HOME_PREFIX]
    for folder in ("lake", "models", "reports", "dagster_home"):
        assert (on / folder).exists() and _files_holding(on / folder, needles) == {}, folder
    assert _files_holding(off / "lake", needles) and _files_holding(off / "models", REAL_MACS)
    staged = next((on / "staging" / "nature_remo").glob("*/flows.parquet"))
    assert staged.parent.name.endswith("_p" + pseudonymiser(KEY_A).fingerprint)

    # Internet peers are kept in clear: the same remote addresses, flow for flow.
    def internet_peers(data: Path) -> pd.DataFrame:
        clean = pd.read_parquet(data / "lake" / "clean_flows", columns=["archive", "line_number", "remote_ip",
                                                                          "remote_scope", "device_name"])
        return clean.sort_values(["archive", "line_number"]).reset_index(drop=True)

    peers_on, peers_off = internet_peers(on), internet_peers(off)
    assert peers_on["remote_scope"].tolist() == peers_off["remote_scope"].tolist()
    internet = peers_off["remote_scope"] == "internet"
    assert internet.sum() > 100
    assert peers_on.loc[internet, "remote_ip"].tolist() == peers_off.loc[internet, "remote_ip"].tolist()
    assert peers_on["device_name"].tolist() == peers_off["device_name"].tolist()

    # (b) The inventory names the same models, and the classifier and detector figures are the same.
    def inventory(data: Path) -> list[tuple]:
        table = pd.read_parquet(data / "lake" / "device_inventory")
        return sorted(zip(table["day"].astype(str), table["catalogue_device"], table["predicted_device"].fillna("-")))

    assert inventory(on) == inventory(off) and len(inventory(on)) >= len(DEVICES)
    for report in ("classifier_metrics.json", "anomaly_metrics.json"):
        assert json.loads((on / "reports" / report).read_text()) == json.loads((off / "reports" / report).read_text()), \
            report


@pytest.mark.slow
def test_month_rotation_names_a_device_by_the_month_of_each_day(tmp_path):
    """Across a month boundary each day's flows carry that month's pseudonyms, and cleaning still finds the device."""
    from iot_assets_tests.support.definitions import assets_for, resources_for

    sample.generate(tmp_path / "data" / "raw", date(2019, 6, 30), 2, scale=0.02, seed=5, devices=["nature_remo"])
    env = {"IOT_ASSETS_PSEUDONYMISE_KEY": KEY_B, "IOT_ASSETS_PSEUDONYMISE_ROTATION": "month",
           "IOT_ASSETS_START_DATE": "2019-06-30", "IOT_ASSETS_END_DATE": "2019-07-01"}
    flows = assets_for(**env)
    resources = resources_for(tmp_path / "data", **env)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([flows.raw_archives], resources=resources, instance=instance).success
    pz = pseudonymiser(KEY_B, IOT_ASSETS_PSEUDONYMISE_ROTATION="month")
    remo = catalogue.BY_ARCHIVE["nature_remo"].mac
    for day in ("2019-06-30", "2019-07-01"):
        result = dg.materialize([flows.raw_archives, flows.collector_files, flows.collector_flows, flows.decoded_flows,
                                 flows.clean_flows], resources=resources,
                                instance=instance, partition_key=day,
                                selection=["decoded_flows", "clean_flows", "clean_rejects", "flow_sample"])
        assert result.success
        clean = pd.read_parquet(tmp_path / "data" / "lake" / "clean_flows" / f"day={day}")
        assert set(clean["device_mac"]) == {pz.mac(remo, day)} and set(clean["device_name"]) == {"Nature Remo"}
        scopes = set(clean["remote_scope"])
        assert {"gateway", "internet"} <= scopes, scopes
    manifest = pd.read_parquet(tmp_path / "data" / "lake" / "raw_archives")
    assert json.loads(manifest.loc[0, "local_macs"]) == {"2019-06": pz.mac(remo, "2019-06-30"),
                                                         "2019-07": pz.mac(remo, "2019-07-01")}


@pytest.mark.slow
def test_a_real_archive_decoded_with_a_key_holds_no_catalogue_mac_nor_home_address(real_data, tmp_path):
    from iot_assets.core.archive import group_archives

    archives, _ = group_archives([real_data / "nature_remo.tar.gz"])
    summary = decode_archive(archives[0], tmp_path / "out", FIRST_DAY, date(2019, 10, 10),
                             pseudonymiser=pseudonymiser(KEY_A))
    assert summary.decoded > 10_000
    flows = pq.read_table(tmp_path / "out" / "flows.parquet", columns=["src_mac", "dst_mac", "src_ip", "dst_ip"])
    values = {v for column in flows.columns for v in column.to_pylist()}
    assert not values & set(REAL_MACS)
    assert not [v for v in values if v.startswith(HOME_PREFIX)]
    assert [v for v in values if not v.startswith(("192.168.", "fe80", "ff", "224.", "239.", "255.", "0.", "::"))]


@pytest.mark.slow
def test_a_pipeline_run_on_the_real_archives_with_a_key_writes_no_catalogue_mac_nor_home_address(real_data, tmp_path,
                                                                                                 monkeypatch):
    """The three real archives (their first 4 days) through every stage: nothing past staging names a device."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for archive in sorted(real_data.glob("*.tar.gz")):
        (raw / archive.name).symlink_to(archive)
    _run_pipeline(raw, tmp_path / "data", monkeypatch, first_day=date(2019, 6, 25), days=4,
                  IOT_ASSETS_PSEUDONYMISE_KEY=KEY_A)
    data = tmp_path / "data"
    for folder in ("lake", "models", "reports", "dagster_home"):
        assert (data / folder).exists() and _files_holding(data / folder, [*REAL_MACS, HOME_PREFIX]) == {}, folder
    # The run did build the products, under pseudonyms that clean back to the catalogue's devices.
    inventory = pd.read_parquet(data / "lake" / "device_inventory")
    assert set(inventory["catalogue_device"]) == {"Nature Remo", "Xiaomi Mijia LED", "au network camera"}
    assert not set(inventory["device_key"]) & set(REAL_MACS)
    assert {pseudonymiser(KEY_A).mac(catalogue.BY_ARCHIVE["nature_remo"].mac, "2019-06-25")} <= set(inventory["device_key"])
