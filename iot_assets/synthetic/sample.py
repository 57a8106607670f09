"""Sample archives in exactly the published KDDI-IoT-2019 format, for all 25 devices.

The real dataset cannot be shipped, so tests, the embedded sample and the benchmarks
run on archives written here. Behaviour is calibrated on the three real archives
(`nature_remo`, `au_network_camera`, `xiaomi_mijia_led`):

- about 1,100 NetBIOS probes a day from the home gateway to every device (UDP 137,
  2 packets, 156 bytes, 0.58 s): ~95% of the records of a quiet device;
- ICMP port-unreachable answers to the gateway, aggregated into 30-minute flows;
- long-lived cloud connections cut by YAF's 30-minute active timeout, their records
  often oriented from the server (source port 443) because YAF saw its packet first;
- DHCP, DNS (to the gateway or a public resolver), NTP, mDNS, SSDP, LAN apps;
- cloud endpoints that change every few weeks; a daily rhythm for user-driven devices;
- realistic exposures: the au camera and the PLANEX camera one shot! send DNS to a public
  resolver, three cameras talk cleartext HTTP to their clouds, the au wireless adapter
  answers SSDP requests from Internet scanners, Xiaomi and two hubs use TCP 80 or MQTT 1883.

The devices' profiles are in `profiles`; `yaf_writer` writes the flows as YAF records
with every quirk of the source, in the published archive layout.

Output is deterministic for a seed: each device-day has its own random stream.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from iot_assets.contracts import catalogue
from iot_assets.synthetic.profiles import PC, PHONE, PROFILES, PROVIDERS, TABLET, Profile, Service
from iot_assets.synthetic.yaf_writer import (
    ACTIVE_TIMEOUT_S,
    SPLIT_PART_BYTES,
    FlowColumns,
    WrittenArchive,
    json_lines,
    write_archive,
)

# Share of user-driven activity per hour of the day (UTC+9 local time, written in UTC).
_LOCAL_HOURLY = np.array([0.2, 0.15, 0.1, 0.1, 0.1, 0.2, 0.6, 1.2, 1.4, 1.0, 0.8, 0.8,
                          0.9, 0.8, 0.8, 0.8, 0.9, 1.1, 1.5, 1.8, 1.9, 1.7, 1.2, 0.6])
DIURNAL = np.roll(_LOCAL_HOURLY, -9) / _LOCAL_HOURLY.mean()

# ---------------------------------------------------------------- building records


def _endpoint(seed: int, device: str, service: str, slot: int, epoch: int, provider: str) -> str:
    """A stable cloud address for (slot, epoch): the same inputs give the same address."""
    blocks = PROVIDERS[provider]
    h = hashlib.blake2b(f"{seed}|{device}|{service}|{slot}|{epoch}".encode(), digest_size=8).digest()
    block = blocks[h[0] % len(blocks)]
    return f"{block}.{h[1]}.{1 + h[2] % 254}"


def _stable_fraction(*key) -> float:
    digest = hashlib.blake2b("|".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _remote(profile: Profile, svc: Service, seed: int, day_index: int, n: int, rng: np.random.Generator):
    """Remote addresses and MACs for n flows of a service on a day."""
    gw_mac = catalogue.GATEWAY_MAC
    if svc.provider == "gateway":
        return np.full(n, catalogue.GATEWAY_IP, object), np.full(n, gw_mac, object)
    if svc.provider == "resolver":
        ip = "8.8.8.8" if profile.dns == "google" else catalogue.GATEWAY_IP
        return np.full(n, ip, object), np.full(n, gw_mac, object)
    if svc.provider == "broadcast":
        return np.full(n, "255.255.255.255", object), np.full(n, catalogue.BROADCAST_MAC, object)
    if svc.provider == "mdns":
        ip = "ff02::fb" if svc.ipv6 else "224.0.0.251"
        mac = "33:33:00:00:00:fb" if svc.ipv6 else "01:00:5e:00:00:fb"
        return np.full(n, ip, object), np.full(n, mac, object)
    if svc.provider == "ssdp":
        return np.full(n, "239.255.255.250", object), np.full(n, "01:00:5e:7f:ff:fa", object)
    if svc.provider in ("phone", "pc"):
        peers = [PHONE, PC, TABLET] if svc.provider == "phone" else [PC, PHONE]
        pick = rng.choice(len(peers), size=n, p=[0.7, 0.2, 0.1] if len(peers) == 3 else [0.8, 0.2])
        return (np.array([peers[i][1] for i in pick], object), np.array([peers[i][0] for i in pick], object))
    slots = []
    for slot in range(svc.slots):
        # Each slot changes endpoint every `churn_days` on average, at its own phase.
        phase = _stable_fraction(seed, profile.device.archive_name, svc.name, slot) * svc.churn_days
        epoch = int((day_index + phase) // svc.churn_days)
        slots.append(_endpoint(seed, profile.device.archive_name, svc.name, slot, epoch, svc.provider))
    # A popular slot gets most flows, as with a primary server.
    weights = 1.0 / np.arange(1, svc.slots + 1)
    pick = rng.choice(svc.slots, size=n, p=weights / weights.sum())
    return np.array(slots, dtype=object)[pick], np.full(n, gw_mac, object)


def _times(svc: Service, rate_scale: float, user_driven: bool, day_ms: int, rng: np.random.Generator) -> np.ndarray:
    if svc.pattern == "periodic":
        period_ms = svc.period_s * 1000 / rate_scale
        first = rng.uniform(0, period_ms)
        starts = np.arange(first, 86_400_000, period_ms)
        return (starts + rng.normal(0, period_ms * 0.02, len(starts))).clip(0, 86_399_999).astype(np.int64) + day_ms
    diurnal = svc.pattern == "diurnal" and user_driven
    weights = DIURNAL if diurnal else np.ones(24)
    burst = svc.burst[1] if rng.random() < svc.burst[0] else 1.0
    counts = rng.poisson(svc.per_day * rate_scale * burst * weights / 24)
    hours = np.repeat(np.arange(24), counts)
    return day_ms + (hours * 3_600_000 + rng.integers(0, 3_600_000, len(hours))).astype(np.int64)


def _service_flows(profile: Profile, svc: Service, seed: int, day_index: int, day_ms: int,
                   scale: float, rng: np.random.Generator) -> FlowColumns | None:
    if svc.pattern == "session":
        # One record per active timeout per connection; reconnects now and then.
        starts, durations, cont = [], [], []
        for _ in range(svc.sessions):
            t = day_ms + rng.uniform(0, ACTIVE_TIMEOUT_S * 1000)
            while t < day_ms + 86_400_000:
                d = ACTIVE_TIMEOUT_S * 1000 - abs(rng.normal(25_000, 15_000))
                starts.append(t)
                durations.append(d)
                cont.append(rng.random() > 0.02)
                t += d + rng.uniform(20, 3000)
        up = rng.random(len(starts)) < svc.duty
        start_ms = np.array(starts, dtype=np.int64)[up]
        duration_ms = np.array(durations).clip(0, ACTIVE_TIMEOUT_S * 1000 - 1).astype(np.int64)[up]
        continuation = np.array(cont, dtype=bool)[up]
    else:
        start_ms = _times(svc, scale, profile.user_driven, day_ms, rng)
        duration_ms = (rng.lognormal(np.log(svc.duration_s[0]), svc.duration_s[1], len(start_ms)) * 1000)
        duration_ms = duration_ms.clip(0, ACTIVE_TIMEOUT_S * 1000 - 1).astype(np.int64)
        continuation = np.zeros(len(start_ms), dtype=bool)
    n = len(start_ms)
    if n == 0:
        return None
    remote_ip, remote_mac = _remote(profile, svc, seed, day_index, n, rng)
    pkts_out = np.maximum(1, np.round(rng.lognormal(np.log(svc.packets[0]), svc.packets[1], n))).astype(np.int64)
    pkts_in = np.round(pkts_out * svc.reply_ratio * rng.uniform(0.8, 1.2, n)).astype(np.int64)
    if svc.reply_ratio and svc.proto == 17:
        pkts_in = np.maximum(pkts_in, (rng.random(n) < 0.9).astype(np.int64))
    if svc.provider in ("broadcast", "mdns", "ssdp"):
        pkts_in[:] = 0
    payload_out = np.maximum(0, rng.lognormal(np.log(max(svc.payload_out[0], 1)), svc.payload_out[1], n)).astype(np.int64)
    payload_in = np.maximum(0, rng.lognormal(np.log(max(svc.payload_in[0], 1)), svc.payload_in[1], n)).astype(np.int64)
    ephemeral = rng.integers(32768, 61000, n)
    if svc.pattern == "session":
        ephemeral[:] = ephemeral[0]  # the same connection all day
    server_port = np.full(n, svc.port) if svc.port else rng.integers(1024, 65536, n)
    local_port, remote_port = (server_port, ephemeral) if svc.inbound else (ephemeral, server_port)
    device_started = np.full(n, not svc.inbound)
    # The pieces of a long connection after the first may be exported from the server's
    # side: YAF takes the first packet it sees as the forward direction.
    flipped = continuation & (rng.random(n) < svc.flip)
    if flipped.any():
        device_started &= ~flipped
        pkts_out, pkts_in = np.where(flipped, np.maximum(pkts_in, 1), pkts_out), np.where(flipped, pkts_out, pkts_in)
        payload_out, payload_in = np.where(flipped, payload_in, payload_out), np.where(flipped, payload_out, payload_in)
    ipv6 = np.full(n, svc.ipv6)
    local_ip = np.full(n, _link_local(profile.device.mac) if svc.ipv6 else profile.lan_ip, object)
    return FlowColumns(start_ms, duration_ms, np.full(n, svc.proto), remote_ip, remote_mac, remote_port,
                  local_port, device_started, pkts_out, pkts_in, payload_out, payload_in, continuation, ipv6, local_ip)


def _link_local(mac: str) -> str:
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    return "fe80::" + ":".join(f"{eui[i]:02x}{eui[i + 1]:02x}" for i in range(0, 8, 2)).lstrip("0")


def _background(profile: Profile, day_ms: int, scale: float, rng: np.random.Generator) -> list[FlowColumns]:
    """Traffic every device in the home has: gateway probes, ICMP answers, DHCP, DNS."""
    flows = []
    # NetBIOS name probes from the gateway, every ~79 s.
    n = rng.poisson(1094 * scale)
    start = day_ms + np.sort(rng.integers(0, 86_400_000, n))
    flows.append(FlowColumns(
        start, rng.normal(580, 8, n).clip(550, 620).astype(np.int64), np.full(n, 17),
        np.full(n, catalogue.GATEWAY_IP, object), np.full(n, catalogue.GATEWAY_MAC, object),
        rng.integers(32768, 61000, n), np.full(n, 137), np.zeros(n, bool),
        np.full(n, 2), np.zeros(n, np.int64), np.full(n, 50), np.zeros(n, np.int64), np.zeros(n, bool),
        np.zeros(n, bool), np.full(n, profile.lan_ip, object)))
    # The device's ICMP port-unreachable answers, one flow per active timeout.
    starts = np.arange(day_ms + rng.integers(0, 1_800_000), day_ms + 86_400_000, 1_800_000 + 2000)
    n = len(starts)
    pk = np.maximum(1, rng.poisson(max(58 * scale, 1), n))
    flows.append(FlowColumns(
        starts, rng.normal(1_755_000, 8000, n).astype(np.int64), np.full(n, 1),
        np.full(n, catalogue.GATEWAY_IP, object), np.full(n, catalogue.GATEWAY_MAC, object),
        np.full(n, 3), np.full(n, 3), np.ones(n, bool), pk, np.zeros(n, np.int64), np.full(n, 28),
        np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, bool), np.full(n, profile.lan_ip, object)))
    # DHCP renewals to the gateway.
    n = rng.poisson(4.6)
    flows.append(FlowColumns(
        day_ms + rng.integers(0, 86_400_000, n), rng.integers(0, 20, n), np.full(n, 17),
        np.full(n, catalogue.GATEWAY_IP, object), np.full(n, catalogue.GATEWAY_MAC, object),
        np.full(n, 67), np.full(n, 68), np.ones(n, bool), np.ones(n, np.int64), np.ones(n, np.int64),
        np.full(n, 300), np.full(n, 300), np.zeros(n, bool), np.zeros(n, bool), np.full(n, profile.lan_ip, object)))
    # A PC on the LAN scanning for devices (seen in the real archives on 5678 and 54321).
    n = rng.poisson(0.4)
    flows.append(FlowColumns(
        day_ms + rng.integers(0, 86_400_000, n), np.zeros(n, np.int64), np.full(n, 17),
        np.full(n, PC[1], object), np.full(n, PC[0], object), rng.integers(32768, 61000, n),
        rng.choice([5678, 54321, 1900], n), np.zeros(n, bool), np.ones(n, np.int64), np.zeros(n, np.int64),
        np.full(n, 32), np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, bool),
        np.full(n, profile.lan_ip, object)))
    # DNS lookups, to the gateway or a public resolver.
    dns_ip = "8.8.8.8" if profile.dns == "google" else catalogue.GATEWAY_IP
    n = rng.poisson(max(1.5, 0.02 * sum(s.per_day for s in profile.services)) * max(scale, 0.05))
    flows.append(FlowColumns(
        day_ms + rng.integers(0, 86_400_000, n), rng.integers(5, 60, n), np.full(n, 17),
        np.full(n, dns_ip, object), np.full(n, catalogue.GATEWAY_MAC, object),
        np.full(n, 53), rng.integers(32768, 61000, n), np.ones(n, bool), np.ones(n, np.int64),
        np.ones(n, np.int64), rng.integers(28, 48, n), rng.integers(60, 220, n), np.zeros(n, bool),
        np.zeros(n, bool), np.full(n, profile.lan_ip, object)))
    return flows


def _concat(parts: list[FlowColumns]) -> FlowColumns:
    return FlowColumns(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in FlowColumns.__dataclass_fields__})


def device_day_lines(profile: Profile, day: date, seed: int, scale: float, first_day: date) -> list[str]:
    """All records of one device on one day, in export order."""
    day_index = day.toordinal() - first_day.toordinal()
    device_index = catalogue.DEVICES.index(profile.device)
    rng = np.random.default_rng([seed, device_index, day.toordinal()])
    online_rng = np.random.default_rng([seed, device_index])
    online_days = online_rng.random(400) < profile.online
    if not online_days[day.toordinal() % 400]:
        return []
    day_ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
    parts = _background(profile, day_ms, scale, rng)
    for svc in profile.services:
        flows = _service_flows(profile, svc, seed, day_index, day_ms, scale, rng)
        if flows is not None:
            parts.append(flows)
    return json_lines(profile, _concat(parts), rng)


def generate(out_dir: Path, first_day: date, days: int, scale: float = 1.0, seed: int = 0,
             devices: list[str] | None = None, part_bytes: int = SPLIT_PART_BYTES,
             on_progress=None) -> list[WrittenArchive]:
    """Archives for the devices (default all 25) over `days` days from `first_day`."""
    names = devices or list(PROFILES)
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        raise ValueError(f"unknown device archive name(s): {', '.join(unknown)}")
    written = []
    for name in names:
        profile = PROFILES[name]

        def lines_by_day(profile=profile):
            for i in range(days):
                day = first_day + timedelta(days=i)
                lines = device_day_lines(profile, day, seed, scale, first_day)
                if on_progress:
                    on_progress(name, day, len(lines))
                yield lines

        written.append(write_archive(lines_by_day(), out_dir, name, part_bytes))
    return written

