"""Records counted twice: a line repeated inside an archive, a flow present in two archives.

Inside one archive (`RepeatedRecords`): a decoded flow record equal in every field to an earlier
line's is a `duplicate_record` reject naming that line, so a duplicated line with an adjusted stats
count still reconciles, but visibly. Records are compared by a 64-bit hash of their values (the
archive and line number aside): 16 bytes per record kept (the hash and its first line), about
100 MB for the largest archive's 6.1 million records (twice that for a moment while a block is merged in).

Across archives (`cross_archive_duplicates`): the same flow (the archive's device MAC, protocol,
addresses, ports and start) in two archives (a re-export, a renamed copy) is counted once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DUPLICATE_RECORD = "duplicate_record"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _column_hash(column: pa.ChunkedArray) -> np.ndarray:
    """A uint64 per value; equal values (and nulls) hash equal within this process."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        encoded = column.dictionary_encode()
        words = np.array([hash(w) for w in encoded.dictionary.to_pylist()] or [0], dtype=np.int64).view(np.uint64)
        values = words[pc.fill_null(encoded.indices, 0).to_numpy()]
    elif pa.types.is_floating(column.type):
        values = pc.fill_null(column, 0.0).to_numpy().astype(np.float64).view(np.uint64)
    elif pa.types.is_boolean(column.type):
        values = pc.fill_null(column, False).to_numpy(zero_copy_only=False).astype(np.uint64)
    else:  # integers and timestamps
        values = pc.fill_null(column.cast(pa.int64()), 0).to_numpy().view(np.uint64)
    return np.where(nulls, np.uint64(0x5BD1E995), values)


def record_hashes(table: pa.Table, skip: tuple[str, ...] = ("archive", "line_number")) -> np.ndarray:
    """A 64-bit hash of each row's values over every column but `skip`."""
    h = np.zeros(table.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i, name in enumerate(table.column_names):
            if name not in skip:
                h = _mix(h ^ (_column_hash(table.column(name)) + _GOLDEN * np.uint64(i + 1)))
    return h


class RepeatedRecords:
    """The records of one archive seen so far, block by block, in line order."""

    def __init__(self):
        self._hashes = np.empty(0, dtype=np.uint64)  # sorted
        self._lines = np.empty(0, dtype=np.int64)  # the first line of each hash

    def split(self, flows: pa.Table, archive: str) -> tuple[pa.Table, pa.Table]:
        """(the flows not seen before, `duplicate_record` rejects of the others naming the line they repeat)."""
        from iot_assets.core.decode import REJECTS_SCHEMA

        if flows.num_rows == 0:
            return flows, REJECTS_SCHEMA.empty_table()
        hashes = record_hashes(flows)
        lines = flows.column("line_number").to_numpy()
        order = np.lexsort((lines, hashes))
        hs, ls = hashes[order], lines[order]
        starts = np.ones(len(hs), dtype=bool)
        starts[1:] = hs[1:] != hs[:-1]
        original = ls[np.maximum.accumulate(np.where(starts, np.arange(len(hs)), 0))]
        at = np.minimum(np.searchsorted(self._hashes, hs), max(len(self._hashes) - 1, 0))
        earlier = (self._hashes[at] == hs) if len(self._hashes) else np.zeros(len(hs), dtype=bool)
        if earlier.any():
            original = np.where(earlier, self._lines[at], original)
        repeat = earlier | ~starts
        new = ~repeat
        merged_hashes = np.concatenate([self._hashes, hs[new]])
        merged_lines = np.concatenate([self._lines, ls[new]])
        keep_order = np.argsort(merged_hashes, kind="stable")
        self._hashes, self._lines = merged_hashes[keep_order], merged_lines[keep_order]
        if not repeat.any():
            return flows, REJECTS_SCHEMA.empty_table()
        mask = np.zeros(len(hs), dtype=bool)
        mask[order[repeat]] = True
        repeated_lines, originals = ls[repeat], original[repeat]
        rejects = pa.table({
            "archive": pa.array([archive] * len(repeated_lines), pa.string()),
            "line_number": pa.array(repeated_lines, pa.int64()),
            "reason": pa.array([DUPLICATE_RECORD] * len(repeated_lines), pa.string()),
            "detail": pa.array([f"the same record as line {n}" for n in originals], pa.string()),
        }, schema=REJECTS_SCHEMA)
        return flows.filter(pa.array(~mask)), rejects


# ---------------------------------------------------------------- one flow in two archives

# A flow as its device saw it: the same capture exported twice has the same key in both exports.
FLOW_KEY = ["device_mac", "protocol", "device_ip", "device_port", "remote_ip", "remote_port", "flow_start"]


def archive_rank(archives: list[str], local_macs: dict[str, str | None]) -> dict[str, int]:
    """Which archive's copy of a flow is kept: the archive the catalogue names for its device, then by name."""
    from iot_assets.contracts import catalogue

    def canonical(archive: str) -> bool:
        device = catalogue.BY_ARCHIVE.get(archive)
        return device is not None and device.mac == local_macs.get(archive)

    return {a: i for i, a in enumerate(sorted(archives, key=lambda a: (not canonical(a), a)))}


def cross_archive_duplicates(clean: pd.DataFrame, rank: dict[str, int]) -> pd.Series:
    """Per row of device-centric flows: (kept archive, its line) when a better-ranked archive holds the same flow, else None.

    Rows of one archive are never duplicates of each other here (see `RepeatedRecords`): only a
    device MAC that several archives of the day carry is looked at, so the usual day costs one groupby.
    """
    out = pd.Series([None] * len(clean), index=clean.index, dtype=object)
    if clean.empty:
        return out
    archives_per_mac = clean.groupby("device_mac", sort=False)["archive"].nunique()
    shared = clean["device_mac"].isin(archives_per_mac.index[archives_per_mac > 1])
    if not shared.any():
        return out
    rows = clean.loc[shared, FLOW_KEY + ["archive", "line_number"]].assign(_rank=clean.loc[shared, "archive"].map(rank))
    rows = rows.sort_values(["_rank", "line_number"], kind="stable")
    first = rows.groupby(FLOW_KEY, sort=False, dropna=False)[["archive", "line_number", "_rank"]].transform("first")
    duplicate = rows["_rank"] > first["_rank"]
    kept = first.loc[duplicate]
    out.loc[kept.index] = list(zip(kept["archive"], kept["line_number"].astype(int)))
    return out


def archive_overlaps(keys_of, local_macs: dict[str, str | None], rank: dict[str, int],
                     days_of: dict[str, set[str]]) -> list[dict]:
    """Archives that share a device MAC and days, and how many flows of each better-ranked ones hold already.

    `keys_of(archive)` gives an archive's flows with FLOW_KEY's columns (device-centric) and `day`; it is
    called only for archives whose days (`days_of`) meet another's of the same device, so daily archives
    of one device (`x_20190625`, `x_20190626` ...) cost nothing.
    """
    by_mac: dict[str, list[str]] = {}
    for archive, mac in local_macs.items():
        if mac:
            by_mac.setdefault(mac, []).append(archive)
    overlaps = []
    for mac, archives in sorted(by_mac.items()):
        archives = sorted(archives, key=rank.get)
        loaded: dict[str, pd.DataFrame] = {}
        for i, archive in enumerate(archives):
            better = [a for a in archives[:i] if days_of.get(a, set()) & days_of.get(archive, set())]
            if not better:
                continue
            for name in [archive, *better]:
                if name not in loaded:
                    loaded[name] = keys_of(name)
            seen = pd.concat([loaded[a][FLOW_KEY] for a in better]).drop_duplicates()
            shared = loaded[archive].merge(seen, on=FLOW_KEY, how="inner")
            if len(shared):
                overlaps.append({"device_mac": mac, "kept": " + ".join(better), "dropped": archive,
                                 "records": len(shared), "days": sorted(shared["day"].astype(str).unique())})
    return overlaps
