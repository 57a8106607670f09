"""Sample devices' traffic as a pcap file, so that the collector tests need no downloaded data.

The flows come from the sample generator's device profiles (`iot_assets.sample`): the same
services, ports, cloud peers, gateway probes and DNS. Each flow becomes real frames:
Ethernet II with the device's MAC and the gateway's (or a LAN peer's, or a broadcast or
multicast MAC), IPv4 with the device's 192.168.1.x address, and TCP (SYN, SYN-ACK, data,
FIN), UDP or ICMP (the devices' port-unreachable answers to the gateway: the sample gives
an ICMP flow its type and code in the port columns). IPv6 flows of the profiles are left
out: the frames are IPv4 only.

Each flow gets its own ephemeral port, so that no two flows share a 5-tuple and a
collector cannot merge them; every packet lies inside the day (a flow that would run past
midnight is shortened), so every flow starts and ends on the day written.

The pcap is the classic format (magic a1b2c3d4, microseconds, LINKTYPE_ETHERNET), written
with `struct`: it is read by nfpcapd, softflowd and tcpdump. Nothing here sends a packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np

from iot_assets.contracts import catalogue
from iot_assets.synthetic.profiles import PROFILES
from iot_assets.synthetic.sample import _background, _concat, _service_flows
from iot_assets.synthetic.yaf_writer import FlowColumns

# Quiet devices with few services: a few hundred flows a day at the default scale.
DEFAULT_DEVICES = ("nature_remo", "xiaomi_mijia_led", "qrio_hub")
DEFAULT_SCALE = 0.1

_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET
_ETHERTYPE_IPV4 = 0x0800
_ICMP, _TCP, _UDP = 1, 6, 17
_FIN, _SYN, _PSH, _ACK = 0x01, 0x02, 0x08, 0x10
_MAX_PAYLOAD_BYTES = 1400  # below a 1500-byte MTU with the headers
_FIRST_EPHEMERAL_PORT = 32768


@dataclass
class WrittenPcap:
    """What a pcap holds, counted while writing it."""

    path: Path
    day: date
    flows: int = 0  # connections (5-tuples) written
    packets: int = 0
    ip_bytes: int = 0  # sum of the IPv4 total lengths, as flow exporters count bytes
    packets_by_device_ip: dict[str, int] = field(default_factory=dict)
    device_by_ip: dict[str, str] = field(default_factory=dict)  # private address -> archive name
    device_by_mac: dict[str, str] = field(default_factory=dict)  # MAC -> archive name


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(octet, 16) for octet in mac.split(":"))


def _ip_bytes(ip: str) -> bytes:
    return bytes(int(octet) for octet in ip.split("."))


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, proto: int, src_port: int,
           dst_port: int, payload_bytes: int, tcp_flags: int, seq: int, ack: int, ip_id: int) -> bytes:
    """One Ethernet II / IPv4 / TCP, UDP or ICMP frame with correct checksums (ICMP: the ports are
    the type and the code)."""
    payload = bytes(payload_bytes)
    if proto == _ICMP:
        message = struct.pack("!BBHI", src_port, dst_port, 0, 0) + payload
        segment = message[:2] + struct.pack("!H", _checksum(message)) + message[4:]
        return _ipv4_frame(src_mac, dst_mac, src_ip, dst_ip, proto, segment, ip_id)
    if proto == _TCP:
        header = struct.pack("!HHIIBBHHH", src_port, dst_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                             tcp_flags, 65535, 0, 0)
    else:
        header = struct.pack("!HHHH", src_port, dst_port, 8 + payload_bytes, 0)
    segment = header + payload
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, proto, len(segment))
    checksum = _checksum(pseudo + segment) or 0xFFFF  # a UDP checksum of 0 would mean "none"
    offset = 16 if proto == _TCP else 6
    segment = segment[:offset] + struct.pack("!H", checksum) + segment[offset + 2:]
    return _ipv4_frame(src_mac, dst_mac, src_ip, dst_ip, proto, segment, ip_id)


def _ipv4_frame(src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, proto: int, segment: bytes,
                ip_id: int) -> bytes:
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), ip_id & 0xFFFF, 0x4000, 64, proto, 0,
                            src_ip, dst_ip)
    ip_header = ip_header[:10] + struct.pack("!H", _checksum(ip_header)) + ip_header[12:]
    return dst_mac + src_mac + struct.pack("!H", _ETHERTYPE_IPV4) + ip_header + segment


def day_flows(device: str, day: date, seed: int = 0, scale: float = DEFAULT_SCALE) -> FlowColumns:
    """The sample generator's flows of one device on one day (every protocol, IPv4 and IPv6)."""
    profile = PROFILES[device]
    rng = np.random.default_rng([seed, catalogue.DEVICES.index(profile.device), day.toordinal(), 1])
    day_ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
    parts = _background(profile, day_ms, scale, rng)
    for service in profile.services:
        flows = _service_flows(profile, service, seed, 0, day_ms, scale, rng)
        if flows is not None:
            parts.append(flows)
    return _concat(parts)


def write_pcap(path: Path, day: date, devices: tuple[str, ...] = DEFAULT_DEVICES, seed: int = 0,
               scale: float = DEFAULT_SCALE) -> WrittenPcap:
    """Write the devices' IPv4 TCP and UDP flows of `day` as a pcap at `path`; return its counts."""
    unknown = [name for name in devices if name not in PROFILES]
    if unknown:
        raise ValueError(f"unknown device archive name(s): {', '.join(unknown)}")
    written = WrittenPcap(Path(path), day)
    day_start_us = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) * 1_000_000
    day_end_us = day_start_us + 86_400_000_000 - 1
    packets: list[tuple[int, int, bytes]] = []  # (time in µs, order, frame)
    next_port = 0
    for name in devices:
        profile = PROFILES[name]
        written.device_by_ip[profile.lan_ip] = name
        written.device_by_mac[profile.device.mac] = name
        flows = day_flows(name, day, seed, scale)
        rng = np.random.default_rng([seed, catalogue.DEVICES.index(profile.device), day.toordinal(), 2])
        keep = np.flatnonzero(np.isin(flows.proto, (_ICMP, _TCP, _UDP)) & ~flows.ipv6.astype(bool))
        for i in keep.tolist():
            # The client's ephemeral port (>= 32768) is replaced by one of its own: a long connection
            # cut into pieces by the sample's active timeout becomes one connection per piece.
            local_port, remote_port = int(flows.local_port[i]), int(flows.remote_port[i])
            device_is_client = bool(flows.device_started[i] or flows.continuation[i])
            unique_port = _FIRST_EPHEMERAL_PORT + next_port % 28000
            next_port += 1
            if flows.proto[i] == _ICMP:
                pass  # the ports are the ICMP type and code
            elif device_is_client and local_port >= _FIRST_EPHEMERAL_PORT:
                local_port = unique_port
            elif not device_is_client and remote_port >= _FIRST_EPHEMERAL_PORT:
                remote_port = unique_port
            start_us = int(flows.start_ms[i]) * 1000
            end_us = min(start_us + int(flows.duration_ms[i]) * 1000, day_end_us)
            frames = _flow_frames(profile.device.mac, flows.remote_mac[i], profile.lan_ip, flows.remote_ip[i],
                                  int(flows.proto[i]), local_port, remote_port, bool(flows.device_started[i]),
                                  int(flows.pkts_out[i]), int(flows.pkts_in[i]), int(flows.payload_out[i]),
                                  int(flows.payload_in[i]), start_us, end_us, rng)
            written.flows += 1
            written.packets_by_device_ip[profile.lan_ip] = written.packets_by_device_ip.get(profile.lan_ip, 0) \
                + len(frames)
            packets.extend((t, len(packets) + k, frame) for k, (t, frame) in enumerate(frames))
    packets.sort()
    with open(path, "wb") as out:
        out.write(_PCAP_HEADER)
        for time_us, _, frame in packets:
            out.write(struct.pack("<IIII", time_us // 1_000_000, time_us % 1_000_000, len(frame), len(frame)))
            out.write(frame)
            written.ip_bytes += len(frame) - 14
    written.packets = len(packets)
    return written


def _flow_frames(device_mac: str, remote_mac: str, device_ip: str, remote_ip: str, proto: int, local_port: int,
                 remote_port: int, device_started: bool, packets_out: int, packets_in: int, payload_out: int,
                 payload_in: int, start_us: int, end_us: int, rng: np.random.Generator) -> list[tuple[int, bytes]]:
    """The frames of one flow, in time order: the initiator's packet first, the last at `end_us`."""
    total = packets_out + packets_in
    times = np.sort(rng.integers(start_us, end_us + 1, total)) if total > 2 else np.array([start_us, end_us][:total])
    times[0] = start_us
    # Who sends each packet: the initiator first, the rest shuffled.
    from_device = np.array([True] * packets_out + [False] * packets_in)
    rng.shuffle(from_device)
    first = np.flatnonzero(from_device == device_started)
    if len(first):
        from_device[[0, first[0]]] = from_device[[first[0], 0]]
    ends = {side: (np.flatnonzero(from_device == side)[-1] if (from_device == side).any() else -1)
            for side in (True, False)}
    device = (_mac_bytes(device_mac), _ip_bytes(device_ip), local_port, min(payload_out, _MAX_PAYLOAD_BYTES))
    remote = (_mac_bytes(remote_mac), _ip_bytes(remote_ip), remote_port, min(payload_in, _MAX_PAYLOAD_BYTES))
    seq = {True: int(rng.integers(0, 2**32)), False: int(rng.integers(0, 2**32))}
    seen = {True: False, False: False}
    frames = []
    for k, (time_us, side) in enumerate(zip(times.tolist(), from_device.tolist())):
        (src_mac, src_ip, src_port, payload), (dst_mac, dst_ip, dst_port, _) = \
            (device, remote) if side else (remote, device)
        flags = 0
        if proto == _TCP:
            if not seen[side]:
                flags = _SYN if k == 0 else _SYN | _ACK
                payload = 0
            elif k == ends[side]:
                flags = _FIN | _ACK
            else:
                flags = _ACK | (_PSH if payload else 0)
        seen[side] = True
        frames.append((time_us, _frame(src_mac, dst_mac, src_ip, dst_ip, proto, src_port, dst_port, payload, flags,
                                       seq[side], seq[not side], k)))
        seq[side] += max(payload, 1)
    return frames
