"""Behavioural features per device and time window, from clean flows.

A window row holds two views of one MAC:
- `w_*`: what the device did in the window itself (the anomaly detector uses these);
- `c_*`: the same measures over the trailing 24 hours, window included, so that an hour
  in which a quiet device only answered the gateway's probes still carries what it did
  recently (the classifier uses both). Only the past is used, so scoring stays causal.

No identity reaches the features: no MAC, LAN address, device or archive name. Remote
endpoints enter as hashed /16 prefixes and service-port classes, which describe which
clouds and services a device talks to, not who it is on the LAN.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

CONTEXT_HOURS = 24
PREFIX_BUCKETS = 32
PORT_BUCKETS = 16

# Service ports common on IoT devices; any other port falls into a hashed bucket.
SERVICE_PORTS = {
    53: "dns", 67: "dhcp", 68: "dhcp", 80: "http", 123: "ntp", 137: "netbios", 443: "https", 554: "rtsp",
    1883: "mqtt", 1900: "ssdp", 5060: "sip", 5353: "mdns", 5683: "coap", 8080: "http_alt", 8443: "https_alt",
    8883: "mqtts", 8009: "cast",
}
SERVICE_NAMES = sorted(set(SERVICE_PORTS.values()))
IDENTITY_COLUMNS = ("device_key", "identity", "device_mac", "device_name", "device_category", "device_ip", "archive",
                    "in_catalogue")
KEY_COLUMNS = ["device_key", "window_start"]

TCP_SYN, TCP_RST, TCP_FIN, TCP_ACK = 0x02, 0x04, 0x01, 0x10
# The service of each port as its index in SERVICE_NAMES, -1 for any other port.
_SERVICE_OF_PORT = np.full(65536, -1, dtype=np.int8)
for _port, _name in SERVICE_PORTS.items():
    _SERVICE_OF_PORT[_port] = SERVICE_NAMES.index(_name)


def _equals(values: pd.Series):
    """`is_(value)`: the boolean mask of `values == value`, each distinct value compared once."""
    codes, uniques = pd.factorize(values)
    where = {value: code for code, value in enumerate(uniques)}
    return lambda value: codes == where.get(value, -2)


def _stable_bucket(values: pd.Series, buckets: int) -> np.ndarray:
    """A bucket per distinct value by CRC32: the same value lands in the same bucket everywhere."""
    codes, uniques = pd.factorize(values.astype(str))
    table = np.array([zlib.crc32(u.encode()) % buckets for u in uniques], dtype=np.int64)
    return table[codes] if len(uniques) else np.zeros(len(values), dtype=np.int64)


def flow_indicators(clean: pd.DataFrame, window_minutes: int) -> pd.DataFrame:
    """One row per flow with additive indicators, keyed by device and window."""
    # Strings are compared once per distinct value, not per flow (object comparisons cost per value).
    scope_is = _equals(clean["remote_scope"])
    end_is = _equals(clean["end_reason"])
    dev_init = clean["device_initiated"].to_numpy()
    internet = scope_is("internet")
    # The service of a flow is the server's port, the lower of the two: YAF exports the later
    # pieces of a long connection from whichever side it saw first, so who started the
    # record does not say who is the server.
    server_port = np.minimum(clean["remote_port"].to_numpy(), clean["device_port"].to_numpy())
    proto = clean["protocol"].to_numpy()
    initiator_flags = np.where(dev_init, clean["initial_tcp_flags_out"], clean["initial_tcp_flags_in"])
    union = clean["union_tcp_flags_out"].to_numpy() | clean["union_tcp_flags_in"].to_numpy()
    ind = {
        "device_key": clean["device_key"].to_numpy(),
        "window_start": clean["flow_start"].dt.floor(f"{window_minutes}min"),
        "flows": np.ones(len(clean)),
        "dev_init": dev_init,
        "tcp": proto == 6,
        "udp": proto == 17,
        "icmp": (proto == 1) | (proto == 58),
        "ipv6": (clean["ip_version"] == 6).to_numpy(),
        "bytes_out": clean["bytes_out"].to_numpy(float),
        "bytes_in": clean["bytes_in"].to_numpy(float),
        "packets_out": clean["packets_out"].to_numpy(float),
        "packets_in": clean["packets_in"].to_numpy(float),
        "payload_out": clean["payload_bytes_out"].to_numpy(float),
        "payload_in": clean["payload_bytes_in"].to_numpy(float),
        "nonempty_out": clean["non_empty_packets_out"].to_numpy(float),
        "nonempty_in": clean["non_empty_packets_in"].to_numpy(float),
        "small_out": clean["small_packets_out"].to_numpy(float),
        "large_out": clean["large_packets_out"].to_numpy(float),
        "large_in": clean["large_packets_in"].to_numpy(float),
        "duration_s": clean["duration_ms"].to_numpy(float) / 1000,
        "long_flow": (clean["duration_ms"] >= 1_700_000).to_numpy(),
        "short_flow": (clean["duration_ms"] < 1000).to_numpy(),
        "end_idle": end_is("idle"),
        "end_active": end_is("active"),
        "end_detected": end_is("end_detected"),
        "syn_only": (proto == 6) & (initiator_flags == TCP_SYN) & (clean["packets_in"].to_numpy() == 0),
        "rst": (proto == 6) & ((union & TCP_RST) > 0),
        "fin": (proto == 6) & ((union & TCP_FIN) > 0),
        "unanswered": dev_init & (clean["packets_in"].to_numpy() == 0),
    }
    for name in ("gateway", "lan", "internet", "broadcast", "multicast", "link_local"):
        ind[f"scope_{name}"] = scope_is(name)
    # The device's own conversations: everything but what the gateway started (its NetBIOS
    # probes reach every device alike). Services are counted among these only, so that a
    # service share is a share: counting the gateway's probes over the device's own flows
    # made `svc_netbios_share` reach 1,000 on a quiet day and `svc_dns_share` swing with
    # the number of cloud flows, which the anomaly detector took for attacks.
    own = ~(scope_is("gateway") & ~dev_init)
    ind["own"] = own
    service = _SERVICE_OF_PORT[np.clip(server_port, 0, 65535)]
    for code, name in enumerate(SERVICE_NAMES):
        ind[f"svc_{name}"] = (service == code) & own
    other = service < 0
    ind["svc_ephemeral"] = other & (server_port >= 49152) & own
    port_bucket = _stable_bucket(pd.Series(server_port), PORT_BUCKETS)
    registered = other & (server_port < 49152) & (server_port > 0) & own
    for b in range(PORT_BUCKETS):
        ind[f"port_b{b:02d}"] = registered & (port_bucket == b)
    ip_codes, ips = pd.factorize(clean["remote_ip"], use_na_sentinel=False)
    prefix = pd.Series(ips, dtype=object).str.extract(r"^(\d+\.\d+)\.", expand=False).take(ip_codes) \
        .reset_index(drop=True)
    prefix_bucket = _stable_bucket(prefix.fillna(""), PREFIX_BUCKETS)
    for b in range(PREFIX_BUCKETS):
        ind[f"prefix_b{b:02d}"] = internet & (prefix_bucket == b)
    frame = pd.DataFrame(ind)
    frame["remote_ip"] = clean["remote_ip"].where(internet, None).to_numpy()
    frame["remote_prefix"] = prefix.where(internet, None).to_numpy()
    frame["remote_port"] = np.where(dev_init, server_port, -1)
    return frame


def window_sums(indicators: pd.DataFrame) -> pd.DataFrame:
    """Per device and window: summed indicators and distinct endpoints."""
    keys = KEY_COLUMNS
    sums = indicators.drop(columns=["remote_ip", "remote_prefix", "remote_port"]).groupby(keys, sort=True).sum()
    distinct = indicators.groupby(keys, sort=True).agg(
        distinct_ips=("remote_ip", "nunique"),
        distinct_prefixes=("remote_prefix", "nunique"),
        distinct_ports=("remote_port", "nunique"),
    )
    out = sums.join(distinct)
    return out.astype(float)


def _ratios(s: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Scale-free features from summed indicators."""
    flows = s["flows"].clip(lower=1)
    dev_flows = s["dev_init"].clip(lower=1)
    internet = s["scope_internet"].clip(lower=1)
    f = {
        "log_flows": np.log1p(s["flows"]),
        "log_dev_flows": np.log1p(s["dev_init"]),
        "log_bytes_out": np.log1p(s["bytes_out"]),
        "log_bytes_in": np.log1p(s["bytes_in"]),
        "log_packets_out": np.log1p(s["packets_out"]),
        "log_packets_in": np.log1p(s["packets_in"]),
        "out_share_bytes": s["bytes_out"] / (s["bytes_out"] + s["bytes_in"]).clip(lower=1),
        "out_share_packets": s["packets_out"] / (s["packets_out"] + s["packets_in"]).clip(lower=1),
        "dev_init_share": s["dev_init"] / flows,
        "payload_per_pkt_out": s["payload_out"] / s["nonempty_out"].clip(lower=1),
        "payload_per_pkt_in": s["payload_in"] / s["nonempty_in"].clip(lower=1),
        "bytes_per_flow_out": np.log1p(s["bytes_out"] / flows),
        "bytes_per_flow_in": np.log1p(s["bytes_in"] / flows),
        "packets_per_flow": np.log1p((s["packets_out"] + s["packets_in"]) / flows),
        "small_share_out": s["small_out"] / s["packets_out"].clip(lower=1),
        "large_share_out": s["large_out"] / s["packets_out"].clip(lower=1),
        "large_share_in": s["large_in"] / s["packets_in"].clip(lower=1),
        "mean_duration_s": np.log1p(s["duration_s"] / flows),
        "unanswered_share": s["unanswered"] / dev_flows,
        "log_distinct_ips": np.log1p(s["distinct_ips"]),
        "log_distinct_prefixes": np.log1p(s["distinct_prefixes"]),
        "log_distinct_ports": np.log1p(s["distinct_ports"]),
        "flows_per_ip": np.log1p(s["scope_internet"] / s["distinct_ips"].clip(lower=1)),
    }
    shares = [c for c in s.columns if c.startswith(("tcp", "udp", "icmp", "ipv6", "long_", "short_", "end_", "syn_",
                                                     "rst", "fin", "scope_"))]
    for c in shares:
        f[f"{c}_share"] = s[c] / flows
    # Services are shares of the device's own conversations (all but what the gateway
    # started): the gateway's probes reach every device alike and would drown a quiet
    # device's few flows.
    own = s["own"].clip(lower=1)
    f["log_own_flows"] = np.log1p(s["own"])
    for c in [c for c in s.columns if c.startswith(("svc_", "port_b"))]:
        f[f"{c}_share"] = s[c] / own
    for c in [c for c in s.columns if c.startswith("prefix_b")]:
        f[f"{c}_share"] = s[c] / internet
    return pd.DataFrame(f, index=s.index).add_prefix(prefix)


# Flows per batch of devices in `build_windows`. At the real dataset's volume a day and the day before
# hold about 380,000 flows of 25 devices: their indicators at once took a `device_windows` step to
# 1.9 GB and 2.1 s a day; one device at a time, 1.6 s (0.41 s on the small sample's day); batches, 1.2 s
# (0.17 s), the same windows.
BATCH_FLOWS = 100_000


def _device_batches(frames: list[pd.DataFrame], most_flows: int = BATCH_FLOWS):
    """The flows of whole devices, in MAC order, in batches of at most `most_flows` rows (a bigger device alone).

    Windows never span devices, so the sums over a batch of whole devices are those of all flows
    grouped by device: a batch's indicators at a time instead of every flow's, a fraction of the memory.
    Each device's rows keep the frames' order.
    """
    rows = [frame.groupby("device_key", sort=False).indices for frame in frames]
    batch: list[list[np.ndarray]] = [[] for _ in frames]
    size = 0
    for mac in sorted(set().union(*rows)):
        count = sum(len(positions[mac]) for positions in rows if mac in positions)
        if size and size + count > most_flows:
            yield _take(frames, batch)
            batch, size = [[] for _ in frames], 0
        for taken, positions in zip(batch, rows):
            if mac in positions:
                taken.append(positions[mac])
        size += count
    if size:
        yield _take(frames, batch)


def _take(frames: list[pd.DataFrame], batch: list[list[np.ndarray]]) -> pd.DataFrame:
    parts = [frame.take(np.concatenate(taken)) for frame, taken in zip(frames, batch) if taken]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)


def build_windows(clean: pd.DataFrame, history: pd.DataFrame | None, day: str, window_minutes: int = 60) -> pd.DataFrame:
    """Feature rows for the windows of `day`; `history` holds the clean flows of the day before."""
    frames = [clean] if history is None or history.empty else [history, clean]
    if all(frame.empty for frame in frames):
        return pd.DataFrame(columns=KEY_COLUMNS + FEATURES + ["device_name", "device_category", "identity", "hour_of_day"])
    sums = pd.concat([window_sums(flow_indicators(flows, window_minutes)) for flows in _device_batches(frames)])
    # Trailing context: the windows of the last 24 hours of the same device, this one included.
    per_device = []
    span = pd.Timedelta(hours=CONTEXT_HOURS)
    for mac, part in sums.groupby(level="device_key", sort=False):
        part = part.droplevel("device_key")
        context = part.rolling(span).sum()
        # Distinct counts do not add up across windows: the busiest window stands in.
        for col in ("distinct_ips", "distinct_prefixes", "distinct_ports"):
            context[col] = part[col].rolling(span).max()
        per_device.append((mac, part, context))
    window = pd.concat({m: p for m, p, _ in per_device}, names=KEY_COLUMNS)
    context = pd.concat({m: c for m, _, c in per_device}, names=KEY_COLUMNS)
    features = pd.concat([_ratios(window, "w_"), _ratios(context, "c_")], axis=1)
    day_start = pd.Timestamp(day, tz="UTC")
    features = features[(features.index.get_level_values("window_start") >= day_start)
                        & (features.index.get_level_values("window_start") < day_start + pd.Timedelta(days=1))]
    labels = clean.groupby("device_key").agg(device_name=("device_name", "first"),
                                             device_category=("device_category", "first"),
                                             identity=("identity", "first"))
    out = features.reset_index().merge(labels, left_on="device_key", right_index=True, how="left")
    out["hour_of_day"] = out["window_start"].dt.hour  # kept for reports; not a model feature
    return out.reset_index(drop=True)


# The columns of the clean flows `build_windows` reads: what an asset building windows loads.
FLOW_COLUMNS = ["device_key", "identity", "device_name", "device_category", "flow_start", "remote_scope", "device_initiated",
                "remote_port", "device_port", "protocol", "initial_tcp_flags_out", "initial_tcp_flags_in",
                "union_tcp_flags_out", "union_tcp_flags_in", "ip_version", "bytes_out", "bytes_in", "packets_out",
                "packets_in", "payload_bytes_out", "payload_bytes_in", "non_empty_packets_out", "non_empty_packets_in",
                "small_packets_out", "large_packets_out", "large_packets_in", "duration_ms", "end_reason", "remote_ip"]


def _feature_names() -> list[str]:
    """The model features in a stable order, from a one-flow example."""
    example = pd.DataFrame({
        "device_key": ["02:00:00:00:00:01"], "flow_start": [pd.Timestamp("2019-07-01", tz="UTC")],
        "remote_scope": ["internet"], "device_initiated": [True], "remote_port": [443], "device_port": [40000],
        "protocol": [6], "initial_tcp_flags_out": [2], "initial_tcp_flags_in": [18], "union_tcp_flags_out": [27],
        "union_tcp_flags_in": [27], "ip_version": [4], "bytes_out": [100], "bytes_in": [100], "packets_out": [1],
        "packets_in": [1], "payload_bytes_out": [0], "payload_bytes_in": [0], "non_empty_packets_out": [0],
        "non_empty_packets_in": [0], "small_packets_out": [0], "large_packets_out": [0], "large_packets_in": [0],
        "duration_ms": [1], "end_reason": ["idle"], "remote_ip": ["1.2.3.4"],
    })
    sums = window_sums(flow_indicators(example, 60))
    return list(_ratios(sums, "w_").columns) + list(_ratios(sums, "c_").columns)


FEATURES: list[str] = _feature_names()
WINDOW_FEATURES: list[str] = [f for f in FEATURES if f.startswith("w_")]
# What the anomaly detector watches: the window's own behaviour, and the services of the
# last 24 hours (a lasting change shows even in an hour the device is quiet). Not the
# hashed cloud prefixes: providers rotate addresses across /16s every few weeks, and as
# anomaly features the prefixes raised false alarms on such rotations.
ANOMALY_FEATURES: list[str] = [f for f in FEATURES if (f.startswith("w_") and not f.startswith("w_prefix_b"))
                               or f.startswith(("c_svc_", "c_port_b"))]


# ---------------------------------------------------------------- endpoint evidence per window

# What the anomaly detector adds when it is given the backend services (`novelty.service_flows`
# rows, the `device_services` asset): how many of the window's Internet flows (DNS, NTP left
# out) it has, and the share of them, in the window and over the trailing 24 hours, that went
# to server ports (port and protocol, any address) the device never used on its training days.
# A firmware change that moves every Internet peer to a new provider and port takes these
# shares from 0 to 1 at once, while the window features see only a little shift in sizes and
# port classes. Not the services' /24s: clouds move a device to new /24s on the same port every
# few weeks, and as a detector feature the share of flows to /24s unseen in training flagged
# whole evaluation days of clean devices (docs/measurements.md).
SERVICE_FEATURES: list[str] = ["w_log_service_flows", "w_unseen_port_share", "c_unseen_port_share"]
# Training rows are judged against the server ports of the training days at least this far from
# their own (`unseen_services`): 1, the other days.
SERVICE_HOLDOUT_DAYS = 1


class ServiceRowsError(ValueError):
    """Service rows handed to the per-window endpoint features lack a column they need."""


SERVICE_ROW_COLUMNS = ["device_key", "day", "window_start", "service", "flows"]


def _utc(times: pd.Series) -> pd.Series:
    return pd.to_datetime(times, utc=True)


def check_service_rows(services: pd.DataFrame) -> None:
    """Raise ServiceRowsError when `services` lacks a SERVICE_ROW_COLUMNS column."""
    missing = set(SERVICE_ROW_COLUMNS) - set(services.columns)
    if missing:
        raise ServiceRowsError(f"endpoint features: service rows lack column(s) {', '.join(sorted(missing))}")


def training_services(services: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """The `services` rows that belong to `windows` (matched on device_key and window_start)."""
    check_service_rows(services)
    keys = pd.MultiIndex.from_arrays([windows["device_key"], _utc(windows["window_start"])])
    rows = pd.MultiIndex.from_arrays([services["device_key"], _utc(services["window_start"])])
    return services[rows.isin(keys)]


def server_ports(services: pd.DataFrame) -> pd.DataFrame:
    """`services` with each service (`prefix:port/protocol`) cut to its server port and protocol."""
    return services.assign(service=services["service"].astype(str).str.rsplit(":", n=1).str[-1])


def unseen_services(services: pd.DataFrame, known: dict[str, set[str]],
                    train_rows: pd.DataFrame | None = None, held_out_days: int | None = None) -> np.ndarray:
    """Per row of `services`: its `service` (or server port, for `server_ports` rows) is not one its
    MAC used in training (`known`).

    A row of `train_rows` (the training rows themselves, same index) is judged against the
    MAC's services of the training days at least `held_out_days` (SERVICE_HOLDOUT_DAYS) away
    from its own: judged against all of them, every training window would have a share of 0,
    and the first port a device uses now and then would look like an attack.
    """
    held_out_days = SERVICE_HOLDOUT_DAYS if held_out_days is None else held_out_days
    keys = services["device_key"].to_numpy()
    names = services["service"].to_numpy()
    unseen = np.array([name not in known.get(mac, ()) for mac, name in zip(keys, names)], dtype=bool)
    if train_rows is not None and len(train_rows):
        day = pd.to_datetime(train_rows["day"])
        span = day.groupby([train_rows["device_key"], train_rows["service"]]).agg(["min", "max"])
        inside = services.index.isin(train_rows.index)
        rows = services[inside]
        pairs = pd.MultiIndex.from_arrays([rows["device_key"], rows["service"]])
        first, last = span["min"].reindex(pairs).to_numpy(), span["max"].reindex(pairs).to_numpy()
        own = pd.to_datetime(rows["day"]).to_numpy()
        gap = np.timedelta64(held_out_days, "D")
        unseen[inside] = ~((first <= own - gap) | (last >= own + gap))
    return unseen


def service_features(windows: pd.DataFrame, services: pd.DataFrame, unseen: np.ndarray) -> pd.DataFrame:
    """SERVICE_FEATURES per row of `windows`, from the `services` rows and their `unseen` flags
    (`unseen_services` of their `server_ports`).

    A window without Internet flows has shares of 0 (nothing unseen); the 24-hour share is
    over the service rows of the last 24 hours, the window included (the day before's rows
    are needed for a day's first hours).
    """
    check_service_rows(services)
    hourly = pd.DataFrame({"device_key": services["device_key"].to_numpy(),
                           "window_start": _utc(services["window_start"]).to_numpy(),
                           "flows": services["flows"].to_numpy(float),
                           "unseen": services["flows"].to_numpy(float) * unseen}) \
        .groupby(["device_key", "window_start"]).sum()
    keys = pd.MultiIndex.from_arrays([windows["device_key"], _utc(windows["window_start"])],
                                     names=["device_key", "window_start"])
    out = pd.DataFrame(0.0, index=windows.index, columns=SERVICE_FEATURES)
    if hourly.empty or not len(windows):
        return out
    # Every window and every hour with flows, per MAC in time order, summed over the trailing 24 hours.
    grid = hourly.reindex(hourly.index.union(keys.unique()), fill_value=0.0)
    trailing = pd.concat({mac: part.droplevel("device_key").rolling(pd.Timedelta(hours=CONTEXT_HOURS)).sum()
                          for mac, part in grid.groupby(level="device_key", sort=False)},
                         names=["device_key", "window_start"])
    now = grid.reindex(keys).to_numpy()
    past = trailing.reindex(keys).to_numpy()
    out["w_log_service_flows"] = np.log1p(now[:, 0])
    out["w_unseen_port_share"] = now[:, 1] / np.maximum(now[:, 0], 1.0)
    out["c_unseen_port_share"] = past[:, 1] / np.maximum(past[:, 0], 1.0)
    return out
