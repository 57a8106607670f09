"""Each device model's CPE 2.3 names, from `contracts/device_cpes.csv` (one row per model and CPE).

A model may carry several CPEs (NVD names the Hue Bridge's firmware three ways across its
CVEs); a model NVD lists under no CPE has one row with an empty `cpe` and a `source` that
says so. Matching compares vendor and product only (see core.vulnerabilities).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
from cpe.cpe2_3_fs import CPE2_3_FS

DEVICE_CPE_COLUMNS = ["device", "cpe", "part", "vendor", "product", "source"]
DEFAULT_DEVICE_CPES = Path(__file__).resolve().parent.parent / "contracts" / "device_cpes.csv"


class DeviceCpeError(ValueError):
    """A device_cpes file that cannot be used; the message names the file and line."""


def read_device_cpes(path: Path | str = DEFAULT_DEVICE_CPES) -> pd.DataFrame:
    """The device -> CPE table (DEVICE_CPE_COLUMNS); `cpe`, `part`, `vendor`, `product` are None where NVD has none."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("device", "cpe", "source") if c not in (reader.fieldnames or [])]
            if missing:
                raise DeviceCpeError(f"{path}: lacks column(s) {', '.join(missing)}")
            rows = [_row(path, line, record) for line, record in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DeviceCpeError(f"{path}: cannot read ({exc})") from exc
    return pd.DataFrame(rows, columns=DEVICE_CPE_COLUMNS)


def _row(path: Path, line: int, record: dict) -> dict:
    device, name, source = ((record.get(c) or "").strip() for c in ("device", "cpe", "source"))
    if not device or not source:
        raise DeviceCpeError(f"{path} line {line}: empty device or source")
    if not name:
        return {"device": device, "cpe": None, "part": None, "vendor": None, "product": None, "source": source}
    try:
        parsed = CPE2_3_FS(name)
    except (NotImplementedError, ValueError) as exc:
        raise DeviceCpeError(f"{path} line {line}: {name!r} is not a CPE 2.3 name ({exc})") from exc
    return {"device": device, "cpe": name, "part": parsed.get_part()[0], "vendor": parsed.get_vendor()[0],
            "product": parsed.get_product()[0], "source": source}
