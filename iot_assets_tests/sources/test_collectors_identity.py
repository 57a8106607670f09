"""Devices known only by their private address, from nfcapd files to the daily report.

The sample's archives (25 catalogue devices, MACs known) train the models; on the last day two
of the sample's devices are also seen the way an ISP's collector before the NAT sees them:
their traffic written as a pcap (`synthetic/pcap.py`), turned into nfcapd files by Debian's
`nfpcapd -r`, which keeps no MAC addresses. `iot-assets run` takes both, pseudonymising as it
does by default. Nothing is sent onto an interface.
"""

import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from iot_assets.synthetic import sample
from iot_assets.synthetic.pcap import write_pcap
from iot_assets.synthetic.profiles import PROFILES
from iot_assets_tests.support.collectors import NFDUMP_TOOLS, skip_without
from iot_assets_tests.support.definitions import pseudonymiser_for

ROOT = Path(__file__).resolve().parents[2]
DAYS = ["2019-06-25", "2019-06-26", "2019-06-27"]
COLLECTED_DAY = DAYS[-1]
# Two sample devices whose traffic shows exposure (cleartext HTTP; cleartext MQTT to the Internet).
COLLECTED = ("xiaomi_mijia_led", "powerelectric_wi-fi_plug")
KEY = "5e" * 32  # a fixed master key: the pseudonyms, and so this test, are the same on every run

pytestmark = [pytest.mark.slow, skip_without(*NFDUMP_TOOLS)]


@pytest.fixture(scope="module")
def collected_run(tmp_path_factory):
    """`iot-assets run` over the sample's archives and the nfcapd files of the collected devices."""
    work = tmp_path_factory.mktemp("identity")
    data = work / "data"
    sample.generate(data / "raw", date.fromisoformat(DAYS[0]), len(DAYS), scale=0.02, seed=0)
    pcap = write_pcap(work / "collected.pcap", date.fromisoformat(COLLECTED_DAY), devices=COLLECTED)
    (data / "raw" / "router-1").mkdir()
    subprocess.run(["nfpcapd", "-r", str(pcap.path), "-w", str(data / "raw" / "router-1")], capture_output=True,
                   check=True, timeout=120)
    env = {**os.environ, "IOT_ASSETS_DATA_DIR": str(data), "DAGSTER_HOME": str(work / "dagster_home"),
           "IOT_ASSETS_START_DATE": DAYS[0], "IOT_ASSETS_END_DATE": DAYS[-1], "IOT_ASSETS_PSEUDONYMISE_KEY": KEY}
    env.pop("IOT_ASSETS_EPISODES", None)
    env.pop("IOT_ASSETS_PSEUDONYMISE", None)  # the default: on
    done = subprocess.run([sys.executable, "-m", "iot_assets.cli", "run"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=1500, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pz = pseudonymiser_for(data, IOT_ASSETS_PSEUDONYMISE_KEY=KEY)
    keys = {name: f"ip:{pz.ip(PROFILES[name].lan_ip, COLLECTED_DAY)}" for name in COLLECTED}
    return {"data": data, "work": work, "keys": keys}


def _day(data: Path, asset: str) -> pd.DataFrame:
    return pd.read_parquet(data / "lake" / asset / f"day={COLLECTED_DAY}" / "part-0.parquet")


def test_the_inventory_names_collected_devices_by_private_address(collected_run):
    keys = collected_run["keys"]
    clean = _day(collected_run["data"], "clean_flows")
    collected = clean[clean["identity"] == "private_ip"]
    assert set(collected["device_key"]) == set(keys.values()) and collected["device_mac"].isna().all()
    assert (clean.loc[clean["identity"] == "mac", "device_key"] == clean.loc[clean["identity"] == "mac", "device_mac"]).all()

    inventory = _day(collected_run["data"], "device_inventory").set_index("device_key")
    for key in keys.values():
        assert inventory.at[key, "identity"] == "private_ip" and pd.isna(inventory.at[key, "device_mac"])
        assert inventory.at[key, "windows"] > 0
    assert set(inventory.loc[~inventory.index.isin(keys.values()), "identity"]) == {"mac"}

    report = (collected_run["data"] / "reports" / "daily" / f"{COLLECTED_DAY}.html").read_text()
    for key in keys.values():
        assert key in report


def test_exposure_findings_of_collected_devices(collected_run):
    keys = collected_run["keys"]
    exposure = _day(collected_run["data"], "device_exposure")
    seen = exposure[exposure["seen_today"].astype(bool)]
    kinds = {key: set(seen.loc[seen["device_key"] == key, "kind"]) for key in keys.values()}
    # What the archives show for the same devices (by MAC) the collector's flows show by address.
    assert "cleartext_http" in kinds[keys["xiaomi_mijia_led"]]
    assert "cleartext_mqtt" in kinds[keys["powerelectric_wi-fi_plug"]]


def _clear_addresses(text: str) -> set[str]:
    found = set()
    for name in COLLECTED:
        address = PROFILES[name].lan_ip
        if re.search(rf"(?<![\d.]){re.escape(address)}(?![\d])", text):
            found.add(address)
    return found


def test_no_private_address_in_clear_in_any_output(collected_run):
    """Pseudonymisation on (the default): the collected devices' private addresses are nowhere in clear
    in the lake, the models, the reports or the Dagster instance, and their pseudonyms are."""
    data, work = collected_run["data"], collected_run["work"]
    outputs = [data / "lake", data / "models", data / "reports", work / "dagster_home"]
    files = [f for folder in outputs for f in folder.rglob("*") if f.is_file()]
    assert any(f.suffix == ".parquet" for f in files) and any(f.suffix == ".html" for f in files)
    in_clear: dict[str, set[str]] = {}
    pseudonyms_seen = False
    for file in files:
        if file.suffix == ".parquet":  # compressed: read the values, every column as text
            table = pd.read_parquet(file)
            text = "\n".join(table[c].astype(str).str.cat(sep="\n") for c in table.columns)
        else:
            text = file.read_bytes().decode("utf-8", errors="replace")
        if found := _clear_addresses(text):
            in_clear[str(file.relative_to(work))] = found
        pseudonyms_seen |= any(key in text for key in collected_run["keys"].values())
    assert in_clear == {}
    assert pseudonyms_seen
