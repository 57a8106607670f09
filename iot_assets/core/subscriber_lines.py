"""Behind the NAT: which device models sit on a subscriber line, from the flows an ISP edge sees.

The pre-NAT archives are the ground truth. From them this module builds

- **line views**: what the ISP's edge collector would record for a subscriber line: the
  Internet-bound flows of the devices behind it, with every device identifier gone (no
  MAC, no LAN address, no device port: the NAT rewrote them), packet-sampled 1:N;
- **endpoint signatures**: per device model, the backend services (remote /24 or /48
  prefix + port + protocol, and the prefix alone) that it alone used in the training days;
  services several models of one manufacturer share become manufacturer rules; services
  models of different manufacturers share (CDNs, public resolvers, clouds) and the
  infrastructure ports (DNS, NTP) are no evidence at all;
- **line inventories**: per line and day, the models (or manufacturers) whose rules the
  line's flows hit within a sliding window of days, with evidence and the time of detection;
- **metrics** against the known membership: device-day recall, precision, false presences
  per line and month, time to detect.

Plain functions on pandas frames: no Dagster, no paths.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from iot_assets.contracts import schemas
from iot_assets.contracts.schemas import Text, UtcMs

MAC_PATTERN = re.compile(schemas.MAC_PATTERN)
DEFAULT_SAMPLING_RATES = (1, 100, 1000)

# The brand on the box, for manufacturer-level rules. The catalogue holds product names only.
MANUFACTURERS: dict[str, str] = {
    "Amazon Echo gen2": "Amazon",
    "au network camera": "au (KDDI)",
    "au wireless adapter": "au (KDDI)",
    "Bitfinder Awair Breathe Easy": "Bitfinder",
    "CANDY HOUSE Sesami Wi-Fi access point": "CANDY HOUSE",
    "Google Home gen1": "Google",
    "I-O Data QWatch": "I-O Data",
    "iRobot Roomba": "iRobot",
    "JVC Kenwood CU-HB1": "JVC Kenwood",
    "JVC Kenwood HDTV IP camera": "JVC Kenwood",
    "Line Clova Wave": "LINE",
    "Link Japan eRemote": "Link Japan",
    "Mouse computer room hub": "Mouse Computer",
    "Nature Remo": "Nature",
    "Panasonic Doorphone": "Panasonic",
    "Philips Hue Bridge": "Philips",
    "PLANEX camera one shot!": "PLANEX",
    "PLANEX SmaCam Outdoor": "PLANEX",
    "PLANEX SmaCam PanTilt": "PLANEX",
    "PowerElectric Wi-Fi plug": "PowerElectric",
    "Qrio Hub": "Qrio",
    "Sony Bravia": "Sony",
    "Sony network camera": "Sony",
    "Sony smart speaker": "Sony",
    "Xiaomi Mijia LED": "Xiaomi",
}


def manufacturer_of(model: str) -> str:
    """The manufacturer of a catalogue model; a model outside the catalogue is its own manufacturer."""
    return MANUFACTURERS.get(model, model)


# ---------------------------------------------------------------- configuration


class LinesInputError(ValueError):
    """A lines file or setting that cannot be used; the message names the source and the record."""


def parse_sampling_rates(raw: str, source: str = "IOT_ASSETS_SAMPLING") -> tuple[int, ...]:
    """`"1,100,1000"` -> (1, 100, 1000): packet sampling rates 1:N, each a whole number >= 1."""
    if not raw.strip():
        return DEFAULT_SAMPLING_RATES
    rates = []
    for part in raw.split(","):
        text = part.strip()
        if not text.isdigit() or int(text) < 1:
            raise LinesInputError(f"{source}={raw!r}: {text!r} is not a sampling rate (a whole number N >= 1 for 1:N)")
        rates.append(int(text))
    if len(set(rates)) != len(rates):
        raise LinesInputError(f"{source}={raw!r}: a rate is listed twice")
    return tuple(sorted(rates))


# ---------------------------------------------------------------- line membership

MEMBERSHIP_COLUMNS = ["line_id", "device_mac", "since"]


def parse_membership(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """A lines table as read from CSV (`device_mac,line_id[,since]`), checked and normalised.

    `since` (optional, ISO time, UTC if no zone) is when the device's traffic starts being
    copied into the line; empty means from the beginning. Raises LinesInputError naming
    `source` and the file line of the first bad record.
    """
    missing = {"device_mac", "line_id"} - set(table.columns)
    if missing:
        raise LinesInputError(f"{source}: missing column(s) {', '.join(sorted(missing))} "
                              f"(expected device_mac,line_id[,since]; found {', '.join(map(str, table.columns))})")
    rows = []
    for i, record in enumerate(table.to_dict("records")):
        where = f"{source} line {i + 2}"  # line 1 is the header
        mac = str(record["device_mac"] if pd.notna(record["device_mac"]) else "").strip().lower().rstrip(":")
        if not MAC_PATTERN.match(mac):
            raise LinesInputError(f"{where}: device_mac {record['device_mac']!r} is not a MAC address")
        line_id = str(record["line_id"]).strip() if pd.notna(record["line_id"]) else ""
        if not line_id:
            raise LinesInputError(f"{where}: empty line_id")
        since = record.get("since")
        if since is None or (not isinstance(since, str) and pd.isna(since)) or not str(since).strip():
            since_ts = pd.NaT
        else:
            try:
                since_ts = pd.Timestamp(str(since).strip())
            except ValueError as exc:
                raise LinesInputError(f"{where}: since {since!r} is not a time (ISO 8601)") from exc
            since_ts = since_ts.tz_localize("UTC") if since_ts.tzinfo is None else since_ts.tz_convert("UTC")
        rows.append({"line_id": line_id, "device_mac": mac, "since": since_ts})
    membership = pd.DataFrame(rows, columns=MEMBERSHIP_COLUMNS)
    duplicated = membership.duplicated(["line_id", "device_mac"], keep="first")
    if duplicated.any():
        i = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise LinesInputError(f"{source} line {i + 2}: device {membership.at[i, 'device_mac']} is on line "
                              f"{membership.at[i, 'line_id']} twice")
    return _typed_membership(membership)


def _typed_membership(membership: pd.DataFrame) -> pd.DataFrame:
    membership = membership.copy()
    membership["since"] = pd.to_datetime(membership["since"], utc=True).astype(UtcMs)
    return membership[MEMBERSHIP_COLUMNS].reset_index(drop=True)


def synthetic_lines(device_macs: list[str], first_day: date, last_day: date, lines: int = 40,
                    max_devices: int = 6, joining_share: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Seeded random subscriber lines: each a mix of 1..max_devices of the devices.

    A device may sit on several lines (its traffic is copied into each). A `joining_share`
    of the memberships start at a random time between `first_day` and the end of
    `last_day` (a device bought and plugged in), so that time to detect can be measured;
    the others are there from the beginning.
    """
    macs = sorted(set(device_macs))
    if not macs:
        raise LinesInputError("no devices to put on synthetic lines")
    rng = np.random.default_rng([seed, 13])
    start = pd.Timestamp(first_day.isoformat(), tz="UTC")
    span_s = (last_day - first_day + timedelta(days=1)).days * 86_400
    rows = []
    for i in range(lines):
        size = int(rng.integers(1, min(max_devices, len(macs)) + 1))
        for mac in sorted(rng.choice(macs, size=size, replace=False)):
            joins = rng.random() < joining_share
            offset_s = int(rng.integers(0, span_s))
            rows.append({"line_id": f"line-{i:03d}", "device_mac": mac,
                         "since": start + pd.Timedelta(seconds=offset_s) if joins else pd.NaT})
    return _typed_membership(pd.DataFrame(rows, columns=MEMBERSHIP_COLUMNS))


# ---------------------------------------------------------------- line views

VIEW_COLUMNS = ["line_id", "sampling_rate", "flow_start", "flow_end", "remote_ip", "remote_port", "protocol",
                "bytes_out", "bytes_in", "packets_out", "packets_in"]


class LineViews(pa.DataFrameModel):
    """What the ISP edge records of a subscriber line: public side only, packet-sampled."""

    line_id: Series[Text] = pa.Field(description="the subscriber line (its one public address)")
    sampling_rate: Series[int] = pa.Field(ge=1, description="packet sampling 1:N applied to this copy of the flows")
    flow_start: Series[UtcMs] = pa.Field(description="first packet, UTC")
    flow_end: Series[UtcMs] = pa.Field(description="last packet, UTC")
    remote_ip: Series[Text] = pa.Field(description="the Internet peer")
    remote_port: Series[int] = pa.Field(ge=0, le=65535, description="the Internet peer's port")
    protocol: Series[int] = pa.Field(ge=0, le=255)
    bytes_out: Series[int] = pa.Field(ge=0, description="bytes from the line to the peer, scaled back by N")
    bytes_in: Series[int] = pa.Field(ge=0, description="bytes from the peer to the line, scaled back by N")
    packets_out: Series[int] = pa.Field(ge=0, description="sampled packets to the peer times N")
    packets_in: Series[int] = pa.Field(ge=0, description="sampled packets from the peer times N")

    @pa.dataframe_check(error="flow_end before flow_start")
    def ends_after_start(cls, df: pd.DataFrame) -> Series[bool]:
        return df["flow_end"] >= df["flow_start"]

    @pa.dataframe_check(error="a sampled flow without packets")
    def has_packets(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["packets_out"] + df["packets_in"]) > 0

    class Config:
        strict = True  # no other column: nothing that names a device can ride along
        coerce = True


VIEW_SOURCE_COLUMNS = ["flow_start", "flow_end", "remote_ip", "remote_port", "protocol", "bytes_out", "bytes_in",
                       "packets_out", "packets_in"]


# The columns of the clean flows `line_views` and `line_truth` read.
CLEAN_COLUMNS = ["device_mac", "device_name", "remote_scope", *VIEW_SOURCE_COLUMNS]


def _on_lines(clean: pd.DataFrame, membership: pd.DataFrame) -> pd.DataFrame:
    """Internet-bound flows copied into every line their device sits on, from its `since`."""
    # Only the columns a view keeps: a day of clean flows has many more, and the join copies its rows.
    internet = clean.loc[clean["remote_scope"] == "internet", ["device_mac", *VIEW_SOURCE_COLUMNS]]
    joined = internet.merge(membership[["device_mac", "line_id", "since"]], on="device_mac", how="inner")
    return joined[joined["since"].isna() | (joined["flow_start"] >= joined["since"])]


# ---------------------------------------------------------------- shards of lines


def line_key(line_id: str) -> int:
    """A stable 64-bit number for a line id: the same in every process and on every machine (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(str(line_id).encode(), digest_size=8).digest(), "big")


def line_shards(line_ids, shards: int) -> np.ndarray:
    """The shard (0 .. shards-1) of each line id: its `line_key` modulo the shard count.

    A line's shard depends on its id and the count only, never on which other lines exist, so a
    line stays in its shard as subscribers come and go; each distinct id is hashed once.
    """
    if shards < 1:
        raise LinesInputError(f"a shard count must be at least 1, not {shards}")
    codes, uniques = pd.factorize(pd.Series(line_ids, dtype=object).astype(str))
    per_id = np.array([line_key(u) % shards for u in uniques], dtype=np.int64)
    return per_id[codes] if len(codes) else np.empty(0, np.int64)


def shard_membership(membership: pd.DataFrame, shard: int, shards: int) -> pd.DataFrame:
    """The memberships of the lines in shard `shard` of `shards`."""
    if not 0 <= shard < shards:
        raise LinesInputError(f"shard {shard} is not one of 0..{shards - 1}")
    return membership[line_shards(membership["line_id"], shards) == shard]


def line_views(clean: pd.DataFrame, membership: pd.DataFrame, day: str,
               rates: tuple[int, ...] = DEFAULT_SAMPLING_RATES, seed: int = 0) -> pd.DataFrame:
    """The day's flows as the ISP edge sees them, once per sampling rate.

    A flow of p packets survives 1:N packet sampling when at least one of its packets is
    sampled: probability 1-(1-1/N)^p. Each direction's sampled packets are drawn
    (binomial), and packets and bytes are scaled back by N as collectors do; bytes follow
    the flow's mean packet size; first and last packet times stay those of the flow.
    Deterministic for (seed, day, rate, line): each line draws from its own stream, so the
    views of a shard of the lines (`shard_membership`) are exactly those lines' rows of the
    views of every line.
    """
    if not rates:
        raise LinesInputError("no sampling rate: give at least one (1 for unsampled)")
    on_lines = _on_lines(clean, membership)
    base = pd.DataFrame({
        "line_id": on_lines["line_id"].astype(str), "flow_start": on_lines["flow_start"],
        "flow_end": on_lines["flow_end"], "remote_ip": on_lines["remote_ip"].astype(str),
        "remote_port": on_lines["remote_port"].astype(np.int64), "protocol": on_lines["protocol"].astype(np.int64),
        "bytes_out": on_lines["bytes_out"].astype(np.int64), "bytes_in": on_lines["bytes_in"].astype(np.int64),
        "packets_out": on_lines["packets_out"].astype(np.int64), "packets_in": on_lines["packets_in"].astype(np.int64),
    })
    # A fixed order whatever order the day's flows came in, so that the sampling draws are reproducible.
    # The strings sort as their ranks among the distinct values (the same order, compared as integers).
    keys = base[["line_id", "flow_start", "flow_end", "remote_ip", "remote_port", "protocol",
                 "packets_out", "packets_in", "bytes_out", "bytes_in"]].copy()
    for column in ("line_id", "remote_ip"):
        keys[column] = pd.factorize(keys[column], sort=True)[0]
    base = base.take(np.lexsort([keys[c].astype(np.int64).to_numpy() for c in reversed(keys.columns)])).reset_index(drop=True)
    frames = []
    day_number = date.fromisoformat(day).toordinal()
    ids = base["line_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0, np.int64)
    blocks = [(line_key(ids[a]), a, b) for a, b in zip(starts, [*starts[1:], len(ids)])]  # one per line
    for rate in rates:
        view = base.copy()
        if rate > 1:
            sampled_out, sampled_in = (np.empty(len(view), np.int64) for _ in range(2))
            packets_out, packets_in = view["packets_out"].to_numpy(), view["packets_in"].to_numpy()
            for key, a, b in blocks:
                rng = np.random.default_rng([seed, rate, day_number, key])
                sampled_out[a:b] = rng.binomial(packets_out[a:b], 1.0 / rate)
                sampled_in[a:b] = rng.binomial(packets_in[a:b], 1.0 / rate)
            for direction, sampled in (("out", sampled_out), ("in", sampled_in)):
                packets = view[f"packets_{direction}"].to_numpy()
                mean_size = np.where(packets > 0, view[f"bytes_{direction}"].to_numpy() / np.maximum(packets, 1), 0.0)
                view[f"bytes_{direction}"] = np.round(mean_size * sampled * rate).astype(np.int64)
                view[f"packets_{direction}"] = (sampled * rate).astype(np.int64)
            view = view[(sampled_out + sampled_in) > 0]
        frames.append(view.assign(sampling_rate=rate))
    return pd.concat(frames, ignore_index=True)[VIEW_COLUMNS]


TRUTH_COLUMNS = ["line_id", "device_mac", "model", "manufacturer", "day", "flows", "internet_flows",
                 "first_internet_flow"]


def line_truth(clean: pd.DataFrame, membership: pd.DataFrame, day: str) -> pd.DataFrame:
    """Ground truth of the day: per line and device, its flows and its first Internet-bound flow.

    Only a simulation knows this; it is what the metrics judge the inventory against.
    A device with flows but no Internet-bound flow that day is on the line but invisible at the edge.
    """
    joined = clean[["device_mac", "device_name", "flow_start", "remote_scope"]].merge(
        membership[["device_mac", "line_id", "since"]], on="device_mac", how="inner")
    joined = joined[joined["since"].isna() | (joined["flow_start"] >= joined["since"])]
    if joined.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
            ("line_id", object), ("device_mac", object), ("model", object), ("manufacturer", object), ("day", object),
            ("flows", np.int64), ("internet_flows", np.int64), ("first_internet_flow", UtcMs))})
    internet = joined["remote_scope"] == "internet"
    joined = joined.assign(internet=internet.astype(np.int64),
                           internet_start=joined["flow_start"].where(internet))
    truth = joined.groupby(["line_id", "device_mac"], as_index=False).agg(
        model=("device_name", "first"), flows=("flow_start", "size"), internet_flows=("internet", "sum"),
        first_internet_flow=("internet_start", "min"))
    truth["manufacturer"] = truth["model"].map(lambda m: manufacturer_of(m) if isinstance(m, str) else None)
    truth["day"] = day
    truth["first_internet_flow"] = pd.to_datetime(truth["first_internet_flow"], utc=True).astype(UtcMs)
    return truth[TRUTH_COLUMNS]


# ---------------------------------------------------------------- endpoint signatures

INFRASTRUCTURE_PORTS = (53, 123, 853)  # DNS, NTP, DNS over TLS: public resolvers and pools, never a product's own
SIGNATURE_COLUMNS = ["rule_id", "kind", "prefix", "remote_port", "protocol", "level", "label", "weight",
                     "models", "manufacturers", "flows", "days", "crowding", "reason", "trained_from", "trained_to"]
ANY = -1  # remote_port / protocol of a prefix rule: any


@dataclass(frozen=True)
class SignatureParams:
    """How rules are learned and weighed."""

    min_support_days: int = 2  # a rule seen on this many training days gives full weight on one hit
    # Bare-prefix rules (a model's /24 on a port it was not seen using there) get this weight;
    # 0: none. Off by default: on the sample they named a model on the lines of an unknown
    # model that shared a cloud /24 with it, and added no recall with a 3-day window.
    prefix_weight: float = 0.0
    v4_prefix_bits: int = 24
    v6_prefix_bits: int = 48
    infrastructure_ports: tuple[int, ...] = INFRASTRUCTURE_PORTS
    # Crowded neighbourhoods: a rule's weight is divided by 1 + the number of other models
    # seen on the same port in the enclosing /16 (v6: /32). 0 turns this off.
    crowding_v4_bits: int = 0
    crowding_v6_bits: int = 32


def day_strings(times: pd.Series) -> np.ndarray:
    """`YYYY-MM-DD` of UTC timestamps; formats each distinct day once (strftime per row is slow)."""
    codes, uniques = pd.factorize(times.dt.floor("D"))
    labels = np.array([u.strftime("%Y-%m-%d") for u in uniques] + [None], dtype=object)
    return labels[codes]


def remote_prefix(ip: pd.Series, v4_bits: int = 24, v6_bits: int = 48) -> pd.Series:
    """`52.197.92.10` -> `52.197.92.0/24`; IPv6 to its /48. None for a value that is not an address."""
    v4_mask = (0xFFFFFFFF << (32 - v4_bits)) & 0xFFFFFFFF

    def prefix(value: str) -> str | None:
        octets = value.split(".")
        if len(octets) == 4 and all(o.isdigit() and int(o) < 256 for o in octets):
            # The common case without ipaddress, which is slow on hundreds of thousands of values.
            n = (int(octets[0]) << 24 | int(octets[1]) << 16 | int(octets[2]) << 8 | int(octets[3])) & v4_mask
            return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/{v4_bits}"
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return None
        bits = v4_bits if address.version == 4 else v6_bits
        return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))

    codes, uniques = pd.factorize(ip.astype(str))
    table = np.array([prefix(u) for u in uniques] + [None], dtype=object)
    return pd.Series(table[codes], index=ip.index, dtype=object)


def outside_episodes(flows: pd.DataFrame, episodes: pd.DataFrame | None) -> pd.DataFrame:
    """Flows outside the known attack episodes of their device: a scan or a hijacked
    firmware's peers are not the product's backend, and must not become its rules."""
    if episodes is None or episodes.empty or flows.empty:
        return flows
    inside = np.zeros(len(flows), dtype=bool)
    for ep in episodes.itertuples():
        inside |= (((flows["device_name"] == ep.device) | (flows["device_mac"] == ep.device))
                   & (flows["flow_end"] >= ep.start) & (flows["flow_start"] < ep.end)).to_numpy()
    return flows[~inside]


OBSERVATION_COLUMNS = ["prefix", "remote_port", "protocol", "model", "day", "flows"]


def service_observations(train: pd.DataFrame, params: SignatureParams = SignatureParams()) -> pd.DataFrame:
    """Pre-NAT flows (CleanFlows columns) to Internet services, counted per service, model and day."""
    flows = train[(train["remote_scope"] == "internet") & train["device_name"].notna()]
    if flows.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in OBSERVATION_COLUMNS})
    keyed = pd.DataFrame({
        "prefix": remote_prefix(flows["remote_ip"], params.v4_prefix_bits, params.v6_prefix_bits),
        "remote_port": flows["remote_port"].astype(np.int64), "protocol": flows["protocol"].astype(np.int64),
        "model": flows["device_name"].astype(str), "day": day_strings(flows["flow_start"]),
    }).dropna(subset=["prefix"])
    return keyed.groupby(OBSERVATION_COLUMNS[:-1], as_index=False).size().rename(columns={"size": "flows"})


def learn_signatures(train: pd.DataFrame, params: SignatureParams = SignatureParams()) -> pd.DataFrame:
    """Rules from the training days' pre-NAT flows (CleanFlows columns), one row per service key.

    Keys are (prefix, remote port, protocol) services, and bare prefixes if
    `params.prefix_weight` > 0. A key used by one model is a model rule; by several models of one manufacturer, a manufacturer rule;
    by models of different manufacturers, or on an infrastructure port, it is kept with
    level `excluded` and weight 0 so that the table says why it is no evidence. A rule's
    weight is the evidence one hit gives: min(1, training days seen / min_support_days),
    times `prefix_weight` for a bare prefix, divided by 1 + crowding when that is on.
    """
    return signatures_from_observations(service_observations(train, params), params)


def signatures_from_observations(observations: pd.DataFrame, params: SignatureParams = SignatureParams()) -> pd.DataFrame:
    """`learn_signatures` from `service_observations` (of the training days only)."""
    if observations.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SIGNATURE_COLUMNS})
    infrastructure = observations["remote_port"].isin(params.infrastructure_ports)
    keys = [observations.assign(kind="service")]
    if params.prefix_weight > 0:
        # A bare prefix stands for the model's other ports there; infrastructure flows do not make one.
        keys.append(observations[~infrastructure].assign(kind="prefix", remote_port=ANY, protocol=ANY))
    key = ["kind", "prefix", "remote_port", "protocol"]
    both = pd.concat(keys, ignore_index=True)
    both["manufacturer"] = both["model"].map(manufacturer_of)
    rules = both.groupby(key, as_index=False).agg(
        models=("model", lambda s: ";".join(sorted(set(s)))),
        manufacturers=("manufacturer", lambda s: ";".join(sorted(set(s)))),
        flows=("flows", "sum"), days=("day", "nunique"))
    n_models = rules["models"].str.count(";") + 1
    n_makers = rules["manufacturers"].str.count(";") + 1
    on_infra_port = (rules["kind"] == "service") & rules["remote_port"].isin(params.infrastructure_ports)
    rules["level"] = np.select(
        [on_infra_port, n_makers > 1, n_models > 1], ["excluded", "excluded", "manufacturer"], default="model")
    rules["label"] = np.select([rules["level"] == "model", rules["level"] == "manufacturer"],
                               [rules["models"], rules["manufacturers"]], default=None)
    rules["reason"] = np.select(
        [on_infra_port, n_makers > 1, n_models > 1],
        ["infrastructure port",
         "shared by " + n_models.astype(str) + " models of " + n_makers.astype(str) + " manufacturers",
         "shared by " + n_models.astype(str) + " models of one manufacturer"],
        default="one model")
    rules["crowding"] = _crowding(both, rules, params)
    support = np.minimum(1.0, rules["days"] / params.min_support_days)
    weight = support * np.where(rules["kind"] == "prefix", params.prefix_weight, 1.0) / (1 + rules["crowding"])
    rules["weight"] = np.where(rules["level"] == "excluded", 0.0, weight).round(4)
    rules["rule_id"] = (rules["kind"] + ":" + rules["prefix"] + ":" + rules["remote_port"].astype(str) + ":"
                        + rules["protocol"].astype(str))
    rules["trained_from"], rules["trained_to"] = observations["day"].min(), observations["day"].max()
    rules["flows"] = rules["flows"].astype(np.int64)
    rules["days"] = rules["days"].astype(np.int64)
    rules["crowding"] = rules["crowding"].astype(np.int64)
    return rules[SIGNATURE_COLUMNS].sort_values(["level", "label", "rule_id"], na_position="last").reset_index(drop=True)


def _supernet(prefixes: pd.Series, v4_bits: int, v6_bits: int) -> pd.Series:
    codes, uniques = pd.factorize(prefixes)
    def wider(prefix: str) -> str:
        network = ipaddress.ip_network(prefix)
        bits = v4_bits if network.version == 4 else v6_bits
        return str(network.supernet(new_prefix=min(bits, network.prefixlen)))
    table = np.array([wider(u) for u in uniques] + [None], dtype=object)
    return pd.Series(table[codes], index=prefixes.index)


def _crowding(observations: pd.DataFrame, rules: pd.DataFrame, params: SignatureParams) -> np.ndarray:
    """Per rule: other models seen in its wider neighbourhood on the same port (any port for prefix rules)."""
    if not params.crowding_v4_bits or rules.empty:
        return np.zeros(len(rules), dtype=np.int64)
    obs = observations.assign(supernet=_supernet(observations["prefix"], params.crowding_v4_bits,
                                                 params.crowding_v6_bits))
    key = ["kind", "supernet", "remote_port", "protocol"]
    neighbours = obs.groupby(key)["model"].agg(lambda s: frozenset(s))
    supernets = _supernet(rules["prefix"], params.crowding_v4_bits, params.crowding_v6_bits)
    index = pd.MultiIndex.from_arrays([rules["kind"], supernets, rules["remote_port"], rules["protocol"]])
    around = neighbours.reindex(index).to_numpy()
    own = rules["models"].str.split(";").map(frozenset).to_numpy()
    return np.array([len(a - o) if isinstance(a, frozenset) else 0 for a, o in zip(around, own)], dtype=np.int64)


def signatures_version(signatures: pd.DataFrame) -> str:
    """A content hash of the rules, recorded with what they produce."""
    rules = signatures[["rule_id", "level", "label", "weight"]].sort_values("rule_id")
    return hashlib.sha256(rules.to_csv(index=False).encode()).hexdigest()[:12]


def known_models(signatures: pd.DataFrame) -> list[str]:
    """Models the signatures were trained on (whether or not any of their keys became a rule)."""
    return sorted({m for models in signatures["models"].dropna() for m in str(models).split(";") if m})


# ---------------------------------------------------------------- matching and inventory

HIT_COLUMNS = ["sampling_rate", "line_id", "day", "time", "rule_id", "level", "label", "weight"]
INVENTORY_COLUMNS = ["day", "sampling_rate", "line_id", "level", "label", "detected", "evidence", "confidence",
                     "rules_hit", "flows", "first_hit", "last_hit", "detected_at", "superseded_by"]


# The columns of line views `rule_hits` reads.
MATCHED_COLUMNS = ["sampling_rate", "line_id", "flow_start", "flow_end", "remote_ip", "remote_port", "protocol"]


def rule_hits(views: pd.DataFrame, signatures: pd.DataFrame, params: SignatureParams = SignatureParams()) -> pd.DataFrame:
    """Every (flow, rule) match in line views; `time` is the flow's end, when the collector has the record."""
    rules = signatures[signatures["level"].isin(["model", "manufacturer"]) & (signatures["weight"] > 0)]
    if views.empty or rules.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in HIT_COLUMNS})
    v = pd.DataFrame({
        "sampling_rate": views["sampling_rate"].to_numpy(), "line_id": views["line_id"].to_numpy(),
        "day": day_strings(views["flow_start"]), "time": views["flow_end"].to_numpy(dtype="datetime64[ms]"),
        "prefix": remote_prefix(views["remote_ip"], params.v4_prefix_bits, params.v6_prefix_bits).to_numpy(),
        "remote_port": views["remote_port"].to_numpy(), "protocol": views["protocol"].to_numpy(),
    })
    v["flow"] = np.arange(len(v))
    keep = ["rule_id", "level", "label", "weight"]
    services = rules[rules["kind"] == "service"]
    prefixes = rules[rules["kind"] == "prefix"]
    by_service = v.merge(services[["prefix", "remote_port", "protocol", *keep]], on=["prefix", "remote_port", "protocol"])
    by_prefix = v.merge(prefixes[["prefix", *keep]], on="prefix")
    # A flow is one piece of evidence per label: its service rule, or the bare prefix when
    # the label has no rule for that service (a port it was not seen using there).
    covered = pd.MultiIndex.from_frame(by_service[["flow", "label"]])
    by_prefix = by_prefix[~pd.MultiIndex.from_frame(by_prefix[["flow", "label"]]).isin(covered)]
    hits = pd.concat([by_service, by_prefix], ignore_index=True)
    return hits[HIT_COLUMNS]


UNIT_COLUMNS = ["sampling_rate", "line_id", "level", "label", "rule_id", "day", "time", "last", "weight", "flows"]
_GROUP = ["sampling_rate", "line_id", "level", "label"]


def evidence_units(hits: pd.DataFrame) -> pd.DataFrame:
    """One unit of evidence per rule, line and day, at the rule's first hit that day."""
    if hits.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in UNIT_COLUMNS})
    units = hits.groupby([*_GROUP, "rule_id", "day"], as_index=False, sort=False).agg(
        time=("time", "min"), last=("time", "max"), weight=("weight", "first"), flows=("time", "size"))
    return units[UNIT_COLUMNS]


def evidence_units_of(views: Iterable[pd.DataFrame], signatures: pd.DataFrame, params: SignatureParams = SignatureParams(),
                      chunk_rows: int = 200_000) -> pd.DataFrame:
    """`evidence_units(rule_hits(all the views))`, matched `chunk_rows` views at a time.

    A flow's hits depend on that flow only, and a unit's figures (first and last hit, weight,
    hits) are the minimum, maximum, weight and sum over its chunks' units: the same units, while
    only a chunk's hits (a flow can hit many rules: more rows than its views) are in memory.
    """
    parts = []
    for frame in views:
        for start in range(0, len(frame), chunk_rows):
            units = evidence_units(rule_hits(frame.iloc[start:start + chunk_rows], signatures, params))
            if len(units):
                parts.append(units)
    if not parts:
        return evidence_units(pd.DataFrame(columns=HIT_COLUMNS))
    if len(parts) == 1:
        return parts[0]
    units = pd.concat(parts, ignore_index=True).groupby([*_GROUP, "rule_id", "day"], as_index=False, sort=False).agg(
        time=("time", "min"), last=("last", "max"), weight=("weight", "first"), flows=("flows", "sum"))
    return units[UNIT_COLUMNS]


def inventory(hits: pd.DataFrame, day: str, window_days: int, threshold: float = 1.0,
              window_start: str | None = None, confidence_at_threshold: float = 0.95) -> pd.DataFrame:
    """Per sampling rate, line and model (or manufacturer) with evidence in the window ending on `day`.

    Evidence accumulates over the `window_days` days up to `day` (not before `window_start`):
    each rule counts its weight once per day it is hit, so a quiet device's daily trickle
    adds up. Detected when the evidence reaches `threshold`; `detected_at` is when it did.
    Confidence maps evidence e to 1-(1-c)^(e/threshold), c the confidence at the threshold.
    A manufacturer detection is superseded when a model of that manufacturer is detected.
    """
    return inventory_from_units(evidence_units(hits), day, window_days, threshold, window_start,
                                confidence_at_threshold)


def inventory_from_units(units: pd.DataFrame, day: str, window_days: int, threshold: float = 1.0,
                         window_start: str | None = None, confidence_at_threshold: float = 0.95) -> pd.DataFrame:
    """`inventory` from precomputed `evidence_units` (of any days: the window is taken here)."""
    first = (date.fromisoformat(day) - timedelta(days=window_days - 1)).isoformat()
    if window_start and window_start > first:
        first = window_start
    units = units[(units["day"] >= first) & (units["day"] <= day)]
    if units.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in INVENTORY_COLUMNS})
    units = units.sort_values([*_GROUP, "time", "rule_id"], kind="mergesort")
    cumulative = units.groupby(_GROUP, sort=False)["weight"].cumsum()
    crossing = units[cumulative >= threshold - 1e-9].groupby(_GROUP)["time"].min().rename("detected_at")
    rows = units.groupby(_GROUP).agg(
        evidence=("weight", "sum"), rules_hit=("rule_id", "nunique"), flows=("flows", "sum"),
        first_hit=("time", "min"), last_hit=("last", "max"))
    rows = rows.join(crossing).reset_index()
    rows["evidence"] = rows["evidence"].round(4)
    rows["detected"] = rows["evidence"] >= threshold - 1e-9
    rows["confidence"] = (1.0 - (1.0 - confidence_at_threshold) ** (rows["evidence"] / threshold)).round(4)
    rows["day"] = day
    # A brand name adds nothing when the model itself is named.
    models = rows[(rows["level"] == "model") & rows["detected"]]
    named = models.assign(manufacturer=models["label"].map(manufacturer_of)).groupby(
        ["sampling_rate", "line_id", "manufacturer"])["label"].agg(lambda s: ";".join(sorted(s)))
    key = pd.MultiIndex.from_frame(rows[["sampling_rate", "line_id", "label"]])
    superseded = pd.Series(named.reindex(key).to_numpy(), index=rows.index)
    rows["superseded_by"] = superseded.where(rows["level"] == "manufacturer")
    rows.loc[rows["superseded_by"].notna(), "detected"] = False
    for column in ("first_hit", "last_hit", "detected_at"):
        rows[column] = pd.to_datetime(rows[column]).dt.tz_localize("UTC").astype(UtcMs)
    rows["flows"] = rows["flows"].astype(np.int64)
    rows["rules_hit"] = rows["rules_hit"].astype(np.int64)
    return rows[INVENTORY_COLUMNS].sort_values(_GROUP).reset_index(drop=True)


def inventory_changes(today: pd.DataFrame, yesterday: pd.DataFrame) -> pd.DataFrame:
    """Detections of today's inventory that yesterday's did not have: a new model on the line."""
    key = ["sampling_rate", "line_id", "level", "label"]
    now = today[today["detected"].astype(bool)]
    before = yesterday[yesterday["detected"].astype(bool)][key].drop_duplicates() if len(yesterday) else None
    if before is None or before.empty:
        return now.reset_index(drop=True)
    merged = now.merge(before.assign(_before=True), on=key, how="left")
    return merged[merged["_before"].isna()].drop(columns="_before").reset_index(drop=True)


def first_detected(inventories: pd.DataFrame) -> pd.DataFrame:
    """Per sampling rate, line and model: when it was first detected, and the last day it still was."""
    detected = inventories[inventories["detected"].astype(bool)]
    if detected.empty:
        return pd.DataFrame(columns=["sampling_rate", "line_id", "level", "label", "first_detected", "last_day"])
    return detected.groupby(["sampling_rate", "line_id", "level", "label"], as_index=False).agg(
        first_detected=("detected_at", "min"), last_day=("day", "max"))


# ---------------------------------------------------------------- evaluation


def _quantile_hours(hours: np.ndarray, q: float) -> float | None:
    """A quantile of times to detect where never-detected is infinite; None when it lands there."""
    if len(hours) == 0:
        return None
    value = float(np.quantile(hours, q, method="inverted_cdf"))
    return None if np.isinf(value) else round(value, 2)


def _inventories(units: pd.DataFrame, eval_days: list[str], window_days: int, threshold: float) -> pd.DataFrame:
    frames = [inventory_from_units(units, day, window_days, threshold, window_start=eval_days[0]) for day in eval_days]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INVENTORY_COLUMNS)


def evaluate(views: pd.DataFrame, truth: pd.DataFrame, signatures: pd.DataFrame, eval_days: list[str],
             lines: int, window_days: int, threshold: float = 1.0,
             params: SignatureParams = SignatureParams(), episodes: pd.DataFrame | None = None) -> dict:
    """Inventories of the evaluation days against the known membership, per sampling rate.

    `views` are line views (any days: only evaluation days are used, and the sliding
    window never reaches into the training days); `truth` is `line_truth` of every day.
    - device-day recall: (line, device, day) with Internet-bound traffic, of a model the
      signatures were trained on, whose model is in that day's inventory (or its
      manufacturer, when the inventory names the manufacturer only);
    - precision: detections whose model (manufacturer) had Internet-bound traffic on the
      line within the window;
    - false presences per line and 30 days;
    - time to detect: from a device's first Internet-bound flow on the line (or on the first
      evaluation day, if it was on the line before) to its detection; never detected counts
      as infinite, so a quantile that lands there is null.
    Device-days inside a known attack episode (`episodes`: device, start, end) are scored
    apart (`recall_in_episodes`), as the other models leave attacked windows out: a
    scanning device or a replaced firmware does not talk to the product's backend.
    """
    eval_days = sorted(eval_days)
    views = views[pd.Series(day_strings(views["flow_start"]), index=views.index).isin(eval_days)]
    rates = sorted(views["sampling_rate"].unique().tolist()) if len(views) else []
    return evaluate_hits(rule_hits(views, signatures, params), truth, known_models(signatures), rates, eval_days,
                         lines, window_days, threshold, episodes)


def in_episodes(truth: pd.DataFrame, episodes: pd.DataFrame | None) -> np.ndarray:
    """Per truth row (line, device, day): whether the device had a known attack episode that day."""
    inside = np.zeros(len(truth), dtype=bool)
    if episodes is None or episodes.empty or truth.empty:
        return inside
    day_start = pd.to_datetime(truth["day"]).dt.tz_localize("UTC")
    day_end = day_start + pd.Timedelta(days=1)
    for ep in episodes.itertuples():
        inside |= (((truth["model"] == ep.device) | (truth["device_mac"] == ep.device))
                   & (day_start < ep.end) & (day_end > ep.start)).to_numpy()
    return inside


def evaluate_hits(hits: pd.DataFrame, truth: pd.DataFrame, trained_models: list[str], rates: list[int],
                  eval_days: list[str], lines: int, window_days: int, threshold: float = 1.0,
                  episodes: pd.DataFrame | None = None) -> dict:
    """`evaluate` from rule hits of the evaluation days, which may come from signatures refreshed day by day."""
    return evaluate_units(evidence_units(hits[hits["day"].isin(eval_days)]), truth, trained_models, rates, eval_days,
                          lines, window_days, threshold, episodes)


def evaluate_units(units: pd.DataFrame, truth: pd.DataFrame, trained_models: list[str], rates: list[int],
                   eval_days: list[str], lines: int, window_days: int, threshold: float = 1.0,
                   episodes: pd.DataFrame | None = None) -> dict:
    """`evaluate` from the evidence units of the evaluation days (`evidence_units_of` the views, a day at a time)."""
    eval_days = sorted(eval_days)
    units = units[units["day"].isin(eval_days)]
    inventories = _inventories(units, eval_days, window_days, threshold)
    trained = set(trained_models)
    truth = truth.copy()
    truth["known"] = truth["model"].isin(trained)
    truth["in_episode"] = in_episodes(truth, episodes)
    active_all = truth[truth["internet_flows"] > 0]
    # An attacked device is still on its line (precision), but its device-days are scored apart.
    active = active_all[~active_all["in_episode"]]
    active_eval = active[active["day"].isin(eval_days)]
    attacked = active_all[active_all["in_episode"] & active_all["day"].isin(eval_days) & active_all["known"]]
    invisible = truth[(truth["internet_flows"] == 0) & truth["day"].isin(eval_days) & truth["known"]]
    day_index = {d: i for i, d in enumerate(eval_days)}

    # Which labels are truly on a line on a day: traffic of that model or manufacturer in the window.
    present_rows = []
    for row in active_all[active_all["day"].isin(eval_days) & active_all["model"].notna()].itertuples():
        i = day_index[row.day]
        for j in range(i, min(i + window_days, len(eval_days))):
            present_rows.append((row.line_id, eval_days[j], "model", row.model))
            present_rows.append((row.line_id, eval_days[j], "manufacturer", row.manufacturer))
    present = set(present_rows)

    result = {}
    for rate in rates:
        inv = inventories[(inventories["sampling_rate"] == rate) & inventories["detected"].astype(bool)]
        detected = set(zip(inv["line_id"], inv["day"], inv["level"], inv["label"]))
        # Recall over device-days of trained models.
        devices = active_eval[active_eval["known"]]
        by_model = [(r.line_id, r.day, "model", r.model) in detected for r in devices.itertuples()]
        by_maker = [(r.line_id, r.day, "manufacturer", r.manufacturer) in detected for r in devices.itertuples()]
        hit_model = np.array(by_model, dtype=bool)
        hit_any = hit_model | np.array(by_maker, dtype=bool)
        hit_attacked = np.array([(r.line_id, r.day, "model", r.model) in detected
                                 or (r.line_id, r.day, "manufacturer", r.manufacturer) in detected
                                 for r in attacked.itertuples()], dtype=bool)
        # Precision over detections.
        is_true = np.array([(r.line_id, r.day, r.level, r.label) in present for r in inv.itertuples()], dtype=bool)
        # Time to detect.
        ttd = _time_to_detect(active, inventories[inventories["sampling_rate"] == rate], eval_days, trained)
        per_model = {}
        for model in sorted(trained | set(inv.loc[inv["level"] == "model", "label"])):
            mine = (devices["model"] == model).to_numpy()
            labelled = (inv["label"] == model).to_numpy()
            events = ttd[ttd["model"] == model]["hours"].to_numpy()
            per_model[model] = {
                "device_days": int(mine.sum()),
                "recall": round(float(hit_any[mine].mean()), 4) if mine.any() else None,
                "detections": int(labelled.sum()),
                "false_detections": int((labelled & ~is_true).sum()),
                "precision": round(float(is_true[labelled].mean()), 4) if labelled.any() else None,
                "ttd_events": int(len(events)),
                "ttd_hours_median": _quantile_hours(events, 0.5),
                "ttd_hours_p90": _quantile_hours(events, 0.9),
            }
        for maker in sorted(set(inv.loc[inv["level"] == "manufacturer", "label"])):
            labelled = ((inv["label"] == maker) & (inv["level"] == "manufacturer")).to_numpy()
            per_model[f"{maker} (manufacturer)"] = {
                "detections": int(labelled.sum()), "false_detections": int((labelled & ~is_true).sum()),
                "precision": round(float(is_true[labelled].mean()), 4),
            }
        hours = ttd["hours"].to_numpy()
        joined = ttd[ttd["first_on_line"]]["hours"].to_numpy()
        result[str(rate)] = {
            "recall": round(float(hit_any.mean()), 4) if len(hit_any) else None,
            "recall_model_level": round(float(hit_model.mean()), 4) if len(hit_model) else None,
            "precision": round(float(is_true.mean()), 4) if len(is_true) else None,
            "false_per_line_month": round(float((~is_true).sum()) / (lines * len(eval_days)) * 30, 4),
            "ttd_hours_median": _quantile_hours(hours, 0.5),
            "ttd_hours_p90": _quantile_hours(hours, 0.9),
            "device_days": int(len(hit_any)),
            "detections": int(len(is_true)),
            "false_detections": int((~is_true).sum()),
            "ttd_events": int(len(hours)),
            "ttd_never_detected": int(np.isinf(hours).sum()),
            "ttd_hours_median_new_on_line": _quantile_hours(joined, 0.5),
            "ttd_events_new_on_line": int(len(joined)),
            "invisible_device_days": int(len(invisible)),
            "episode_device_days": int(len(attacked)),
            "recall_in_episodes": round(float(hit_attacked.mean()), 4) if len(hit_attacked) else None,
            "per_model": per_model,
        }
    unknown = active_eval[~active_eval["known"]]
    return {
        "sampling": result,
        "lines": int(lines),
        "eval_range": [eval_days[0], eval_days[-1]] if eval_days else [],
        "eval_days": len(eval_days),
        "window_days": window_days,
        "threshold": threshold,
        "models_trained": sorted(trained),
        "untrained_device_days": int(len(unknown)),
        "untrained_models": sorted(unknown["model"].fillna(unknown["device_mac"]).unique().tolist()),
    }


def _time_to_detect(active: pd.DataFrame, inv: pd.DataFrame, eval_days: list[str], trained: set[str]) -> pd.DataFrame:
    """Per (line, device) of a trained model active in the evaluation days: hours to its detection."""
    columns = ["line_id", "model", "first_on_line", "hours"]
    known = active[active["model"].isin(trained)]
    in_eval = known[known["day"].isin(eval_days)]
    if in_eval.empty:
        return pd.DataFrame(columns=columns)
    start = in_eval.groupby(["line_id", "device_mac", "model", "manufacturer"], as_index=False).agg(
        t0=("first_internet_flow", "min"), day0=("day", "min"))
    ever = known.groupby(["line_id", "device_mac"])["day"].min().rename("first_day")
    start = start.join(ever, on=["line_id", "device_mac"])
    detected = inv[inv["detected"].astype(bool)]
    first_by_label = detected.sort_values(["day", "detected_at"]).groupby(["line_id", "level", "label"])
    table = first_by_label[["day", "detected_at"]].apply(lambda g: list(zip(g["day"], g["detected_at"])))
    table = table.to_dict() if len(detected) else {}
    rows = []
    for r in start.itertuples():
        candidates = [(d, t) for level, label in (("model", r.model), ("manufacturer", r.manufacturer))
                      for d, t in table.get((r.line_id, level, label), []) if d >= r.day0]
        if candidates:
            _, at = min(candidates)
            hours = max((at - r.t0).total_seconds(), 0.0) / 3600
        else:
            hours = np.inf
        rows.append((r.line_id, r.model, r.first_day >= eval_days[0], hours))
    return pd.DataFrame(rows, columns=columns)
