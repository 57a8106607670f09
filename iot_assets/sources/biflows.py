"""What the collector readers share: the flow contract with `sampling_rate`, the ledger of a
file, and the stitching of unidirectional records into biflows.

Collectors (nfcapd, IPFIX collectors) store unidirectional records: a connection is two
records, one per direction. The products want YAF's biflows (forward and reverse counts in
one row), so records are stitched.

The stitching rule. Two records are the two sides of one biflow when
1. both are unidirectional (their `reverse_packets` is 0),
2. they have the same protocol and reversed endpoints (A's source address and port are B's
   destination address and port, and the other way round),
3. they overlap in time: sorted by start, the later one starts no more than `max_gap_ms`
   after the earlier one ends (a one-packet DNS query and its answer do not overlap
   exactly: the answer comes a few milliseconds after the query's only packet),
4. they are neighbours: among the records of the same endpoints sorted by start, each record
   is stitched at most once, to the next one, left to right (the pieces of a long connection
   cut by an active timeout pair up piece by piece).
The forward side is the one that starts first; on equal starts (softflowd gives both sides
the same times) the side whose source port is the higher one, the client's ephemeral port.
The biflow keeps the forward record's `archive` and `line_number`, spans both records
(`flow_start` the earlier start, `flow_end` the later end), takes `reverse_packets`,
`reverse_bytes` and the reverse TCP flags from the other record, and
`reverse_delta_ms` = the reverse start - the forward start. A MAC missing on one side is
taken from the other (the forward source MAC is the reverse record's destination MAC).
A record with no partner stays a row of its own with reverse counts 0.

Counts: `packets` and `bytes` are what the exporter counted in the packets it sampled;
`sampling_rate` (1 when unsampled) is how many packets each sampled one stands for, so
`packets * sampling_rate` estimates the traffic. Products that count multiply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iot_assets.contracts.flows import DECODED_SCHEMA, REJECTS_SCHEMA

# The decoded flow contract with the sampling rate of each record.
FLOW_SCHEMA = DECODED_SCHEMA.append(pa.field("sampling_rate", pa.int64()))
REJECTS = REJECTS_SCHEMA

# The longest wait between a record's end and its reverse's start that still stitches them.
STITCH_GAP_MS = 2_000

_DAY_MS = 86_400_000
# The columns a collector record fills; the others of the contract are null.
_REVERSE_FROM_PARTNER = (("packets", "reverse_packets"), ("bytes", "reverse_bytes"),
                         ("initial_tcp_flags", "reverse_initial_tcp_flags"),
                         ("union_tcp_flags", "reverse_union_tcp_flags"))


class SourceFileError(Exception):
    """A collector file that cannot be read (further): names the file and what is wrong."""

    def __init__(self, file: str, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


class ToolMissing(Exception):
    """A program a reader calls is not installed: says which package to install."""


@dataclass
class FileLedger:
    """Counts that reconcile one collector file: decoded + rejected = collector_records."""

    file: str
    source: str  # nfcapd | ipfix
    size_bytes: int = 0
    collector_records: int | None = None  # the collector's own count (nfdump -I Flows, IPFIX data records)
    collector_packets: int | None = None  # nfdump -I Packets (as nfdump counts them: scaled by sampling)
    collector_bytes: int | None = None
    decoded: int = 0  # records decoded (before stitching: a biflow holds two)
    rejected: int = 0
    decoded_packets: int = 0  # sum of packets * sampling_rate over the decoded records
    decoded_bytes: int = 0
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    days: dict[str, int] = field(default_factory=dict)  # decoded records per start day
    sampling_rates: dict[str, int] = field(default_factory=dict)  # records per sampling rate
    other_records: int = 0  # IPFIX: options records (sampling, statistics), not flows
    error: str | None = None

    @property
    def reconciled(self) -> bool:
        """Every record the collector counts is decoded or rejected, nothing else went wrong, and
        (when nothing is rejected and the collector counts them) the packets and bytes add up too."""
        totals_agree = self.rejected > 0 or (
            (self.collector_packets is None or self.decoded_packets == self.collector_packets)
            and (self.collector_bytes is None or self.decoded_bytes == self.collector_bytes))
        return (self.error is None and self.collector_records is not None
                and self.decoded + self.rejected == self.collector_records and totals_agree)

    @classmethod
    def failed(cls, error: SourceFileError, source: str, size_bytes: int = 0) -> "FileLedger":
        """The ledger of a file that could not be read at all: nothing decoded, the error kept."""
        return cls(file=error.file, source=source, size_bytes=size_bytes, error=error.message)

    def to_json(self) -> dict:
        return asdict(self) | {"reconciled": self.reconciled}

    @classmethod
    def from_json(cls, data: dict) -> FileLedger:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def records_table(columns: dict[str, pa.Array], num_rows: int) -> pa.Table:
    """A FLOW_SCHEMA table from the columns given; every other column is null."""
    arrays = []
    for f in FLOW_SCHEMA:
        if f.name in columns:
            arrays.append(pc.cast(columns[f.name], f.type))
        else:
            arrays.append(pa.nulls(num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=FLOW_SCHEMA)


def ledger_counts(ledger: FileLedger, records: pa.Table, rejects: pa.Table) -> None:
    """Fill a ledger's decoded and rejected counts from a file's records and rejects."""
    ledger.decoded = records.num_rows
    ledger.rejected = rejects.num_rows
    rate = records.column("sampling_rate")
    ledger.decoded_packets = int(pc.sum(pc.multiply(records.column("packets"), rate)).as_py() or 0)
    ledger.decoded_bytes = int(pc.sum(pc.multiply(records.column("bytes"), rate)).as_py() or 0)
    ledger.rejects_by_reason = {item["values"]: item["counts"]
                                for item in pc.value_counts(rejects.column("reason")).to_pylist()}
    days = pc.divide(records.column("flow_start").cast(pa.int64()), _DAY_MS)
    ledger.days = {datetime.fromtimestamp(item["values"] * 86_400, timezone.utc).date().isoformat(): item["counts"]
                   for item in sorted(pc.value_counts(days).to_pylist(), key=lambda x: x["values"])}
    ledger.sampling_rates = {str(item["values"]): item["counts"]
                             for item in pc.value_counts(rate).to_pylist()}


def _numpy(column: pa.ChunkedArray | pa.Array, fill: int = 0) -> np.ndarray:
    return np.asarray(pc.fill_null(column, fill).to_numpy(zero_copy_only=False))


def _take(table: pa.Table, indices) -> pa.Table:
    """`table.take(indices)`, without taking the columns that are all null (most of the contract's
    for collector records): pyarrow takes those element by element."""
    indices = pa.array(indices, pa.int64())
    nulls: dict[pa.DataType, pa.Array] = {}
    columns = []
    for column in table.columns:
        if column.null_count == len(column):
            if column.type not in nulls:
                nulls[column.type] = pa.nulls(len(indices), column.type)
            columns.append(nulls[column.type])
        else:
            columns.append(column.take(indices))
    return pa.Table.from_arrays(columns, schema=table.schema)


def stitch_biflows(records: pa.Table, max_gap_ms: int = STITCH_GAP_MS) -> pa.Table:
    """Unidirectional records stitched into biflows by the module's rule; sorted by start."""
    n = records.num_rows
    if n == 0:
        return records
    records = records.combine_chunks()  # take() on hundreds of chunks (one per file) is many times slower
    src = pc.binary_join_element_wise(records.column("src_ip"), pc.cast(records.column("src_port"), pa.string()), "|")
    dst = pc.binary_join_element_wise(records.column("dst_ip"), pc.cast(records.column("dst_port"), pa.string()), "|")
    src_is_low = pc.fill_null(pc.less(src, dst), False)
    key = pc.binary_join_element_wise(pc.cast(records.column("protocol"), pa.string()),
                                      pc.if_else(src_is_low, src, dst), pc.if_else(src_is_low, dst, src), "|")
    codes = _numpy(pc.dictionary_encode(pc.fill_null(key, "").combine_chunks()).indices, -1).astype(np.int64)
    start = _numpy(records.column("flow_start").cast(pa.int64()))
    end = _numpy(records.column("flow_end").cast(pa.int64()))
    client_first = (_numpy(records.column("src_port")) <= _numpy(records.column("dst_port"))).astype(np.int8)
    order = np.lexsort((client_first, start, codes))
    unidirectional = _numpy(records.column("reverse_packets"))[order] == 0
    low = np.asarray(src_is_low.to_numpy(zero_copy_only=False))[order]
    c, s, e = codes[order], start[order], end[order]
    # A candidate pair is each record with the next one in this order.
    candidate = ((c[:-1] == c[1:]) & (low[:-1] != low[1:]) & unidirectional[:-1] & unidirectional[1:]
                 & (s[1:] <= e[:-1] + max_gap_ms) & (s[1:] >= s[:-1]))
    # Greedy left to right: in a run of consecutive candidates, every other one is taken.
    position = np.arange(len(candidate))
    run_start = np.maximum.accumulate(np.where(candidate & ~np.concatenate(([False], candidate[:-1])), position, 0))
    taken = candidate & ((position - run_start) % 2 == 0)
    forward = order[:-1][taken]
    reverse = order[1:][taken]
    alone = np.ones(n, dtype=bool)
    alone[forward] = False
    alone[reverse] = False
    biflows = _join_sides(records, forward, reverse)
    rows = pa.concat_tables([_take(records, np.flatnonzero(alone)), biflows])
    order = pc.sort_indices(rows, [("flow_start", "ascending"), ("archive", "ascending"), ("line_number", "ascending")])
    return _take(rows.combine_chunks(), order)


def _join_sides(records: pa.Table, forward: np.ndarray, reverse: np.ndarray) -> pa.Table:
    fwd = _take(records, forward)
    rev = _take(records, reverse)
    columns = {name: fwd.column(name) for name in fwd.column_names}
    for source, target in _REVERSE_FROM_PARTNER:
        columns[target] = rev.column(source)
    start = pc.min_element_wise(fwd.column("flow_start").cast(pa.int64()), rev.column("flow_start").cast(pa.int64()))
    end = pc.max_element_wise(fwd.column("flow_end").cast(pa.int64()), rev.column("flow_end").cast(pa.int64()))
    columns["flow_start"] = start.cast(FLOW_SCHEMA.field("flow_start").type)
    columns["flow_end"] = end.cast(FLOW_SCHEMA.field("flow_end").type)
    columns["duration_ms"] = pc.subtract(end, start)
    columns["reverse_delta_ms"] = pc.subtract(rev.column("flow_start").cast(pa.int64()),
                                              fwd.column("flow_start").cast(pa.int64()))
    columns["src_mac"] = pc.coalesce(fwd.column("src_mac"), rev.column("dst_mac"))
    columns["dst_mac"] = pc.coalesce(fwd.column("dst_mac"), rev.column("src_mac"))
    return pa.table([columns[f.name] for f in FLOW_SCHEMA], schema=FLOW_SCHEMA)


def flows_for_day(records: pa.Table, day: date, max_gap_ms: int = STITCH_GAP_MS) -> pa.Table:
    """The biflows that start on `day` (UTC), stitched from unidirectional records of any files.

    `records` should hold every record starting on the day and in the first `max_gap_ms` of
    the next day (a reverse side can start after midnight); records of other days may be
    there too. Which file held a record does not matter.
    """
    day_ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
    start = records.column("flow_start").cast(pa.int64())
    near = pc.and_(pc.greater_equal(start, day_ms - max_gap_ms),
                   pc.less(start, day_ms + _DAY_MS + max_gap_ms))
    stitched = stitch_biflows(records.filter(near), max_gap_ms)
    start = stitched.column("flow_start").cast(pa.int64())
    return stitched.filter(pc.and_(pc.greater_equal(start, day_ms), pc.less(start, day_ms + _DAY_MS)))


# RFC 1918 addresses and IPv6 unique-local / link-local ones: what a home network uses behind the NAT.
PRIVATE_ADDRESS = r"^(10\.|192\.168\.|172\.(1[6-9]|2[0-9]|3[01])\.|f[cd][0-9a-f]{2}:|fe80:)"


def device_identity(flows: pa.Table, gateway_ips: frozenset[str] = frozenset()) -> pa.Table:
    """Per flow, the device it belongs to and how it is known: `identity` is `mac` (the MAC
    of the device's side), `private_ip` (no MAC: the address before the NAT) or `line` (no
    private address either: only the subscriber line, `device_key` null).

    The device's side is the source if its address is private and not a gateway's, else the
    destination if that is; a flow between two devices belongs to its source.
    """
    def candidate(side: str) -> pa.ChunkedArray:
        ip = flows.column(f"{side}_ip")
        private = pc.fill_null(pc.match_substring_regex(pc.utf8_lower(ip), PRIVATE_ADDRESS), False)
        return pc.and_(private, pc.invert(pc.is_in(ip, pa.array(sorted(gateway_ips), pa.string()))))

    src_side, dst_side = candidate("src"), candidate("dst")
    ip = pc.if_else(src_side, flows.column("src_ip"), pc.if_else(dst_side, flows.column("dst_ip"), None))
    mac = pc.if_else(src_side, flows.column("src_mac"), pc.if_else(dst_side, flows.column("dst_mac"), None))
    identity = pc.if_else(pc.is_valid(mac), "mac", pc.if_else(pc.is_valid(ip), "private_ip", "line"))
    return pa.table({"device_key": pc.coalesce(mac, ip), "device_ip": ip, "identity": identity})
