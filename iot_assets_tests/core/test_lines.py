"""Behind the NAT: line views hide the devices, sampling keeps its share, rules and metrics are right."""

import io
import re
from datetime import date, timedelta

import dagster as dg
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from iot_assets.config import Settings
from iot_assets.contracts import catalogue
from iot_assets.core import subscriber_lines as lines
from iot_assets.reports.lines import metrics_fragment_html, metrics_table_markdown
from iot_assets.synthetic import sample
from iot_assets_tests.support.days import clean_days
from iot_assets_tests.support.definitions import assets_for, pseudonymiser_for
from iot_assets_tests.support.records import FIRST_DAY

DEVICES = ["nature_remo", "xiaomi_mijia_led", "planex_smacam_pantilt", "jvc_kenwood_hdtv_ip_camera", "qrio_hub"]
DAYS = 5
MAC = {name: catalogue.BY_ARCHIVE[name].mac for name in DEVICES}
PREFIX_RULES = lines.SignatureParams(prefix_weight=0.5)  # bare-prefix rules on: off by default


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> dict[str, pd.DataFrame]:
    raw = tmp_path_factory.mktemp("raw")
    sample.generate(raw, FIRST_DAY, DAYS, scale=0.05, seed=11, devices=DEVICES)
    return clean_days(raw, tmp_path_factory.mktemp("staged"))


LINES_CSV = f"""device_mac,line_id,since
{MAC['nature_remo']},home-1,
{MAC['xiaomi_mijia_led']},home-1,
{MAC['xiaomi_mijia_led'].upper()}:,home-2,
{MAC['planex_smacam_pantilt']},home-2,2019-06-28T06:00:00
{MAC['jvc_kenwood_hdtv_ip_camera']},home-3,
{MAC['qrio_hub']},home-3,2019-06-29 12:00
"""


@pytest.fixture(scope="module")
def membership() -> pd.DataFrame:
    return lines.parse_membership(pd.read_csv(io.StringIO(LINES_CSV), dtype=str, keep_default_na=False), "lines.csv")


# ---------------------------------------------------------------- line membership


def test_lines_csv_is_normalised(membership):
    assert membership["line_id"].tolist() == ["home-1", "home-1", "home-2", "home-2", "home-3", "home-3"]
    # Upper case and a trailing colon, as the source writes MACs, are normalised.
    assert membership.loc[2, "device_mac"] == MAC["xiaomi_mijia_led"]
    assert membership["since"].isna().tolist() == [True, True, True, False, True, False]
    assert membership.loc[3, "since"] == pd.Timestamp("2019-06-28 06:00", tz="UTC")


@pytest.mark.parametrize("text, message", [
    ("device_mac,line_id\n60:01:94:54:6b:e8,a\nnot-a-mac,b\n", "lines.csv line 3: device_mac 'not-a-mac' is not a MAC"),
    ("device_mac,line_id\n60:01:94:54:6b:e8,\n", "lines.csv line 2: empty line_id"),
    ("device_mac,line_id,since\n60:01:94:54:6b:e8,a,yesterday\n", "lines.csv line 2: since 'yesterday' is not a time"),
    ("device_mac,line_id\n60:01:94:54:6b:e8,a\n60:01:94:54:6B:E8,a\n", "lines.csv line 3: device 60:01:94:54:6b:e8 is on line a twice"),
    ("mac,line\n60:01:94:54:6b:e8,a\n", "lines.csv: missing column(s) device_mac, line_id"),
])
def test_a_bad_lines_file_names_the_file_and_line(text, message):
    with pytest.raises(lines.LinesInputError, match=re.escape(message)):
        lines.parse_membership(pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False), "lines.csv")


def test_every_catalogue_model_has_its_manufacturer():
    assert set(lines.MANUFACTURERS) == {d.name for d in catalogue.DEVICES}
    makers = pd.Series(lines.MANUFACTURERS).value_counts()
    assert makers[["PLANEX", "Sony", "JVC Kenwood", "au (KDDI)"]].tolist() == [3, 3, 2, 2]


def test_sampling_rates_are_parsed_or_refused():
    assert lines.parse_sampling_rates("1000, 1,100") == (1, 100, 1000)
    assert lines.parse_sampling_rates("") == (1, 100, 1000)
    for bad in ("0", "1,x", "100,100", "1.5"):
        with pytest.raises(lines.LinesInputError, match="IOT_ASSETS_SAMPLING"):
            lines.parse_sampling_rates(bad)


def test_synthetic_lines_mix_one_to_six_devices_reproducibly():
    macs = [d.mac for d in catalogue.DEVICES]
    a = lines.synthetic_lines(macs, date(2019, 6, 25), date(2019, 7, 8), lines=40, seed=3)
    b = lines.synthetic_lines(list(reversed(macs)), date(2019, 6, 25), date(2019, 7, 8), lines=40, seed=3)
    pd.testing.assert_frame_equal(a, b)
    sizes = a.groupby("line_id").size()
    assert len(sizes) == 40 and sizes.min() >= 1 and sizes.max() <= 6 and sizes.nunique() >= 4
    assert a.groupby("device_mac")["line_id"].nunique().max() > 1  # a device on several lines
    joins = a["since"].dropna()
    assert 0.3 < len(joins) / len(a) < 0.7
    assert joins.min() >= pd.Timestamp("2019-06-25", tz="UTC") and joins.max() < pd.Timestamp("2019-07-09", tz="UTC")
    # Three devices: lines hold at most three.
    assert lines.synthetic_lines(macs[:3], date(2019, 6, 25), date(2019, 7, 8), seed=3).groupby("line_id").size().max() <= 3


# ---------------------------------------------------------------- line views


def test_the_line_view_removes_every_device_identifier(days, membership):
    day = "2019-06-28"
    clean = days[day]
    views = lines.line_views(clean, membership, day, rates=(1, 100), seed=0)
    lines.LineViews.validate(views)
    assert list(views.columns) == lines.VIEW_COLUMNS
    identifiers = set(clean["device_mac"]) | set(clean["device_ip"]) | {m.upper() for m in clean["device_mac"]}
    text = views.select_dtypes(include="object")
    assert not text.isin(identifiers).any().any()
    # Only Internet-bound traffic: no gateway, LAN, broadcast or multicast peer.
    internet = clean[clean["remote_scope"] == "internet"]
    assert set(views["remote_ip"]) <= set(internet["remote_ip"])
    assert not views["remote_ip"].str.match(r"^(192\.168\.|10\.|224\.|239\.|255\.|ff0|fe80)").any()
    # The ports are the peers' ports, not the devices'.
    unsampled = views[views["sampling_rate"] == 1]
    remo_line = unsampled[unsampled["line_id"] == "home-1"]
    expected = internet[internet["device_mac"].isin([MAC["nature_remo"], MAC["xiaomi_mijia_led"]])]
    assert sorted(zip(remo_line["remote_ip"], remo_line["remote_port"])) == \
        sorted(zip(expected["remote_ip"], expected["remote_port"]))
    assert len(remo_line) == len(expected) > 0
    # The schema refuses a view that carries a device column.
    with pytest.raises((pa.errors.SchemaError, pa.errors.SchemaErrors), match="column 'device_port' not in"):
        lines.LineViews.validate(views.assign(device_port=0))


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), kind="mergesort").reset_index(drop=True)


def test_a_line_keeps_its_shard_whatever_other_lines_exist():
    ids = [f"line-{i}" for i in range(200)]
    shards = lines.line_shards(ids, 4)
    assert set(shards) == {0, 1, 2, 3} and min(np.bincount(shards)) >= 30  # 200 lines spread over all four
    # The shard is a stable hash of the id alone: the same for a subset, in another order, repeated.
    assert list(lines.line_shards(ids[150:] + ids[:10], 4)) == list(shards[150:]) + list(shards[:10])
    assert list(lines.line_shards(["line-7", "line-7"], 4)) == [shards[7]] * 2
    assert lines.line_key("line-7") == int.from_bytes(__import__("hashlib").blake2b(b"line-7", digest_size=8).digest(), "big")
    assert list(lines.line_shards(ids, 1)) == [0] * 200
    with pytest.raises(lines.LinesInputError, match="at least 1"):
        lines.line_shards(ids, 0)
    with pytest.raises(lines.LinesInputError, match="shard 4 is not one of 0..3"):
        lines.shard_membership(pd.DataFrame({"line_id": ids}), 4, 4)


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_the_views_and_truth_of_every_shard_add_up_to_those_of_every_line(days, shards):
    day = "2019-06-28"
    membership = lines.synthetic_lines(list(MAC.values()), date(2019, 6, 25), date(2019, 6, 29), lines=15, seed=4)
    every = lines.line_views(days[day], membership, day, rates=(1, 100, 1000), seed=3)
    parts = [lines.line_views(days[day], lines.shard_membership(membership, s, shards), day, rates=(1, 100, 1000), seed=3)
             for s in range(shards)]
    assert sum(len(p) > 0 for p in parts) >= 2  # several shards hold lines with traffic
    assert [set(p["line_id"]) for p in parts] == [
        set(every["line_id"][lines.line_shards(every["line_id"], shards) == s]) for s in range(shards)]
    pd.testing.assert_frame_equal(_rows(pd.concat(parts, ignore_index=True)), _rows(every))
    assert set(every["sampling_rate"]) == {1, 100, 1000} and len(every) > 100
    truth = [lines.line_truth(days[day], lines.shard_membership(membership, s, shards), day) for s in range(shards)]
    pd.testing.assert_frame_equal(_rows(pd.concat(truth, ignore_index=True)),
                                  _rows(lines.line_truth(days[day], membership, day)))


def test_a_device_on_two_lines_is_copied_into_both_and_only_from_since(days, membership):
    day = "2019-06-28"
    clean = days[day]
    views = lines.line_views(clean, membership, day, rates=(1,))
    internet = clean[clean["remote_scope"] == "internet"]
    xiaomi = internet[internet["device_mac"] == MAC["xiaomi_mijia_led"]]
    planex = internet[internet["device_mac"] == MAC["planex_smacam_pantilt"]]
    joined = planex[planex["flow_start"] >= pd.Timestamp("2019-06-28 06:00", tz="UTC")]
    assert 0 < len(joined) < len(planex)  # the camera joined home-2 that morning
    assert (views["line_id"] == "home-2").sum() == len(xiaomi) + len(joined)
    assert (views["line_id"] == "home-1").sum() >= len(xiaomi)
    truth = lines.line_truth(clean, membership, day)
    row = truth[(truth["line_id"] == "home-2") & (truth["device_mac"] == MAC["planex_smacam_pantilt"])].iloc[0]
    assert row["internet_flows"] == len(joined)
    assert row["first_internet_flow"] == joined["flow_start"].min()
    assert row["manufacturer"] == "PLANEX"


def _flows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    start = pd.Timestamp("2019-07-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_000, n), unit="s")
    packets_out = rng.integers(0, 60, n)
    packets_in = np.where(packets_out == 0, rng.integers(1, 60, n), rng.integers(0, 60, n))
    return pd.DataFrame({
        "device_mac": MAC["nature_remo"], "remote_scope": "internet", "flow_start": start,
        "flow_end": start + pd.Timedelta(seconds=5), "remote_ip": "3.86.45.10", "remote_port": 443, "protocol": 6,
        "packets_out": packets_out, "packets_in": packets_in,
        "bytes_out": packets_out * 120, "bytes_in": packets_in * 700,
    })


def test_sampling_keeps_the_expected_share_of_flows_and_scales_counts_back():
    rng = np.random.default_rng(1)
    flows = _flows(20_000, rng)
    membership = pd.DataFrame({"line_id": ["l"], "device_mac": [MAC["nature_remo"]], "since": [pd.NaT]})
    views = lines.line_views(flows, lines.membership._typed_membership(membership), "2019-07-01",
                             rates=(1, 100, 1000), seed=4)
    packets = (flows["packets_out"] + flows["packets_in"]).to_numpy()
    unsampled = views[views["sampling_rate"] == 1]
    assert len(unsampled) == len(flows) and unsampled["packets_out"].sum() == flows["packets_out"].sum()
    for rate in (100, 1000):
        kept = views[views["sampling_rate"] == rate]
        survive = 1 - (1 - 1 / rate) ** packets
        expected, sigma = survive.sum(), np.sqrt((survive * (1 - survive)).sum())
        assert abs(len(kept) - expected) < 4 * sigma, (rate, len(kept), expected, sigma)
        # Scaled back by N, the sampled packets estimate the true total without bias.
        total = packets.sum()
        sigma_packets = np.sqrt(total * rate * (1 - 1 / rate))
        estimate = (kept["packets_out"] + kept["packets_in"]).sum()
        assert abs(estimate - total) < 4 * sigma_packets, (rate, estimate, total)
        assert (kept["packets_out"] % rate == 0).all() and ((kept["packets_out"] + kept["packets_in"]) >= rate).all()
        # Bytes follow the packets: 120 bytes a packet out, 700 in.
        assert (kept["bytes_out"] == kept["packets_out"] * 120).all()
        assert (kept["bytes_in"] == kept["packets_in"] * 700).all()
    again = lines.line_views(flows.sample(frac=1.0, random_state=2), lines.membership._typed_membership(membership),
                             "2019-07-01", rates=(100,), seed=4)
    pd.testing.assert_frame_equal(again, views[views["sampling_rate"] == 100].reset_index(drop=True))


# ---------------------------------------------------------------- endpoint signatures


def _train(*uses: tuple[str, str, int, int, int]) -> pd.DataFrame:
    """Training flows: (model, remote ip, port, protocol, days) each used once a day on that many days."""
    rows = []
    for model, ip, port, protocol, n_days in uses:
        for d in range(n_days):
            start = pd.Timestamp("2019-06-25", tz="UTC") + pd.Timedelta(days=d, hours=3)
            rows.append({"device_name": model, "device_mac": "", "remote_ip": ip, "remote_port": port,
                         "protocol": protocol, "remote_scope": "internet", "flow_start": start,
                         "flow_end": start + pd.Timedelta(seconds=1)})
    return pd.DataFrame(rows)


def test_a_service_two_models_of_one_vendor_share_becomes_a_manufacturer_rule():
    train = _train(("PLANEX SmaCam Outdoor", "139.162.61.20", 20001, 17, 4),
                   ("PLANEX SmaCam PanTilt", "139.162.61.77", 20001, 17, 2),
                   ("PLANEX SmaCam PanTilt", "45.79.10.1", 443, 6, 1))
    rules = lines.learn_signatures(train, PREFIX_RULES).set_index("rule_id")
    shared = rules.loc["service:139.162.61.0/24:20001:17"]
    assert (shared["level"], shared["label"], shared["weight"]) == ("manufacturer", "PLANEX", 1.0)
    assert shared["models"] == "PLANEX SmaCam Outdoor;PLANEX SmaCam PanTilt" and shared["days"] == 4
    own = rules.loc["service:45.79.10.0/24:443:6"]
    assert (own["level"], own["label"]) == ("model", "PLANEX SmaCam PanTilt")
    assert own["weight"] == 0.5  # seen on one training day of the two that give full weight
    assert rules.loc["prefix:45.79.10.0/24:-1:-1", "weight"] == 0.25
    # The same service used by a camera of another vendor is no evidence for either.
    rules = lines.learn_signatures(pd.concat([train, _train(("JVC Kenwood HDTV IP camera", "139.162.61.9", 20001, 17, 3))]))
    shared = rules.set_index("rule_id").loc["service:139.162.61.0/24:20001:17"]
    assert (shared["level"], shared["weight"]) == ("excluded", 0.0)
    assert shared["reason"] == "shared by 3 models of 2 manufacturers"


def test_shared_infrastructure_yields_no_rule():
    train = _train(("Nature Remo", "3.86.45.10", 443, 6, 5),
                   *[(model, "23.45.67.8", 443, 6, 3) for model in ("Amazon Echo gen2", "Sony Bravia", "Google Home gen1")],
                   ("au network camera", "133.243.238.164", 123, 17, 5),  # NTP: infrastructure whoever uses it
                   ("au network camera", "8.8.8.8", 53, 17, 5))
    assert not (lines.learn_signatures(train)["kind"] == "prefix").any()  # no bare-prefix rules by default
    signatures = lines.learn_signatures(train, PREFIX_RULES)
    rules = signatures[signatures["weight"] > 0]
    assert set(rules["label"]) == {"Nature Remo"}
    assert not rules["prefix"].isin(["23.45.67.0/24", "133.243.238.0/24", "8.8.8.0/24"]).any()
    cdn = signatures.set_index("rule_id").loc["service:23.45.67.0/24:443:6"]
    assert (cdn["level"], cdn["reason"]) == ("excluded", "shared by 3 models of 3 manufacturers")
    ntp = signatures.set_index("rule_id").loc["service:133.243.238.0/24:123:17"]
    assert (ntp["level"], ntp["reason"]) == ("excluded", "infrastructure port")
    # A line that talks to the CDN and to NTP detects nothing.
    view = pd.DataFrame({"line_id": "l", "sampling_rate": 1, "remote_ip": ["23.45.67.200", "133.243.238.1"],
                         "remote_port": [443, 123], "protocol": [6, 17],
                         "flow_start": pd.Timestamp("2019-07-01 01:00", tz="UTC"),
                         "flow_end": pd.Timestamp("2019-07-01 01:01", tz="UTC")})
    assert lines.rule_hits(view, signatures).empty
    assert lines.known_models(signatures) == ["Amazon Echo gen2", "Google Home gen1", "Nature Remo", "Sony Bravia",
                                              "au network camera"]


def test_crowded_neighbourhoods_weigh_less_when_asked():
    train = _train(("Nature Remo", "3.86.45.10", 443, 6, 3), ("iRobot Roomba", "3.86.99.7", 443, 6, 3),
                   ("Amazon Echo gen2", "3.86.12.1", 443, 6, 3), ("iRobot Roomba", "3.86.99.7", 8883, 6, 3))
    plain = lines.learn_signatures(train).set_index("rule_id")
    crowded = lines.learn_signatures(train, lines.SignatureParams(crowding_v4_bits=16, prefix_weight=0.5)).set_index("rule_id")
    assert plain.loc["service:3.86.45.0/24:443:6", "weight"] == 1.0
    # Two other models use port 443 in 3.86.0.0/16: a third of the evidence.
    assert crowded.loc["service:3.86.45.0/24:443:6", ["crowding", "weight"]].tolist() == [2, pytest.approx(1 / 3, abs=1e-4)]
    # Nobody else uses 8883 there.
    assert crowded.loc["service:3.86.99.0/24:8883:6", ["crowding", "weight"]].tolist() == [0, 1.0]
    # The Roomba's bare prefix: two other models in the /16 on any port.
    assert crowded.loc["prefix:3.86.99.0/24:-1:-1", "weight"] == pytest.approx(0.5 / 3, abs=1e-4)


def test_attack_episodes_do_not_become_rules():
    train = _train(("Nature Remo", "3.86.45.10", 443, 6, 3), ("Nature Remo", "77.1.2.3", 23, 6, 1),
                   ("Qrio Hub", "77.1.2.9", 23, 6, 1))
    episodes = pd.DataFrame({"device": ["Nature Remo"], "type": ["scan"],
                             "start": [pd.Timestamp("2019-06-25 02:00", tz="UTC")],
                             "end": [pd.Timestamp("2019-06-25 04:00", tz="UTC")]})
    kept = lines.outside_episodes(train, episodes)
    # Nature Remo's flows of 03:00 on the first day are inside the scan: its backend flow of that hour too.
    assert len(kept) == len(train) - 2
    assert not ((kept["device_name"] == "Nature Remo") & (kept["flow_start"] == pd.Timestamp("2019-06-25 03:00", tz="UTC"))).any()
    rules = lines.learn_signatures(kept).set_index("rule_id")
    assert rules.loc["service:77.1.2.0/24:23:6", "label"] == "Qrio Hub"  # the scan's port is no Nature Remo rule
    assert lines.outside_episodes(train, None) is train


def test_prefixes():
    ips = pd.Series(["52.197.92.10", "2404:6800:4004:80c::200e", "not an address", "52.197.92.250"])
    assert lines.remote_prefix(ips).tolist() == ["52.197.92.0/24", "2404:6800:4004::/48", None, "52.197.92.0/24"]
    assert lines.remote_prefix(ips, v4_bits=16).tolist()[0] == "52.197.0.0/16"


# ---------------------------------------------------------------- inventory and metrics

EVAL = ["2019-07-01", "2019-07-02"]
REMO, XIAOMI, QRIO = MAC["nature_remo"], MAC["xiaomi_mijia_led"], MAC["qrio_hub"]


def _view(line: str, start: str, minutes: float, ip: str, port: int, protocol: int = 6) -> dict:
    t = pd.Timestamp(start, tz="UTC")
    return {"line_id": line, "sampling_rate": 1, "flow_start": t, "flow_end": t + pd.Timedelta(minutes=minutes),
            "remote_ip": ip, "remote_port": port, "protocol": protocol, "bytes_out": 100, "bytes_in": 100,
            "packets_out": 2, "packets_in": 2}


def _truth(line: str, mac: str, model: str, day: str, first: str | None) -> dict:
    return {"line_id": line, "device_mac": mac, "model": model, "manufacturer": lines.manufacturer_of(model),
            "day": day, "flows": 10, "internet_flows": 0 if first is None else 3,
            "first_internet_flow": pd.Timestamp(first, tz="UTC") if first else pd.NaT}


@pytest.fixture
def known_case():
    """Three lines over two evaluation days with answers worked out by hand.

    home-1: Nature Remo, on the line before the evaluation, talks to its backend on day 1 only.
    home-2: the Xiaomi LED arrives on day 1 at 10:00 talking to an unknown /24, then to its
            backend on day 2 at 03:00 (a record ending 03:30).
    home-3: a Qrio hub (not trained) that talks to another port of Nature Remo's /24 on both
            days: half evidence a day, a false Nature Remo on day 2.
    """
    signatures = lines.learn_signatures(_train(("Nature Remo", "3.86.45.10", 443, 6, 3),
                                               ("Xiaomi Mijia LED", "161.117.94.5", 80, 6, 3)), PREFIX_RULES)
    views = pd.DataFrame([
        _view("home-1", "2019-06-30 12:00", 30, "3.86.45.10", 443),  # a training day: ignored
        _view("home-1", "2019-07-01 00:10", 30, "3.86.45.11", 443),
        _view("home-2", "2019-07-01 10:00", 5, "161.117.95.5", 80),
        _view("home-2", "2019-07-02 03:00", 30, "161.117.94.5", 80),
        _view("home-3", "2019-07-01 08:00", 1, "3.86.45.99", 8883),
        _view("home-3", "2019-07-02 08:00", 1, "3.86.45.99", 8883),
    ])
    truth = pd.DataFrame([
        _truth("home-1", REMO, "Nature Remo", "2019-06-30", "2019-06-30 12:00"),
        _truth("home-1", REMO, "Nature Remo", "2019-07-01", "2019-07-01 00:10"),
        _truth("home-1", REMO, "Nature Remo", "2019-07-02", None),  # on the line, silent to the Internet
        _truth("home-2", XIAOMI, "Xiaomi Mijia LED", "2019-07-01", "2019-07-01 10:00"),
        _truth("home-2", XIAOMI, "Xiaomi Mijia LED", "2019-07-02", "2019-07-02 03:00"),
        _truth("home-3", QRIO, "Qrio Hub", "2019-07-01", "2019-07-01 08:00"),
        _truth("home-3", QRIO, "Qrio Hub", "2019-07-02", "2019-07-02 08:00"),
    ])
    return views, truth, signatures


def test_inventory_accumulates_evidence_and_says_when(known_case):
    views, _, signatures = known_case
    hits = lines.rule_hits(views, signatures)
    day2 = lines.inventory(hits, "2019-07-02", window_days=2).set_index(["line_id", "label"])
    remo = day2.loc[("home-1", "Nature Remo")]
    # Found on day 1 by the service rule (1.0; the flow does not count again for the bare
    # prefix), still there on day 2; the hit of June 30 is outside the two-day window.
    assert remo["detected"] and remo["evidence"] == 1.0 and remo["rules_hit"] == 1
    assert remo["detected_at"] == pd.Timestamp("2019-07-01 00:40", tz="UTC")
    false = day2.loc[("home-3", "Nature Remo")]
    assert false["detected"] and false["evidence"] == 1.0 and false["flows"] == 2
    assert false["detected_at"] == pd.Timestamp("2019-07-02 08:01", tz="UTC")
    assert false["confidence"] == pytest.approx(0.95)
    day1 = lines.inventory(hits, "2019-07-01", window_days=1).set_index(["line_id", "label"])
    assert not day1.loc[("home-3", "Nature Remo"), "detected"] and day1.loc[("home-3", "Nature Remo"), "evidence"] == 0.5
    changes = lines.inventory_changes(lines.inventory(hits, "2019-07-02", 2), lines.inventory(hits, "2019-07-01", 2))
    assert sorted(zip(changes["line_id"], changes["label"])) == [("home-2", "Xiaomi Mijia LED"), ("home-3", "Nature Remo")]
    firsts = lines.first_detected(pd.concat([lines.inventory(hits, d, 2) for d in ["2019-06-30", *EVAL]]))
    first = firsts.set_index(["line_id", "label"])["first_detected"]
    assert first[("home-1", "Nature Remo")] == pd.Timestamp("2019-06-30 12:30", tz="UTC")
    assert first[("home-2", "Xiaomi Mijia LED")] == pd.Timestamp("2019-07-02 03:30", tz="UTC")


def test_evidence_units_matched_a_chunk_of_views_at_a_time_are_those_of_all_views(known_case):
    views, _, signatures = known_case
    whole = lines.evidence_units(lines.rule_hits(views, signatures))
    by_day = [views[lines.day_strings(views["flow_start"]) == d] for d in sorted(set(lines.day_strings(views["flow_start"])))]
    for frames, chunk in ((by_day, 200_000), ([views], 1), (by_day, 2)):
        chunked = lines.evidence_units_of(frames, signatures, chunk_rows=chunk)
        key = [*lines.evidence._GROUP, "rule_id", "day"]
        pd.testing.assert_frame_equal(chunked.sort_values(key).reset_index(drop=True),
                                      whole.sort_values(key).reset_index(drop=True), check_exact=True)
        # and so the inventories built on them
        for day in ("2019-07-01", "2019-07-02"):
            pd.testing.assert_frame_equal(lines.inventory_from_units(chunked, day, 2),
                                          lines.inventory_from_units(whole, day, 2), check_exact=True)
    assert len(whole) > 0
    assert lines.evidence_units_of([views.iloc[0:0]], signatures).empty


def test_metrics_on_known_membership(known_case):
    views, truth, signatures = known_case
    metrics = lines.evaluate(views, truth, signatures, EVAL, lines=3, window_days=2)
    m = metrics["sampling"]["1"]
    # Device-days with Internet traffic of trained models: home-1 day 1 (found), home-2 day 1
    # (unknown /24: missed), home-2 day 2 (found). The Qrio hub is not trained: not counted.
    assert m["device_days"] == 3 and m["recall"] == pytest.approx(2 / 3, abs=1e-4)
    # Detections: home-1 days 1 and 2 (Remo had traffic in the window), home-2 day 2, and the
    # false Nature Remo on home-3 day 2; the training day's evidence never counts.
    assert m["detections"] == 4 and m["false_detections"] == 1 and m["precision"] == 0.75
    assert m["false_per_line_month"] == pytest.approx(1 / (3 * 2) * 30)
    # Time to detect: home-1 from 00:10 to the record's end 00:40; home-2 from 10:00 on day 1 to 03:30 on day 2.
    assert m["ttd_events"] == 2 and m["ttd_never_detected"] == 0
    assert (m["ttd_hours_median"], m["ttd_hours_p90"]) == (0.5, 17.5)
    assert (m["ttd_events_new_on_line"], m["ttd_hours_median_new_on_line"]) == (1, 17.5)
    assert m["invisible_device_days"] == 1
    assert m["per_model"]["Nature Remo"]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["per_model"]["Xiaomi Mijia LED"]["recall"] == 0.5
    assert metrics["untrained_models"] == ["Qrio Hub"] and metrics["untrained_device_days"] == 2
    assert metrics["eval_range"] == EVAL and metrics["lines"] == 3
    # One day windows: nothing carries over, the hub's half evidence never adds up.
    one = lines.evaluate(views, truth, signatures, EVAL, lines=3, window_days=1)["sampling"]["1"]
    assert (one["detections"], one["false_detections"], one["recall"]) == (2, 0, pytest.approx(2 / 3, abs=1e-4))
    # Rendered: the table carries the figures.
    markdown = metrics_table_markdown(metrics)
    assert "| 1:1 | 0.667 | 0.667 | 0.750 | 5.00 | 0.5 | 17.5 | 3 | 0 |" in markdown
    fragment = metrics_fragment_html(metrics)
    assert "<td>Xiaomi Mijia LED</td><td>2</td><td>0.500</td>" in fragment and "class='flag'" in fragment


def test_device_days_in_attack_episodes_are_scored_apart(known_case):
    views, truth, signatures = known_case
    episodes = pd.DataFrame({"device": ["Xiaomi Mijia LED"], "type": ["scan"],
                             "start": [pd.Timestamp("2019-07-01 09:00", tz="UTC")],
                             "end": [pd.Timestamp("2019-07-01 10:00", tz="UTC")]})
    m = lines.evaluate(views, truth, signatures, EVAL, lines=3, window_days=2, episodes=episodes)["sampling"]["1"]
    # The LED's first day is set apart: two device-days left, both found.
    assert (m["device_days"], m["recall"]) == (2, 1.0)
    assert (m["episode_device_days"], m["recall_in_episodes"]) == (1, 0.0)
    # Its time to detect now runs from its first flow outside the episode (03:00 on day 2).
    assert (m["ttd_events"], m["ttd_hours_median"], m["ttd_hours_p90"]) == (2, 0.5, 0.5)
    # Precision is unchanged: the LED was on its line all along.
    assert (m["detections"], m["false_detections"]) == (4, 1)


def test_metrics_on_a_generated_sample_with_known_membership(days, membership):
    names = sorted(days)
    train_days, eval_days = names[:3], names[3:]
    views = pd.concat([lines.line_views(days[d], membership, d, (1, 100)) for d in names], ignore_index=True)
    truth = pd.concat([lines.line_truth(days[d], membership, d) for d in names], ignore_index=True)
    train = pd.concat([days[d] for d in train_days], ignore_index=True)
    signatures = lines.learn_signatures(train[train["device_name"] != "Qrio Hub"])  # a model nobody trained
    metrics = lines.evaluate(views, truth, signatures, eval_days, lines=3, window_days=2)
    assert metrics["untrained_models"] == ["Qrio Hub"]
    active = truth[truth["day"].isin(eval_days) & (truth["internet_flows"] > 0) & (truth["model"] != "Qrio Hub")]
    for rate in ("1", "100"):
        m = metrics["sampling"][rate]
        assert m["device_days"] == len(active) == 10  # 5 device-lines (Qrio's excluded) x 2 days
        # The generated endpoints are each device's own: every detection is true.
        assert m["precision"] == 1.0 and m["false_detections"] == 0
        per_model = m["per_model"]
        assert per_model["Xiaomi Mijia LED"]["device_days"] == 4
    unsampled = metrics["sampling"]["1"]
    assert unsampled["recall"] >= 0.9
    # The PLANEX and JVC cameras share an OEM firmware but not their relays in the sample: both named.
    assert unsampled["per_model"]["PLANEX SmaCam PanTilt"]["recall"] == 1.0
    assert unsampled["per_model"]["JVC Kenwood HDTV IP camera"]["recall"] == 1.0
    assert unsampled["ttd_hours_median"] <= 1.0


# ---------------------------------------------------------------- assets


def line_runner(data, scale: float, synthetic_lines: int, more_assets: list[str], line_shards: int = 1):
    """A sample of four devices over four days in `data/raw` (made once), and a function that materializes a
    selection of the flow and line assets (plus `more_assets`) on it, asserting success, with the lines in
    `line_shards` shards."""
    from iot_assets.defs.resources import LineSettings
    from iot_assets_tests.support.definitions import resources_for

    assets = assets_for(IOT_ASSETS_LINE_SHARDS=str(line_shards))
    if not (data / "raw").exists():
        sample.generate(data / "raw", FIRST_DAY, 4, scale=scale, seed=5,
                        devices=["nature_remo", "xiaomi_mijia_led", "planex_smacam_pantilt", "qrio_hub"])
    resources = {**resources_for(data), "line_settings": LineSettings(sampling="1,100", synthetic_lines=synthetic_lines)}
    instance = dg.DagsterInstance.ephemeral()
    everything = [assets.raw_archives, assets.decoded_flows, assets.collector_files, assets.collector_flows,
                  assets.clean_flows, assets.line_membership, assets.line_views, assets.endpoint_signatures,
                  assets.line_inventory, *(getattr(assets, name) for name in more_assets)]

    def run(selection, partition_key=None, tags=None):
        result = dg.materialize(everything, resources=resources, instance=instance, selection=selection,
                                partition_key=partition_key, tags=tags)
        assert result.success
        return result

    return run


@pytest.mark.slow
def test_line_assets_materialize_on_a_generated_sample(tmp_path):
    import json

    data = tmp_path / "data"
    run = line_runner(data, 0.05, 6, ["line_first_detected", "line_metrics"])
    run(["raw_archives", "line_membership"])
    membership = pd.read_parquet(data / "lake" / "line_membership" / "part-0.parquet")
    pseudonyms = pseudonymiser_for(data)  # the outputs name catalogue MACs by their pseudonyms
    assert membership["line_id"].nunique() == 6 and set(membership["device_mac"]) <= {
        pseudonyms.mac(catalogue.BY_ARCHIVE[n].mac, FIRST_DAY)
        for n in ["nature_remo", "xiaomi_mijia_led", "planex_smacam_pantilt", "qrio_hub"]}
    days = [(FIRST_DAY + timedelta(days=i)).isoformat() for i in range(4)]
    for day in days:
        result = run(["decoded_flows", "clean_flows", "clean_rejects", "flow_sample", "line_views", "line_truth"], day)
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks["line_views_schema"]
    views = pd.read_parquet(data / "lake" / "line_views" / f"day={days[-1]}" / "part-0.parquet")
    assert list(views.columns) == lines.VIEW_COLUMNS and set(views["sampling_rate"]) == {1, 100}

    run(["endpoint_signatures"])
    signatures = pd.read_parquet(data / "lake" / "endpoint_signatures" / "part-0.parquet")
    assert (signatures["trained_from"].iloc[0], signatures["trained_to"].iloc[0]) == (days[0], days[2])
    assert set(signatures.loc[signatures["level"] == "model", "label"]) == {
        "Nature Remo", "Xiaomi Mijia LED", "PLANEX SmaCam PanTilt", "Qrio Hub"}

    result = run(["line_inventory"], days[-1])
    check = result.get_asset_check_evaluations()[0]
    inventory = pd.read_parquet(data / "lake" / "line_inventory" / f"day={days[-1]}" / "part-0.parquet")
    detected = inventory[inventory["detected"] & (inventory["sampling_rate"] == 1)]
    assert len(detected) >= membership["line_id"].nunique()
    # Every detection at 1:1 names a device of its line (the sample's endpoints are each device's own).
    names = {mac: d.name for mac, d in pseudonyms.catalogue_by_mac(FIRST_DAY).items()}
    on_line = set(zip(membership["line_id"], membership["device_mac"].map(names)))
    assert set(zip(detected["line_id"], detected["label"])) <= on_line
    # The check flags the lines whose 1:1 inventory names a model yesterday's did not.
    window = pd.concat([pd.read_parquet(data / "lake" / "line_views" / f"day={d}" / "part-0.parquet") for d in days])
    hits = lines.rule_hits(window, signatures)
    expected = lines.inventory_changes(lines.inventory(hits, days[3], Settings.from_env({}).line_window_days),
                                       lines.inventory(hits, days[2], Settings.from_env({}).line_window_days))
    expected = expected[expected["sampling_rate"] == 1]
    assert check.metadata["lines_changed"].value == expected["line_id"].nunique()
    assert check.passed == expected.empty
    assert not expected.empty  # with this seed two devices join lines on the last day
    assert sorted((r["line_id"], r["label"]) for r in check.metadata["new_detections"].value) == \
        sorted(zip(expected["line_id"], expected["label"]))

    run(["line_first_detected", "line_metrics"])
    metrics = json.loads((data / "reports" / "line_metrics.json").read_text())
    assert set(metrics["sampling"]) == {"1", "100"} and metrics["eval_range"] == [days[3], days[3]]
    assert metrics["sampling"]["1"]["precision"] == 1.0 and metrics["sampling"]["1"]["recall"] >= 0.9
    assert "<h2>Device models behind the NAT" in (data / "reports" / "line_metrics.html").read_text()
    firsts = pd.read_parquet(data / "lake" / "line_first_detected" / "part-0.parquet")
    assert set(zip(firsts["line_id"], firsts["label"])) >= set(zip(detected["line_id"], detected["label"]))


@pytest.mark.slow
def test_one_line_shard_and_four_give_the_same_line_products(tmp_path):
    """From the same clean flows: the lines in 1 shard (day partitions) and in 4 (day x shard) give the same
    views, truth, inventories, change check, first detections and line metrics; each shard holds its own lines."""
    import json

    from iot_assets.defs.automation.sensors import range_tags
    from iot_assets.defs.partitions import shard_keys

    data, lake = tmp_path / "data", tmp_path / "data" / "lake"
    days = [(FIRST_DAY + timedelta(days=i)).isoformat() for i in range(4)]
    one = line_runner(data, 0.03, 12, ["line_first_detected", "line_metrics"])
    one(["raw_archives", "line_membership"])
    for day in days:
        one(["decoded_flows", "clean_flows", "clean_rejects", "flow_sample", "line_views", "line_truth"], day)
    one(["endpoint_signatures"])
    for day in days:
        unsharded_check = one(["line_inventory"], day).get_asset_check_evaluations()[0]
    one(["line_first_detected", "line_metrics"])
    unsharded_metrics = json.loads((data / "reports" / "line_metrics.json").read_text())
    unsharded_firsts = pd.read_parquet(lake / "line_first_detected" / "part-0.parquet")
    assert pd.read_parquet(lake / "line_membership" / "part-0.parquet")["line_id"].nunique() == 12

    # Four shards on the same lake (their files are `day=.../NN-of-04/`), the flows and signatures as built above.
    four = line_runner(data, 0.03, 12, ["line_first_detected", "line_metrics"], line_shards=4)
    shards = shard_keys(4)
    # One run over every shard of the four days, as `iot-assets run` asks (a range of day x shard keys) ...
    four(["line_views", "line_truth"], tags=range_tags(f"{days[0]}|{shards[0]}", f"{days[-1]}|{shards[-1]}"))
    # ... and the inventories one day and shard at a time, as a backfill of the daemon runs them.
    changed = {}
    for day in days:
        for shard in shards:
            result = four(["line_inventory"], dg.MultiPartitionKey({"day": day, "shard": shard}))
            changed[(day, shard)] = result.get_asset_check_evaluations()[0]
    four(["line_first_detected", "line_metrics"])

    for day in days:
        for asset in ("line_views", "line_truth", "line_inventory"):
            parts = [pd.read_parquet(lake / asset / f"day={day}" / shard / "part-0.parquet") for shard in shards]
            whole = pd.read_parquet(lake / asset / f"day={day}" / "part-0.parquet")
            assert sum(len(p) > 0 for p in parts) >= 2, (asset, day)  # the day's lines spread over several shards
            for number, part in enumerate(parts):  # each shard holds its own lines only
                assert set(lines.line_shards(part["line_id"], 4)) <= {number}, (asset, day)
            union = pd.concat([p for p in parts if len(p)], ignore_index=True)
            assert len(union) == len(whole) > 0, (asset, day)
            pd.testing.assert_frame_equal(_rows(union), _rows(whole), check_dtype=False, obj=f"{asset}[{day}]")
    last = pd.read_parquet(lake / "line_inventory" / f"day={days[-1]}" / "part-0.parquet")
    assert last["detected"].sum() >= 6
    # The shards' change checks name, together, the lines the unsharded check names.
    by_shard = [check for (day, _), check in changed.items() if day == days[-1]]
    assert sum(c.metadata["lines_changed"].value for c in by_shard) == unsharded_check.metadata["lines_changed"].value
    assert sorted((r["line_id"], r["label"]) for c in by_shard for r in c.metadata["new_detections"].value) == \
        sorted((r["line_id"], r["label"]) for r in unsharded_check.metadata["new_detections"].value)
    # What reads every day reads every shard of it: the same first detections and metrics.
    pd.testing.assert_frame_equal(_rows(pd.read_parquet(lake / "line_first_detected" / "part-0.parquet")),
                                  _rows(unsharded_firsts))
    assert len(unsharded_firsts) >= 6
    assert json.loads((data / "reports" / "line_metrics.json").read_text()) == unsharded_metrics
