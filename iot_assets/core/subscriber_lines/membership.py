"""Which devices sit on which subscriber line, from when: the lines file, synthetic lines, shards of lines."""

from __future__ import annotations

import hashlib
import re
from datetime import date, timedelta

import numpy as np
import pandas as pd

from iot_assets.contracts import schemas
from iot_assets.contracts.schemas import UtcMs

MAC_PATTERN = re.compile(schemas.MAC_PATTERN)


class LinesInputError(ValueError):
    """A lines file or setting that cannot be used; the message names the source and the record."""


MEMBERSHIP_COLUMNS = ["line_id", "device_mac", "since"]


def parse_membership(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """A lines table as read from CSV (`device_mac,line_id[,since]`), checked and normalised.

    `since` (optional, ISO time, UTC if no zone) is when the device's traffic starts being
    copied into the line; empty means from the beginning. Raises LinesInputError naming
    `source` and the file line of the first bad record.
    """
    missing = {"device_mac", "line_id"} - set(table.columns)
    if missing:
        raise LinesInputError(f"{source}: missing column(s) {', '.join(sorted(missing))} "
                              f"(expected device_mac,line_id[,since]; found {', '.join(map(str, table.columns))})")
    rows = []
    for i, record in enumerate(table.to_dict("records")):
        where = f"{source} line {i + 2}"  # line 1 is the header
        mac = str(record["device_mac"] if pd.notna(record["device_mac"]) else "").strip().lower().rstrip(":")
        if not MAC_PATTERN.match(mac):
            raise LinesInputError(f"{where}: device_mac {record['device_mac']!r} is not a MAC address")
        line_id = str(record["line_id"]).strip() if pd.notna(record["line_id"]) else ""
        if not line_id:
            raise LinesInputError(f"{where}: empty line_id")
        since = record.get("since")
        if since is None or (not isinstance(since, str) and pd.isna(since)) or not str(since).strip():
            since_ts = pd.NaT
        else:
            try:
                since_ts = pd.Timestamp(str(since).strip())
            except ValueError as exc:
                raise LinesInputError(f"{where}: since {since!r} is not a time (ISO 8601)") from exc
            since_ts = since_ts.tz_localize("UTC") if since_ts.tzinfo is None else since_ts.tz_convert("UTC")
        rows.append({"line_id": line_id, "device_mac": mac, "since": since_ts})
    membership = pd.DataFrame(rows, columns=MEMBERSHIP_COLUMNS)
    duplicated = membership.duplicated(["line_id", "device_mac"], keep="first")
    if duplicated.any():
        i = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise LinesInputError(f"{source} line {i + 2}: device {membership.at[i, 'device_mac']} is on line "
                              f"{membership.at[i, 'line_id']} twice")
    return _typed_membership(membership)


def _typed_membership(membership: pd.DataFrame) -> pd.DataFrame:
    membership = membership.copy()
    membership["since"] = pd.to_datetime(membership["since"], utc=True).astype(UtcMs)
    return membership[MEMBERSHIP_COLUMNS].reset_index(drop=True)


def synthetic_lines(device_macs: list[str], first_day: date, last_day: date, lines: int = 40,
                    max_devices: int = 6, joining_share: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Seeded random subscriber lines: each a mix of 1..max_devices of the devices.

    A device may sit on several lines (its traffic is copied into each). A `joining_share`
    of the memberships start at a random time between `first_day` and the end of
    `last_day` (a device bought and plugged in), so that time to detect can be measured;
    the others are there from the beginning.
    """
    macs = sorted(set(device_macs))
    if not macs:
        raise LinesInputError("no devices to put on synthetic lines")
    rng = np.random.default_rng([seed, 13])
    start = pd.Timestamp(first_day.isoformat(), tz="UTC")
    span_s = (last_day - first_day + timedelta(days=1)).days * 86_400
    rows = []
    for i in range(lines):
        size = int(rng.integers(1, min(max_devices, len(macs)) + 1))
        for mac in sorted(rng.choice(macs, size=size, replace=False)):
            joins = rng.random() < joining_share
            offset_s = int(rng.integers(0, span_s))
            rows.append({"line_id": f"line-{i:03d}", "device_mac": mac,
                         "since": start + pd.Timedelta(seconds=offset_s) if joins else pd.NaT})
    return _typed_membership(pd.DataFrame(rows, columns=MEMBERSHIP_COLUMNS))


# ---------------------------------------------------------------- shards of lines


def line_key(line_id: str) -> int:
    """A stable 64-bit number for a line id: the same in every process and on every machine (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(str(line_id).encode(), digest_size=8).digest(), "big")


def line_shards(line_ids, shards: int) -> np.ndarray:
    """The shard (0 .. shards-1) of each line id: its `line_key` modulo the shard count.

    A line's shard depends on its id and the count only, never on which other lines exist, so a
    line stays in its shard as subscribers come and go; each distinct id is hashed once.
    """
    if shards < 1:
        raise LinesInputError(f"a shard count must be at least 1, not {shards}")
    codes, uniques = pd.factorize(pd.Series(line_ids, dtype=object).astype(str))
    per_id = np.array([line_key(u) % shards for u in uniques], dtype=np.int64)
    return per_id[codes] if len(codes) else np.empty(0, np.int64)


def shard_membership(membership: pd.DataFrame, shard: int, shards: int) -> pd.DataFrame:
    """The memberships of the lines in shard `shard` of `shards`."""
    if not 0 <= shard < shards:
        raise LinesInputError(f"shard {shard} is not one of 0..{shards - 1}")
    return membership[line_shards(membership["line_id"], shards) == shard]
