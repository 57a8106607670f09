"""Configuration from the environment, read in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

DATASET_FIRST_DAY = date(2019, 6, 25)
DATASET_LAST_DAY = date(2019, 10, 10)


class SettingsError(ValueError):
    pass


def _parse_day(name: str, default: date) -> date:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a date of the form YYYY-MM-DD") from exc


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    first_day: date  # inclusive
    last_day: date  # inclusive

    @classmethod
    def from_env(cls) -> "Settings":
        data_dir = Path(os.environ.get("IOT_ASSETS_DATA_DIR", "") or "data").resolve()
        first = _parse_day("IOT_ASSETS_START_DATE", DATASET_FIRST_DAY)
        last = _parse_day("IOT_ASSETS_END_DATE", DATASET_LAST_DAY)
        if last < first:
            raise SettingsError(
                f"IOT_ASSETS_END_DATE ({last}) is before IOT_ASSETS_START_DATE ({first})"
            )
        return cls(data_dir=data_dir, first_day=first, last_day=last)

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"
