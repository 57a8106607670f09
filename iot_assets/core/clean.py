"""Decoded flows to device-centric flows: every flow seen from its local device.

A record belongs to the device whose MAC is on either side. Whichever side YAF took as
the source, after cleaning `*_out` is what left the device and `*_in` what reached it,
and `device_initiated` says whether the device's side sent the first packet.

The catalogue and the home network (gateway, LAN) come as a `HomeCatalogue`: in clear, or
as the pseudonymised flows of the day name them (`Pseudonymiser.catalogue(day)`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iot_assets.contracts import catalogue
from iot_assets.core.pseudonymiser import CLEAR_CATALOGUE, HomeCatalogue

_HEX_OCTETS = {f"{i:02x}": i for i in range(256)}
from iot_assets.contracts.vocabulary import REMOTE_SCOPES  # noqa: F401 (cleaning assigns these)

# Decoded columns with a reverse twin (`reverse_<name>`); cleaning turns each pair into
# `<name>_out` and `<name>_in`.
_DIRECTIONAL = (
    "bytes", "packets", "payload_bytes", "non_empty_packets", "small_packets", "large_packets",
    "max_payload_bytes", "first_payload_bytes", "mean_interarrival_ms", "stddev_payload_bytes",
    "initial_tcp_flags", "union_tcp_flags",
)

# The decoded columns `to_device_centric` reads (the other YAF fields pass through decoding only).
DECODED_COLUMNS = [
    "archive", "line_number", "flow_start", "flow_end", "duration_ms", "reverse_delta_ms", "src_mac", "dst_mac",
    "src_ip", "dst_ip", "src_port", "dst_port", "protocol", "ip_version", "end_reason", "has_flow_stats",
    *(column for name in _DIRECTIONAL for column in (name, f"reverse_{name}")),
]


def remote_scope(ip: pd.Series, mac: pd.Series, home: HomeCatalogue = CLEAR_CATALOGUE) -> np.ndarray:
    """Where the peer is: the gateway, the LAN, the internet, or a broadcast/multicast group.

    Decided once per distinct (address, MAC) pair: a day's 190,000 flows of 25 devices have a few
    thousand, and the string tests cost per value.
    """
    ip_codes, ips = pd.factorize(ip.astype(str))
    mac_codes, macs = pd.factorize(mac.astype(str))
    _, first, inverse = np.unique(ip_codes.astype(np.int64) * max(len(macs), 1) + mac_codes,
                                      return_index=True, return_inverse=True)
    scope = _scope_of_each(pd.Series(ips.take(ip_codes[first])), pd.Series(macs.take(mac_codes[first])), home)
    return scope[inverse.reshape(-1)]


def _scope_of_each(ip: pd.Series, mac: pd.Series, home: HomeCatalogue) -> np.ndarray:
    ip = ip.astype(str)
    mac = mac.astype(str)
    first_octet = mac.str.slice(0, 2).map(_HEX_OCTETS).fillna(0).astype(int)
    scope = np.full(len(ip), "internet", dtype=object)
    is_v6 = ip.str.contains(":", regex=False).to_numpy()
    conditions = [
        (ip.isin(["::", "0.0.0.0"]).to_numpy(), "unspecified"),
        ((ip == "255.255.255.255").to_numpy() | (mac == catalogue.BROADCAST_MAC).to_numpy(), "broadcast"),
        ((first_octet.to_numpy() & 1).astype(bool) | ip.str.match(r"^(22[4-9]|23\d)\.|^ff", na=False).to_numpy(), "multicast"),
        (is_v6 & ip.str.startswith("fe80").to_numpy(), "link_local"),
        (ip.str.match(r"^169\.254\.", na=False).to_numpy(), "link_local"),
        (ip.isin(home.gateway_ips).to_numpy(), "gateway"),
        (mac.isin(home.gateway_macs).to_numpy() & ~ip.str.startswith(home.lan_prefixes).to_numpy() & ~is_v6, "internet"),
        (ip.str.match(r"^(10\.|192\.168\.|172\.(1[6-9]|2\d|3[01])\.)", na=False).to_numpy(), "lan"),
    ]
    decided = np.zeros(len(ip), dtype=bool)
    for mask, name in conditions:
        take = mask & ~decided
        scope[take] = name
        decided |= take
    return scope


# Collector flows (`defs/ingest/collectors.py`): the device each belongs to, found from the flow
# itself (`sources.biflows.device_identity`), and the exporter's packet sampling rate.
COLLECTOR_COLUMNS = ["device_key", "device_ip", "identity", "sampling_rate"]
IDENTITIES = ("mac", "private_ip", "line")
# The prefixes of a device key that is not a MAC: every product past clean_flows keys on `device_key`.
KEY_PREFIXES = {"private_ip": "ip:", "line": "line:"}
# What a collector record does not carry: zero, as decoding leaves them when YAF leaves them out
# (`has_flow_stats` False says so), and 0 for the reverse delay of a record without a reverse side.
_ZERO_WHEN_UNKNOWN = ("reverse_delta_ms", *(f"{prefix}{name}" for prefix in ("", "reverse_") for name in (
    "payload_bytes", "non_empty_packets", "small_packets", "large_packets", "max_payload_bytes",
    "first_payload_bytes", "stddev_payload_bytes", "initial_tcp_flags", "union_tcp_flags")))


def to_device_centric(decoded: pd.DataFrame, local_macs: dict[str, str],
                      home: HomeCatalogue = CLEAR_CATALOGUE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(clean rows, rejected rows with a reason) for decoded flows of any archives and collector files.

    `local_macs` maps an archive to the MAC of its device (catalogue MAC, or the dominant
    MAC of an archive that is not in the catalogue), named as in `decoded`; `home` names the
    catalogue and the home network the same way. Rows with an `identity` (collector flows)
    are oriented by the device their identity names instead: its MAC when the exporter saw
    one, else its private address (`device_mac` null), else ("line": no private address on
    either side) as exported, the source taken as the line's side.
    """
    if "identity" not in decoded.columns or decoded["identity"].isna().all():
        clean, rejects = _by_archive_mac(decoded, local_macs, home)
    elif decoded["identity"].notna().all():
        clean, rejects = _by_identity(decoded, home), decoded.iloc[0:0][["archive", "line_number"]].assign(reason="", detail="")
    else:
        collected = decoded["identity"].notna()
        clean, rejects = _by_archive_mac(decoded.loc[~collected].drop(columns=COLLECTOR_COLUMNS, errors="ignore"),
                                         local_macs, home)
        clean = pd.concat([clean, _by_identity(decoded.loc[collected].reset_index(drop=True), home)], ignore_index=True)
    return clean, rejects.reset_index(drop=True)


def _by_archive_mac(decoded: pd.DataFrame, local_macs: dict[str, str],
                    home: HomeCatalogue) -> tuple[pd.DataFrame, pd.DataFrame]:
    local_mac = decoded["archive"].map(local_macs)
    src_is_device = (decoded["src_mac"] == local_mac).to_numpy()
    dst_is_device = (decoded["dst_mac"] == local_mac).to_numpy()
    present = src_is_device | dst_is_device
    rejects = decoded.loc[~present, ["archive", "line_number"]].assign(
        reason="device_mac_absent",
        detail="neither MAC of the flow is " + local_mac[~present].fillna("a known device MAC").astype(str),
    )
    d = decoded.loc[present].reset_index(drop=True)
    device_mac = local_mac[present].reset_index(drop=True)
    identity = pd.Series("mac", index=d.index, dtype=object)
    return _oriented(d, src_is_device[present], device_mac, identity, pd.Series(1, index=d.index), home), rejects


def _by_identity(flows: pd.DataFrame, home: HomeCatalogue) -> pd.DataFrame:
    d = flows.reset_index(drop=True).copy()
    for name in DECODED_COLUMNS:
        if name not in d.columns:  # a contract column the exporter has no counterpart of: unknown
            d[name] = None
    for name in ("line_number", "duration_ms", "protocol", "src_port", "dst_port", "packets", "bytes",
                 "reverse_packets", "reverse_bytes", "ip_version"):
        d[name] = d[name].astype("int64")  # required by the readers: never null, nullable-typed in the lake
    for name in _ZERO_WHEN_UNKNOWN:
        d[name] = pd.to_numeric(d[name]).fillna(0).astype("int64")
    d["has_flow_stats"] = False
    # The device's side: the one whose address `device_identity` named; a line flow keeps the exporter's source.
    out_is_fwd = ((d["device_ip"] == d["src_ip"]) | d["device_ip"].isna()).to_numpy(dtype=bool)
    device_mac = d["device_key"].where(d["identity"] == "mac")
    return _oriented(d, out_is_fwd, device_mac, d["identity"].astype(object),
                     pd.to_numeric(d["sampling_rate"]).fillna(1).astype("int64"), home)


def _oriented(d: pd.DataFrame, out_is_fwd: np.ndarray, device_mac: pd.Series, identity: pd.Series,
              sampling_rate: pd.Series, home: HomeCatalogue) -> pd.DataFrame:
    """The clean columns of flows `d` seen from the side `out_is_fwd` says (True: the source)."""

    def pick(forward: str, reverse: str, out: bool) -> pd.Series:
        a, b = (d[forward], d[reverse]) if out else (d[reverse], d[forward])
        return a.where(out_is_fwd, b)

    device_mac = device_mac.reset_index(drop=True)
    names = {mac: d.name for mac, d in home.by_mac.items()}
    categories = {mac: d.category for mac, d in home.by_mac.items()}
    in_catalogue = device_mac.isin(names)
    clean = pd.DataFrame(
        {
            "archive": d["archive"],
            "line_number": d["line_number"],
            "flow_start": d["flow_start"],
            "flow_end": d["flow_end"],
            "duration_ms": d["duration_ms"],
            "rtt_ms": d["reverse_delta_ms"],
            "device_mac": device_mac.astype(object).where(device_mac.notna(), None),
            "device_name": device_mac.map(names).astype(object).where(in_catalogue, None),
            "device_category": device_mac.map(categories).astype(object).where(in_catalogue, None),
            "in_catalogue": in_catalogue,
            "identity": identity.reset_index(drop=True),
            "device_ip": d["src_ip"].where(out_is_fwd, d["dst_ip"]),
            "device_port": d["src_port"].where(out_is_fwd, d["dst_port"]),
            "remote_ip": d["dst_ip"].where(out_is_fwd, d["src_ip"]),
            "remote_mac": d["dst_mac"].where(out_is_fwd, d["src_mac"]),
            "remote_port": d["dst_port"].where(out_is_fwd, d["src_port"]),
            "device_initiated": out_is_fwd,
            "protocol": d["protocol"],
            "ip_version": d["ip_version"],
            "end_reason": d["end_reason"],
            "has_flow_stats": d["has_flow_stats"],
            "sampling_rate": sampling_rate.reset_index(drop=True).astype("int64"),
        }
    )
    for name in _DIRECTIONAL:
        clean[f"{name}_out"] = pick(name, f"reverse_{name}", out=True)
        clean[f"{name}_in"] = pick(name, f"reverse_{name}", out=False)
    clean["remote_scope"] = remote_scope(clean["remote_ip"], clean["remote_mac"], home)
    clean.insert(clean.columns.get_loc("device_mac"), "device_key", device_keys(clean))
    return clean


def device_keys(clean: pd.DataFrame) -> pd.Series:
    """The one key of each flow's device, resolved here once: its MAC when known, else
    `ip:<private address>`, else `line:<the line's address>` (addresses as the flows name them,
    so pseudonymised like every other address of the flow)."""
    prefix = clean["identity"].map(KEY_PREFIXES)
    by_address = (prefix + clean["device_ip"].astype(object)).where(prefix.notna())
    return clean["device_mac"].astype(object).where(clean["identity"] == "mac", by_address)
