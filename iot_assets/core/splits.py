"""The one time split every model uses: the earlier days of windows train, the later days evaluate."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


def time_split(days: list[str], train_fraction: float) -> tuple[list[str], list[str]]:
    """Earlier days train, later days evaluate: devices and their clouds drift over months."""
    days = sorted(days)
    if len(days) < 2:
        raise ValueError(f"a time split needs at least two days of windows, got {len(days)}")
    cut = min(max(1, round(len(days) * train_fraction)), len(days) - 1)
    return days[:cut], days[cut:]


def window_days(windows: pd.DataFrame) -> pd.Series:
    return windows["window_start"].dt.strftime("%Y-%m-%d")


@dataclass(frozen=True)
class TimeSplit:
    """The one split every model uses: the earlier days train, the later days evaluate."""

    train_days: list[str]
    eval_days: list[str]

    @classmethod
    def of(cls, windows: pd.DataFrame, train_fraction: float) -> "TimeSplit":
        return cls(*time_split(window_days(windows).unique().tolist(), train_fraction))

    def is_train(self, windows: pd.DataFrame) -> pd.Series:
        return window_days(windows).isin(self.train_days)

    @property
    def train_range(self) -> list[str]:
        return [self.train_days[0], self.train_days[-1]]

    @property
    def eval_range(self) -> list[str]:
        return [self.eval_days[0], self.eval_days[-1]]
