"""Who each of the 25 devices talks to, how often and how much: the sample's device profiles.

Calibrated on the three real archives (`nature_remo`, `au_network_camera`,
`xiaomi_mijia_led`), with realistic exposures: the au camera and the PLANEX camera one
shot! send DNS to a public resolver, three cameras talk cleartext HTTP to their clouds,
the au wireless adapter answers SSDP requests from Internet scanners, Xiaomi and two hubs
use TCP 80 or MQTT 1883. Data only: `sample` turns a profile into flows.
"""

from __future__ import annotations

from dataclasses import dataclass

from iot_assets.contracts import catalogue
from iot_assets.contracts.catalogue import Device

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
