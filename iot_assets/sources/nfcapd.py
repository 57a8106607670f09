"""nfcapd files (`nfcapd.YYYYMMDDhhmm`, as nfcapd and nfpcapd write them), read through
Debian's `nfdump` (1.7): no maintained Python reader of the format exists.

Per file, three calls:
- `nfdump -r FILE -I`: the file's own statistics (Flows, Packets, Bytes), the ledger's
  reference. A bad, truncated or foreign file fails here (nfdump exits 250 with "bad
  magic", "appendix offset error", "Short read"): a `SourceFileError` naming the file;
- `nfdump -E FILE`: the exporters and their samplers (see Sampling);
- `nfdump -N -6 -q -r FILE -o "fmt:..."` with TZ=UTC: one line per record, parsed by
  pyarrow. `fmt:` because `-o json` plus parsing was 2-3 times slower (benchmarks/).
  `%ter` is not used: nfdump 1.7.1 prints wrong milliseconds with it (1,867 of 2,059
  records of a test file); `%te` (text in the process's time zone, so TZ=UTC) is right.

Each record becomes a row of `FLOW_SCHEMA` (unidirectional: reverse counts 0; stitch them
with `biflows.stitch_biflows` or `biflows.flows_for_day` once the files of a day are read).
`line_number` is the record's position in the file (1-based), `archive` the file's name.
MACs: `%ismc` (in source MAC) and `%odmc` (out destination MAC), as softflowd `-T ether`
exports them; nfdump prints 00:00:00:00:00:00 when a record has none, which becomes null
(nfpcapd keeps no MACs). ICMP: nfdump prints the destination port as `type.code`; it
becomes type * 256 + code, as YAF writes it. Counts `%opkt`/`%obyt` above 0 (a record
that already holds both directions) become the reverse counts; such a record is not
stitched.

Sampling: nfcapd 1.7.1 ignores the options record in which softflowd `-s N` states its
rate (samplingPacketInterval 1 / samplingPacketSpace N-1): the stored records say
"Unsampled" and `nfdump -E` lists no sampler. When nfcapd runs with `-s N`, it scales
each record's packets and bytes by N, flags it sampled and stores a "Static default
Sampler: ... packet interval: 1, packet space: N-1" shown by `nfdump -E`. So the rate of a
record is the one of its exporter's sampler in `nfdump -E`, else 1; nfdump's scaled counts
are divided by it so that `packets` and `bytes` are what the exporter counted (the
contract, see `biflows`). For rates the exporter states, use `ipfix_file` or run nfcapd with
`-s`.

A record that does not parse is a reject (`bad_number:<column>`, `bad_timestamp:<column>`,
`bad_ip:<column>`, `end_before_start`, `port_out_of_range:<column>`,
`protocol_out_of_range`, `not_divisible_by_sampling_rate`) with the line as detail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from iot_assets.sources.biflows import (
    FLOW_SCHEMA,
    REJECTS,
    FileLedger,
    SourceFileError,
    ToolMissing,
    ledger_counts,
    records_table,
)

NFCAPD_NAME = re.compile(r"^nfcapd\.\d{12}$")  # nfcapd.YYYYMMDDhhmm; the `current` file being written is not one
NFDUMP_COLUMNS = ("start", "end", "protocol", "src_ip", "src_port", "dst_ip", "dst_port", "in_packets", "in_bytes",
                  "out_packets", "out_bytes", "tcp_flags", "in_src_mac", "out_dst_mac", "input", "output", "tos",
                  "exporter")
NFDUMP_FORMAT = "fmt:" + "|".join(("%ts", "%te", "%pr", "%sa", "%sp", "%da", "%dp", "%ipkt", "%ibyt", "%opkt",
                                   "%obyt", "%flg", "%ismc", "%odmc", "%in", "%out", "%stos", "%exp"))
_NO_MAC = "00:00:00:00:00:00"
_TIMEOUT_S = 600
# nfdump's flag letters, most significant bit first: CWR ECE URG ACK PSH RST SYN FIN.
_FLAG_BITS = np.array([0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01], dtype=np.int16)
_INTEGER = r"^[0-9]{1,18}$"
_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,3})?$"
_SAMPLER = re.compile(r"packet interval:\s*(\d+),\s*packet space:\s*(\d+)")
_EXPORTER = re.compile(r"SysID:\s*(\d+)")


@dataclass
class NfcapdFile:
    """One file read: its records (unidirectional, FLOW_SCHEMA), rejects and ledger."""

    records: pa.Table
    rejects: pa.Table
    ledger: FileLedger


def nfdump_path() -> str:
    """The `nfdump` program, or `ToolMissing` saying which package to install."""
    path = shutil.which("nfdump")
    if path is None:
        raise ToolMissing("nfdump is not installed: install the `nfdump` package (apt-get install nfdump)")
    return path


def find_nfcapd_files(root: Path) -> list[Path]:
    """Every nfcapd.YYYYMMDDhhmm file anywhere under `root`, in path order."""
    return sorted(p for p in Path(root).rglob("nfcapd.*") if NFCAPD_NAME.match(p.name) and p.is_file())


def _run(args: list[str], file: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TZ="UTC", LC_ALL="C")
    try:
        return subprocess.run(args, capture_output=True, env=env, timeout=_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SourceFileError(file.name, f"nfdump did not finish within {_TIMEOUT_S} s") from exc


def _first_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[0] if lines else ""


def file_statistics(file: Path, nfdump: str | None = None) -> dict[str, int]:
    """`nfdump -r FILE -I` as a dict (Flows, Packets, Bytes, ...); `SourceFileError` if nfdump cannot read it."""
    result = _run([nfdump or nfdump_path(), "-r", str(file), "-I"], file)
    if result.returncode != 0:
        why = _first_line(result.stderr) or _first_line(result.stdout) or f"nfdump exited with {result.returncode}"
        raise SourceFileError(file.name, f"not a readable nfcapd file: {why}")
    stats = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition(":")
        if value.strip().isdigit():
            stats[name.strip()] = int(value)
    if "Flows" not in stats:
        raise SourceFileError(file.name, "nfdump -I printed no flow count")
    return stats


def sampling_rates(file: Path, nfdump: str | None = None) -> dict[int, int]:
    """Sampling rate per exporter SysID, from the samplers `nfdump -E FILE` lists (none: unsampled)."""
    result = _run([nfdump or nfdump_path(), "-E", str(file)], file)
    rates: dict[int, int] = {}
    exporter = None
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        if match := _EXPORTER.search(line):
            exporter = int(match[1])
        elif (match := _SAMPLER.search(line)) and exporter is not None:
            interval, space = int(match[1]), int(match[2])
            if interval > 0:
                rates[exporter] = (interval + space) // interval
    return rates


def read_nfcapd_file(file: Path, nfdump: str | None = None, name: str | None = None) -> NfcapdFile:
    """Decode one nfcapd file; raises `SourceFileError` (naming it) if nfdump cannot read it.

    `name` (default: the file's name) names the file in the records, rejects, ledger and errors:
    the landing zone passes the path under raw/, as two routers' files may have the same name."""
    file = Path(file)
    nfdump = nfdump or nfdump_path()
    name = name or file.name
    ledger = FileLedger(file=name, source="nfcapd", size_bytes=file.stat().st_size)
    try:
        stats = file_statistics(file, nfdump)
    except SourceFileError as exc:
        raise SourceFileError(name, exc.message) from None
    ledger.collector_records = stats["Flows"]
    ledger.collector_packets = stats.get("Packets")
    ledger.collector_bytes = stats.get("Bytes")
    if ledger.collector_records == 0:
        records, rejects = FLOW_SCHEMA.empty_table(), REJECTS.empty_table()
    else:
        rates = sampling_rates(file, nfdump)
        result = _run([nfdump, "-N", "-6", "-q", "-r", str(file), "-o", NFDUMP_FORMAT], file)
        records, rejects = parse_nfdump_lines(result.stdout, name, rates)
        problem = _first_line(result.stderr)
        if result.returncode != 0 or problem:
            ledger.error = f"nfdump stopped reading: {problem or f'exit status {result.returncode}'}"
    ledger_counts(ledger, records, rejects)
    return NfcapdFile(records, rejects, ledger)


def read_nfcapd_files(files: list[Path], workers: int = 2, names: list[str] | None = None
                      ) -> tuple[list[NfcapdFile], list[SourceFileError]]:
    """Decode several files, in order: the ones nfdump cannot read become errors, the others still decode.

    Two files at a time: one waits for nfdump while the other is parsed. `names`: see `read_nfcapd_file`."""
    nfdump = nfdump_path()

    def read_one(item: tuple[Path, str | None]) -> NfcapdFile | SourceFileError:
        try:
            return read_nfcapd_file(item[0], nfdump, item[1])
        except SourceFileError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nfdump") as pool:
        results = list(pool.map(read_one, zip(files, names or [None] * len(files))))
    return ([r for r in results if isinstance(r, NfcapdFile)], [r for r in results if isinstance(r, SourceFileError)])


def parse_nfdump_lines(text: bytes, file: str, rates: dict[int, int] | None = None) -> tuple[pa.Table, pa.Table]:
    """Records (FLOW_SCHEMA) and rejects (REJECTS_SCHEMA) from nfdump's output in NFDUMP_FORMAT."""
    if b"No matching flows" in text or b"\n\n" in text or text.startswith(b"\n"):
        text = b"\n".join(line for line in text.split(b"\n") if line.strip() and line.strip() != b"No matching flows")
    if not text.strip():
        return FLOW_SCHEMA.empty_table(), REJECTS.empty_table()
    body = text if text.endswith(b"\n") else text + b"\n"
    try:
        table = pcsv.read_csv(
            pa.py_buffer(body),
            read_options=pcsv.ReadOptions(column_names=list(NFDUMP_COLUMNS), block_size=16 << 20),
            parse_options=pcsv.ParseOptions(delimiter="|", quote_char=False),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in NFDUMP_COLUMNS}),
        )
    except pa.ArrowInvalid:  # a line with a wrong number of fields
        return _parse_slowly(body.split(b"\n")[:-1], file, rates or {})
    numbers = np.arange(1, table.num_rows + 1, dtype=np.int64)
    text_columns = {c: pc.utf8_trim_whitespace(table.column(c).combine_chunks()) for c in NFDUMP_COLUMNS}
    return _convert(text_columns, numbers, body, file, rates or {})


def _parse_slowly(lines: list[bytes], file: str, rates: dict[int, int]) -> tuple[pa.Table, pa.Table]:
    """Lines with a wrong number of fields are rejected one by one; the rest are converted."""
    good, bad_numbers, good_numbers = [], [], []
    for number, line in enumerate(lines, start=1):
        parts = line.decode("utf-8", "replace").split("|")
        if len(parts) == len(NFDUMP_COLUMNS):
            good.append([p.strip() for p in parts])
            good_numbers.append(number)
        else:
            bad_numbers.append(number)
    columns = {c: pa.array([row[i] for row in good], pa.string()) for i, c in enumerate(NFDUMP_COLUMNS)}
    records, rejects = _convert(columns, np.array(good_numbers, dtype=np.int64),
                                b"".join(lines[n - 1] + b"\n" for n in good_numbers), file, rates)
    extra = _rejects(file, np.array(bad_numbers, dtype=np.int64), "wrong_field_count",
                     [lines[n - 1][:200].decode("utf-8", "replace") for n in bad_numbers])
    rejects = pa.concat_tables([rejects, extra]).sort_by("line_number")
    return records, rejects


def _rejects(file: str, numbers: np.ndarray, reasons: list[str] | str, details: list[str]) -> pa.Table:
    if isinstance(reasons, str):
        reasons = [reasons] * len(numbers)
    return pa.table({"archive": pa.array([file] * len(numbers), pa.string()),
                     "line_number": pa.array(numbers, pa.int64()),
                     "reason": pa.array(reasons, pa.string()),
                     "detail": pa.array(details, pa.string())}, schema=REJECTS)


def _icmp_port(port: pa.Array) -> pa.Array:
    """`type.code` (nfdump's ICMP destination port) as type * 256 + code; other text as is."""
    if not pc.any(pc.match_substring(port, ".")).as_py():
        return port
    parts = pc.split_pattern(port, ".")
    is_pair = pc.equal(pc.list_value_length(parts), 2)
    pairs = pc.if_else(is_pair, parts, pa.scalar(["0", "0"], pa.list_(pa.string())))
    first, second = pc.list_element(pairs, 0), pc.list_element(pairs, 1)
    digits = pc.and_(pc.match_substring_regex(first, "^[0-9]{1,3}$"), pc.match_substring_regex(second, "^[0-9]{1,3}$"))
    combined = pc.cast(pc.add(pc.multiply(pc.cast(pc.if_else(digits, first, "0"), pa.int64()), 256),
                              pc.cast(pc.if_else(digits, second, "0"), pa.int64())), pa.string())
    return pc.if_else(pc.and_(is_pair, digits), combined, port)


def _tcp_flag_bits(flags: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """nfdump's 8 flag letters (`...AP.SF`) as the usual bit mask, and which are malformed."""
    flags = flags.combine_chunks() if isinstance(flags, pa.ChunkedArray) else flags
    good = np.asarray(pc.fill_null(pc.equal(pc.utf8_length(flags), 8), False).to_numpy(zero_copy_only=False), bool)
    if good.all() and flags.null_count == 0:  # the letters straight from the buffer: n rows of 8 bytes
        offsets = np.frombuffer(flags.buffers()[1], dtype=np.int32)[flags.offset : flags.offset + len(flags) + 1]
        matrix = np.frombuffer(flags.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(len(flags), 8)
    else:
        text = pc.if_else(pa.array(good), flags, "........").to_numpy(zero_copy_only=False).astype("S8")
        matrix = np.frombuffer(text.tobytes(), dtype=np.uint8).reshape(len(flags), 8)
    bits = (matrix != ord(".")).astype(np.int64) @ _FLAG_BITS.astype(np.int64)
    return bits.astype(np.int16), ~good


def _integers(column: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """Digits as int64 (in one cast when every value is digits), and which values are not."""
    try:
        return pc.cast(column, pa.int64()), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        ok = pc.match_substring_regex(column, _INTEGER)
        return pc.cast(pc.if_else(ok, column, "0"), pa.int64()), pc.invert(ok)


def _timestamps(column: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """nfdump's `YYYY-MM-DD hh:mm:ss.fff` (UTC) as timestamps, and which values are not that."""
    utc = pa.timestamp("ms", tz="UTC")
    try:
        return pc.cast(pc.cast(column, pa.timestamp("ms")), utc), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok = pc.match_substring_regex(column, _TIME)
    return pc.cast(pc.cast(pc.if_else(ok, column, "1970-01-01 00:00:00"), pa.timestamp("ms")), utc), pc.invert(ok)


def _convert(text: dict[str, pa.Array], numbers: np.ndarray, body: bytes, file: str,
             rates: dict[int, int]) -> tuple[pa.Table, pa.Table]:
    n = len(numbers)
    reason = np.full(n, "", dtype=object)

    def mark(bad, why: str) -> None:
        if bad is None or not pc.any(bad).as_py():
            return
        bad = np.asarray(pc.fill_null(bad, True).to_numpy(zero_copy_only=False), dtype=bool)
        reason[bad & (reason == "")] = why

    text = {name: pc.fill_null(column, "") if column.null_count else column for name, column in text.items()}
    text["dst_port"] = _icmp_port(text["dst_port"])
    integers = {}
    for name in ("protocol", "src_port", "dst_port", "in_packets", "in_bytes", "out_packets", "out_bytes", "input",
                 "output", "tos", "exporter"):
        integers[name], bad = _integers(text[name])
        mark(bad, f"bad_number:{name}")
        mark(pc.less(integers[name], 0), f"bad_number:{name}")
    times = {}
    for name in ("start", "end"):
        times[name], bad = _timestamps(text[name])
        mark(bad, f"bad_timestamp:{name}")
    for name in ("src_ip", "dst_ip"):
        mark(pc.invert(pc.match_substring_regex(text[name], r"^[0-9a-fA-F:.]{2,45}$")), f"bad_ip:{name}")
    mark(pc.greater(integers["protocol"], 255), "protocol_out_of_range")
    for name in ("src_port", "dst_port"):
        mark(pc.greater(integers[name], 65535), f"port_out_of_range:{name}")
    mark(pc.less(times["end"], times["start"]), "end_before_start")
    flag_bits, bad_flags = _tcp_flag_bits(text["tcp_flags"])
    reason[bad_flags & (reason == "")] = "bad_tcp_flags"

    exporters = integers["exporter"].to_numpy(zero_copy_only=False)
    rate = np.ones(n, dtype=np.int64)
    for exporter, exporter_rate in rates.items():
        rate[exporters == exporter] = exporter_rate
    counts = {name: integers[name].to_numpy(zero_copy_only=False)
              for name in ("in_packets", "in_bytes", "out_packets", "out_bytes")}
    divisible = np.all([values % rate == 0 for values in counts.values()], axis=0)
    reason[~divisible & (reason == "")] = "not_divisible_by_sampling_rate"

    keep = reason == ""
    macs = {}
    for name in ("in_src_mac", "out_dst_mac"):
        mac = pc.utf8_lower(text[name])
        macs[name] = pc.if_else(pc.or_(pc.equal(mac, _NO_MAC), pc.equal(mac, "")), pa.scalar(None, pa.string()), mac)
    start_ms, end_ms = times["start"].cast(pa.int64()), times["end"].cast(pa.int64())
    columns = {
        "archive": pa.array([file] * n, pa.string()),
        "line_number": pa.array(numbers, pa.int64()),
        "flow_start": times["start"],
        "flow_end": times["end"],
        "duration_ms": pc.subtract(end_ms, start_ms),
        "reverse_delta_ms": pa.nulls(n, pa.int64()),
        "protocol": integers["protocol"],
        "src_ip": text["src_ip"],
        "src_port": integers["src_port"],
        "packets": pa.array(counts["in_packets"] // rate),
        "bytes": pa.array(counts["in_bytes"] // rate),
        "src_mac": macs["in_src_mac"],
        "dst_ip": text["dst_ip"],
        "dst_port": integers["dst_port"],
        "reverse_packets": pa.array(counts["out_packets"] // rate),
        "reverse_bytes": pa.array(counts["out_bytes"] // rate),
        "dst_mac": macs["out_dst_mac"],
        "union_tcp_flags": pa.array(np.where(integers["protocol"].to_numpy(zero_copy_only=False) == 6, flag_bits, 0),
                                    pa.int16()),
        "ingress_interface": integers["input"],
        "egress_interface": integers["output"],
        "ip_class_of_service": integers["tos"],
        "has_flow_stats": pa.array(np.zeros(n, dtype=bool)),
        "ip_version": pc.if_else(pc.match_substring(text["src_ip"], ":"), 6, 4),
        "sampling_rate": pa.array(rate),
    }
    records = records_table(columns, n)
    if not keep.all():
        records = records.filter(pa.array(keep))
    bad = np.flatnonzero(~keep)
    if len(bad) == 0:
        return records, REJECTS.empty_table()
    lines = body.split(b"\n")
    rejects = _rejects(file, numbers[bad], reason[bad].tolist(),
                       [lines[i][:200].decode("utf-8", "replace") for i in bad])
    return records, rejects
