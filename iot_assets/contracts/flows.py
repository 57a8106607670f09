"""The flow record, each field stated once.

`FIELDS` is the one table of the source's flow fields: the JSON key YAF writes, the column it
becomes, how its value is converted, whether YAF always writes it, and the bounds a sane value
keeps. Everything else is generated from it: the pyarrow schema pyarrow parses with
(`FLOW_STRUCT`), the decoded table's schema (`DECODED_SCHEMA`), the reject rules of the decoder
(`bound_rules`, with the record-level rules `RECORD_RULES`), and the pandera model that
validates a decoded day (`DecodedFlows`, in `contracts.schemas`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Bounds:
    """The values a sane field keeps, and the reject reason of a value outside them."""

    low: int | None
    high: int | None
    reason: str  # `{name}` is the column's name
    rank: int  # rules apply in rank order; a record gets the first that breaks


COUNT = Bounds(0, None, "negative_count:{name}", 10)
PORT = Bounds(0, 65535, "port_out_of_range:{name}", 30)
PROTOCOL = Bounds(0, 255, "protocol_out_of_range", 40)
DURATION = Bounds(0, None, "negative_duration", 50)
NOT_NEGATIVE = Bounds(0, None, "negative_value:{name}", 90)  # sizes, interfaces, labels

# Record-level rules (more than one field), in the same ranking as the bounds.
RECORD_RULES = (("no_packets", 20), ("end_before_start", 60), ("outside_date_range", 70))


@dataclass(frozen=True)
class Field:
    source: str  # key in the JSON record
    name: str  # column in decoded_flows
    kind: str  # how the value is converted (core.decode's converters)
    required: bool = False  # YAF always writes it: a record without it is a reject
    bounds: Bounds | None = None
    description: str = ""


# The flow fields YAF (--flow-stats --mac) writes through super_mediator, in source order.
FIELDS: tuple[Field, ...] = (
    Field("flowStartMilliseconds", "flow_start", "time", True, description="first packet, UTC"),
    Field("flowEndMilliseconds", "flow_end", "time", True, description="last packet, UTC"),
    Field("flowDurationMilliseconds", "duration_ms", "seconds", True, DURATION,
          "flowDurationMilliseconds, which holds seconds, in ms"),
    Field("reverseFlowDeltaMilliseconds", "reverse_delta_ms", "seconds"),
    Field("protocolIdentifier", "protocol", "int", True, PROTOCOL, "IP protocol number"),
    Field("sourceIPv4Address", "src_ip", "ip", True, description="IPv4 or IPv6, despite the source's field name"),
    Field("sourceTransportPort", "src_port", "int", True, PORT),
    Field("packetTotalCount", "packets", "int", True, COUNT),
    Field("octetTotalCount", "bytes", "int", True, COUNT),
    Field("flowAttributes", "flow_attributes", "hex"),
    Field("sourceMacAddress", "src_mac", "mac", True, description="source MAC, trailing colon removed"),
    Field("destinationIPv4Address", "dst_ip", "ip", True),
    Field("destinationTransportPort", "dst_port", "int", True, PORT),
    Field("reversePacketTotalCount", "reverse_packets", "int", True, COUNT),
    Field("reverseOctetTotalCount", "reverse_bytes", "int", True, COUNT),
    Field("reverseFlowAttributes", "reverse_flow_attributes", "hex"),
    Field("destinationMacAddress", "dst_mac", "mac", True),
    Field("initialTCPFlags", "initial_tcp_flags", "tcp_flags"),
    Field("unionTCPFlags", "union_tcp_flags", "tcp_flags"),
    Field("reverseInitialTCPFlags", "reverse_initial_tcp_flags", "tcp_flags"),
    Field("reverseUnionTCPFlags", "reverse_union_tcp_flags", "tcp_flags"),
    Field("tcpSequenceNumber", "tcp_sequence_number", "hex"),
    Field("reverseTcpSequenceNumber", "reverse_tcp_sequence_number", "hex"),
    Field("ingressInterface", "ingress_interface", "int", bounds=NOT_NEGATIVE),
    Field("egressInterface", "egress_interface", "int", bounds=NOT_NEGATIVE),
    Field("vlanId", "vlan_id", "hex"),
    Field("silkAppLabel", "silk_app_label", "int", bounds=NOT_NEGATIVE),
    Field("ipClassOfService", "ip_class_of_service", "hex"),
    Field("flowEndReason", "end_reason", "end_reason", description="idle, active, eof or end_detected (FIN/RST)"),
    Field("collectorName", "collector_name", "text"),
    Field("observationDomainId", "observation_domain_id", "int", bounds=NOT_NEGATIVE),
    # Flow statistics (absent when YAF kept none for the flow).
    *(Field(source, name, "int", bounds=NOT_NEGATIVE) for source, name in (
        ("tcpUrgTotalCount", "tcp_urg_packets"),
        ("smallPacketCount", "small_packets"),
        ("nonEmptyPacketCount", "non_empty_packets"),
        ("dataByteCount", "payload_bytes"),
        ("averageInterarrivalTime", "mean_interarrival_ms"),
        ("firstNonEmptyPacketSize", "first_payload_bytes"),
        ("largePacketCount", "large_packets"),
        ("maxPacketSize", "max_payload_bytes"),
    )),
    Field("firstEightNonEmptyPacketDirections", "first_eight_directions", "hex"),
    *(Field(source, name, "int", bounds=NOT_NEGATIVE) for source, name in (
        ("standardDeviationPayloadLength", "stddev_payload_bytes"),
        ("standardDeviationInterarrivalTime", "stddev_interarrival_ms"),
        ("bytesPerPacket", "bytes_per_packet"),
        ("reverseTcpUrgTotalCount", "reverse_tcp_urg_packets"),
        ("reverseSmallPacketCount", "reverse_small_packets"),
        ("reverseNonEmptyPacketCount", "reverse_non_empty_packets"),
        ("reverseDataByteCount", "reverse_payload_bytes"),
        ("reverseAverageInterarrivalTime", "reverse_mean_interarrival_ms"),
        ("reverseFirstNonEmptyPacketSize", "reverse_first_payload_bytes"),
        ("reverseLargePacketCount", "reverse_large_packets"),
        ("reverseMaxPacketSize", "reverse_max_payload_bytes"),
        ("reverseStandardDeviationPayloadLength", "reverse_stddev_payload_bytes"),
        ("reverseStandardDeviationInterarrivalTime", "reverse_stddev_interarrival_ms"),
        ("reverseBytesPerPacket", "reverse_bytes_per_packet"),
    )),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}


def bound_rules() -> list[tuple[str, str, Bounds]]:
    """(reason, column, bounds) of every bounded field, in rank order (then source order)."""
    bounded = [(f.bounds.reason.format(name=f.name), f.name, f.bounds) for f in FIELDS if f.bounds]
    return sorted(bounded, key=lambda rule: rule[2].rank)


# Times are read as text and parsed strictly (`core.decode_values._parse_times`), the same way on the fast
# and the slow path: pyarrow's own parser would also take `2019-06-25`, `T` and zone offsets.
JSON_TYPES: dict[str, pa.DataType] = {
    "time": pa.string(), "seconds": pa.float64(), "int": pa.int64(), "ip": pa.string(), "mac": pa.string(),
    "hex": pa.string(), "tcp_flags": pa.string(), "end_reason": pa.string(), "text": pa.string(),
}
OUT_TYPES: dict[str, pa.DataType] = {
    "time": pa.timestamp("ms", tz="UTC"), "seconds": pa.int64(), "int": pa.int64(), "ip": pa.string(),
    "mac": pa.string(), "hex": pa.int64(), "tcp_flags": pa.int16(), "end_reason": pa.string(), "text": pa.string(),
}

FLOW_STRUCT = pa.struct([pa.field(f.source, JSON_TYPES[f.kind]) for f in FIELDS])
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

# Payload counts that are zero when YAF leaves them out; timing statistics stay null.
ZERO_WHEN_ABSENT = tuple(
    f"{prefix}{name}"
    for prefix in ("", "reverse_")
    for name in ("tcp_urg_packets", "small_packets", "non_empty_packets", "payload_bytes", "first_payload_bytes",
                 "large_packets", "max_payload_bytes", "stddev_payload_bytes", "bytes_per_packet")
)

DECODED_SCHEMA = pa.schema(
    [pa.field("archive", pa.string()), pa.field("line_number", pa.int64())]
    + [pa.field(f.name, OUT_TYPES[f.kind]) for f in FIELDS]
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
