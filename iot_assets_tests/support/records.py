"""Records and archives in the published format, written by hand for tests."""

import gzip
import io
import itertools
import json
import tarfile
from datetime import date
from pathlib import Path

REAL_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kddi-iot-2019"
FIRST_DAY = date(2019, 6, 25)
LAST_DAY = date(2019, 10, 10)


_SEQUENCE = itertools.count(1)


def flow(**overrides) -> dict:
    """A real-looking flow record (a NetBIOS probe from the gateway to the Nature Remo); each call's has its own
    TCP sequence number, so that records built alike are distinct flows (an equal one is a duplicate_record)."""
    record = {
        "flowStartMilliseconds": "2019-06-25 08:36:47.096", "flowEndMilliseconds": "2019-06-25 08:36:47.675",
        "flowDurationMilliseconds": 0.579, "reverseFlowDeltaMilliseconds": 0.000, "protocolIdentifier": 17,
        "sourceIPv4Address": "192.168.1.1", "sourceTransportPort": 39396, "packetTotalCount": 2,
        "octetTotalCount": 156, "flowAttributes": "01", "sourceMacAddress": "38:d5:47:0c:25:d4:",
        "destinationIPv4Address": "192.168.1.225", "destinationTransportPort": 137, "reversePacketTotalCount": 0,
        "reverseOctetTotalCount": 0, "reverseFlowAttributes": "00", "destinationMacAddress": "60:01:94:54:6b:e8:",
        "initialTCPFlags": "0", "unionTCPFlags": "0", "reverseInitialTCPFlags": "0", "reverseUnionTCPFlags": "0",
        "tcpSequenceNumber": f"0x{next(_SEQUENCE):08x}", "reverseTcpSequenceNumber": "0x00000000",
        "ingressInterface": 0,
        "egressInterface": 0, "vlanId": "0x000", "silkAppLabel": 0, "ipClassOfService": "0x00",
        "flowEndReason": "idle", "collectorName": "C1", "observationDomainId": 0, "tcpUrgTotalCount": 0,
        "smallPacketCount": 2, "nonEmptyPacketCount": 2, "dataByteCount": 100, "averageInterarrivalTime": 579,
        "firstNonEmptyPacketSize": 50, "largePacketCount": 0, "maxPacketSize": 50,
        "firstEightNonEmptyPacketDirections": "00", "standardDeviationPayloadLength": 0,
        "standardDeviationInterarrivalTime": 0, "bytesPerPacket": 50,
    }
    for key, value in overrides.items():
        if value is ...:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def flow_line(**overrides) -> bytes:
    return json.dumps({"flows": flow(**overrides)}).encode() + b"\n"


def trailer(flows: int) -> bytes:
    return (json.dumps({"stats": {"exportedFlowTotalCount": flows, "packetTotalCount": 10}}) + "\n"
            + json.dumps({"tombstone": {"tombstoneId": 0, "observationTimeSeconds": 1656080403}}) + "\n").encode()


def write_tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def json_archive(path: Path, body: bytes, member: str | None = None) -> Path:
    """An archive of the published layout holding `body` as its JSON member."""
    return write_tar_gz(path, [(tarfile.TarInfo(member or path.name.split(".tar.gz")[0] + ".json"), body)])
