"""The devices of the KDDI-IoT-2019 testbed, as published with the dataset."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    name: str
    category: str
    mac: str  # lower case, six colon-separated octets, no trailing colon
    records: int  # flow records in the published archive

    @property
    def archive_name(self) -> str:
        """File stem of the published archive: the name in lower case, spaces as underscores."""
        return self.name.lower().replace(" ", "_")


GATEWAY_MAC = "38:d5:47:0c:25:d4"
GATEWAY_IP = "192.168.1.1"
LAN_PREFIX = "192.168.1."
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"

DEVICES: tuple[Device, ...] = (
    Device("Amazon Echo gen2", "Smart speaker", "4c:ef:c0:17:e0:42", 534_289),
    Device("au network camera", "Network camera", "ec:3d:fd:39:6f:98", 175_794),
    Device("au wireless adapter", "IoT gateway/hub", "b0:ea:bc:ea:ac:86", 735_225),
    Device("Bitfinder Awair Breathe Easy", "Environment sensor", "70:88:6b:10:22:83", 396_706),
    Device("CANDY HOUSE Sesami Wi-Fi access point", "Door lock", "38:56:10:00:1d:8c", 259_873),
    Device("Google Home gen1", "Smart speaker", "48:d6:d5:92:96:a2", 6_142_846),
    Device("I-O Data QWatch", "Network camera", "34:76:c5:7f:91:07", 2_167_558),
    Device("iRobot Roomba", "Robot cleaner", "40:9f:38:e7:7f:09", 132_297),
    Device("JVC Kenwood CU-HB1", "IoT gateway/hub", "00:a2:b2:b9:09:87", 1_323_485),
    Device("JVC Kenwood HDTV IP camera", "Network camera", "e0:b9:4d:5c:cf:c5", 144_955),
    Device("Line Clova Wave", "Smart speaker", "a8:1e:84:e8:cc:c3", 311_199),
    Device("Link Japan eRemote", "Remote controller", "34:ea:34:76:ea:68", 438_959),
    Device("Mouse computer room hub", "IoT gateway/hub", "aa:1e:84:06:1c:b4", 16_932),
    Device("Nature Remo", "Remote controller", "60:01:94:54:6b:e8", 126_048),
    Device("Panasonic Doorphone", "Doorphone", "bc:c3:42:dc:24:78", 1_344_464),
    Device("Philips Hue Bridge", "Light", "00:17:88:47:20:f2", 438_573),
    Device("PLANEX camera one shot!", "Network camera", "00:1b:c7:fa:c3:e6", 1_471_465),
    Device("PLANEX SmaCam Outdoor", "Network camera", "00:22:cf:fd:c1:08", 188_230),
    Device("PLANEX SmaCam PanTilt", "Network camera", "e0:b9:4d:b9:eb:e9", 140_445),
    Device("PowerElectric Wi-Fi plug", "Plug", "ec:f0:0e:55:25:39", 359_065),
    Device("Qrio Hub", "Door lock", "80:c5:f2:0b:aa:a9", 166_061),
    Device("Sony Bravia", "TV", "04:5d:4b:a4:d0:2e", 3_403_273),
    Device("Sony network camera", "Network camera", "70:26:05:73:6e:31", 144_236),
    Device("Sony smart speaker", "Smart speaker", "6c:5a:b5:56:39:3e", 2_398_172),
    Device("Xiaomi Mijia LED", "Light", "78:11:dc:55:76:4c", 128_968),
)

BY_MAC: dict[str, Device] = {d.mac: d for d in DEVICES}
BY_ARCHIVE: dict[str, Device] = {d.archive_name: d for d in DEVICES}
BY_NAME: dict[str, Device] = {d.name: d for d in DEVICES}

_ARCHIVE_SUFFIX = re.compile(r"\.tar\.gz(\d{2})?$")


def archive_stem(file_name: str) -> str | None:
    """`google_home_gen1.tar.gz00` -> `google_home_gen1`; None if not an archive name."""
    match = _ARCHIVE_SUFFIX.search(file_name)
    return file_name[: match.start()] if match else None


def device_for_archive(file_name: str) -> Device | None:
    stem = archive_stem(file_name)
    return BY_ARCHIVE.get(stem) if stem else None
