"""The YAF + super_mediator JSON records of generated flows, in the published archive layout.

Records carry every quirk of the source: seconds in `*Milliseconds`, MACs with a
trailing colon, IPv6 in the IPv4 fields, empty `flowEndReason` for TCP closes, hex
strings, letter TCP flags, 31 fields for flows without payload, 52-54 for biflows,
records in the order YAF exports them (by end time, so starts are out of order).
Archives are a tar with one `<stem>.json` member, gzipped, split into parts past 1 GiB.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from isal import igzip

from iot_assets.contracts import catalogue
from iot_assets.synthetic.profiles import Profile

SPLIT_PART_BYTES = 1 << 30  # published archives are cut into parts of this size
ACTIVE_TIMEOUT_S = 1800.0


@dataclass
class FlowColumns:
    """Columns of generated flows, from the device's point of view before orientation."""

    start_ms: np.ndarray
    duration_ms: np.ndarray
    proto: np.ndarray
    remote_ip: np.ndarray  # object
    remote_mac: np.ndarray  # object
    remote_port: np.ndarray
    local_port: np.ndarray
    device_started: np.ndarray  # bool: the device's side is the source
    pkts_out: np.ndarray  # packets from the device
    pkts_in: np.ndarray
    payload_out: np.ndarray  # payload bytes per packet
    payload_in: np.ndarray
    continuation: np.ndarray  # bool: a later piece of a long connection
    ipv6: np.ndarray
    local_ip: np.ndarray  # object


_BASE = (
    '{{"flows":{{"flowStartMilliseconds":"{}","flowEndMilliseconds":"{}","flowDurationMilliseconds":{:.3f},'
    '"reverseFlowDeltaMilliseconds":{:.3f},"protocolIdentifier":{},"sourceIPv4Address":"{}","sourceTransportPort":{},'
    '"packetTotalCount":{},"octetTotalCount":{},"flowAttributes":"{}","sourceMacAddress":"{}:",'
    '"destinationIPv4Address":"{}","destinationTransportPort":{},"reversePacketTotalCount":{},'
    '"reverseOctetTotalCount":{},"reverseFlowAttributes":"{}","destinationMacAddress":"{}:",'
    '"initialTCPFlags":"{}","unionTCPFlags":"{}","reverseInitialTCPFlags":"{}","reverseUnionTCPFlags":"{}",'
    '"tcpSequenceNumber":"0x{:08x}","reverseTcpSequenceNumber":"0x{:08x}","ingressInterface":0,"egressInterface":0,'
    '"vlanId":"0x000","silkAppLabel":0,"ipClassOfService":"{}","flowEndReason":"{}","collectorName":"C1",'
    '"observationDomainId":0'
)
_STATS = (
    ',"tcpUrgTotalCount":0,"smallPacketCount":{},"nonEmptyPacketCount":{},"dataByteCount":{},'
    '"averageInterarrivalTime":{},"firstNonEmptyPacketSize":{},"largePacketCount":{},"maxPacketSize":{},'
    '"firstEightNonEmptyPacketDirections":"{:02x}","standardDeviationPayloadLength":{},'
    '"standardDeviationInterarrivalTime":{}'
)
_BPP = ',"bytesPerPacket":{}'
_REVERSE = (
    ',"reverseTcpUrgTotalCount":0,"reverseSmallPacketCount":{},"reverseNonEmptyPacketCount":{},'
    '"reverseDataByteCount":{},"reverseAverageInterarrivalTime":{},"reverseFirstNonEmptyPacketSize":{},'
    '"reverseLargePacketCount":{},"reverseMaxPacketSize":{},"reverseStandardDeviationPayloadLength":{},'
    '"reverseStandardDeviationInterarrivalTime":{}'
)
_RBPP = ',"reverseBytesPerPacket":{}'
_HEADER_BYTES = {1: 28, 6: 40, 17: 28, 58: 48}


def _timestamps(ms: np.ndarray) -> list[str]:
    """`2019-06-25 08:36:29.747`, as super_mediator writes times (UTC)."""
    days = ms // 86_400_000
    rest = ms % 86_400_000
    prefixes = {d: (datetime(1970, 1, 1) + timedelta(days=int(d))).strftime("%Y-%m-%d ") for d in np.unique(days)}
    h, rest = np.divmod(rest, 3_600_000)
    m, rest = np.divmod(rest, 60_000)
    s, milli = np.divmod(rest, 1000)
    return [f"{prefixes[d]}{a:02d}:{b:02d}:{c:02d}.{e:03d}" for d, a, b, c, e in
            zip(days.tolist(), h.tolist(), m.tolist(), s.tolist(), milli.tolist())]


def json_lines(profile: Profile, f: FlowColumns, rng: np.random.Generator) -> list[str]:
    """JSON lines for the flows, oriented the way YAF exports them, in export order."""
    n = len(f.start_ms)
    end_ms = f.start_ms + f.duration_ms
    order = np.argsort(end_ms, kind="stable")  # YAF exports a flow when it ends
    f = FlowColumns(**{k: getattr(f, k)[order] for k in FlowColumns.__dataclass_fields__})
    end_ms = end_ms[order]
    dev = f.device_started
    proto = f.proto
    header = np.vectorize(_HEADER_BYTES.get, otypes=[np.int64])(proto) if n else np.zeros(0, np.int64)
    # *_out is the forward direction, the side YAF saw first; `dev` says whether that is the device.
    fwd_pkts, rev_pkts, fwd_pay, rev_pay = f.pkts_out, f.pkts_in, f.payload_out, f.payload_in
    is_tcp = proto == 6
    # TCP: about half the packets are bare ACKs.
    fwd_ne = np.where(is_tcp, np.maximum(fwd_pkts // 2, 1), fwd_pkts)
    rev_ne = np.where(is_tcp, rev_pkts // 2, rev_pkts)
    fwd_ne = np.where(fwd_pay == 0, 0, fwd_ne)
    rev_ne = np.where(rev_pay == 0, 0, rev_ne)
    fwd_data = fwd_ne * fwd_pay
    rev_data = rev_ne * rev_pay
    octets = fwd_pkts * header + fwd_data
    r_octets = rev_pkts * header + rev_data
    src_ip = np.where(dev, f.local_ip, f.remote_ip)
    dst_ip = np.where(dev, f.remote_ip, f.local_ip)
    src_mac = np.where(dev, profile.device.mac, f.remote_mac)
    dst_mac = np.where(dev, f.remote_mac, profile.device.mac)
    src_port = np.where(dev, f.local_port, f.remote_port)
    dst_port = np.where(dev, f.remote_port, f.local_port)
    # The DHCP client has no address yet: super_mediator prints "::" in the IPv4 field.
    dhcp = (f.remote_port == 67) & (rng.random(n) < 0.5)
    src_ip = np.where(dhcp, "::", src_ip)
    dst_ip = np.where(dhcp, "255.255.255.255", dst_ip)
    dst_mac = np.where(dhcp, catalogue.BROADCAST_MAC, dst_mac)
    closed = is_tcp & ~f.continuation & (rng.random(n) < 0.35)
    reason = np.where(f.duration_ms >= ACTIVE_TIMEOUT_S * 1000 - 60_000, "active",
                      np.where(closed, "", "idle"))
    fwd_init = np.where(is_tcp, np.where(f.continuation, "AP", "S"), "0")
    fwd_union = np.where(is_tcp, np.where(closed, "APF", "AP"), "0")
    rev_init = np.where(is_tcp & (rev_pkts > 0), np.where(f.continuation, "AP", "AS"), "0")
    rev_union = np.where(is_tcp & (rev_pkts > 0), np.where(closed, "APF", "AP"), "0")
    seq = np.where(is_tcp, rng.integers(0, 2**32, n), 0)
    rseq = np.where(is_tcp & (rev_pkts > 0), rng.integers(0, 2**32, n), 0)
    rtt = np.where(rev_pkts > 0, rng.gamma(2.0, 0.02, n), 0.0)
    # Attribute 0x01: every forward packet had the same size, as for UDP in this model.
    attributes = np.where((fwd_pay > 0) & ~is_tcp, "01", "00")
    rev_attributes = np.where((rev_pkts > 0) & ~is_tcp, "01", "00")
    cos = np.where(proto == 1, np.where(rng.random(n) < 0.05, "0xc0", "0x00"), "0x00")
    iat = np.where(fwd_pkts > 1, f.duration_ms // np.maximum(fwd_pkts - 1, 1), 0)
    riat = np.where(rev_pkts > 1, f.duration_ms // np.maximum(rev_pkts - 1, 1), 0)
    directions = np.where(rev_pkts > 0, rng.integers(0, 256, n), 0)
    directions = np.where(~is_tcp & (rev_pkts > 0), 0x02, directions)
    missing_bpp = rng.random(n) < 0.0002
    starts = _timestamps(f.start_ms)
    ends = _timestamps(end_ms)

    columns = (starts, ends, (f.duration_ms / 1000).tolist(), rtt.tolist(), proto.tolist(), src_ip.tolist(),
               src_port.tolist(), fwd_pkts.tolist(), octets.tolist(), attributes.tolist(), src_mac.tolist(),
               dst_ip.tolist(), dst_port.tolist(), rev_pkts.tolist(), r_octets.tolist(), rev_attributes.tolist(),
               dst_mac.tolist(), fwd_init.tolist(), fwd_union.tolist(), rev_init.tolist(), rev_union.tolist(),
               seq.tolist(), rseq.tolist(), cos.tolist(), reason.tolist())
    small = lambda pay, ne: np.where(pay < 60, ne, 0)  # noqa: E731
    large = lambda pay, ne: np.where(pay >= 220, ne, 0)  # noqa: E731
    stats = (small(fwd_pay, fwd_ne).tolist(), fwd_ne.tolist(), fwd_data.tolist(), iat.tolist(), fwd_pay.tolist(),
             large(fwd_pay, fwd_ne).tolist(), fwd_pay.tolist(), directions.tolist(), iat.tolist())
    rstats = (small(rev_pay, rev_ne).tolist(), rev_ne.tolist(), rev_data.tolist(), riat.tolist(), rev_pay.tolist(),
              large(rev_pay, rev_ne).tolist(), rev_pay.tolist(), riat.tolist())
    has_stats = (fwd_ne > 0).tolist()
    has_reverse = ((rev_ne > 0) & (fwd_ne > 0)).tolist()
    bpp = fwd_pay.tolist()
    rbpp = rev_pay.tolist()
    no_bpp = missing_bpp.tolist()
    lines = []
    for i, base in enumerate(zip(*columns)):
        line = _BASE.format(*base)
        if has_stats[i]:
            s = [c[i] for c in stats]
            line += _STATS.format(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], 0, s[8])
            if not no_bpp[i]:
                line += _BPP.format(bpp[i])
            if has_reverse[i]:
                r = [c[i] for c in rstats]
                line += _REVERSE.format(r[0], r[1], r[2], r[3], r[4], r[5], r[6], 0, r[7])
                line += _RBPP.format(rbpp[i])
        lines.append(line + "}}\n")
    return lines


def _stats_line(flows: int, packets: int, exporter_pid: int) -> str:
    return (
        f'{{"stats":{{"exportedFlowTotalCount":{flows},"packetTotalCount":{packets},"droppedPacketTotalCount":0,'
        f'"ignoredPacketTotalCount":{packets // 3},"expiredFragmentCount":0,"assembledFragmentCount":0,'
        f'"flowTableFlushEvents":{max(flows // 9, 1)},"flowTablePeakCount":65,"exporterIPv4Address":"127.0.1.1",'
        f'"exportingProcessId":{exporter_pid},"meanFlowRate":{flows // 10 + 1},"meanPacketRate":{packets // 10 + 1},'
        f'"observationDomainId":0,"exporterName":"C1"}}}}\n'
    )


def _tombstone_line(exporter_pid: int, when: int) -> str:
    return (
        f'{{"tombstone":{{"observationDomainId":0,"exportingProcessId":{exporter_pid},"exporterConfiguredId":0,'
        f'"tombstoneId":0,"observationTimeSeconds":{when},"tombstoneAccessList":[{{"tombstoneAccessEntry":'
        f'{{"certToolId":1,"observationTimeSeconds":{when}}}}},{{"tombstoneAccessEntry":{{"certToolId":2,'
        f'"observationTimeSeconds":{when + 14}}}}}]}}}}\n'
    )


class _SplitWriter(io.RawIOBase):
    """Writes a byte stream as `<stem>.tar.gz` or, past `part_bytes`, as `.tar.gz00`, `01`, ..."""

    def __init__(self, directory: Path, stem: str, part_bytes: int):
        self.directory, self.stem, self.part_bytes = directory, stem, part_bytes
        self.parts: list[Path] = []
        self._file = None
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data)
        while len(view):
            if self._file is None or self._written >= self.part_bytes:
                self._next_part()
            take = min(len(view), self.part_bytes - self._written)
            self._file.write(view[:take])
            self._written += take
            view = view[take:]
        return len(data)

    def _next_part(self) -> None:
        if self._file:
            self._file.close()
        path = self.directory / f"{self.stem}.tar.gz.part{len(self.parts):02d}"
        self.parts.append(path)
        self._file = open(path, "wb")
        self._written = 0

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
            if len(self.parts) == 1:
                self.parts[0].rename(self.directory / f"{self.stem}.tar.gz")
            else:
                for i, path in enumerate(self.parts):
                    path.rename(self.directory / f"{self.stem}.tar.gz{i:02d}")
        super().close()


@dataclass
class WrittenArchive:
    device: str
    paths: list[Path]
    flows: int
    json_bytes: int


def write_archive(lines_by_day, out_dir: Path, stem: str, part_bytes: int = SPLIT_PART_BYTES,
                  member_name: str | None = None) -> WrittenArchive:
    """Write the published layout: a tar with one `<stem>.json` member, gzipped, maybe split.

    The member size goes in the tar header before the data, so the JSON is first spooled
    to a temporary file; nothing is held in memory but one day of lines.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    spool = out_dir / f".{stem}.json.spool"
    flows = 0
    with open(spool, "wb") as f:
        for lines in lines_by_day:
            flows += len(lines)
            f.write("".join(lines).encode())
        f.write(_stats_line(flows, flows * 6, 1638581).encode())
        f.write(_tombstone_line(1638581, 1656080403).encode())
    size = spool.stat().st_size
    for old in out_dir.glob(f"{stem}.tar.gz*"):
        old.unlink()
    writer = _SplitWriter(out_dir, stem, part_bytes)
    with igzip.open(writer, "wb", compresslevel=1) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            info = tarfile.TarInfo(member_name or f"{stem}.json")
            info.size = size
            info.mode = 0o777
            info.mtime = 1656044400
            with open(spool, "rb") as f:
                tar.addfile(info, f)
    writer.close()
    spool.unlink()
    paths = sorted(out_dir.glob(f"{stem}.tar.gz*"))
    return WrittenArchive(stem, paths, flows, size)
