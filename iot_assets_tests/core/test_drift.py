"""Drift distances: the day's histograms of every feature at once equal them one at a time."""

import numpy as np
import pandas as pd

from iot_assets.core import drift


def test_all_features_at_once_equal_one_at_a_time():
    rng = np.random.default_rng(3)
    train = np.column_stack([rng.normal(size=200), rng.integers(0, 2, 200).astype(float),  # two edges only
                             np.zeros(200), rng.exponential(size=200)])                     # one edge
    references = {}
    for j in range(train.shape[1]):
        edges = drift._edges(train[:, j])
        references[f"f{j}"] = {"edges": edges.tolist(), "expected": drift._histogram(train[:, j], edges).tolist()}
    day = np.column_stack([rng.normal(1, 1, 24), rng.integers(0, 2, 24).astype(float), rng.normal(size=24),
                           rng.exponential(size=24)])
    day[3, 0] = np.nan
    day[5, 3] = references["f3"]["edges"][2]  # on an edge: counted in the bin above, as searchsorted(right)
    at_once = drift._feature_distances(day, references)
    one_by_one = [drift.js_distance(drift._histogram(day[:, j], np.asarray(r["edges"])), np.asarray(r["expected"]))
                  for j, r in enumerate(references.values())]
    assert at_once == one_by_one
    assert at_once[2] > 0.5 and at_once[1] < 0.3  # a feature that moved is far, one that did not is near


def test_a_day_like_training_does_not_drift_and_a_changed_one_does():
    rng = np.random.default_rng(5)
    days = pd.date_range("2019-07-01", periods=24 * 8, freq="h", tz="UTC")
    windows = pd.DataFrame({"device_key": "02:00:00:00:00:01", "device_name": "device", "window_start": days,
                            "w_x": rng.normal(size=len(days)), "w_log_own_flows": 3.0, "w_log_flows": 3.0,
                            "w_scope_internet_share": 1.0})
    reference = drift.build_reference(windows.iloc[:24 * 7], features=["w_x"])
    same = drift.day_drift(windows.iloc[24 * 7:], reference)
    moved = drift.day_drift(windows.iloc[24 * 7:].assign(w_x=lambda d: d["w_x"] + 3), reference)
    assert not same.set_index("feature").loc["w_x", "drifted"]
    assert moved.set_index("feature").loc["w_x", "drifted"]
