"""Novelty profiles per training period: a device that changed for good stays known on every
day it was trained on, and a stranger resembling none of its periods stays unknown.

All windows here are FICTIONAL (random features, MACs 02:00:...).
"""

import numpy as np
import pandas as pd
import pytest

from iot_assets.core import classifier, device_inventory, novelty, splits
from iot_assets.core.features import FEATURES
from iot_assets_tests.support.windows import synthetic_windows

DAYS = 40


def windows_with_a_lasting_change(change_day: int = 12, seed: int = 0) -> pd.DataFrame:
    """Three devices over DAYS days; device 0 moves half its features for good on `change_day`
    (the real Nature Remo stopped its HTTPS cloud flows in August 2019); device 3 sits between."""
    windows = synthetic_windows(devices=4, days=DAYS, seed=seed)
    changed = (windows["device_key"] == "02:00:00:00:00:00") & (
        windows["window_start"] >= pd.Timestamp("2019-07-01", tz="UTC") + pd.Timedelta(days=change_day))
    windows.loc[changed, FEATURES[: len(FEATURES) // 2]] += 4.0
    return windows


def test_profile_periods_count_back_from_the_last_training_day():
    days = [f"d{i:02d}" for i in range(10)]
    assert novelty.profile_periods(days, 4) == [days[:2], days[2:6], days[6:]]
    assert novelty.profile_periods(days, None) == [days]
    assert novelty.profile_periods(days, 10) == [days]
    assert novelty.profile_periods([], 4) == []


def test_a_device_that_changed_for_good_stays_known_on_its_own_earlier_training_days(monkeypatch):
    monkeypatch.setattr(classifier, "BOOSTER", classifier.LODO_BOOSTER)
    windows = windows_with_a_lasting_change()
    stranger = windows["device_name"] == "device 3"
    split = splits.TimeSplit.of(windows, 0.75)  # 30 training days: periods of 28 days leave two
    model, _, _ = classifier.train_and_evaluate(windows[~stranger], split, seed=0)
    assert model.novelty.calibration["profile_periods"] == [["2019-07-01", "2019-07-02"],
                                                            ["2019-07-03", "2019-07-30"]]
    assert model.novelty.profile_labels.count("device 0") == 2
    verdicts = device_inventory.day_verdicts(model, windows)
    device_0 = verdicts[verdicts["device_key"] == "02:00:00:00:00:00"]
    # Before per-period profiles only the last 28 training days were profiled: device 0's days
    # before the change (2019-07-01..07-12) were `unknown` though it was trained on them.
    assert len(device_0) == DAYS and (device_0["status"] == "known").all()
    assert (device_0["predicted_device"] == "device 0").all()
    outsider = verdicts[verdicts["device_key"] == "02:00:00:00:00:03"]
    assert (outsider["status"] == "unknown").all()
    assert set(outsider["nearest_known"]) == {"device 2"}


def test_the_last_weeks_alone_reproduce_the_old_fault(monkeypatch):
    monkeypatch.setattr(classifier, "BOOSTER", classifier.LODO_BOOSTER)
    windows = windows_with_a_lasting_change()
    train = windows[splits.window_days(windows) <= "2019-07-30"]
    last_weeks = novelty.fit_novelty(train[splits.window_days(train) >= "2019-07-03"], "device_name", FEATURES)
    periods = novelty.fit_novelty(train, "device_name", FEATURES)
    early = windows[(windows["device_name"] == "device 0") & (splits.window_days(windows) <= "2019-07-11")]
    far = last_weeks.distances(last_weeks.day_profiles(early, 1)).min(axis=1) / last_weeks.threshold
    near = periods.distances(periods.day_profiles(early, 1)).min(axis=1) / periods.threshold
    assert (far > 1).all() and (near < 1).all()


def test_per_period_profiles_round_trip_and_leave_a_model_out(monkeypatch):
    monkeypatch.setattr(classifier, "BOOSTER", classifier.LODO_BOOSTER)
    windows = windows_with_a_lasting_change()
    model, _, _ = classifier.train_and_evaluate(windows, splits.TimeSplit.of(windows, 0.75), seed=0)
    files = model.to_files()
    back = classifier.DeviceClassifier.from_files(files)
    assert back.novelty.profile_labels == model.novelty.profile_labels
    np.testing.assert_array_equal(back.novelty.center, model.novelty.center)
    without = model.novelty.without("device 0")
    assert "device 0" not in without.labels and "device 0" not in without.profile_labels
    assert len(without.center) == len(model.novelty.center) - 2
    # A version saved before per-period profiles (no profile_labels) loads as one profile per model.
    meta, arrays = model.novelty.to_arrays()
    single = {k: v[[model.novelty.profile_labels.index(label) for label in meta["labels"]]]
              for k, v in arrays.items()}
    old = novelty.NoveltyModel.from_arrays({k: v for k, v in meta.items() if k != "profile_labels"}, single)
    assert old.profile_labels == old.labels
    with pytest.raises(ValueError, match="profile_labels"):
        novelty.NoveltyModel.from_arrays({**meta, "profile_labels": ["nobody"] * len(arrays["center"])}, arrays)


def test_distances_in_row_chunks_equal_distances_at_once(monkeypatch):
    windows = windows_with_a_lasting_change()
    model = novelty.fit_novelty(windows[splits.window_days(windows) <= "2019-07-30"], "device_name", FEATURES)
    profiles = model.day_profiles(windows, 7)
    # A shift three of four MACs share on one day: the network's, recomputed without it per chunk too.
    last_day = profiles.index.get_level_values("day") == "2019-08-09"
    macs = profiles.index.get_level_values("device_key").isin([f"02:00:00:00:00:0{d}" for d in range(3)])
    profiles.loc[last_day & macs, FEATURES[:50]] += 20.0
    at_once = model.distances(profiles)
    monkeypatch.setattr(novelty, "DISTANCE_CHUNK_VALUES", 3 * model.center.size)  # three rows at a time
    pd.testing.assert_frame_equal(model.distances(profiles), at_once)
    assert (at_once.loc[last_day & macs].min(axis=1) < model.threshold).all()
