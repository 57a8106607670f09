"""Mutated archives for the fuzz suite (`test_fuzz.py`), made from generated sample archives.

A case is the bytes of a damaged or doctored archive and what the decoder must report,
worked out here without the decoder:
- content mutations (a field given a wrong type, an impossible date, a non-ASCII character,
  a huge or negative number, NaN; lines duplicated (with or without a stats count raised to
  match: the repeat is a `duplicate_record` reject), swapped, deleted, joined, blank, too
  long, garbage; stats missing, wrong, duplicated or moved) keep a valid tar.gz and say,
  line by line, what must be rejected and why, and what must be decoded;
- byte damage (flips in the gzip stream, truncation, parts duplicated, swapped or
  dropped, trailing bytes) is checked against `readable_prefix`: what zlib inflates before
  the byte where it detects the damage;
- tar tricks (links, devices, unsafe paths, a second member, a short member, a bad header)
  say what the error must name;
- a changed export format (a required field renamed, epoch timestamps, records re-nested):
  every record rejected, and the archive fails naming the likely cause;
- archive names that would leave staging/ (`...tar.gz`, `..tar.gz`, `.work.tar.gz`): an
  error naming the file.
`bomb` writes the decompression bombs, streaming.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from isal import isal_zlib

from iot_assets.contracts.flows import FIELDS
from iot_assets.core.line_blocks import MAX_LINE_BYTES

KIND = {f.source: f.kind for f in FIELDS}
COLUMN = {f.source: f.name for f in FIELDS}
REQUIRED = {f.source for f in FIELDS if f.required}
STRING_KINDS = ("time", "ip", "mac", "hex", "tcp_flags", "end_reason", "text")
BAD_VALUE = {"time": "bad_timestamp", "ip": "bad_ip", "mac": "bad_mac", "hex": "bad_hex",
             "tcp_flags": "bad_tcp_flags", "end_reason": "bad_end_reason"}
IMPOSSIBLE_TIMES = ("2019-13-45 25:61:61.000", "2019-02-30 10:00:00.000", "2019-06-25 24:00:00.000",
                    "2019-06-31 00:00:00", "2019-06-25 23:59:60.000", "２０１９-06-25 08:36:47.096",
                    "2019-06-25T08:36:47.096", "2019-06-25 08:36:47.0961", "2019-06-25", "2019-06-25 08:36:47+09:00",
                    "1900-02-29 00:00:00.000", "", " 2019-06-25 08:36:47.096")


@dataclass
class Base:
    """A generated sample archive and the lines of its JSON member."""

    name: str
    member: str
    lines: list[bytes]  # each ends with a newline
    gz: bytes

    @classmethod
    def load(cls, path: Path) -> "Base":
        with tarfile.open(path) as tar:
            member = tar.next()
            data = tar.extractfile(member).read()
        return cls(path.name.split(".tar.gz")[0], member.name, data.splitlines(keepends=True), path.read_bytes())

    @property
    def body(self) -> bytes:
        return b"".join(self.lines)

    @property
    def flow_indexes(self) -> list[int]:
        return [i for i, line in enumerate(self.lines) if line.startswith(b'{"flows"')]

    @property
    def stats_count(self) -> int:
        (stats,) = [json.loads(line)["stats"] for line in self.lines if line.startswith(b'{"stats"')]
        return stats["exportedFlowTotalCount"]


# What the decoder must do with a line of a mutated member.
INTACT = "intact"  # an original line: a flow, stats or tombstone line decoded as in the clean archive


@dataclass
class Line:
    data: bytes
    expect: str = INTACT  # INTACT, "reject", "maybe", "decode", "stats", "tombstone"
    reasons: frozenset = frozenset()  # for "reject" one reason, for "maybe" the reasons it may get
    stats: int | None = None  # for "stats": the usable count, or None


@dataclass
class Case:
    kind: str
    note: str
    name: str  # archive stem
    parts: list[bytes]  # one piece: <name>.tar.gz; several: <name>.tar.gzNN
    lines: list[Line] | None = None  # content mutations: the member, line by line
    error: tuple[str, ...] | None = None  # tar tricks: the error says one of these
    unknown_field: str | None = None
    block_bytes: int | None = None  # decode in small blocks, to cross block boundaries
    fails_as: str | None = None  # a changed format: every record rejected, the archive fails naming this cause

    def expected_stats(self, base: Base) -> int | None:
        last = None
        for line in self.lines:
            if line.expect == INTACT and line.data.startswith(b'{"stats"'):
                last = base.stats_count
            elif line.expect == "stats":
                last = line.stats
        return last

    def stats_lines(self) -> int:
        return sum(1 for line in self.lines
                   if line.expect == "stats" or (line.expect == INTACT and line.data.startswith(b'{"stats"')))


def archive_bytes(member: str, body: bytes, level: int = 1, tar_format=tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(member)
    info.size = len(body)
    info.mtime = 1656044400
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        tar.addfile(info, io.BytesIO(body))
    return gzip.compress(buffer.getvalue(), compresslevel=level, mtime=0)


def _content_case(base: Base, kind: str, note: str, lines: list[Line], rng: random.Random, **extra) -> Case:
    body = b"".join(line.data for line in lines)
    # Some cases decode in blocks of a few KB, so that mutations fall on block boundaries.
    block_bytes = rng.choice([None, None, 4096, 65536])
    return Case(kind, note, base.name, [archive_bytes(base.member, body)], lines, block_bytes=block_bytes, **extra)


def _intact(base: Base) -> list[Line]:
    return [Line(line) for line in base.lines]


def _dump(record: dict, rng: random.Random) -> bytes:
    return json.dumps({"flows": record}, ensure_ascii=rng.random() < 0.5).encode() + b"\n"


# ---------------------------------------------------------------- field mutations


def _wrong_type(kind: str, rng: random.Random):
    if kind == "int":
        return rng.choice(["12", 1.5, True, [1], {"a": 1}, 12.0])
    if kind == "seconds":
        return rng.choice(["1.5", True, [1.5], {"a": 1}, False])
    return rng.choice([12, 1.5, True, ["x"], {"a": "b"}])


def _negative_reason(source: str) -> str | None:
    column = COLUMN[source]
    if column in ("packets", "bytes", "reverse_packets", "reverse_bytes"):
        return f"negative_count:{column}"
    if column in ("src_port", "dst_port"):
        return f"port_out_of_range:{column}"
    if column == "protocol":
        return "protocol_out_of_range"
    if column == "duration_ms":
        return "negative_duration"
    if KIND[source] == "int":
        return f"negative_value:{column}"
    return None  # reverseFlowDeltaMilliseconds: a negative delta is not checked


def field_mutation(base: Base, rng: random.Random, how: str) -> Case:
    """One field of one flow line changed; the line must be rejected for it (or decoded)."""
    index = rng.choice(base.flow_indexes)
    record = json.loads(base.lines[index])["flows"]
    lines = _intact(base)
    present = [k for k in record if k in KIND]
    expect, reasons = "reject", None
    if how == "wrong_type":
        key = rng.choice(present)
        record[key] = _wrong_type(KIND[key], rng)
        reasons = f"wrong_type:{key}"
    elif how == "impossible_date":
        key = rng.choice(["flowStartMilliseconds", "flowEndMilliseconds"])
        record[key] = rng.choice(IMPOSSIBLE_TIMES)
        reasons = f"bad_timestamp:{key}"
    elif how == "non_ascii":
        key = rng.choice([k for k in present if KIND[k] in STRING_KINDS])
        value = record[key]
        at = rng.randrange(len(value) + 1)
        record[key] = value[:at] + rng.choice(["é", "１", "\u00a0", "ß", "\u0660"]) + value[at:]
        if KIND[key] == "text":
            expect = "decode"
        else:
            reasons = f"{BAD_VALUE[KIND[key]]}:{key}"
    elif how == "huge_number":
        key = rng.choice([k for k in present if KIND[k] in ("int", "seconds")])
        record[key] = rng.choice([2**63, 2**64, -(2**63) - 1, 10**30, 10**400 if KIND[key] == "int" else 2**70])
        reasons = f"bad_number:{key}"
    elif how == "negative":
        key = rng.choice([k for k in present if KIND[k] in ("int", "seconds")])
        record[key] = -rng.choice([1, 7, 2**40])
        reason = _negative_reason(key)
        # A negative end of the flow's reverse delta is not checked: the record decodes.
        expect, reasons = ("reject", reason) if reason else ("decode", None)
    elif how == "nan":
        key = rng.choice([k for k in present if KIND[k] in ("int", "seconds")])
        record[key] = rng.choice([float("nan"), float("inf"), float("-inf")])
        reasons = f"bad_number:{key}"
    elif how == "missing":
        key = rng.choice(present)
        del record[key]
        expect, reasons = ("reject", f"missing_field:{key}") if key in REQUIRED else ("decode", None)
    elif how == "null":
        key = rng.choice(present)
        record[key] = None
        expect, reasons = ("reject", f"missing_field:{key}") if key in REQUIRED else ("decode", None)
    elif how == "unknown_field":
        key = rng.choice(["newYafField", "flowIdentifier", "ipTTL"])
        record[key] = rng.choice([1, "x", [1, 2], {"a": None}])
        lines[index] = Line(_dump(record, rng), "decode")
        return _content_case(base, "field:" + how, f"line {index + 1} {key}", lines, rng, unknown_field=f"flows.{key}")
    else:
        raise ValueError(how)
    lines[index] = Line(_dump(record, rng), expect, frozenset([reasons]) if reasons else frozenset())
    return _content_case(base, "field:" + how, f"line {index + 1} {key}={record.get(key)!r}"[:120], lines, rng)


# ---------------------------------------------------------------- line mutations

GARBAGE = {  # line -> reasons it must or may get
    b"garbage": {"invalid_json"},
    b"{": {"invalid_json"},
    b"[]": {"unknown_record"},
    b"null": {"unknown_record"},
    b"{}": {"unknown_record"},
    b'{"flows": 1}': {"unknown_record"},
    b'{"flows": [], "stats": {}}': {"unknown_record"},
    b'{"flows": {}, "stats": {}}': {"unknown_record"},
    b'{"flows": {"collectorName": "\xff\xfe"}}': {"invalid_json"},
    b'{"flows": {}}': {"missing_field:flowStartMilliseconds"},
    b'{"flows": ' + b"[" * 5000 + b"]" * 5000 + b"}": {"invalid_json"},
    # NaN and missing fields: either is a true reason (which one depends on the path the block takes).
    b'{"flows": {"flowDurationMilliseconds": NaN}}': {"bad_number:flowDurationMilliseconds",
                                                       "missing_field:flowStartMilliseconds"},
    b'{"tombstone": 1}': set(),  # a tombstone line: counted, not a flow
}


def line_mutation(base: Base, rng: random.Random, how: str) -> Case:
    lines = _intact(base)
    flows = base.flow_indexes
    k = rng.choice(flows)
    note = f"line {k + 1}"
    if how == "duplicate":  # the later of the two is a duplicate_record reject (issue 23)
        at = rng.choice([k + 1, rng.randrange(len(lines) + 1)])
        lines.insert(at, Line(base.lines[k], "decode"))
        later = at if at > k else k + 1
        lines[later] = Line(base.lines[k], "reject", frozenset({"duplicate_record"}))
        note += f" again at {at + 1}"
    elif how == "duplicate_adjusted_stats":  # repeats hidden by a stats count raised to match: still rejected
        repeats = sorted(rng.sample(flows, rng.randint(1, min(5, len(flows)))))
        (at,) = [i for i, line in enumerate(base.lines) if line.startswith(b'{"stats"')]
        stats = json.loads(base.lines[at])["stats"]
        stats["exportedFlowTotalCount"] += len(repeats)
        lines[at] = Line(json.dumps({"stats": stats}).encode() + b"\n", "stats", stats=stats["exportedFlowTotalCount"])
        for i in reversed(repeats):  # each copy right after a later line, so that line numbers shift predictably
            lines.insert(rng.randrange(i + 1, at + 1), Line(base.lines[i], "reject", frozenset({"duplicate_record"})))
        note = f"lines {[i + 1 for i in repeats]} repeated, stats raised by {len(repeats)}"
    elif how == "swap":
        j = rng.randrange(len(lines))
        lines[k], lines[j] = lines[j], lines[k]
        note += f" <-> {j + 1}"
    elif how == "delete":
        del lines[k]
    elif how == "join":  # a lost newline: two records on one line, which is not JSON
        j = k + 1 if k + 1 < len(lines) else k - 1
        first, second = sorted((k, j))
        lines[first : second + 1] = [Line(lines[first].data.rstrip(b"\n") + lines[second].data,
                                          "reject", frozenset({"invalid_json"}))]
    elif how == "blank":
        for _ in range(rng.randint(1, 5)):
            lines.insert(rng.randrange(len(lines) + 1),
                         Line(rng.choice([b"\n", b"  \n", b"\t\r\n", b" " * 3000 + b"\n"]), "reject",
                              frozenset({"empty_line"})))
    elif how == "garbage":
        for _ in range(rng.randint(1, 3)):
            text, reasons = rng.choice(list(GARBAGE.items()))
            if text == b'{"tombstone": 1}':
                line = Line(text + b"\n", "tombstone")
            else:
                line = Line(text + b"\n", "reject", frozenset(reasons))
            lines.insert(rng.randrange(len(lines) + 1), line)
    elif how == "random_bytes":
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))).replace(b"\n", b"")
        lines.insert(rng.randrange(len(lines) + 1),
                     Line(noise + b"\n", "maybe", frozenset({"invalid_json", "empty_line", "unknown_record"})))
    elif how == "long_line":
        size = MAX_LINE_BYTES + rng.randint(1, 3 * MAX_LINE_BYTES)
        filler = rng.choice([b" ", b"x", b'{"flows": {"collectorName": "'])
        text = (filler * (size // len(filler) + 1))[:size]
        lines.insert(rng.randrange(len(lines) + 1), Line(text + b"\n", "reject", frozenset({"line_too_long"})))
    elif how == "no_final_newline":
        lines[-1] = Line(lines[-1].data.rstrip(b"\n"), lines[-1].expect)
    elif how == "crlf":  # Windows line ends: JSON takes the \r as whitespace
        lines = [Line(line.data.replace(b"\n", b"\r\n"), line.expect) for line in lines]
    else:
        raise ValueError(how)
    return _content_case(base, "line:" + how, note, lines, rng)


def stats_mutation(base: Base, rng: random.Random, how: str) -> Case:
    lines = _intact(base)
    (at,) = [i for i, line in enumerate(base.lines) if line.startswith(b'{"stats"')]
    stats = json.loads(base.lines[at])["stats"]
    if how == "missing":
        del lines[at]
    elif how == "wrong_count":
        stats["exportedFlowTotalCount"] += rng.choice([-1, 1, 1000])
        lines[at] = Line(json.dumps({"stats": stats}).encode() + b"\n", "stats", stats=stats["exportedFlowTotalCount"])
    elif how == "unusable_count":
        stats["exportedFlowTotalCount"] = rng.choice(["12", -5, None, 1.5, [3]])
        lines[at] = Line(json.dumps({"stats": stats}).encode() + b"\n", "stats", stats=None)
    elif how == "not_an_object":
        lines[at] = Line(b'{"stats": ' + rng.choice([b"5", b"[]", b'"x"']) + b"}\n", "reject",
                         frozenset({"unknown_record"}))
    elif how == "duplicated":
        lines.insert(rng.randrange(len(lines) + 1), Line(base.lines[at]))
    elif how == "moved":
        line = lines.pop(at)
        lines.insert(rng.randrange(len(lines) + 1), line)
    else:
        raise ValueError(how)
    return _content_case(base, "stats:" + how, f"line {at + 1}", lines, rng)


# ---------------------------------------------------------------- a changed export format (issue 23)


def format_change(base: Base, rng: random.Random, how: str) -> Case:
    """Every flow record changed alike, as a new exporter would: each one is rejected and the archive fails."""
    lines = []
    key = rng.choice(sorted(k for k in REQUIRED if KIND[k] != "time"))
    for line in base.lines:
        if not line.startswith(b'{"flows"'):
            lines.append(Line(line))
            continue
        record = json.loads(line)["flows"]
        if how == "renamed_field":
            record[key + "V2"] = record.pop(key)
            reasons, cause = {f"missing_field:{key}"}, "a field renamed"
        elif how == "epoch_times":
            for name in ("flowStartMilliseconds", "flowEndMilliseconds"):
                record[name] = int(flow_ms(record[name]))
            reasons = {"wrong_type:flowStartMilliseconds", "wrong_type:flowEndMilliseconds"}
            cause = "a changed time format (epoch numbers"
        elif how == "renested":
            record = {"record": record}
            reasons, cause = {f"missing_field:{k}" for k in REQUIRED}, "re-nested"
        else:
            raise ValueError(how)
        lines.append(Line(json.dumps({"flows": record}).encode() + b"\n", "reject", frozenset(reasons)))
    return _content_case(base, "format:" + how, key if how == "renamed_field" else "", lines, rng, fails_as=cause)


def flow_ms(text: str) -> int:
    from datetime import datetime, timezone

    moment = datetime.strptime(text + ("" if "." in text else ".0"), "%Y-%m-%d %H:%M:%S.%f")
    return int(moment.replace(tzinfo=timezone.utc).timestamp() * 1000)


def bad_name(base: Base, rng: random.Random, how: str) -> Case:
    """An archive whose device name would leave staging/ (`...tar.gz` has the stem `..`): an error naming the file."""
    stem = {"dotdot": "..", "dot": ".", "hidden": rng.choice([".work", ".hidden", "..x"])}[how]
    return Case("name:" + how, stem, stem, [base.gz], error=("not a plain device name",))


# ---------------------------------------------------------------- byte damage


def split(data: bytes, pieces: int, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), pieces - 1))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def byte_damage(base: Base, rng: random.Random, how: str) -> Case:
    data = bytearray(base.gz)
    if how == "flip":
        spots = [rng.randrange(len(data)) for _ in range(rng.randint(1, 3))]
        for spot in spots:
            data[spot] ^= rng.randrange(1, 256)
        return Case("bytes:flip", f"at {spots}", base.name, [bytes(data)])
    if how == "truncate":
        at = rng.randrange(len(data))
        return Case("bytes:truncate", f"at {at} of {len(data)}", base.name, [bytes(data[:at])])
    if how == "trailing":
        tail = rng.choice([b"\0" * rng.randint(1, 5000), b"garbage", bytes(rng.randrange(256) for _ in range(50))])
        return Case("bytes:trailing", f"{tail[:10]!r}", base.name, [bytes(data) + tail])
    parts = split(bytes(data), rng.randint(3, 5), rng)
    if how == "duplicate_part":
        i = rng.randrange(len(parts))
        parts.insert(i + 1, parts[i])
        note = f"part {i} twice"
    elif how == "swap_parts":
        i = rng.randrange(len(parts) - 1)
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
        note = f"parts {i} and {i + 1} swapped"
    elif how == "drop_last_part":
        parts = parts[:-1]
        note = "last part missing"
    else:
        raise ValueError(how)
    return Case("bytes:" + how, note, base.name, parts)


def readable_prefix(stream: bytes) -> tuple[bytes, bool]:
    """What zlib inflates from a gzip stream before the byte where it detects damage, and
    whether the stream is whole (ends cleanly, only zero bytes after it)."""
    inflater = zlib.decompressobj(wbits=31)
    out = bytearray()
    step, position = 4096, 0
    while position < len(stream) and not inflater.eof:
        saved = inflater.copy()
        try:
            out += inflater.decompress(stream[position : position + step])
            position += step
        except zlib.error:
            if step == 1:
                return bytes(out), False
            inflater, step = saved, 1
    whole = inflater.eof and not inflater.unused_data.strip(b"\0") and not stream[position:].strip(b"\0")
    return bytes(out), whole


# ---------------------------------------------------------------- tar tricks


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], tar_format=tarfile.GNU_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def tar_trick(base: Base, rng: random.Random, how: str) -> Case:
    body = base.body
    info = tarfile.TarInfo(base.member)
    error = None
    if how in ("symlink", "hardlink", "directory", "fifo", "device"):
        info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "directory": tarfile.DIRTYPE,
                     "fifo": tarfile.FIFOTYPE, "device": tarfile.CHRTYPE}[how]
        info.linkname = "/etc/passwd"
        raw, error = _tar([(info, None)]), ("is not a regular file",)
    elif how == "absolute":
        info.name = "/tmp/" + base.member
        raw, error = _tar([(info, body)]), ("unsafe path",)
    elif how == "dotdot":
        info.name = "../../" + base.member
        raw, error = _tar([(info, body)]), ("unsafe path",)
    elif how == "second_member":
        raw, error = _tar([(info, body), (tarfile.TarInfo("extra.json"), b'{"flows": {}}\n')]), ("more than one member",)
    elif how == "short_member":
        header = tarfile.TarInfo(base.member)
        header.size = len(body) + rng.randint(1, 10_000)
        raw, error = header.tobuf(format=tarfile.GNU_FORMAT) + body, ("before the end of its member",)
    elif how == "bad_checksum":
        raw = bytearray(_tar([(info, body)]))
        raw[148:156] = b"0000000\0"
        raw, error = bytes(raw), ("not a readable tar stream",)
    elif how == "no_member":
        raw, error = b"\0" * 10240, ("no member", "the tar stream is empty")
    elif how == "not_tar":
        raw, error = b"hello, this is not a tar file\n" * 50, ("not a readable tar stream",)
    elif how == "long_name_pax":
        info.name = "x" * 200 + "/" + base.member
        raw = _tar([(info, body)], tarfile.PAX_FORMAT)
    elif how == "long_name_gnu":
        info.name = "y" * 200 + "/" + base.member
        raw = _tar([(info, body)], tarfile.GNU_FORMAT)
    elif how == "ustar":
        raw = _tar([(info, body)], tarfile.USTAR_FORMAT)
    else:
        raise ValueError(how)
    gz = gzip.compress(raw, compresslevel=1, mtime=0)
    # A second member or a short one: the member's lines are all read, then the error.
    lines = _intact(base) if error is None or how in ("second_member", "short_member") else None
    return Case("tar:" + how, "", base.name, [gz], lines, error=error)


# ---------------------------------------------------------------- every kind

FIELD_KINDS = ("wrong_type", "impossible_date", "non_ascii", "huge_number", "negative", "nan", "missing", "null",
               "unknown_field")
LINE_KINDS = ("duplicate", "duplicate_adjusted_stats", "swap", "delete", "join", "blank", "garbage", "random_bytes", "long_line",
              "no_final_newline", "crlf")
STATS_KINDS = ("missing", "wrong_count", "unusable_count", "not_an_object", "duplicated", "moved")
BYTE_KINDS = ("flip", "flip", "flip", "truncate", "truncate", "trailing", "duplicate_part", "swap_parts",
              "drop_last_part")
TAR_KINDS = ("symlink", "hardlink", "directory", "fifo", "device", "absolute", "dotdot", "second_member",
             "short_member", "bad_checksum", "no_member", "not_tar", "long_name_pax", "long_name_gnu", "ustar")

FORMAT_KINDS = ("renamed_field", "epoch_times", "renested")
NAME_KINDS = ("dotdot", "dot", "hidden")

KINDS = ([("field", k) for k in FIELD_KINDS] + [("line", k) for k in LINE_KINDS]
         + [("stats", k) for k in STATS_KINDS] + [("bytes", k) for k in BYTE_KINDS] + [("tar", k) for k in TAR_KINDS]
         + [("format", k) for k in FORMAT_KINDS] + [("name", k) for k in NAME_KINDS])
_MAKERS = {"field": field_mutation, "line": line_mutation, "stats": stats_mutation, "bytes": byte_damage,
           "tar": tar_trick, "format": format_change, "name": bad_name}


def make_case(bases: list[Base], seed: int) -> Case:
    """Case number `seed`: every kind in turn, on every base in turn, with its own random choices."""
    rng = random.Random(seed)
    group, how = KINDS[seed % len(KINDS)]
    base = bases[(seed // len(KINDS)) % len(bases)]
    return _MAKERS[group](base, rng, how)


# ---------------------------------------------------------------- bombs


def bomb(path: Path, member_bytes: int, fill: bytes) -> Path:
    """A tar.gz whose member is `member_bytes` of `fill` (b"\\n": empty lines; b" ": one line
    without end), compressed as it is written: nothing is held in memory."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    info = tarfile.TarInfo(path.name.split(".tar.gz")[0] + ".json")
    info.size = member_bytes
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    chunk = fill * (1 << 20)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(compressor.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
        left = member_bytes
        while left:
            n = min(left, len(chunk))
            f.write(compressor.compress(chunk[:n]))
            left -= n
        f.write(compressor.compress(b"\0" * ((-member_bytes) % 512 + 1024)))
        f.write(compressor.flush())
    tmp.rename(path)
    return path
