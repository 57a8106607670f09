"""Device windows made up for model tests: hourly rows of a few devices, each with its own feature means."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iot_assets.core.features import FEATURES


def synthetic_windows(devices: int = 3, days: int = 4, seed: int = 0) -> pd.DataFrame:
    """Hourly windows of `devices` devices over `days` days from 2019-07-01, device d's features around
    d * 0.5: enough to fit any model."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(devices):
        starts = pd.date_range("2019-07-01", periods=days * 24, freq="h", tz="UTC")
        values = rng.normal(loc=d * 0.5, scale=0.3, size=(len(starts), len(FEATURES)))
        frame = pd.DataFrame(values, columns=FEATURES)
        frame.insert(0, "window_start", starts)
        frame.insert(0, "device_key", f"02:00:00:00:00:{d:02d}")
        frame["device_name"] = f"device {d}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
