"""Decoding YAF / super_mediator JSON into typed flow tables.

Every quirk of the source is resolved here and nowhere else:
- `*Milliseconds` durations hold seconds: converted to integer milliseconds;
- MAC addresses end with a colon: stripped and lower-cased;
- `*IPv4Address` fields also carry IPv6: kept as text, `ip_version` says which;
- hex strings (`"08"`, `"0xc0"`, `"0x7229139c"`) become integers;
- TCP flags as letters (`"AP"`, `"S"`, `"0"`) become the usual bit mask;
- keys that YAF leaves out become nulls; the empty `flowEndReason` gets a name.

Fast path: pyarrow parses whole blocks with an explicit schema. A block that pyarrow
refuses (a non-JSON line, a wrong type, an unknown field) is parsed again line by line,
so that each bad record is rejected with its line number and the rest goes through.
"""

from __future__ import annotations

import io
import queue
import re
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import BinaryIO, Callable, Iterator

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj


@dataclass(frozen=True)
class Field:
    source: str  # key in the JSON record
    name: str  # column in decoded_flows
    kind: str  # how the value is converted, see _CONVERTERS
    required: bool = False


# The flow fields YAF (--flow-stats --mac) writes through super_mediator, in source order.
FIELDS: tuple[Field, ...] = (
    Field("flowStartMilliseconds", "flow_start", "time", True),
    Field("flowEndMilliseconds", "flow_end", "time", True),
    Field("flowDurationMilliseconds", "duration_ms", "seconds", True),
    Field("reverseFlowDeltaMilliseconds", "reverse_delta_ms", "seconds"),
    Field("protocolIdentifier", "protocol", "int", True),
    Field("sourceIPv4Address", "src_ip", "ip", True),
    Field("sourceTransportPort", "src_port", "int", True),
    Field("packetTotalCount", "packets", "int", True),
    Field("octetTotalCount", "bytes", "int", True),
    Field("flowAttributes", "flow_attributes", "hex"),
    Field("sourceMacAddress", "src_mac", "mac", True),
    Field("destinationIPv4Address", "dst_ip", "ip", True),
    Field("destinationTransportPort", "dst_port", "int", True),
    Field("reversePacketTotalCount", "reverse_packets", "int", True),
    Field("reverseOctetTotalCount", "reverse_bytes", "int", True),
    Field("reverseFlowAttributes", "reverse_flow_attributes", "hex"),
    Field("destinationMacAddress", "dst_mac", "mac", True),
    Field("initialTCPFlags", "initial_tcp_flags", "tcp_flags"),
    Field("unionTCPFlags", "union_tcp_flags", "tcp_flags"),
    Field("reverseInitialTCPFlags", "reverse_initial_tcp_flags", "tcp_flags"),
    Field("reverseUnionTCPFlags", "reverse_union_tcp_flags", "tcp_flags"),
    Field("tcpSequenceNumber", "tcp_sequence_number", "hex"),
    Field("reverseTcpSequenceNumber", "reverse_tcp_sequence_number", "hex"),
    Field("ingressInterface", "ingress_interface", "int"),
    Field("egressInterface", "egress_interface", "int"),
    Field("vlanId", "vlan_id", "hex"),
    Field("silkAppLabel", "silk_app_label", "int"),
    Field("ipClassOfService", "ip_class_of_service", "hex"),
    Field("flowEndReason", "end_reason", "end_reason"),
    Field("collectorName", "collector_name", "text"),
    Field("observationDomainId", "observation_domain_id", "int"),
    # Flow statistics (absent when YAF kept none for the flow).
    Field("tcpUrgTotalCount", "tcp_urg_packets", "int"),
    Field("smallPacketCount", "small_packets", "int"),
    Field("nonEmptyPacketCount", "non_empty_packets", "int"),
    Field("dataByteCount", "payload_bytes", "int"),
    Field("averageInterarrivalTime", "mean_interarrival_ms", "int"),
    Field("firstNonEmptyPacketSize", "first_payload_bytes", "int"),
    Field("largePacketCount", "large_packets", "int"),
    Field("maxPacketSize", "max_payload_bytes", "int"),
    Field("firstEightNonEmptyPacketDirections", "first_eight_directions", "hex"),
    Field("standardDeviationPayloadLength", "stddev_payload_bytes", "int"),
    Field("standardDeviationInterarrivalTime", "stddev_interarrival_ms", "int"),
    Field("bytesPerPacket", "bytes_per_packet", "int"),
    Field("reverseTcpUrgTotalCount", "reverse_tcp_urg_packets", "int"),
    Field("reverseSmallPacketCount", "reverse_small_packets", "int"),
    Field("reverseNonEmptyPacketCount", "reverse_non_empty_packets", "int"),
    Field("reverseDataByteCount", "reverse_payload_bytes", "int"),
    Field("reverseAverageInterarrivalTime", "reverse_mean_interarrival_ms", "int"),
    Field("reverseFirstNonEmptyPacketSize", "reverse_first_payload_bytes", "int"),
    Field("reverseLargePacketCount", "reverse_large_packets", "int"),
    Field("reverseMaxPacketSize", "reverse_max_payload_bytes", "int"),
    Field("reverseStandardDeviationPayloadLength", "reverse_stddev_payload_bytes", "int"),
    Field("reverseStandardDeviationInterarrivalTime", "reverse_stddev_interarrival_ms", "int"),
    Field("reverseBytesPerPacket", "reverse_bytes_per_packet", "int"),
)

_JSON_TYPES: dict[str, pa.DataType] = {
    "time": pa.timestamp("ms"),
    "seconds": pa.float64(),
    "int": pa.int64(),
    "ip": pa.string(),
    "mac": pa.string(),
    "hex": pa.string(),
    "tcp_flags": pa.string(),
    "end_reason": pa.string(),
    "text": pa.string(),
}

FLOW_STRUCT = pa.struct([pa.field(f.source, _JSON_TYPES[f.kind]) for f in FIELDS])
STATS_STRUCT = pa.struct(
    [
        pa.field(name, pa.int64())
        for name in (
            "exportedFlowTotalCount", "packetTotalCount", "droppedPacketTotalCount",
            "ignoredPacketTotalCount", "expiredFragmentCount", "assembledFragmentCount",
            "flowTableFlushEvents", "flowTablePeakCount", "exportingProcessId",
            "meanFlowRate", "meanPacketRate", "observationDomainId",
        )
    ]
    + [pa.field("exporterIPv4Address", pa.string()), pa.field("exporterName", pa.string())]
)
_ACCESS_ENTRY = pa.struct([pa.field("certToolId", pa.int64()), pa.field("observationTimeSeconds", pa.int64())])
TOMBSTONE_STRUCT = pa.struct(
    [
        pa.field("observationDomainId", pa.int64()),
        pa.field("exportingProcessId", pa.int64()),
        pa.field("exporterConfiguredId", pa.int64()),
        pa.field("tombstoneId", pa.int64()),
        pa.field("observationTimeSeconds", pa.int64()),
        pa.field("tombstoneAccessList", pa.list_(pa.struct([pa.field("tombstoneAccessEntry", _ACCESS_ENTRY)]))),
    ]
)
RECORD_SCHEMA = pa.schema(
    [pa.field("flows", FLOW_STRUCT), pa.field("stats", STATS_STRUCT), pa.field("tombstone", TOMBSTONE_STRUCT)]
)

# TCP flag letters as YAF prints them, with their bits.
TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}

# YAF prints reasons 1/2/4 as idle/active/eof and leaves reason 3, "end of flow detected"
# (a TCP FIN or RST), empty: in the real archives every empty reason is a TCP flow.
END_REASONS = {"idle": "idle", "active": "active", "eof": "eof", "": "end_detected"}

_OUT_TYPES: dict[str, pa.DataType] = {
    "time": pa.timestamp("ms", tz="UTC"),
    "seconds": pa.int64(),
    "int": pa.int64(),
    "ip": pa.string(),
    "mac": pa.string(),
    "hex": pa.int64(),
    "tcp_flags": pa.int16(),
    "end_reason": pa.string(),
    "text": pa.string(),
}

# Payload counts that are zero when YAF leaves them out; timing statistics stay null.
ZERO_WHEN_ABSENT = tuple(
    f"{prefix}{name}"
    for prefix in ("", "reverse_")
    for name in ("tcp_urg_packets", "small_packets", "non_empty_packets", "payload_bytes", "first_payload_bytes",
                 "large_packets", "max_payload_bytes", "stddev_payload_bytes", "bytes_per_packet")
)

DECODED_SCHEMA = pa.schema(
    [pa.field("archive", pa.string()), pa.field("line_number", pa.int64())]
    + [pa.field(f.name, _OUT_TYPES[f.kind]) for f in FIELDS]
    + [pa.field("has_flow_stats", pa.bool_()), pa.field("ip_version", pa.int8())]
)
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("archive", pa.string()),
        pa.field("line_number", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)

_MAC = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,3})?$")
_INT64 = (-(2**63), 2**63 - 1)


@dataclass
class Reject:
    line_number: int
    reason: str
    detail: str = ""


@dataclass
class Block:
    """What one block of lines decodes into."""

    flows: pa.Table  # DECODED_SCHEMA
    rejects: list[Reject]
    stats: list[dict]
    tombstones: int
    lines: int
    size_bytes: int
    unknown_fields: set[str] = field(default_factory=set)


# ---------------------------------------------------------------- value converters


def _hex_to_int(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Hex strings with or without `0x` to int64; returns (values, bad mask)."""
    values = pc.utf8_lower(values)
    digits = pc.replace_substring_regex(values, pattern="^0x", replacement="")
    lengths = pc.fill_null(pc.utf8_length(digits), 0).to_numpy(zero_copy_only=False)
    valid = ~np.asarray(pc.is_null(digits).to_numpy(zero_copy_only=False))
    width = max(int(lengths.max(initial=1)), 1)
    bad = valid & ((lengths == 0) | (lengths > 16))
    width = min(width, 16)
    padded = pc.utf8_lpad(pc.fill_null(pc.utf8_slice_codeunits(digits, 0, 16), "0"), width=width, padding="0")
    padded = padded.combine_chunks() if isinstance(padded, pa.ChunkedArray) else padded
    offsets = np.frombuffer(padded.buffers()[1], dtype=np.int32)[padded.offset : padded.offset + len(padded) + 1]
    raw = np.frombuffer(padded.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    nibbles = _HEX_LUT[raw].reshape(len(padded), width)
    bad |= valid & (nibbles == 255).any(axis=1)
    nibbles = np.where(nibbles == 255, 0, nibbles).astype(np.uint64)
    weights = (np.uint64(16) ** np.arange(width - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    ints = (nibbles * weights).sum(axis=1).astype(np.int64) if len(padded) else np.zeros(0, np.int64)
    return pa.array(ints, type=pa.int64(), mask=~valid | bad), bad


_HEX_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i


def _tcp_flags_to_int(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    encoded = pc.dictionary_encode(values)
    mapped, bad_words = [], []
    for word in encoded.dictionary.to_pylist():
        bits = 0
        ok = word is not None
        if ok and word != "0":
            for letter in word:
                if letter not in TCP_FLAG_BITS:
                    ok = False
                    break
                bits |= TCP_FLAG_BITS[letter]
        mapped.append(bits if ok else None)
        bad_words.append(word is not None and not ok)
    indices = encoded.indices
    out = pc.take(pa.array(mapped, type=pa.int16()), indices)
    bad = pc.take(pa.array(bad_words, type=pa.bool_()), indices)
    return out, np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False))


def _end_reason(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    encoded = pc.dictionary_encode(values)
    words = encoded.dictionary.to_pylist()
    out = pc.take(pa.array([END_REASONS.get(w) for w in words], type=pa.string()), encoded.indices)
    bad = pc.take(pa.array([w is not None and w not in END_REASONS for w in words]), encoded.indices)
    return out, np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False))


def _mac(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    out = pc.utf8_rtrim(pc.utf8_lower(values), characters=":")
    bad = pc.invert(pc.match_substring_regex(out, _MAC))
    return out, np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False))


def _seconds_to_ms(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    ms = pc.round(pc.multiply(values, 1000.0))
    finite = pc.and_(pc.is_finite(ms), pc.less(pc.abs(ms), 2.0**62))
    bad = np.asarray(pc.fill_null(pc.invert(finite), False).to_numpy(zero_copy_only=False))
    ms = pc.if_else(finite, ms, None)
    return pc.cast(ms, pa.int64()), bad


def _no_bad(values: pa.Array) -> np.ndarray:
    return np.zeros(len(values), dtype=bool)


def _per_distinct(convert: Callable[[pa.Array], tuple[pa.Array, np.ndarray]]):
    """Apply a string converter to the distinct values only: a block has few distinct MACs or flags."""

    def apply(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
        encoded = pc.dictionary_encode(values)
        out, bad = convert(encoded.dictionary)
        indices = encoded.indices
        bad_rows = np.asarray(pc.fill_null(pc.take(pa.array(bad, type=pa.bool_()), indices), False).to_numpy(zero_copy_only=False))
        return pc.take(out, indices), bad_rows

    return apply


_CONVERTERS: dict[str, Callable[[pa.Array], tuple[pa.Array, np.ndarray]]] = {
    "time": lambda v: (pc.assume_timezone(v, "UTC"), _no_bad(v)),
    "seconds": _seconds_to_ms,
    "int": lambda v: (v, _no_bad(v)),
    "ip": lambda v: (v, _no_bad(v)),
    "mac": _per_distinct(_mac),
    "hex": _per_distinct(_hex_to_int),
    "tcp_flags": _per_distinct(_tcp_flags_to_int),
    "end_reason": _per_distinct(_end_reason),
    "text": lambda v: (v, _no_bad(v)),
}


# ---------------------------------------------------------------- rules


def _rule_masks(cols: dict[str, np.ndarray], first_day: date, last_day: date) -> list[tuple[str, np.ndarray]]:
    """Absurd values, in the order they are reported; a row gets the first that applies."""
    start = cols["flow_start"]
    end = cols["flow_end"]
    first_ms = int(datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc).timestamp() * 1000)
    after_ms = first_ms + ((last_day - first_day).days + 1) * 86_400_000
    rules = []
    for name in ("packets", "bytes", "reverse_packets", "reverse_bytes"):
        rules.append((f"negative_count:{name}", cols[name] < 0))
    rules.append(("no_packets", (cols["packets"] == 0) & (cols["reverse_packets"] == 0)))
    for name in ("src_port", "dst_port"):
        rules.append((f"port_out_of_range:{name}", (cols[name] < 0) | (cols[name] > 65535)))
    rules.append(("protocol_out_of_range", (cols["protocol"] < 0) | (cols["protocol"] > 255)))
    rules.append(("negative_duration", cols["duration_ms"] < 0))
    rules.append(("end_before_start", end < start))
    rules.append(("outside_date_range", (start < first_ms) | (start >= after_ms)))
    return rules


def _convert(flows: pa.StructArray, line_numbers: np.ndarray, archive: str, first_day: date, last_day: date) -> tuple[pa.Table, list[Reject]]:
    """Typed columns from the `flows` struct; rows breaking a rule become rejects."""
    n = len(flows)
    if n == 0:
        return DECODED_SCHEMA.empty_table(), []
    # The first reason that applies to a row, as an index into `reasons` (0: none).
    reason_code = np.zeros(n, dtype=np.int32)
    reasons = [""]

    def mark(reason: str, mask: np.ndarray) -> None:
        mask = mask & (reason_code == 0)
        if mask.any():
            reasons.append(reason)
            reason_code[mask] = len(reasons) - 1

    columns: dict[str, pa.Array] = {}
    for f, child in zip(FIELDS, flows.flatten()):
        if f.required and child.null_count:
            mark(f"missing_field:{f.source}", np.asarray(pc.is_null(child).to_numpy(zero_copy_only=False)))
        values, bad = _CONVERTERS[f.kind](child)
        mark(f"bad_value:{f.source}", bad)
        columns[f.name] = values
    numeric = {
        name: np.asarray(pc.fill_null(columns[name].cast(pa.int64()), 0).to_numpy(zero_copy_only=False))
        for name in ("packets", "bytes", "reverse_packets", "reverse_bytes", "src_port", "dst_port", "protocol", "duration_ms", "flow_start", "flow_end")
    }
    for rule, mask in _rule_masks(numeric, first_day, last_day):
        mark(rule, mask)
    # YAF leaves the statistics out when a direction carried no payload (checked on the real
    # archives: reverse statistics are absent exactly when there are no reverse packets).
    columns["has_flow_stats"] = pc.is_valid(columns["non_empty_packets"])
    for name in ZERO_WHEN_ABSENT:
        columns[name] = pc.fill_null(columns[name], 0)
    is_v6 = pc.or_(pc.match_substring(columns["src_ip"], ":"), pc.match_substring(columns["dst_ip"], ":"))
    columns["ip_version"] = pc.if_else(pc.fill_null(is_v6, False), 6, 4).cast(pa.int8())
    table = pa.table(
        {
            "archive": pa.array(np.full(n, archive, dtype=object), type=pa.string()),
            "line_number": pa.array(line_numbers, type=pa.int64()),
            **columns,
        }
    ).cast(DECODED_SCHEMA)
    bad_rows = np.flatnonzero(reason_code)
    rejects = [Reject(int(line_numbers[i]), reasons[reason_code[i]]) for i in bad_rows]
    if len(bad_rows):
        table = table.filter(pa.array(reason_code == 0))
    return table, rejects


# ---------------------------------------------------------------- parsing a block


PARSE_CHUNK_BYTES = 4 << 20
_PARSE_STRICT = pj.ParseOptions(explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="error")
_PARSE_LENIENT = pj.ParseOptions(explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="ignore")


def _read(block: bytes, parse: pj.ParseOptions) -> pa.Table:
    return pj.read_json(
        # Blocks of a few MB let pyarrow parse on every core.
        io.BytesIO(block), read_options=pj.ReadOptions(block_size=PARSE_CHUNK_BYTES), parse_options=parse
    )


def _unknown_fields(block: bytes) -> set[str]:
    """Names of fields in `block` that the schema does not know (one inferring parse)."""
    inferred = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(block_size=len(block) + 1)).schema
    unknown: set[str] = set()
    for top in inferred:
        if top.name not in RECORD_SCHEMA.names:
            unknown.add(top.name)
        elif top.name == "flows" and pa.types.is_struct(top.type):
            unknown.update(f"flows.{c.name}" for c in top.type if c.name not in FLOW_STRUCT.names)
    return unknown


def _python_type_ok(kind: str, value) -> bool:
    if value is None:
        return True
    if kind == "int":
        return type(value) is int and _INT64[0] <= value <= _INT64[1]
    if kind == "seconds":
        return type(value) in (int, float)
    if kind == "time":
        return type(value) is str and bool(_TIME.match(value))
    return type(value) is str


def _line_by_line(block: bytes, first_line: int) -> tuple[list[dict], list[int], list[Reject], list[dict], int, set[str]]:
    """The slow path for a block pyarrow refused: every line on its own."""
    records, line_numbers, rejects, stats, tombstones, unknown = [], [], [], [], 0, set()
    kinds = {f.source: f.kind for f in FIELDS}
    for offset, line in enumerate(block.split(b"\n")[:-1]):
        number = first_line + offset
        if not line.strip():
            rejects.append(Reject(number, "empty_line"))
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            rejects.append(Reject(number, "invalid_json", str(exc)[:200]))
            continue
        if not isinstance(obj, dict) or len(obj) != 1:
            rejects.append(Reject(number, "unknown_record", f"expected one of flows/stats/tombstone, got {_shape(obj)}"))
            continue
        (kind, body), = obj.items()
        if kind == "stats" and isinstance(body, dict):
            stats.append(body)
            continue
        if kind == "tombstone":
            tombstones += 1
            continue
        if kind != "flows" or not isinstance(body, dict):
            rejects.append(Reject(number, "unknown_record", f"expected one of flows/stats/tombstone, got {_shape(obj)}"))
            continue
        wrong = [k for k, v in body.items() if k in kinds and not _python_type_ok(kinds[k], v)]
        if wrong:
            rejects.append(Reject(number, f"wrong_type:{wrong[0]}", f"{wrong[0]}={body[wrong[0]]!r}"[:200]))
            continue
        unknown.update(f"flows.{k}" for k in body if k not in kinds)
        if "flowStartMilliseconds" in body or "flowEndMilliseconds" in body:
            body = dict(body)
            for key in ("flowStartMilliseconds", "flowEndMilliseconds"):
                if body.get(key) is not None:
                    body[key] = datetime.fromisoformat(body[key])
        records.append(body)
        line_numbers.append(number)
    return records, line_numbers, rejects, stats, tombstones, unknown


def _shape(obj) -> str:
    if isinstance(obj, dict):
        return "{" + ", ".join(list(obj)[:3]) + "}"
    return type(obj).__name__


def decode_block(block: bytes, first_line: int, archive: str, first_day: date, last_day: date) -> Block:
    """Decode a block of whole lines (ending with a newline) whose first line is `first_line`."""
    n_lines = block.count(b"\n")
    unknown: set[str] = set()
    table = None
    try:
        table = _read(block, _PARSE_STRICT)
    except pa.ArrowInvalid as exc:
        if "unexpected field" in str(exc):
            try:
                table = _read(block, _PARSE_LENIENT)
                unknown = _unknown_fields(block)
            except pa.ArrowInvalid:
                table = None
    if table is not None and table.num_rows == n_lines:
        line_numbers = np.arange(first_line, first_line + n_lines, dtype=np.int64)
        flows_col = table.column("flows").combine_chunks()
        stats_col = table.column("stats").combine_chunks()
        tomb_col = table.column("tombstone").combine_chunks()
        is_flow = np.asarray(flows_col.is_valid().to_numpy(zero_copy_only=False))
        is_stats = np.asarray(stats_col.is_valid().to_numpy(zero_copy_only=False))
        is_tomb = np.asarray(tomb_col.is_valid().to_numpy(zero_copy_only=False))
        several = (is_flow.astype(int) + is_stats + is_tomb) > 1
        neither = ~(is_flow | is_stats | is_tomb)
        rejects = [Reject(int(line_numbers[i]), "unknown_record", "no flows, stats or tombstone object") for i in np.flatnonzero(neither)]
        rejects += [Reject(int(line_numbers[i]), "unknown_record", "more than one record kind on the line") for i in np.flatnonzero(several)]
        keep = is_flow & ~several
        flows = flows_col.filter(pa.array(keep))
        stats = stats_col.filter(pa.array(is_stats & ~several)).to_pylist()
        tombstones = int((is_tomb & ~several).sum())
        lines_kept = line_numbers[keep]
    else:
        records, kept_lines, rejects, stats, tombstones, unknown = _line_by_line(block, first_line)
        flows = pa.array(records, type=FLOW_STRUCT) if records else pa.array([], type=FLOW_STRUCT)
        lines_kept = np.asarray(kept_lines, dtype=np.int64)
    decoded, rule_rejects = _convert(flows, lines_kept, archive, first_day, last_day)
    return Block(decoded, rejects + rule_rejects, stats, tombstones, n_lines, len(block), unknown)


def iter_blocks(stream: BinaryIO, block_bytes: int = 16 << 20) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines from a byte stream, with the number of each block's first line.

    Reading runs one block ahead in a thread, so that inflating and untarring the next
    block overlaps with decoding this one; an error while reading is raised here.
    """
    blocks: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in _blocks(stream, block_bytes):
                while not stop.is_set():
                    try:
                        blocks.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            blocks.put(None)
        except BaseException as exc:  # handed to the consumer
            blocks.put(exc)

    reader = threading.Thread(target=produce, name="archive-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = blocks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _blocks(stream: BinaryIO, block_bytes: int) -> Iterator[tuple[bytes, int]]:
    pending = b""
    line = 1
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            break
        data = pending + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            pending = data
            continue
        block, pending = data[: cut + 1], data[cut + 1 :]
        yield block, line
        line += block.count(b"\n")
    if pending:
        yield pending + b"\n", line
