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


def _parse_number(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    first_day: date  # inclusive
    last_day: date  # inclusive
    window_minutes: int = 60
    train_fraction: float = 0.7
    target_fpr: float = 0.01
    seed: int = 0
    episodes: Path | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        data_dir = Path(os.environ.get("IOT_ASSETS_DATA_DIR", "") or "data").resolve()
        first = _parse_day("IOT_ASSETS_START_DATE", DATASET_FIRST_DAY)
        last = _parse_day("IOT_ASSETS_END_DATE", DATASET_LAST_DAY)
        if last < first:
            raise SettingsError(
                f"IOT_ASSETS_END_DATE ({last}) is before IOT_ASSETS_START_DATE ({first})"
            )
        window = int(_parse_number("IOT_ASSETS_WINDOW_MINUTES", 60, 5, 1440))
        if 1440 % window:
            raise SettingsError(f"IOT_ASSETS_WINDOW_MINUTES={window} does not divide a day")
        episodes = os.environ.get("IOT_ASSETS_EPISODES", "").strip()
        if not episodes and (data_dir / "episodes" / "episodes.csv").exists():
            episodes = str(data_dir / "episodes" / "episodes.csv")  # where `iot-assets run` puts the sample's
        return cls(
            data_dir=data_dir, first_day=first, last_day=last, window_minutes=window,
            train_fraction=_parse_number("IOT_ASSETS_TRAIN_FRACTION", 0.7, 0.1, 0.95),
            target_fpr=_parse_number("IOT_ASSETS_TARGET_FPR", 0.01, 0.0001, 0.5),
            seed=int(_parse_number("IOT_ASSETS_SEED", 0, 0, 2**31)),
            episodes=Path(episodes).resolve() if episodes else None,
        )

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"
