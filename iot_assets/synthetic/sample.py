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

Records carry every quirk of the source: seconds in `*Milliseconds`, MACs with a
trailing colon, IPv6 in the IPv4 fields, empty `flowEndReason` for TCP closes, hex
strings, letter TCP flags, 31 fields for flows without payload, 52-54 for biflows,
records in the order YAF exports them (by end time, so starts are out of order).
Output is deterministic for a seed: each device-day has its own random stream.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from isal import igzip

from iot_assets.contracts import catalogue
from iot_assets.contracts.catalogue import Device

SPLIT_PART_BYTES = 1 << 30  # published archives are cut into parts of this size
ACTIVE_TIMEOUT_S = 1800.0

PHONE = ("38:f9:d3:57:bb:26", "192.168.1.92")
PC = ("64:bc:0c:4b:aa:ce", "192.168.1.202")
TABLET = ("80:5a:04:ce:76:1c", "192.168.1.146")

# Cloud address blocks (first two octets) per provider.
PROVIDERS: dict[str, tuple[str, ...]] = {
    "aws_us": ("3.86", "18.204", "18.205", "34.194", "34.202", "52.207", "54.242", "107.23", "54.209"),
    "aws_tokyo": ("13.230", "52.197", "54.250", "52.68", "13.112", "18.179"),
    "google": ("172.217", "216.58", "142.250", "172.253", "74.125", "108.177"),
    "alibaba": ("47.88", "47.74", "161.117", "47.91"),
    "akamai": ("23.32", "23.45", "104.76", "184.26", "23.203"),
    "azure": ("13.78", "20.43", "52.185", "40.74"),
    "japan_isp": ("210.196", "220.159", "202.232", "210.140", "211.7"),
    "ntp_nict": ("133.243",),
    "ntp_pool": ("139.162", "172.105", "157.7", "106.187"),
    "linode": ("139.162", "172.105", "45.79"),
    "sony": ("117.104", "202.221", "54.64"),
    "philips": ("52.28", "35.156", "34.253"),
    # Hosts that scan the Internet (research scanners, botnets): a new set every day.
    "scanners": ("45.33", "71.6", "80.82", "89.248", "162.142", "185.142", "193.163", "198.108"),
}


@dataclass(frozen=True)
class Service:
    """One kind of traffic a device has: who, where, how often and how much."""

    name: str
    proto: int  # 1 ICMP, 6 TCP, 17 UDP, 58 ICMPv6
    port: int  # the server's port (the device's own for inbound services); 0: a random one each flow
    provider: str  # a key of PROVIDERS, or gateway / resolver / broadcast / mdns / ssdp / phone / pc
    per_day: float = 0.0  # flows a day at scale 1 (pattern poisson or diurnal)
    pattern: str = "poisson"  # poisson | diurnal | session | periodic
    sessions: int = 1  # concurrent long-lived connections (pattern session)
    period_s: float = 3600.0  # pattern periodic
    packets: tuple[float, float] = (6.0, 0.5)  # forward packets: median, log-sigma
    payload_out: tuple[float, float] = (200.0, 0.6)  # forward payload bytes per packet
    payload_in: tuple[float, float] = (400.0, 0.6)  # reverse payload bytes per packet
    reply_ratio: float = 1.0  # reverse packets per forward packet; 0 for one-way
    duration_s: tuple[float, float] = (0.2, 1.0)
    inbound: bool = False  # the peer starts it (a phone app, the gateway)
    flip: float = 0.0  # share of session records exported from the server's side
    slots: int = 3  # endpoints used at once
    churn_days: float = 30.0  # mean days an endpoint is used before it changes
    ipv6: bool = False
    duty: float = 1.0  # pattern session: share of the day the connection is up
    burst: tuple[float, float] = (0.0, 1.0)  # (chance a day, rate factor on such a day)


@dataclass(frozen=True)
class Profile:
    device: Device
    lan_ip: str
    services: tuple[Service, ...]
    dns: str = "gateway"  # gateway | google
    online: float = 1.0  # share of days the device is connected
    user_driven: bool = False


# ---------------------------------------------------------------- behaviour per device


def _tls(name: str, provider: str, per_day: float, pattern: str = "poisson", **kw) -> Service:
    base = dict(packets=(12, 0.6), payload_out=(180, 0.5), payload_in=(600, 0.8), duration_s=(1.5, 1.2), slots=4)
    base.update(kw)
    return Service(name, 6, 443, provider, per_day=per_day, pattern=pattern, **base)


def _session(name: str, provider: str, sessions: int = 1, port: int = 443, **kw) -> Service:
    base = dict(packets=(44, 0.15), payload_out=(60, 0.4), payload_in=(100, 0.4), flip=0.8, slots=2, churn_days=20)
    base.update(kw)
    return Service(name, 6, port, provider, pattern="session", sessions=sessions, **base)


def _udp(name: str, port: int, provider: str, per_day: float = 0.0, **kw) -> Service:
    base = dict(packets=(1, 0.3), payload_out=(48, 0.2), payload_in=(48, 0.2), duration_s=(0.01, 1.0))
    base.update(kw)
    return Service(name, 17, port, provider, per_day=per_day, **base)


def _http(name: str, provider: str, per_day: float, **kw) -> Service:
    """Cleartext HTTP to a cloud (firmware checks, snapshots): a real exposure of cheap cameras."""
    base = dict(packets=(8, 0.4), payload_out=(250, 0.5), payload_in=(500, 0.8), duration_s=(0.8, 1.0), slots=2)
    base.update(kw)
    return Service(name, 6, 80, provider, per_day=per_day, **base)


def _public_dns(per_day: float) -> Service:
    """Lookups at the resolver built into the firmware (the profile's `dns`), past the gateway's."""
    return _udp("dns", 53, "resolver", per_day, payload_out=(35, 0.2), payload_in=(120, 0.4), slots=1)


def _ntp(per_day: float, provider: str = "ntp_pool") -> Service:
    return _udp("ntp", 123, provider, per_day, payload_out=(48, 0.0), payload_in=(48, 0.0), slots=4, churn_days=10)


def _mdns(per_day: float, ipv6: bool = False) -> Service:
    return _udp("mdns", 5353, "mdns", per_day, payload_out=(120, 0.5), reply_ratio=0.0, ipv6=ipv6)


def _ssdp(per_day: float) -> Service:
    return _udp("ssdp", 1900, "ssdp", per_day, packets=(3, 0.3), payload_out=(300, 0.3), reply_ratio=0.0)


def _camera(cloud: str, scale: float, stream_port: int, size: float = 1.0) -> tuple[Service, ...]:
    """A network camera: a heartbeat to its relay, video pushed when somebody watches."""
    return (
        _udp("relay_heartbeat", stream_port, cloud, pattern="periodic", period_s=30 / scale, packets=(1, 0.1),
             payload_out=(40 * size, 0.1), payload_in=(40 * size, 0.1), reply_ratio=0.5, slots=1, churn_days=60),
        _udp("video", stream_port, cloud, 20 * scale, pattern="diurnal", packets=(2500, 1.2),
             payload_out=(1100 * size, 0.15), payload_in=(60, 0.3), reply_ratio=0.1, duration_s=(60, 1.0), slots=2),
        _tls("cloud_api", cloud, 30 * scale, packets=(14, 0.4), payload_in=(350 * size, 0.5)),
        _ntp(8, "ntp_nict"),
        _udp("app_probe", stream_port, "phone", 6 * scale, inbound=True, pattern="diurnal", packets=(4, 0.5)),
        _udp("lan_discovery", 41032, "broadcast", 2 * scale, payload_out=(600 * size, 0.0), reply_ratio=0.0),
    )


def _cast(per_day: float) -> Service:
    """Google Cast: phones connect to the device's port 8009."""
    return Service("cast", 6, 8009, "phone", per_day=per_day, inbound=True, pattern="diurnal", packets=(20, 0.8),
                   payload_out=(300, 0.5), payload_in=(300, 0.5), duration_s=(30, 1.0))


def _speaker(cloud: str, per_day: float, ipv6: bool = True) -> tuple[Service, ...]:
    return (
        _session("voice_channel", cloud, sessions=2, payload_in=(90, 0.4)),
        _tls("assistant", cloud, per_day * 0.5, pattern="diurnal", packets=(40, 1.0), payload_out=(500, 0.6),
             payload_in=(900, 0.8), duration_s=(4, 1.0), slots=8),
        _tls("music", "akamai", per_day * 0.05, pattern="diurnal", packets=(300, 1.2), payload_out=(60, 0.3),
             payload_in=(1300, 0.1), duration_s=(120, 1.0), slots=6),
        _udp("quic", 443, cloud, per_day * 0.3, packets=(20, 1.0), payload_out=(300, 0.5), payload_in=(900, 0.5),
             duration_s=(2, 1.0), slots=6),
        _mdns(per_day * 0.1, ipv6=ipv6),
        _ssdp(per_day * 0.03),
        _ntp(6, "google" if cloud == "google" else "ntp_pool"),
    )


def _plug_like(cloud: str, per_day: float, port: int = 8883) -> tuple[Service, ...]:
    """A small appliance (plug, lock, sensor) that keeps an MQTT-over-TLS line to its cloud."""
    return (
        _session("mqtt", cloud, sessions=1, port=port, payload_out=(40, 0.3), payload_in=(40, 0.3), flip=0.3),
        _tls("report", cloud, per_day, packets=(10, 0.4), payload_out=(300, 0.5), payload_in=(200, 0.5)),
        _ntp(4),
    )


def _profiles() -> dict[str, Profile]:
    d = catalogue.BY_ARCHIVE
    p = [
        Profile(d["amazon_echo_gen2"], "192.168.1.31", _speaker("aws_us", 3000, ipv6=True), user_driven=True),
        Profile(d["au_network_camera"], "192.168.1.140", (
            _udp("relay", 10001, "aws_tokyo", pattern="session", sessions=3, packets=(72, 0.05),
                 payload_out=(288, 0.05), payload_in=(288, 0.05), slots=3, churn_days=60),
            # NAT traversal: single packets to random ports of a relay; now and then a storm.
            _udp("nat_punch", 0, "japan_isp", 8, payload_out=(44, 0.0), reply_ratio=0.0, slots=1,
                 churn_days=400, burst=(0.01, 3000)),
            _udp("lan_discovery", 41032, "broadcast", 32, payload_out=(629, 0.0), reply_ratio=0.0),
            _ntp(11, "ntp_nict"),
            # Its hard-coded resolver: about 14 lookups a day at 8.8.8.8 in the real archive.
            _public_dns(14),
        ), dns="google"),
        Profile(d["au_wireless_adapter"], "192.168.1.41", (
            _session("hub_line", "japan_isp", sessions=2, port=443),
            _udp("zigbee_bridge", 9999, "japan_isp", 4000, packets=(1, 0.2), payload_out=(60, 0.3), slots=2),
            Service("voice_gateway", 17, 5060, "japan_isp", per_day=300, packets=(2, 0.2), payload_out=(450, 0.2),
                    payload_in=(380, 0.2), slots=1, churn_days=200),
            _tls("api", "aws_tokyo", 800, packets=(10, 0.5)),
            _ssdp(300), _ntp(24),
            # UPnP open to the Internet: scanners' M-SEARCH requests get an answer.
            Service("ssdp_from_internet", 17, 1900, "scanners", per_day=200, inbound=True, packets=(1, 0.0),
                    payload_out=(94, 0.0), payload_in=(310, 0.2), reply_ratio=2.0, slots=40, churn_days=1),
        )),
        Profile(d["bitfinder_awair_breathe_easy"], "192.168.1.52", (
            *_plug_like("aws_us", 2200, port=8883),
            _tls("air_report", "aws_us", 300, pattern="periodic", period_s=300, packets=(12, 0.2), payload_out=(700, 0.2)),
            _mdns(40),
        )),
        Profile(d["candy_house_sesami_wi-fi_access_point"], "192.168.1.63", (
            *_plug_like("aws_tokyo", 1200, port=8883),
            _tls("unlock", "aws_tokyo", 40, pattern="diurnal", packets=(16, 0.4), payload_out=(400, 0.4)),
        ), user_driven=True),
        Profile(d["google_home_gen1"], "192.168.1.74", (
            *_speaker("google", 40000, ipv6=True),
            _udp("cast_discovery", 1900, "ssdp", 9000, packets=(2, 0.3), payload_out=(350, 0.2), reply_ratio=0.0),
            _cast(800),
        ), user_driven=True),
        Profile(d["i-o_data_qwatch"], "192.168.1.85", (*_camera("aws_tokyo", 3.0, 10001, size=1.0),
                                                       _http("firmware_check", "aws_tokyo", 60)), dns="gateway"),
        Profile(d["irobot_roomba"], "192.168.1.96", (
            _session("mqtt", "aws_us", sessions=1, port=8883, payload_out=(70, 0.3), flip=0.5),
            _tls("mission", "aws_us", 60, pattern="diurnal", packets=(30, 0.8), payload_out=(500, 0.6)),
            _udp("discovery", 5678, "broadcast", 40, packets=(1, 0.0), payload_out=(58, 0.0), reply_ratio=0.0),
            _ntp(12),
        ), user_driven=True),
        Profile(d["jvc_kenwood_cu-hb1"], "192.168.1.107", (
            _session("hub_line", "japan_isp", sessions=3, port=443, payload_out=(80, 0.3)),
            _udp("device_poll", 9999, "japan_isp", 8000, packets=(2, 0.3), payload_out=(80, 0.3), slots=2),
            _tls("api", "azure", 900, packets=(10, 0.5)),
            _udp("lan_keepalive", 9001, "pc", 400, packets=(1, 0.0), payload_out=(36, 0.0)),
            _ssdp(200), _ntp(24),
        )),
        # Same OEM as the PLANEX SmaCam PanTilt (MAC prefix e0:b9:4d): nearly the same firmware.
        Profile(d["jvc_kenwood_hdtv_ip_camera"], "192.168.1.118", _camera("linode", 0.4, 20001, size=1.05)),
        Profile(d["line_clova_wave"], "192.168.1.129", (
            *_speaker("azure", 1800, ipv6=False),
            # LINE voice calls.
            _udp("rtp", 16384, "japan_isp", 2, pattern="diurnal", packets=(2000, 0.8), payload_out=(160, 0.0),
                 payload_in=(160, 0.0), duration_s=(120, 0.8)),
        ), user_driven=True),
        Profile(d["link_japan_eremote"], "192.168.1.150", (
            _session("control", "aws_tokyo", sessions=1, port=443, flip=0.6),
            _udp("cloud_udp", 6666, "aws_tokyo", 2600, packets=(1, 0.2), payload_out=(80, 0.3), slots=2),
            _tls("api", "aws_tokyo", 80, pattern="diurnal"),
            _ntp(8),
        ), user_driven=True),
        Profile(d["mouse_computer_room_hub"], "192.168.1.161", (
            _session("control", "azure", sessions=1, port=1883, flip=0.6),
            _tls("api", "azure", 12, pattern="diurnal"),
            _mdns(4),
        ), online=0.12),
        Profile(d["nature_remo"], "192.168.1.225", (
            _session("cloud_line", "aws_us", sessions=1, port=443, flip=0.85, churn_days=15, duty=0.4),
            _tls("command", "aws_us", 3, pattern="diurnal", packets=(11, 0.3), payload_out=(110, 0.3)),
            _mdns(0.6),
        ), user_driven=True),
        Profile(d["panasonic_doorphone"], "192.168.1.172", (
            Service("sip_register", 17, 5060, "japan_isp", per_day=2900, packets=(2, 0.2), payload_out=(500, 0.2),
                    payload_in=(400, 0.2), slots=1, churn_days=200),
            _udp("rtp", 16384, "phone", 60, pattern="diurnal", packets=(3000, 0.8), payload_out=(172, 0.0),
                 payload_in=(172, 0.0), duration_s=(60, 0.6), inbound=False),
            _udp("lan_keepalive", 9001, "phone", 8000, packets=(1, 0.0), payload_out=(36, 0.0)),
            _ntp(24),
        ), user_driven=True),
        Profile(d["philips_hue_bridge"], "192.168.1.183", (
            _session("cloud_line", "philips", sessions=1, port=443, flip=0.5),
            _tls("diag", "philips", 600, packets=(10, 0.3)),
            Service("app_api", 6, 80, "phone", per_day=1200, inbound=True, pattern="diurnal",
                    packets=(6, 0.4), payload_out=(300, 0.4), payload_in=(700, 0.5), duration_s=(0.1, 1.0)),
            _ssdp(400), _mdns(400), _ntp(24),
        ), user_driven=True),
        Profile(d["planex_camera_one_shot!"], "192.168.1.194", (*_camera("japan_isp", 5.0, 10001, size=0.8),
                                                                _http("cloud_http", "japan_isp", 200),
                                                                _public_dns(60)), dns="google"),
        Profile(d["planex_smacam_outdoor"], "192.168.1.205", (*_camera("linode", 0.6, 20001, size=1.3),
                                                              _http("snapshot_upload", "linode", 60))),
        Profile(d["planex_smacam_pantilt"], "192.168.1.216", _camera("linode", 0.4, 20001, size=1.0)),
        Profile(d["powerelectric_wi-fi_plug"], "192.168.1.227", (
            *_plug_like("alibaba", 400, port=1883),
            _udp("cloud_udp", 6666, "alibaba", 2300, packets=(1, 0.1), payload_out=(64, 0.1), slots=1),
        )),
        Profile(d["qrio_hub"], "192.168.1.238", (
            *_plug_like("aws_tokyo", 300, port=8883),
            _udp("ble_relay", 8053, "aws_tokyo", 60, pattern="diurnal", packets=(2, 0.3)),
        ), user_driven=True),
        Profile(d["sony_bravia"], "192.168.1.249", (
            *_speaker("sony", 16000, ipv6=True),
            _tls("video", "akamai", 2500, pattern="diurnal", packets=(900, 1.5), payload_out=(50, 0.2),
                 payload_in=(1400, 0.05), duration_s=(30, 1.2), slots=10),
            Service("dlna", 6, 80, "pc", per_day=800, pattern="diurnal", packets=(8, 0.4), payload_out=(200, 0.3)),
            _cast(300),
        ), user_driven=True),
        Profile(d["sony_network_camera"], "192.168.1.13", _camera("sony", 0.4, 443, size=0.9)),
        Profile(d["sony_smart_speaker"], "192.168.1.24", (*_speaker("google", 18000, ipv6=True), _cast(200)),
                user_driven=True),
        Profile(d["xiaomi_mijia_led"], "192.168.1.20", (
            _session("miio_tcp", "alibaba", sessions=1, port=80, flip=0.0, packets=(120, 0.8), payload_out=(10, 0.3),
                     payload_in=(10, 0.3), churn_days=40, duty=0.65),
            _udp("miio_cloud", 8053, "alibaba", 12, packets=(50, 0.6), payload_out=(30, 0.2), payload_in=(40, 0.2),
                 duration_s=(1780, 0.01), slots=4, churn_days=25),
            Service("miio_local", 17, 54321, "pc", per_day=3, pattern="diurnal", inbound=True,
                    packets=(2, 0.3), payload_out=(32, 0.0), payload_in=(120, 0.3)),
        ), user_driven=True),
    ]
    return {profile.device.archive_name: profile for profile in p}


PROFILES = _profiles()

# Share of user-driven activity per hour of the day (UTC+9 local time, written in UTC).
_LOCAL_HOURLY = np.array([0.2, 0.15, 0.1, 0.1, 0.1, 0.2, 0.6, 1.2, 1.4, 1.0, 0.8, 0.8,
                          0.9, 0.8, 0.8, 0.8, 0.9, 1.1, 1.5, 1.8, 1.9, 1.7, 1.2, 0.6])
DIURNAL = np.roll(_LOCAL_HOURLY, -9) / _LOCAL_HOURLY.mean()

# ---------------------------------------------------------------- building records


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


# ---------------------------------------------------------------- JSON lines


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

