"""IPFIX files (RFC 5655: IPFIX messages one after the other, as softflowd's export, yaf and
IPFIX collectors store them), decoded with PyPI `netflow` (0.12) and mapped onto the flow
contract (`biflows.FLOW_SCHEMA`).

The file is cut into messages by each message header's length; `netflow` parses a message's
sets with the templates seen so far in the file (kept per observation domain). Data records
of an options template are not flows: they are read for the sampling rate they state
(softflowd `-s N`: samplingPacketInterval 1 and samplingPacketSpace N-1, so the rate is
(interval + space) / interval; samplingInterval or samplerRandomInterval: the rate itself)
and for systemInitTimeMilliseconds (flow times relative to it). A stated rate applies to
the flow records of its observation domain that follow it in the file; before any, it is 1.

`line_number` is the data record's position in the file, counting every data record
(options records too) from 1, as `ipfixDump` numbers them ("data record N"); `archive` is the
file's name. Records are unidirectional (reverse counts 0): stitch with `biflows`.

The ledger: `collector_records` is the flow data records the file holds (counted in its
data sets), `other_records` the options records; decoded + rejected = collector_records.
A file whose first message is not IPFIX (a wrong version number, a foreign file) raises
`SourceFileError` naming the file. Later damage (a message cut short, a set that does not
parse) ends the file with `error` naming the message and its byte offset; the records of
the messages before it are kept, and `collector_records` is then None (unknown: the rest of
the file cannot be framed), so the file does not reconcile.

A flow record without a start time or addresses is a reject (`missing_field:<IE name>`).
Enterprise-specific elements (yaf's reverse elements, PEN 29305) are not read: `netflow`
does not name them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from netflow.ipfix import IPFIXExportPacket

from iot_assets.sources.biflows import FLOW_SCHEMA, REJECTS, FileLedger, SourceFileError, ledger_counts, records_table

IPFIX_SUFFIXES = (".ipfix",)
_HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence number, observation domain
_VERSION = 10
# flowEndReason (IE 136) as decode.py names YAF's reasons.
END_REASONS = {1: "idle", 2: "active", 3: "end_detected", 4: "eof", 5: "lack_of_resources"}
_SAMPLING_FIELDS = ("samplingPacketInterval", "samplingInterval", "samplerRandomInterval")


@dataclass
class IpfixFile:
    """One file read: its flow records (unidirectional, FLOW_SCHEMA), rejects and ledger."""

    records: pa.Table
    rejects: pa.Table
    ledger: FileLedger
    messages: int = 0
    data_records_by_template: dict[int, int] = field(default_factory=dict)


def find_ipfix_files(root: Path) -> list[Path]:
    """Every *.ipfix file anywhere under `root`, in path order."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix in IPFIX_SUFFIXES and p.is_file())


class _Domain:
    """What the file has said so far for one observation domain."""

    def __init__(self) -> None:
        self.templates: dict[int, list] = {}
        self.options_templates: set[int] = set()
        self.sampling_rate = 1
        self.system_init_ms: int | None = None


def _ip(value) -> str | None:
    if value is None:
        return None
    return str(ipaddress.ip_address(value))


def _mac(value) -> str | None:
    if value is None:
        return None
    return ":".join(f"{b:02x}" for b in int(value).to_bytes(6, "big"))


def _times(record: dict, domain: _Domain) -> tuple[int | None, int | None, str | None]:
    """Start and end in ms since the epoch, or the name of the missing element."""
    if "flowStartMilliseconds" in record:
        return record["flowStartMilliseconds"], record.get("flowEndMilliseconds", record["flowStartMilliseconds"]), None
    if "flowStartSeconds" in record:
        start = record["flowStartSeconds"] * 1000
        return start, record.get("flowEndSeconds", record["flowStartSeconds"]) * 1000, None
    if "flowStartMicroseconds" in record:  # NTP format: (seconds since 1900, fraction)
        def ms(ntp):
            return (ntp[0] - 2_208_988_800) * 1000 + (ntp[1] * 1000 >> 32)
        start = ms(record["flowStartMicroseconds"])
        return start, ms(record.get("flowEndMicroseconds", record["flowStartMicroseconds"])), None
    if "flowStartSysUpTime" in record:
        if domain.system_init_ms is None:
            return None, None, "systemInitTimeMilliseconds"
        return (domain.system_init_ms + record["flowStartSysUpTime"],
                domain.system_init_ms + record.get("flowEndSysUpTime", record["flowStartSysUpTime"]), None)
    return None, None, "flowStartMilliseconds"


def _flow_row(record: dict, domain: _Domain) -> tuple[dict | None, str | None]:
    """A contract row from one flow data record, or the reject reason."""
    start, end, missing = _times(record, domain)
    if missing:
        return None, f"missing_field:{missing}"
    src = record.get("sourceIPv4Address", record.get("sourceIPv6Address"))
    dst = record.get("destinationIPv4Address", record.get("destinationIPv6Address"))
    if src is None:
        return None, "missing_field:sourceIPv4Address"
    if dst is None:
        return None, "missing_field:destinationIPv4Address"
    if end < start:
        return None, "end_before_start"
    protocol = record.get("protocolIdentifier")
    dst_port = record.get("destinationTransportPort")
    if protocol in (1, 58) and not dst_port:
        dst_port = record.get("icmpTypeCodeIPv4", record.get("icmpTypeCodeIPv6", 0))
    packets = record.get("packetDeltaCount", record.get("packetTotalCount"))
    octets = record.get("octetDeltaCount", record.get("octetTotalCount"))
    if packets is None or octets is None:
        return None, "missing_field:packetDeltaCount" if packets is None else "missing_field:octetDeltaCount"
    return {
        "flow_start": start, "flow_end": end, "duration_ms": end - start, "protocol": protocol,
        "src_ip": _ip(src), "src_port": record.get("sourceTransportPort", 0), "packets": packets, "bytes": octets,
        "src_mac": _mac(record.get("sourceMacAddress")), "dst_ip": _ip(dst), "dst_port": dst_port or 0,
        "reverse_packets": 0, "reverse_bytes": 0,
        "dst_mac": _mac(record.get("destinationMacAddress", record.get("postDestinationMacAddress"))),
        "union_tcp_flags": (record.get("tcpControlBits", 0) & 0xFF) if protocol == 6 else 0,
        "ingress_interface": record.get("ingressInterface"), "egress_interface": record.get("egressInterface"),
        "vlan_id": record.get("vlanId"), "ip_class_of_service": record.get("ipClassOfService"),
        "end_reason": END_REASONS.get(record.get("flowEndReason")) if "flowEndReason" in record else None,
        "ip_version": 6 if isinstance(src, int) and src > 0xFFFFFFFF or "sourceIPv6Address" in record else 4,
        "sampling_rate": domain.sampling_rate,
    }, None


def _read_options(record: dict, domain: _Domain) -> None:
    if "systemInitTimeMilliseconds" in record:
        domain.system_init_ms = record["systemInitTimeMilliseconds"]
    if "samplingPacketInterval" in record and record["samplingPacketInterval"] > 0:
        interval = record["samplingPacketInterval"]
        domain.sampling_rate = (interval + record.get("samplingPacketSpace", 0)) // interval
    elif record.get("samplingInterval", 0) > 0:
        domain.sampling_rate = record["samplingInterval"]
    elif record.get("samplerRandomInterval", 0) > 0:
        domain.sampling_rate = record["samplerRandomInterval"]


def read_ipfix_file(path: Path, name: str | None = None) -> IpfixFile:
    """Decode one IPFIX file; damage ends it with `ledger.error` set (see the module).

    `name` (default: the file's name) names the file in the records, rejects, ledger and errors."""
    path = Path(path)
    name = name or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceFileError(name, f"cannot read the file: {exc}") from exc
    ledger = FileLedger(file=name, source="ipfix", size_bytes=len(data))
    domains: dict[int, _Domain] = {}
    rows: list[dict] = []
    numbers: list[int] = []
    rejected: list[tuple[int, str]] = []
    by_template: dict[int, int] = {}
    flow_records = options_records = messages = 0
    data_record = 0  # data records seen, options records too
    offset = 0
    try:
        while offset < len(data):
            if len(data) - offset < _HEADER.size:
                raise SourceFileError(name, f"message {messages + 1} at byte {offset:,} is cut short "
                                                 f"({len(data) - offset} bytes, a header is {_HEADER.size})")
            version, length, _, _, domain_id = _HEADER.unpack_from(data, offset)
            if version != _VERSION:
                raise SourceFileError(name, f"not an IPFIX file: message {messages + 1} at byte {offset:,} "
                                                 f"has version {version} (IPFIX is {_VERSION})")
            if length < _HEADER.size or offset + length > len(data):
                raise SourceFileError(name, f"message {messages + 1} at byte {offset:,} is cut short "
                                                 f"(its header says {length:,} bytes, {len(data) - offset:,} remain)")
            domain = domains.setdefault(domain_id, _Domain())
            try:
                packet = IPFIXExportPacket(data[offset:offset + length], domain.templates)
            except Exception as exc:  # netflow raises KeyError, struct.error, its own classes
                raise SourceFileError(name, f"message {messages + 1} at byte {offset:,} does not parse "
                                                 f"({type(exc).__name__}: {exc})"[:300]) from exc
            for ipfix_set in packet.sets:
                set_id = ipfix_set.header.set_id
                if set_id == 3:
                    domain.options_templates.update(r.template_id for r in ipfix_set.records)
                if set_id < 256:
                    continue
                by_template[set_id] = by_template.get(set_id, 0) + len(ipfix_set.records)
                for record in ipfix_set.records:
                    data_record += 1
                    if set_id in domain.options_templates:
                        options_records += 1
                        _read_options(record.data, domain)
                        continue
                    flow_records += 1
                    try:
                        row, reason = _flow_row(record.data, domain)
                    except Exception as exc:  # a value the mapping cannot take: the record's reject
                        row, reason = None, f"decode_error:{type(exc).__name__}"
                    if row is None:
                        rejected.append((data_record, reason))
                    else:
                        rows.append(row)
                        numbers.append(data_record)
            messages += 1
            offset += length
        ledger.collector_records = flow_records
    except SourceFileError as exc:
        if messages == 0:
            raise  # nothing of the file could be read: not an IPFIX file
        ledger.error = exc.message
    ledger.other_records = options_records
    records = _table(rows, numbers, name)
    rejects = pa.table({"archive": pa.array([name] * len(rejected), pa.string()),
                        "line_number": pa.array([n for n, _ in rejected], pa.int64()),
                        "reason": pa.array([r for _, r in rejected], pa.string()),
                        "detail": pa.nulls(len(rejected), pa.string())}, schema=REJECTS)
    ledger_counts(ledger, records, rejects)
    return IpfixFile(records, rejects, ledger, messages, by_template)


def _table(rows: list[dict], numbers: list[int], file: str) -> pa.Table:
    n = len(rows)
    if n == 0:
        return FLOW_SCHEMA.empty_table()
    columns = {name: pa.array([row[name] for row in rows], FLOW_SCHEMA.field(name).type
                               if not pa.types.is_timestamp(FLOW_SCHEMA.field(name).type) else pa.int64())
               for name in rows[0]}
    for name in ("flow_start", "flow_end"):
        columns[name] = columns[name].cast(FLOW_SCHEMA.field(name).type)
    columns["archive"] = pa.array([file] * n, pa.string())
    columns["line_number"] = pa.array(numbers, pa.int64())
    columns["has_flow_stats"] = pa.array(np.zeros(n, dtype=bool))
    return records_table(columns, n)


def read_ipfix_files(files: list[Path]) -> tuple[list[IpfixFile], list[SourceFileError]]:
    """Decode several files; a file that cannot be opened becomes an error, the others still decode."""
    read, errors = [], []
    for file in files:
        try:
            read.append(read_ipfix_file(file))
        except SourceFileError as exc:
            errors.append(exc)
    return read, errors
