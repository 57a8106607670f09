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
"""

from __future__ import annotations

import csv
import re
import zlib
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from iot_assets import catalogue, sample
from iot_assets.archive import ArchiveFile, open_json_member
from iot_assets.catalogue import Device
from iot_assets.ingest import decode_archive
from iot_assets.settings import DATASET_FIRST_DAY

EPISODE_TYPES = ("scan", "flood", "exfiltration", "beaconing", "firmware_change")


@dataclass(frozen=True)
class Episode:
    device: str
    type: str
    start: datetime
    end: datetime


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _flows(n: int, start_ms: np.ndarray, duration_ms: np.ndarray, proto: int, remote_ip, remote_port, local_ip: str,
           pkts_out, pkts_in, payload_out, payload_in) -> sample.FlowColumns:
    def arr(v, dtype=np.int64):
        return np.asarray(v, dtype=dtype) if np.ndim(v) else np.full(n, v, dtype=dtype)

    return sample.FlowColumns(
        start_ms=arr(start_ms), duration_ms=arr(duration_ms), proto=arr(proto),
        remote_ip=arr(remote_ip, object), remote_mac=np.full(n, catalogue.GATEWAY_MAC, object),
        remote_port=arr(remote_port), local_port=np.random.default_rng(n).integers(32768, 61000, n),
        device_started=np.ones(n, bool), pkts_out=arr(pkts_out), pkts_in=arr(pkts_in), payload_out=arr(payload_out),
        payload_in=arr(payload_in), continuation=np.zeros(n, bool), ipv6=np.zeros(n, bool),
        local_ip=np.full(n, local_ip, object))


def _random_ips(rng: np.random.Generator, n: int) -> np.ndarray:
    octets = rng.integers(1, 224, size=(n, 4))
    return np.array([f"{a}.{b}.{c}.{d}" for a, b, c, d in octets], dtype=object)


def episode_flows(kind: str, start: datetime, end: datetime, local_ip: str, rng: np.random.Generator) -> sample.FlowColumns:
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
    raise ValueError(f"no flows for episode type {kind}")


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


def inject(archive: ArchiveFile, out_dir: Path, seed: int) -> tuple[Path, list[Episode]]:
    """Write `out_dir/<archive>.tar.gz` with episodes and `out_dir/episodes.csv`."""
    rng = np.random.default_rng([seed, zlib.crc32(archive.name.encode())])
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
    episodes.sort(key=lambda e: e.start)

    profile = sample.Profile(device, local_ip, ())
    extra_lines = []
    for ep in episodes:
        if ep.type != "firmware_change":
            extra_lines += sample.json_lines(profile, episode_flows(ep.type, ep.start, ep.end, local_ip, rng), rng)
    change = next((e for e in episodes if e.type == "firmware_change"), None)
    since = change.start.strftime("%Y-%m-%d %H:%M:%S.000").encode() if change else b"9999"

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
                        out.append(_firmware_rewrite(line, (mac + ":").encode(), since).decode())
                yield out
        yield extra_lines

    out_dir.mkdir(parents=True, exist_ok=True)
    written = sample.write_archive(lines_by_chunk(), out_dir, archive.name)
    with open(out_dir / "episodes.csv", "a" if (out_dir / "episodes.csv").exists() else "w", newline="") as f:
        writer = csv.writer(f)
        if f.tell() == 0:
            writer.writerow(["device", "type", "start", "end"])
        for ep in episodes:
            writer.writerow([ep.device, ep.type, ep.start.isoformat(), ep.end.isoformat()])
    return written.paths[0], episodes


def read_episodes(path: Path) -> pd.DataFrame:
    episodes = pd.read_csv(path)
    missing = {"device", "type", "start", "end"} - set(episodes.columns)
    if missing:
        raise ValueError(f"{path}: episodes file lacks column(s) {', '.join(sorted(missing))}")
    episodes["start"] = pd.to_datetime(episodes["start"], utc=True)
    episodes["end"] = pd.to_datetime(episodes["end"], utc=True)
    unknown = set(episodes["type"]) - set(EPISODE_TYPES)
    if unknown:
        raise ValueError(f"{path}: unknown episode type(s) {', '.join(sorted(unknown))}")
    return episodes
