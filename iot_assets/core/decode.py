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

Nothing in a record raises: a value that is not what YAF writes (a time that is no real
date, a hex field with a non-hex character, NaN, a number past 64 bits, a wrong type) is
a reject of that record with its line number, a reason and the value. The reasons:

| reason | the record |
|---|---|
| `empty_line` | holds only whitespace |
| `line_too_long` | is longer than `MAX_LINE_BYTES` (detail: its length); never held in memory |
| `invalid_json` | is not JSON |
| `unknown_record` | is not one object with one key `flows`, `stats` or `tombstone` |
| `missing_field:<field>` | lacks a field YAF always writes |
| `wrong_type:<field>` | has a value of the wrong JSON type |
| `bad_timestamp:<field>` | has a time that is not a real UTC time `YYYY-MM-DD hh:mm:ss[.fff]` |
| `bad_number:<field>` | has NaN, an infinity, or a number past 64 bits |
| `bad_hex`, `bad_mac`, `bad_ip`, `bad_tcp_flags`, `bad_end_reason` `:<field>` | has a malformed string value |
| `negative_count:<col>`, `negative_value:<col>`, `no_packets`, `port_out_of_range:<col>`, `protocol_out_of_range`, `negative_duration`, `end_before_start`, `outside_date_range` | breaks a rule of the source |
| `decode_error` | made the decoder fail (a bug): the record is kept as a reject, never lost |
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from iot_assets.contracts.flows import (
    DECODED_SCHEMA,
    FIELDS,
    FLOW_STRUCT,
    RECORD_RULES,
    RECORD_SCHEMA,
    REJECTS_SCHEMA,
    ZERO_WHEN_ABSENT,
    bound_rules,
)
from iot_assets.core.decode_values import _CONVERTERS, _arrow, _int64s, _present
from iot_assets.core.line_blocks import MAX_LINE_BYTES

_INT64_MAX = 2**63 - 1
_BAD_VALUE = {"time": "bad_timestamp", "seconds": "bad_number", "int": "bad_number", "ip": "bad_ip", "mac": "bad_mac",
              "hex": "bad_hex", "tcp_flags": "bad_tcp_flags", "end_reason": "bad_end_reason", "text": "bad_text"}
_KINDS = {f.source: f.kind for f in FIELDS}
_DETAIL_CHARS = 200
_MAX_UNKNOWN_FIELDS = 100  # names kept per block: a hostile input could invent millions


class _Rejects:
    """Rejects of a block, gathered as arrays (a block of a million empty lines is one array)."""

    def __init__(self) -> None:
        self._lines: list[np.ndarray] = []
        self._reasons: list[str] = []
        self._details: list[list | None] = []
        self._one: list[tuple[int, str, str | None]] = []  # single rejects of the slow path

    def add(self, line_numbers: np.ndarray, reason: str, details: list | None = None) -> None:
        if len(line_numbers):
            self._lines.append(np.asarray(line_numbers, dtype=np.int64))
            self._reasons.append(reason)
            self._details.append(details)

    def add_one(self, line_number: int, reason: str, detail: str | None = None) -> None:
        self._one.append((line_number, reason, detail))

    def table(self, archive: str) -> pa.Table:
        by_reason: dict[str, tuple[list, list]] = {}
        for line, reason, detail in self._one:
            lines, details = by_reason.setdefault(reason, ([], []))
            lines.append(line)
            details.append(detail)
        self._one = []
        for reason, (lines, details) in by_reason.items():
            self.add(np.array(lines), reason, details)
        if not self._lines:
            return REJECTS_SCHEMA.empty_table()
        lines = np.concatenate(self._lines)
        sizes = [len(a) for a in self._lines]
        names = sorted(set(self._reasons))
        if len(names) == 1:
            reason = _repeated_string(names[0], len(lines))
        else:
            codes = np.repeat([names.index(r) for r in self._reasons], sizes).astype(np.int32)
            reason = pc.take(pa.array(names, pa.string()), _arrow(codes))
        if any(d is not None for d in self._details):
            detail = pa.array([x for d, n in zip(self._details, sizes) for x in (d if d is not None else [None] * n)],
                              type=pa.string())
        else:
            detail = pa.nulls(len(lines), pa.string())
        table = pa.table(
            {"archive": _repeated_string(archive, len(lines)), "line_number": _arrow(lines, pa.int64()),
             "reason": reason, "detail": detail},
            schema=REJECTS_SCHEMA,
        )
        if len(lines) > 1 and (np.diff(lines) < 0).any():
            table = table.take(_arrow(np.argsort(lines, kind="stable")))
        return table


def _repeated_string(text: str, n: int) -> pa.Array:
    """`text` n times, built from its buffers (a million rejects of one block share a reason)."""
    encoded = text.encode()
    if n * len(encoded) >= 2**31:
        return pc.take(pa.array([text], pa.string()), _arrow(np.zeros(n, dtype=np.int32)))
    offsets = np.arange(n + 1, dtype=np.int32) * len(encoded)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(encoded * n))


@dataclass
class Block:
    """What one block of lines decodes into."""

    flows: pa.Table  # DECODED_SCHEMA
    rejects: pa.Table  # REJECTS_SCHEMA, in line order
    stats_lines: int  # lines holding a stats record
    stats_exported: int | None  # the last stats record's exportedFlowTotalCount (None: unusable or none)
    tombstones: int
    lines: int
    size_bytes: int
    unknown_fields: set[str] = field(default_factory=set)
    stats_problems: list[str] = field(default_factory=list)  # "line N: ..." for unusable stats records
    warnings: list[str] = field(default_factory=list)  # the block needed the decoder's fallback


# ---------------------------------------------------------------- rules


_BOUND_RULES = bound_rules()
_RULE_RANKS = sorted([(bounds.rank, i, reason, column, bounds) for i, (reason, column, bounds) in enumerate(_BOUND_RULES)]
                     + [(rank, -1, reason, None, None) for reason, rank in RECORD_RULES], key=lambda r: r[:2])
# Every column a rule reads, as int64.
RULE_COLUMNS = tuple(dict.fromkeys([column for _, column, _ in _BOUND_RULES]
                                   + ["packets", "reverse_packets", "flow_start", "flow_end"]))


def _record_rule(reason: str, cols: dict[str, np.ndarray], first_ms: int, after_ms: int) -> np.ndarray:
    if reason == "no_packets":
        return (cols["packets"] == 0) & (cols["reverse_packets"] == 0)
    if reason == "end_before_start":
        return cols["flow_end"] < cols["flow_start"]
    if reason == "outside_date_range":
        return (cols["flow_start"] < first_ms) | (cols["flow_start"] >= after_ms)
    raise ValueError(f"no record rule {reason}")


def _rule_masks(cols: dict[str, np.ndarray], first_day: date, last_day: date) -> list[tuple[str, np.ndarray]]:
    """Absurd values, in the order of the contract's ranks; a row gets the first that applies."""
    first_ms = int(datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc).timestamp() * 1000)
    after_ms = first_ms + ((last_day - first_day).days + 1) * 86_400_000
    rules = []
    for _, _, reason, column, bounds in _RULE_RANKS:
        if bounds is None:
            rules.append((reason, _record_rule(reason, cols, first_ms, after_ms)))
            continue
        mask = np.zeros(len(cols[column]), dtype=bool)
        if bounds.low is not None:
            mask |= cols[column] < bounds.low
        if bounds.high is not None:
            mask |= cols[column] > bounds.high
        rules.append((reason, mask))
    return rules


def _detail(source: str, value) -> str:
    return f"{source}={value!r}"[:_DETAIL_CHARS]


def _convert(flows: pa.StructArray, line_numbers: np.ndarray, archive: str, first_day: date, last_day: date,
             rejects: _Rejects) -> pa.Table:
    """Typed columns from the `flows` struct; rows breaking a rule go to `rejects`."""
    n = len(flows)
    if n == 0:
        return DECODED_SCHEMA.empty_table()
    rejected = np.zeros(n, dtype=bool)

    def mark(reason: str, mask: np.ndarray, source_values: pa.Array | None = None, source: str = "") -> None:
        rows = np.flatnonzero(mask & ~rejected)
        if len(rows):
            rejected[rows] = True
            details = None
            if source_values is not None:
                details = [_detail(source, v) for v in source_values.take(_arrow(rows)).to_pylist()]
            rejects.add(line_numbers[rows], reason, details)

    columns: dict[str, pa.Array] = {}
    for f, child in zip(FIELDS, flows.flatten()):
        if f.required and child.null_count:
            mark(f"missing_field:{f.source}", ~_present(child))
        values, bad = _CONVERTERS[f.kind](child)
        if bad.any():
            mark(f"{_BAD_VALUE[f.kind]}:{f.source}", bad, child, f.source)
        columns[f.name] = values
    numeric = {name: _int64s(columns[name]) for name in RULE_COLUMNS}
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
            "archive": _repeated_string(archive, n),
            "line_number": _arrow(line_numbers, pa.int64()),
            **columns,
        }
    ).cast(DECODED_SCHEMA)
    if rejected.any():
        table = table.filter(_arrow(~rejected))
    return table


# ---------------------------------------------------------------- parsing a block


_PARSE_STRICT = pj.ParseOptions(explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="error")
_PARSE_LENIENT = pj.ParseOptions(explicit_schema=RECORD_SCHEMA, unexpected_field_behavior="ignore")
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\r\n")] = True  # JSON's whitespace, which pyarrow skips


def _read(block: bytes, parse: pj.ParseOptions) -> pa.Table:
    # The block as one chunk of pyarrow's: its columns come in one piece, so that each
    # conversion is one call per block, not one per chunk (the fixed costs of the 55
    # fields' conversions were a third of the decoding). The cores are kept busy by
    # decoding two blocks at once instead.
    # pyarrow reads the block where it is (from a file object, it would copy it, holding the GIL).
    return pj.read_json(
        pa.BufferReader(block), read_options=pj.ReadOptions(block_size=max(len(block) + 1, 1 << 16)),
        parse_options=parse,
    )


def _value_problem(kind: str, value) -> str | None:
    """Why a JSON value cannot be a `kind` value (the reason's prefix), or None."""
    if value is None:
        return None
    if kind in ("int", "seconds"):
        if type(value) is int:  # not a bool
            limit = _INT64_MAX if kind == "int" else 2**62 // 1000
            return None if -limit <= value <= limit else "bad_number"
        if type(value) is float:
            if not math.isfinite(value):
                return "bad_number"
            if kind == "seconds":
                return None  # its range is checked with the others, in _seconds_to_ms
            return "bad_number" if abs(value) >= 2**63 else "wrong_type"
        return "wrong_type"
    return None if type(value) is str else "wrong_type"


def _unknown_keys(body: dict, unknown: set[str]) -> None:
    if len(unknown) < _MAX_UNKNOWN_FIELDS:
        unknown.update(f"flows.{k}" for k in body if k not in _KINDS)


def _usable_count(stats) -> int | None:
    count = stats.get("exportedFlowTotalCount") if isinstance(stats, dict) else None
    return count if type(count) is int and 0 <= count <= _INT64_MAX else None


class _BlockState:
    """What a block has decoded into so far."""

    def __init__(self, archive: str):
        self.archive = archive
        self.rejects = _Rejects()
        self.stats_lines = 0
        self.stats_exported: int | None = None
        self.stats_problems: list[str] = []
        self.tombstones = 0
        self.unknown: set[str] = set()

    def stats(self, line_number: int, count: int | None, raw) -> None:
        self.stats_lines += 1
        self.stats_exported = count
        if count is None and len(self.stats_problems) < 10:
            self.stats_problems.append(f"line {line_number:,}: stats record without a usable exportedFlowTotalCount "
                                       f"({_detail('exportedFlowTotalCount', raw)})")


def _line_by_line(lines: list[bytes], numbers: np.ndarray, state: _BlockState) -> tuple[pa.StructArray, np.ndarray]:
    """The slow path for lines pyarrow refused: every line on its own."""
    records, kept = [], []
    for line, number in zip(lines, numbers.tolist()):
        try:
            obj = orjson.loads(line)
            strict = True
        except orjson.JSONDecodeError as exc:
            obj = None
            if b"NaN" in line or b"Infinity" in line or "number" in str(exc):
                try:  # not JSON, but a record with a bad number to report as such
                    obj = json.loads(line)
                    strict = False
                except (ValueError, RecursionError):
                    pass
            if obj is None:
                state.rejects.add_one(number, "invalid_json", str(exc)[:_DETAIL_CHARS])
                continue
        if not isinstance(obj, dict) or len(obj) != 1:
            state.rejects.add_one(number, "unknown_record", f"expected one of flows/stats/tombstone, got {_shape(obj)}")
            continue
        (kind, body), = obj.items()
        if kind == "stats" and isinstance(body, dict):
            state.stats(number, _usable_count(body), body.get("exportedFlowTotalCount"))
            continue
        if kind == "tombstone":
            state.tombstones += 1
            continue
        if kind != "flows" or not isinstance(body, dict):
            state.rejects.add_one(number, "unknown_record", f"expected one of flows/stats/tombstone, got {_shape(obj)}")
            continue
        problem = next(((k, p) for k, v in body.items() if k in _KINDS and (p := _value_problem(_KINDS[k], v))), None)
        if problem:
            key, reason = problem
            state.rejects.add_one(number, f"{reason}:{key}", _detail(key, body[key]))
            continue
        if not strict:
            state.rejects.add_one(number, "invalid_json", "not strict JSON (NaN, Infinity or a similar literal)")
            continue
        _unknown_keys(body, state.unknown)
        records.append(body)
        kept.append(number)
    flows = pa.array(records, type=FLOW_STRUCT) if records else pa.array([], type=FLOW_STRUCT)
    return flows, np.asarray(kept, dtype=np.int64)


def _shape(obj) -> str:
    if isinstance(obj, dict):
        return ("{" + ", ".join(map(repr, list(obj)[:3])) + "}")[:_DETAIL_CHARS]
    return type(obj).__name__


def _line_spans(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, before the newline) of every line of a block."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return starts, ends


def _blank_lines(block: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which lines hold only whitespace."""
    data = np.frombuffer(block, dtype=np.uint8)
    blank = ends == starts
    maybe = np.flatnonzero(~blank & _WHITESPACE[data[np.minimum(starts, len(data) - 1)]])
    if len(maybe) > 1000:  # many lines that start with whitespace: count their other bytes
        solid = np.concatenate(([0], np.cumsum(~_WHITESPACE[data], dtype=np.int64)))
        blank[maybe] = solid[ends[maybe]] - solid[starts[maybe]] == 0
    else:
        for i in maybe.tolist():
            blank[i] = not block[starts[i] : ends[i]].strip(b" \t\r")
    return blank


def _collect_unknown(block: bytes, unknown: set[str]) -> None:
    """Names of flow fields the schema does not know (the block parsed with them ignored)."""
    for line in block.split(b"\n"):
        if len(unknown) >= _MAX_UNKNOWN_FIELDS:
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("flows"), dict):
            _unknown_keys(obj["flows"], unknown)


def _is_utf8(block: bytes) -> bool:
    if block.isascii():
        return True
    try:
        block.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _line_starts(block: bytes) -> np.ndarray:
    """Offsets where the lines of a block (which ends with a newline) start."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = (data == 10).nonzero()[0]
    return np.concatenate(([0], ends[:-1] + 1))


def _decode_block(block: bytes, first_line: int, archive: str, first_day: date, last_day: date) -> Block:
    state = _BlockState(archive)
    table = None
    lenient = False
    try:  # the parse first: it runs without the GIL while the other threads hold it
        if not _is_utf8(block):
            raise pa.ArrowInvalid("not UTF-8")  # pyarrow would keep the bytes: each line goes to orjson
        table = _read(block, _PARSE_STRICT)
    except pa.ArrowInvalid as exc:
        if "unexpected field" in str(exc):
            try:
                table = _read(block, _PARSE_LENIENT)
                lenient = True
            except pa.ArrowInvalid:
                table = None
    starts = _line_starts(block)
    n_lines = len(starts)
    numbers = np.arange(first_line, first_line + n_lines, dtype=np.int64)
    # pyarrow reads every JSON object of the block and skips blank lines: its rows are the
    # lines only if no line is blank (every line holds at least one object) and the counts
    # agree (then no line holds two).
    if table is None or table.num_rows != n_lines or not (np.frombuffer(block, np.uint8)[starts] == 123).all():  # "{"
        # pyarrow refused the block, or there may be blank lines: find them, parse the rest.
        starts, ends = _line_spans(block)
        blank = _blank_lines(block, starts, ends)
        state.rejects.add(numbers[blank], "empty_line")
        solid = np.flatnonzero(~blank)
        if table is None or table.num_rows != len(solid):
            lines = [block[starts[i] : ends[i]] for i in solid]
            flows, kept = _line_by_line(lines, numbers[solid], state)
            decoded = _convert(flows, kept, archive, first_day, last_day, state.rejects)
            return _finish(state, decoded, n_lines, len(block))
        numbers = numbers[solid]
    if lenient:
        _collect_unknown(block, state.unknown)
    # Chunk by chunk as pyarrow parsed them: combining them first would copy every column.
    decoded, row = [], 0
    for batch in table.to_batches():
        chunk_numbers = numbers[row : row + batch.num_rows]
        row += batch.num_rows
        decoded.append(_records(batch, chunk_numbers, state, archive, first_day, last_day))
    flows = decoded[0] if len(decoded) == 1 else pa.concat_tables([DECODED_SCHEMA.empty_table(), *decoded])
    return _finish(state, flows, n_lines, len(block))


def _records(batch: pa.RecordBatch, numbers: np.ndarray, state: _BlockState, archive: str, first_day: date,
             last_day: date) -> pa.Table:
    """The flows of a parsed chunk decoded; its stats and tombstones counted."""
    flows_col, stats_col, tomb_col = batch.column("flows"), batch.column("stats"), batch.column("tombstone")
    is_flow = _present(flows_col)
    is_stats = _present(stats_col)
    is_tomb = _present(tomb_col)
    several = (is_flow.astype(int) + is_stats + is_tomb) > 1
    neither = ~(is_flow | is_stats | is_tomb)
    state.rejects.add(numbers[neither], "unknown_record", ["no flows, stats or tombstone object"] * int(neither.sum()))
    state.rejects.add(numbers[several], "unknown_record", ["more than one record kind on the line"] * int(several.sum()))
    keep = is_flow & ~several
    stats_rows = np.flatnonzero(is_stats & ~several)
    if len(stats_rows):
        counts = stats_col.field("exportedFlowTotalCount").take(_arrow(stats_rows)).to_pylist()
        for row, count in zip(stats_rows.tolist(), counts):
            state.stats(int(numbers[row]), count if count is not None and count >= 0 else None, count)
    state.tombstones += int((is_tomb & ~several).sum())
    if not keep.all():  # the archive's last lines: stats and tombstone
        flows_col, numbers = flows_col.filter(_arrow(keep)), numbers[keep]
    return _convert(flows_col, numbers, archive, first_day, last_day, state.rejects)


def _finish(state: _BlockState, decoded: pa.Table, n_lines: int, size_bytes: int) -> Block:
    return Block(decoded, state.rejects.table(state.archive), state.stats_lines, state.stats_exported,
                 state.tombstones, n_lines, size_bytes, state.unknown, state.stats_problems)


def decode_block(block: bytes, first_line: int, archive: str, first_day: date, last_day: date) -> Block:
    """Decode a block of whole lines (ending with a newline) whose first line is `first_line`.

    Never raises for what the lines hold: should decoding the block fail all the same (a
    bug), it is decoded again in halves, down to the line that fails, which becomes a
    `decode_error` reject; the rest of the block is kept and a warning says so.
    """
    try:
        return _decode_block(block, first_line, archive, first_day, last_day)
    except Exception as exc:
        lines = block.split(b"\n")[:-1]
        parts = _decode_in_halves(lines, first_line, archive, first_day, last_day)
        warning = (f"lines {first_line:,}-{first_line + len(lines) - 1:,}: decoded in parts after an internal "
                   f"error ({type(exc).__name__}: {exc})"[:300])
        return _merge(parts, block, archive, warning)


def _decode_in_halves(lines: list[bytes], first_line: int, archive: str, first_day: date,
                      last_day: date) -> list[Block]:
    try:
        return [_decode_block(b"\n".join(lines) + b"\n", first_line, archive, first_day, last_day)]
    except Exception as exc:
        if len(lines) == 1:
            rejects = _Rejects()
            rejects.add_one(first_line, "decode_error", f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS])
            return [Block(DECODED_SCHEMA.empty_table(), rejects.table(archive), 0, None, 0, 1, len(lines[0]) + 1)]
        half = len(lines) // 2
        return (_decode_in_halves(lines[:half], first_line, archive, first_day, last_day)
                + _decode_in_halves(lines[half:], first_line + half, archive, first_day, last_day))


def _merge(parts: list[Block], block: bytes, archive: str, warning: str) -> Block:
    stats = [p for p in parts if p.stats_lines]
    return Block(
        flows=pa.concat_tables([DECODED_SCHEMA.empty_table()] + [p.flows for p in parts]),
        rejects=pa.concat_tables([REJECTS_SCHEMA.empty_table()] + [p.rejects for p in parts]),
        stats_lines=sum(p.stats_lines for p in parts),
        stats_exported=stats[-1].stats_exported if stats else None,
        tombstones=sum(p.tombstones for p in parts),
        lines=block.count(b"\n"),
        size_bytes=len(block),
        unknown_fields=set().union(*(p.unknown_fields for p in parts)),
        stats_problems=[problem for p in parts for problem in p.stats_problems][:10],
        warnings=[warning],
    )


def long_line_block(line_number: int, length_bytes: int, archive: str) -> Block:
    """A line longer than MAX_LINE_BYTES: one reject with its length (it was never held)."""
    rejects = _Rejects()
    rejects.add_one(line_number, "line_too_long", f"{length_bytes:,} bytes (the limit is {MAX_LINE_BYTES:,})")
    return Block(DECODED_SCHEMA.empty_table(), rejects.table(archive), 0, None, 0, 1, length_bytes + 1)


