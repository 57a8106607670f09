"""IPFIX files (RFC 5655: IPFIX messages one after the other, as softflowd's export, yaf and
IPFIX collectors store them), mapped onto the flow contract (`biflows.FLOW_SCHEMA`).

PyPI `netflow` (0.12) reads the templates, the options records and names the information
elements (its IANA registry); the flow records themselves are read a data set at a time with
numpy (a record is a fixed-size row of the set), 20-30 times faster than `netflow`'s record by
record parse (which a test checks them against, value for value).

The file is cut into messages by each message header's length and messages into sets by
theirs; templates are kept per observation domain. Data records of an options template are
not flows: they are read for the sampling rate they state (softflowd `-s N`:
samplingPacketInterval 1 and samplingPacketSpace N-1, so the rate is (interval + space) /
interval; samplingInterval or samplerRandomInterval: the rate itself) and for
systemInitTimeMilliseconds (flow times relative to it). A stated rate applies to the flow
records of its observation domain that follow it in the file; before any, it is 1.

`line_number` is the data record's position in the file, counting every data record
(options records too) from 1, as `ipfixDump` numbers them ("data record N"); `archive` is the
file's name. Records are unidirectional (reverse counts 0): stitch with `biflows`.
MACs: sourceMacAddress, destinationMacAddress or postDestinationMacAddress (softflowd
`-T ether`); 00:00:00:00:00:00 is null. ICMP without a destination port: icmpTypeCodeIPv4/6.

The ledger: `collector_records` is the flow data records the file holds (counted in its
data sets), `other_records` the options records; decoded + rejected = collector_records.
A file whose first message is not IPFIX (a wrong version number, a foreign file) raises
`SourceFileError` naming the file. Later damage (a message or set cut short, a data set
before its template, a set that does not parse) ends the file with `error` naming the
message and its byte offset; the records read before it are kept, and
`collector_records` is then None (unknown: the rest of the file cannot be framed), so the
file does not reconcile.

A flow record without a start time, an address or counts is a reject
(`missing_field:<IE name>`), as is one that ends before it starts (`end_before_start`).
Not read: variable-length elements (yaf's lists) and enterprise-specific elements (yaf's
reverse elements, PEN 29305): a template with a variable-length element is damage.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from netflow.ipfix import IPFIXDataRecord, IPFIXFieldTypes, IPFIXSet

from iot_assets.sources.biflows import FLOW_SCHEMA, REJECTS, FileLedger, SourceFileError, ledger_counts, records_table

IPFIX_SUFFIXES = (".ipfix",)
_HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence number, observation domain
_VERSION = 10
# flowEndReason (IE 136) as decode.py names YAF's reasons.
END_REASONS = {1: "idle", 2: "active", 3: "end_detected", 4: "eof", 5: "lack_of_resources"}


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


@dataclass
class _Chunk:
    """Flow records of one template read under the same sampling rate and system init time."""

    template: tuple  # the template's fields, (id, length, enterprise number or 0) each
    sampling_rate: int
    system_init_ms: int | None
    rows: list[np.ndarray] = field(default_factory=list)  # (n, record length) uint8 each
    numbers: list[np.ndarray] = field(default_factory=list)


def _field_names(template: tuple) -> dict[str, tuple[int, int]]:
    """IE name -> (offset, length) in a record; enterprise elements are left out."""
    names, offset = {}, 0
    for ie, length, enterprise in template:
        known = IPFIXFieldTypes.by_id(ie) if not enterprise else None
        if known is not None and known.name not in names:
            names[known.name] = (offset, length)
        offset += length
    return names


def _read_options(record: dict, domain: _Domain) -> None:
    if "systemInitTimeMilliseconds" in record:
        domain.system_init_ms = record["systemInitTimeMilliseconds"]
    if record.get("samplingPacketInterval", 0) > 0:
        interval = record["samplingPacketInterval"]
        domain.sampling_rate = (interval + record.get("samplingPacketSpace", 0)) // interval
    elif record.get("samplingInterval", 0) > 0:
        domain.sampling_rate = record["samplingInterval"]
    elif record.get("samplerRandomInterval", 0) > 0:
        domain.sampling_rate = record["samplerRandomInterval"]


class _Reader:
    """Walks a file's messages and sets, keeping templates, options and chunks of flow records."""

    def __init__(self, data: bytes, name: str):
        self.data = data
        self.name = name
        self.domains: dict[int, _Domain] = {}
        self.chunks: dict[tuple, _Chunk] = {}
        self.by_template: dict[int, int] = {}
        self.messages = self.data_records = self.flow_records = self.options_records = 0

    def damage(self, offset: int, what: str) -> SourceFileError:
        return SourceFileError(self.name, f"message {self.messages + 1} at byte {offset:,} {what}"[:300])

    def read(self) -> None:
        data, offset = self.data, 0
        while offset < len(data):
            if len(data) - offset < _HEADER.size:
                raise self.damage(offset, f"is cut short ({len(data) - offset} bytes, a header is {_HEADER.size})")
            version, length, _, _, domain_id = _HEADER.unpack_from(data, offset)
            if version != _VERSION:
                raise SourceFileError(self.name, f"not an IPFIX file: message {self.messages + 1} at byte "
                                                 f"{offset:,} has version {version} (IPFIX is {_VERSION})")
            if length < _HEADER.size or offset + length > len(data):
                raise self.damage(offset, f"is cut short (its header says {length:,} bytes, "
                                          f"{len(data) - offset:,} remain)")
            domain = self.domains.setdefault(domain_id, _Domain())
            set_offset = offset + _HEADER.size
            while set_offset < offset + length:
                set_offset = self.read_set(domain, set_offset, offset + length, offset)
            self.messages += 1
            offset += length

    def read_set(self, domain: _Domain, start: int, message_end: int, message_offset: int) -> int:
        if message_end - start < 4:
            raise self.damage(message_offset, "ends inside a set header")
        set_id, set_length = struct.unpack_from("!HH", self.data, start)
        if set_length < 4 or start + set_length > message_end:
            raise self.damage(message_offset, f"has a set (id {set_id}) longer than the message")
        end = start + set_length
        if set_id in (2, 3):
            try:  # netflow reads template and options template sets
                parsed = IPFIXSet(self.data[start:end], domain.templates)
            except Exception as exc:  # netflow raises struct.error, IndexError, its own classes
                raise self.damage(message_offset, f"has a template set that does not parse ({type(exc).__name__})")
            for template_id, fields in parsed.templates.items():
                if fields is None:
                    domain.templates.pop(template_id, None)
                    continue
                if any(f.length == 0xFFFF for f in fields):
                    raise self.damage(message_offset, f"defines template {template_id} with a variable-length "
                                                      "element, which this reader does not read")
                domain.templates[template_id] = fields
                if set_id == 3:
                    domain.options_templates.add(template_id)
                else:
                    domain.options_templates.discard(template_id)
        elif set_id >= 256:
            self.read_data_set(domain, set_id, start + 4, end, message_offset)
        else:
            raise self.damage(message_offset, f"has a set with the reserved id {set_id}")
        return end

    def read_data_set(self, domain: _Domain, template_id: int, start: int, end: int, message_offset: int) -> None:
        fields = domain.templates.get(template_id)
        if fields is None:
            raise self.damage(message_offset, f"has data for template {template_id} before the template")
        record_length = sum(f.length for f in fields)
        count = (end - start) // record_length if record_length else 0
        self.by_template[template_id] = self.by_template.get(template_id, 0) + count
        first = self.data_records + 1
        self.data_records += count
        if template_id in domain.options_templates:
            self.options_records += count
            for i in range(count):
                try:  # netflow reads options records (few: one per message at most in softflowd's export)
                    record = IPFIXDataRecord(self.data[start + i * record_length: start + (i + 1) * record_length],
                                             fields)
                except Exception as exc:  # an element netflow does not know, a length it cannot unpack
                    raise self.damage(message_offset, f"has an options record that does not parse "
                                                      f"({type(exc).__name__}: {exc})")
                _read_options(record.data, domain)
            return
        self.flow_records += count
        template = tuple((f.id, f.length, getattr(f, "enterprise_number", 0)) for f in fields)
        key = (template, domain.sampling_rate, domain.system_init_ms)
        chunk = self.chunks.setdefault(key, _Chunk(template, domain.sampling_rate, domain.system_init_ms))
        rows = np.frombuffer(self.data, dtype=np.uint8, count=count * record_length, offset=start)
        chunk.rows.append(rows.reshape(count, record_length))
        chunk.numbers.append(np.arange(first, first + count, dtype=np.int64))


def read_ipfix_file(path: Path, name: str | None = None) -> IpfixFile:
    """Decode one IPFIX file (held in memory while it is read); damage ends it with `ledger.error`
    set (see the module).

    `name` (default: the file's name) names the file in the records, rejects, ledger and errors."""
    path = Path(path)
    name = name or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceFileError(name, f"cannot read the file: {exc}") from exc
    ledger = FileLedger(file=name, source="ipfix", size_bytes=len(data))
    reader = _Reader(data, name)
    try:
        reader.read()
        ledger.collector_records = reader.flow_records
    except SourceFileError as exc:
        if reader.messages == 0:
            raise  # nothing of the file could be read: not an IPFIX file
        ledger.error = exc.message
    ledger.other_records = reader.options_records
    tables, rejects = [FLOW_SCHEMA.empty_table()], [REJECTS.empty_table()]
    for chunk in reader.chunks.values():
        records, rejected = _convert(chunk, name)
        tables.append(records)
        rejects.append(rejected)
    records = pa.concat_tables(tables)
    rejects = pa.concat_tables(rejects).sort_by("line_number")
    if len(reader.chunks) > 1:
        records = records.sort_by("line_number")
    ledger_counts(ledger, records, rejects)
    return IpfixFile(records, rejects, ledger, reader.messages, reader.by_template)


def _unsigned(rows: np.ndarray, place: tuple[int, int] | None) -> np.ndarray | None:
    """A big-endian unsigned element of 1-8 bytes (reduced-size encoding too) as int64."""
    if place is None or place[1] > 8:
        return None
    offset, length = place
    padded = np.zeros((len(rows), 8), dtype=np.uint8)
    padded[:, 8 - length:] = rows[:, offset:offset + length]
    return padded.view(">u8").ravel().astype(np.int64)


def _octets(rows: np.ndarray, place: tuple[int, int]) -> np.ndarray:
    offset, length = place
    return rows[:, offset:offset + length]


_DECIMAL = pa.array([str(i) for i in range(256)], pa.string())
_HEX = pa.array([f"{i:02x}" for i in range(256)], pa.string())


def _joined(octets: np.ndarray, table: pa.Array, separator: str) -> pa.Array:
    parts = [pc.take(table, pa.array(octets[:, i])) for i in range(octets.shape[1])]
    return pc.binary_join_element_wise(*parts, separator)


def _addresses(rows: np.ndarray, names: dict, v4: str, v6: str) -> pa.Array | None:
    if v4 in names and names[v4][1] == 4:
        return _joined(_octets(rows, names[v4]), _DECIMAL, ".")
    if v6 in names and names[v6][1] == 16:
        return pa.array([str(ipaddress.IPv6Address(bytes(r))) for r in _octets(rows, names[v6])], pa.string())
    return None


def _mac(rows: np.ndarray, names: dict, *candidates: str) -> pa.Array | None:
    for name in candidates:
        if name in names and names[name][1] == 6:
            octets = _octets(rows, names[name])
            text = _joined(octets, _HEX, ":")
            return pc.if_else(pa.array(octets.any(axis=1)), text, pa.scalar(None, pa.string()))
    return None


def _times(rows: np.ndarray, names: dict, chunk: _Chunk) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """Start and end in ms since the epoch, or None and the element that is missing."""
    if "flowStartMilliseconds" in names:
        start = _unsigned(rows, names["flowStartMilliseconds"])
        end = _unsigned(rows, names.get("flowEndMilliseconds"))
    elif "flowStartSeconds" in names:
        start = _unsigned(rows, names["flowStartSeconds"]) * 1000
        end = _unsigned(rows, names.get("flowEndSeconds"))
        end = end * 1000 if end is not None else None
    elif "flowStartMicroseconds" in names and names["flowStartMicroseconds"][1] == 8:
        def ntp_ms(place):  # seconds since 1900 and a 32-bit fraction
            words = _octets(rows, place).copy().view(">u4").astype(np.int64)
            return (words[:, 0] - 2_208_988_800) * 1000 + (words[:, 1] * 1000 >> 32)
        start = ntp_ms(names["flowStartMicroseconds"])
        end = ntp_ms(names["flowEndMicroseconds"]) if "flowEndMicroseconds" in names else None
    elif "flowStartSysUpTime" in names:
        if chunk.system_init_ms is None:
            return None, None, "systemInitTimeMilliseconds"
        start = chunk.system_init_ms + _unsigned(rows, names["flowStartSysUpTime"])
        end = _unsigned(rows, names.get("flowEndSysUpTime"))
        end = end + chunk.system_init_ms if end is not None else None
    else:
        return None, None, "flowStartMilliseconds"
    return start, (end if end is not None else start), ""


def _convert(chunk: _Chunk, file: str) -> tuple[pa.Table, pa.Table]:
    """A chunk's records as FLOW_SCHEMA rows, and its rejects."""
    rows = np.concatenate(chunk.rows)
    numbers = np.concatenate(chunk.numbers)
    n = len(rows)
    names = _field_names(chunk.template)
    start, end, missing = _times(rows, names, chunk)
    src = _addresses(rows, names, "sourceIPv4Address", "sourceIPv6Address")
    dst = _addresses(rows, names, "destinationIPv4Address", "destinationIPv6Address")
    packets = _unsigned(rows, names.get("packetDeltaCount", names.get("packetTotalCount")))
    octets = _unsigned(rows, names.get("octetDeltaCount", names.get("octetTotalCount")))
    whole_chunk = (f"missing_field:{missing}" if missing else "missing_field:sourceIPv4Address" if src is None
                   else "missing_field:destinationIPv4Address" if dst is None
                   else "missing_field:packetDeltaCount" if packets is None
                   else "missing_field:octetDeltaCount" if octets is None else "")
    if whole_chunk:
        return FLOW_SCHEMA.empty_table(), _rejects(file, numbers, [whole_chunk] * n)
    protocol = _unsigned(rows, names.get("protocolIdentifier"))
    protocol = protocol if protocol is not None else np.zeros(n, np.int64)
    dst_port = _unsigned(rows, names.get("destinationTransportPort"))
    dst_port = dst_port if dst_port is not None else np.zeros(n, np.int64)
    icmp = _unsigned(rows, names.get("icmpTypeCodeIPv4", names.get("icmpTypeCodeIPv6")))
    if icmp is not None:
        dst_port = np.where(np.isin(protocol, (1, 58)) & (dst_port == 0), icmp, dst_port)
    flags = _unsigned(rows, names.get("tcpControlBits"))
    src_port = _unsigned(rows, names.get("sourceTransportPort"))
    reason = _end_reason(rows, names)
    utc = FLOW_SCHEMA.field("flow_start").type
    columns = {
        "archive": pa.array([file] * n, pa.string()), "line_number": pa.array(numbers),
        "flow_start": pa.array(start).cast(utc), "flow_end": pa.array(end).cast(utc),
        "duration_ms": pa.array(end - start), "protocol": pa.array(protocol),
        "src_ip": src, "src_port": pa.array(src_port if src_port is not None else np.zeros(n, np.int64)),
        "packets": pa.array(packets), "bytes": pa.array(octets),
        "src_mac": _mac(rows, names, "sourceMacAddress"), "dst_ip": dst, "dst_port": pa.array(dst_port),
        "reverse_packets": pa.array(np.zeros(n, np.int64)), "reverse_bytes": pa.array(np.zeros(n, np.int64)),
        "dst_mac": _mac(rows, names, "destinationMacAddress", "postDestinationMacAddress"),
        "union_tcp_flags": pa.array(np.where(protocol == 6, (flags if flags is not None else 0) & 0xFF, 0)),
        "has_flow_stats": pa.array(np.zeros(n, dtype=bool)),
        "ip_version": pa.array(np.full(n, 6 if "sourceIPv6Address" in names and "sourceIPv4Address" not in names
                                       else 4, dtype=np.int8)),
        "sampling_rate": pa.array(np.full(n, chunk.sampling_rate, dtype=np.int64)),
    }
    for name, column in (("ingressInterface", "ingress_interface"), ("egressInterface", "egress_interface"),
                         ("vlanId", "vlan_id"), ("ipClassOfService", "ip_class_of_service")):
        values = _unsigned(rows, names.get(name))
        if values is not None:
            columns[column] = pa.array(values)
    if reason is not None:
        columns["end_reason"] = reason
    columns = {k: v for k, v in columns.items() if v is not None}
    records = records_table(columns, n)
    bad = end < start
    if not bad.any():
        return records, REJECTS.empty_table()
    return records.filter(pa.array(~bad)), _rejects(file, numbers[bad], ["end_before_start"] * int(bad.sum()))


def _end_reason(rows: np.ndarray, names: dict) -> pa.Array | None:
    codes = _unsigned(rows, names.get("flowEndReason"))
    if codes is None:
        return None
    lookup = pa.array([END_REASONS.get(i) for i in range(256)], pa.string())
    return pc.take(lookup, pa.array(np.clip(codes, 0, 255)))


def _rejects(file: str, numbers: np.ndarray, reasons: list[str]) -> pa.Table:
    return pa.table({"archive": pa.array([file] * len(numbers), pa.string()),
                     "line_number": pa.array(numbers, pa.int64()),
                     "reason": pa.array(reasons, pa.string()),
                     "detail": pa.nulls(len(numbers), pa.string())}, schema=REJECTS)


def read_ipfix_files(files: list[Path]) -> tuple[list[IpfixFile], list[SourceFileError]]:
    """Decode several files; a file that cannot be opened becomes an error, the others still decode."""
    read, errors = [], []
    for file in files:
        try:
            read.append(read_ipfix_file(file))
        except SourceFileError as exc:
            errors.append(exc)
    return read, errors
