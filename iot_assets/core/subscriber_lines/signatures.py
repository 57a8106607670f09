"""Endpoint signatures: per device model, the backend services that it alone used in the training days.

A service is a remote /24 (IPv6: /48) prefix + port + protocol, or the prefix alone.
Services several models of one manufacturer share become manufacturer rules; services
models of different manufacturers share (CDNs, public resolvers, clouds) and the
infrastructure ports (DNS, NTP) are kept as `excluded`: no evidence at all.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

import numpy as np
import pandas as pd

from iot_assets.core.subscriber_lines.manufacturers import manufacturer_of

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
