"""Ground truth for anomalies: attack episodes written into a copy of an archive.

`iot-assets inject ARCHIVE --out DIR --seed N` copies any archive, real or generated, adds
episodes for its device in the same format, and writes `episodes.csv` (device, type,
start, end) beside it. Episodes fall in the last 30% of the archive's days, the range the
models are evaluated on, one per type:

- scan: Mirai-style SYN-only probes to 23/2323 across many addresses;
- flood: a UDP flood toward one target;
- exfiltration: bulk upload to a new endpoint;
- beaconing: small periodic flows to a new endpoint;
- firmware_change: from a given day on, the device talks to other endpoints on other ports
  (its existing records are rewritten, so the change is permanent).

Exposure episodes (`--episodes exposure`), ground truth for the exposure findings:

- open_telnet: from a day on, Internet peers open TCP 23 to the device and it answers
  (a login prompt, a few exchanges), a few sessions an hour until the archive ends;
- reflector: for six hours, the device answers UDP 1900 (SSDP) and 123 (NTP) requests
  from hundreds of Internet peers, with more bytes than it received;
- dns_hijack: from a day on, the device's DNS goes to a public resolver instead of the
  gateway (its existing DNS records are rewritten) and it looks up a name there every
  hour, as a DNS changer's victim does, until the archive ends.

Their days are drawn from their own random stream, so adding them leaves the anomaly
episodes of a seed unchanged.
"""

from __future__ import annotations

import csv
import re
import tempfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from iot_assets.contracts import catalogue
from iot_assets.contracts.calendar import DATASET_FIRST_DAY
from iot_assets.contracts.catalogue import Device
from iot_assets.core.archive import ArchiveFile, open_json_member
from iot_assets.core.ingest import decode_archive
from iot_assets.synthetic.profiles import Profile
from iot_assets.synthetic.yaf_writer import FlowColumns, json_lines, write_archive

EPISODE_TYPES = ("scan", "flood", "exfiltration", "beaconing", "firmware_change")  # anomaly episodes
EXPOSURE_EPISODE_TYPES = ("open_telnet", "reflector", "dns_hijack")
ALL_EPISODE_TYPES = EPISODE_TYPES + EXPOSURE_EPISODE_TYPES
EPISODE_GROUPS = {"anomaly": EPISODE_TYPES, "exposure": EXPOSURE_EPISODE_TYPES, "all": ALL_EPISODE_TYPES}


@dataclass(frozen=True)
class Episode:
    device: str
    type: str
    start: datetime
    end: datetime


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _flows(n: int, start_ms: np.ndarray, duration_ms: np.ndarray, proto: int, remote_ip, remote_port, local_ip: str,
           pkts_out, pkts_in, payload_out, payload_in, device_started: bool = True,
           local_port=None) -> FlowColumns:
    """Flows of an episode. `pkts_out`/`payload_out` are the first sender's (the device's unless
    `device_started` is False), as `yaf_writer.json_lines` orients records."""
    def arr(v, dtype=np.int64):
        return np.asarray(v, dtype=dtype) if np.ndim(v) else np.full(n, v, dtype=dtype)

    return FlowColumns(
        start_ms=arr(start_ms), duration_ms=arr(duration_ms), proto=arr(proto),
        remote_ip=arr(remote_ip, object), remote_mac=np.full(n, catalogue.GATEWAY_MAC, object),
        remote_port=arr(remote_port),
        local_port=np.random.default_rng(n).integers(32768, 61000, n) if local_port is None else arr(local_port),
        device_started=np.full(n, device_started), pkts_out=arr(pkts_out), pkts_in=arr(pkts_in),
        payload_out=arr(payload_out), payload_in=arr(payload_in), continuation=np.zeros(n, bool),
        ipv6=np.zeros(n, bool), local_ip=np.full(n, local_ip, object))


def _random_ips(rng: np.random.Generator, n: int) -> np.ndarray:
    octets = rng.integers(1, 224, size=(n, 4))
    return np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets], dtype=object)


def _public_ips(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random unicast addresses outside private, loopback, link-local and shared ranges."""
    octets = rng.integers(1, 224, size=(n, 4))
    first, second = octets[:, 0], octets[:, 1]
    private = np.isin(first, [10, 127]) | ((first == 172) & (second >= 16) & (second <= 31)) \
        | ((first == 192) & (second == 168)) | ((first == 169) & (second == 254)) \
        | ((first == 100) & (second >= 64) & (second <= 127))
    octets[private, 0] = 45  # move them into a public block
    return np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets], dtype=object)


def episode_flows(kind: str, start: datetime, end: datetime, local_ip: str, rng: np.random.Generator) -> FlowColumns:
    t0, t1 = _ms(start), _ms(end)
    if kind == "scan":
        n = int((t1 - t0) / 1000)  # one probe a second
        starts = np.sort(rng.integers(t0, t1, n))
        return _flows(n, starts, 0, 6, _random_ips(rng, n), rng.choice([23, 2323], n, p=[0.9, 0.1]), local_ip,
                      rng.integers(1, 3, n), 0, 0, 0)
    if kind == "flood":
        n = max(1, int((t1 - t0) / 60_000))  # a record a minute, like an active flood cut by the timeout
        target = _random_ips(rng, 1)[0]
        return _flows(n, np.arange(t0, t1, 60_000)[:n], 59_000, 17, target, int(rng.integers(1, 1024)), local_ip,
                      rng.integers(40_000, 60_000, n), 0, 1024, 0)
    if kind == "exfiltration":
        n = max(1, int((t1 - t0) / 600_000))  # ten-minute uploads
        target = _random_ips(rng, 1)[0]
        pkts = rng.integers(30_000, 60_000, n)
        return _flows(n, np.arange(t0, t1, 600_000)[:n], 590_000, 6, target, 443, local_ip, pkts, pkts // 2, 1400, 0)
    if kind == "beaconing":
        n = int((t1 - t0) / 60_000)  # every minute
        target = _random_ips(rng, 1)[0]
        starts = t0 + np.arange(n) * 60_000 + rng.integers(-500, 500, n)
        return _flows(n, starts, rng.integers(20, 200, n), 6, target, 8080, local_ip, 4, 3, 90, 60)
    if kind == "open_telnet":
        # Brute-force logins from scanners: about four sessions an hour, each a handful of exchanges.
        n = max(1, rng.poisson((t1 - t0) / 900_000))
        starts = np.sort(rng.integers(t0, t1, n))
        peer_packets = rng.integers(6, 30, n)
        return _flows(n, starts, rng.integers(500, 20_000, n), 6, _public_ips(rng, n), rng.integers(32768, 61000, n),
                      local_ip, peer_packets, peer_packets - rng.integers(0, 3, n), rng.integers(8, 40, n),
                      rng.integers(20, 120, n), device_started=False, local_port=23)
    if kind == "reflector":
        # A request every ten seconds from spoofed or scanning peers; the answer is larger.
        n = max(1, int((t1 - t0) / 10_000))
        starts = np.sort(rng.integers(t0, t1, n))
        service = rng.choice([1900, 123], n, p=[0.6, 0.4])
        peers = _public_ips(rng, max(1, n // 8))[rng.integers(0, max(1, n // 8), n)]
        return _flows(n, starts, rng.integers(1, 50, n), 17, peers, rng.integers(1024, 65536, n), local_ip,
                      1, np.where(service == 1900, rng.integers(2, 6, n), 1), np.where(service == 1900, 94, 48),
                      np.where(service == 1900, 310, 468), device_started=False, local_port=service)
    raise ValueError(f"no flows for episode type {kind}")


def dns_lookups(resolver: str, start: datetime, end: datetime, local_ip: str,
                rng: np.random.Generator) -> FlowColumns:
    """An hourly lookup at `resolver`, the query and its answer in one record."""
    t0, t1 = _ms(start), _ms(end)
    starts = np.arange(t0, t1, 3_600_000) + rng.integers(0, 600_000, max(0, len(range(t0, t1, 3_600_000))))
    starts = starts[starts < t1]
    n = len(starts)
    return _flows(n, starts, rng.integers(5, 60, n), 17, resolver, 53, local_ip, 1, 1, rng.integers(28, 48, n),
                  rng.integers(60, 220, n))


_IP_FIELD = re.compile(rb'"(source|destination)IPv4Address":"(\d+)\.(\d+)\.(\d+)\.(\d+)"')
_START = re.compile(rb'"flowStartMilliseconds":"([^"]+)"')


def _firmware_rewrite(line: bytes, mac: bytes, since: bytes) -> bytes:
    """A record of the device after the change: its internet peers and their ports move."""
    if mac not in line:
        return line
    start = _START.search(line)
    if not start or start.group(1) < since:
        return line
    moved_sides = []

    def move(match: re.Match) -> bytes:
        side, a, b, c, d = match.groups()
        first, second = int(a), int(b)
        private = first in (0, 10, 127) or first >= 224 or (first, second) == (192, 168) \
            or (first == 172 and 16 <= second <= 31)
        if private:
            return match.group(0)
        moved_sides.append(side)
        # A new provider: the first octets move, the host part stays.
        return b'"%sIPv4Address":"%d.%d.%s.%s"' % (side, (first * 7 + 13) % 200 + 11, (second * 11 + 5) % 250, c, d)

    line = _IP_FIELD.sub(move, line)
    for side in moved_sides:
        # The peer's port moves too: 443 -> 8443, 8883 -> 16883, ...
        line = re.sub(rb'"%sTransportPort":(\d+)' % side,
                      lambda m: b'"%sTransportPort":%d' % (side, (int(m.group(1)) + 8000) % 65536), line)
    return line


def _dns_hijack_rewrite(line: bytes, mac: bytes, since: bytes, resolver: bytes) -> bytes:
    """A DNS record of the device to or from the gateway after `since`: the gateway becomes `resolver`."""
    if mac not in line or b'TransportPort":53,' not in line:
        return line
    start = _START.search(line)
    if not start or start.group(1) < since:
        return line
    gateway = catalogue.GATEWAY_IP.encode()
    for side in (b"destination", b"source"):
        if b'"%sTransportPort":53,' % side in line and b'"%sIPv4Address":"%s"' % (side, gateway) in line:
            line = line.replace(b'"%sIPv4Address":"%s"' % (side, gateway), b'"%sIPv4Address":"%s"' % (side, resolver))
    return line


def _exposure_episodes(device: str, days: list[str], types: tuple[str, ...],
                       rng: np.random.Generator) -> list[Episode]:
    """Exposure episodes on the evaluation days: open_telnet and dns_hijack last to the archive's end."""
    eval_days = days[int(len(days) * 0.7):] or days[-1:]
    last_day = datetime.fromisoformat(days[-1]).replace(tzinfo=timezone.utc) + timedelta(days=1)
    episodes = []
    for kind in EXPOSURE_EPISODE_TYPES:  # the same draws whichever types are kept
        day = datetime.fromisoformat(eval_days[int(rng.integers(0, len(eval_days)))]).replace(tzinfo=timezone.utc)
        start = day + timedelta(hours=float(rng.uniform(0, 17)))
        start = start.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=6) if kind == "reflector" else last_day
        if kind in types:
            episodes.append(Episode(device, kind, start, end))
    return episodes


def inject(archive: ArchiveFile, out_dir: Path, seed: int,
           types: tuple[str, ...] = EPISODE_TYPES) -> tuple[Path, list[Episode]]:
    """Write `out_dir/<archive>.tar.gz` with episodes of `types` and append them to `out_dir/episodes.csv`."""
    unknown = set(types) - set(ALL_EPISODE_TYPES)
    if unknown or not types:
        raise ValueError(f"unknown episode type(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                         f"known: {', '.join(ALL_EPISODE_TYPES)}")
    rng = np.random.default_rng([seed, zlib.crc32(archive.name.encode())])
    exposure_rng = np.random.default_rng([seed, zlib.crc32(archive.name.encode()), 1])
    with tempfile.TemporaryDirectory() as tmp:
        summary = decode_archive(archive, Path(tmp) / "staged", DATASET_FIRST_DAY, datetime(2100, 1, 1).date())
        if summary.error or not summary.days:
            raise ValueError(f"{archive.name}: cannot inject into an archive that does not decode ({summary.error})")
        flows = pq.read_table(Path(tmp) / "staged" / "flows.parquet", columns=["src_mac", "src_ip"]).to_pandas()
    mac = summary.local_mac
    device_ips = flows.loc[flows["src_mac"] == mac, "src_ip"]
    device_ips = device_ips[~device_ips.str.contains(":")]
    local_ip = device_ips.mode().iloc[0] if len(device_ips) else "192.168.1.250"
    known = catalogue.BY_MAC.get(mac)
    device = known or Device(archive.name, "unknown", mac, 0)

    days = sorted(summary.days)
    eval_days = days[int(len(days) * 0.7):] or days[-1:]
    # Short episodes on the evaluation days but the last, each on its own day while days
    # last, one after the other otherwise; the firmware change takes the last day(s).
    firmware_days = 2 if len(eval_days) >= 6 else 1
    slot_days = eval_days[:-firmware_days] or eval_days
    order = rng.permutation(len(slot_days))
    hours = {"beaconing": 6, "exfiltration": 2, "scan": 1, "flood": 1}
    episodes: list[Episode] = []
    for k, kind in enumerate(hours):
        day = datetime.fromisoformat(slot_days[order[k % len(slot_days)]]).replace(tzinfo=timezone.utc)
        if len(slot_days) >= len(hours):  # a day each: any time of day
            offset = float(rng.uniform(0, 23.5 - hours[kind]))
        else:  # sharing days: one after the other
            offset = 1 + 7 * (k // len(slot_days)) + float(rng.uniform(0, 1.5))
        start = day + timedelta(hours=offset)
        start = start.replace(second=0, microsecond=0)
        episodes.append(Episode(device.name, kind, start, start + timedelta(hours=hours[kind])))
    last_day = datetime.fromisoformat(days[-1]).replace(tzinfo=timezone.utc) + timedelta(days=1)
    change_day = datetime.fromisoformat(eval_days[-firmware_days])
    episodes.append(Episode(device.name, "firmware_change", change_day.replace(tzinfo=timezone.utc), last_day))
    episodes = [e for e in episodes if e.type in types]
    episodes.sort(key=lambda e: e.start)

    profile = Profile(device, local_ip, ())
    extra_lines = []
    for ep in episodes:
        if ep.type != "firmware_change":
            extra_lines += json_lines(profile, episode_flows(ep.type, ep.start, ep.end, local_ip, rng), rng)
    change = next((e for e in episodes if e.type == "firmware_change"), None)
    since = change.start.strftime("%Y-%m-%d %H:%M:%S.000").encode() if change else b"9999"

    exposure = _exposure_episodes(device.name, days, types, exposure_rng)
    resolver = _public_ips(exposure_rng, 1)[0]  # the hijacker's resolver
    for ep in exposure:
        flows = dns_lookups(resolver, ep.start, ep.end, local_ip, exposure_rng) if ep.type == "dns_hijack" \
            else episode_flows(ep.type, ep.start, ep.end, local_ip, exposure_rng)
        extra_lines += json_lines(profile, flows, exposure_rng)
    hijack = next((e for e in exposure if e.type == "dns_hijack"), None)
    hijack_since = hijack.start.strftime("%Y-%m-%d %H:%M:%S.000").encode() if hijack else b"9999"
    episodes = sorted(episodes + exposure, key=lambda e: e.start)
    device_mac = (mac + ":").encode()

    def rewrite(line: bytes) -> bytes:
        line = _firmware_rewrite(line, device_mac, since)
        return _dns_hijack_rewrite(line, device_mac, hijack_since, resolver.encode()) if hijack else line

    def lines_by_chunk():
        with open_json_member(archive) as stream:
            pending = b""
            while chunk := stream.read(8 << 20):
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                pending = data[cut:]
                out = []
                for line in data[:cut].splitlines(keepends=True):
                    if line.startswith(b'{"flows"'):
                        out.append(rewrite(line).decode())
                yield out
        yield extra_lines

    out_dir.mkdir(parents=True, exist_ok=True)
    written = write_archive(lines_by_chunk(), out_dir, archive.name)
    with open(out_dir / "episodes.csv", "a" if (out_dir / "episodes.csv").exists() else "w", newline="") as f:
        writer = csv.writer(f)
        if f.tell() == 0:
            writer.writerow(["device", "type", "start", "end"])
        for ep in episodes:
            writer.writerow([ep.device, ep.type, ep.start.isoformat(), ep.end.isoformat()])
    return written.paths[0], episodes


def read_episodes(path: Path, types: tuple[str, ...] = EPISODE_TYPES) -> pd.DataFrame:
    """The episodes of `types` in an episodes.csv: by default the anomaly episodes.

    Exposure episodes are ground truth for the exposure findings, not for the anomaly
    detector: read them with `types=EXPOSURE_EPISODE_TYPES`. A type no episode kind knows
    is an error.
    """
    episodes = pd.read_csv(path)
    missing = {"device", "type", "start", "end"} - set(episodes.columns)
    if missing:
        raise ValueError(f"{path}: episodes file lacks column(s) {', '.join(sorted(missing))}")
    episodes["start"] = pd.to_datetime(episodes["start"], utc=True)
    episodes["end"] = pd.to_datetime(episodes["end"], utc=True)
    unknown = set(episodes["type"]) - set(ALL_EPISODE_TYPES)
    if unknown:
        raise ValueError(f"{path}: unknown episode type(s) {', '.join(sorted(unknown))}")
    return episodes[episodes["type"].isin(types)].reset_index(drop=True)


def parse_episode_types(text: str) -> tuple[str, ...]:
    """`anomaly`, `exposure`, `all`, or a comma-separated list of episode types."""
    types: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        chosen = EPISODE_GROUPS.get(part, (part,))
        unknown = [t for t in chosen if t not in ALL_EPISODE_TYPES]
        if unknown:
            raise ValueError(f"unknown episode type {unknown[0]!r}; known: "
                             f"{', '.join(EPISODE_GROUPS)} or {', '.join(ALL_EPISODE_TYPES)}")
        types += [t for t in chosen if t not in types]
    if not types:
        raise ValueError("no episode type given")
    return tuple(types)
