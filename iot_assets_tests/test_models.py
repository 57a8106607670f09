"""Models that an analyst can trust: safe formats, open-set inventory, incidents, re-baselining."""

import io
import json
import pickle

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from iot_assets import anomaly, classifier
from iot_assets.features import ANOMALY_FEATURES, FEATURES


def synthetic_windows(devices: int = 3, days: int = 4, seed: int = 0) -> pd.DataFrame:
    """Hourly windows of a few devices, each with its own feature means: enough to fit any model."""
    rng = np.random.default_rng(seed)
    frames = []
    for d in range(devices):
        starts = pd.date_range("2019-07-01", periods=days * 24, freq="h", tz="UTC")
        values = rng.normal(loc=d * 0.5, scale=0.3, size=(len(starts), len(FEATURES)))
        frame = pd.DataFrame(values, columns=FEATURES)
        frame.insert(0, "window_start", starts)
        frame.insert(0, "device_mac", f"02:00:00:00:00:{d:02d}")
        frame["device_name"] = f"device {d}"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# HBOS compiles with numba on first use: seconds, so it runs in the slow tier.
@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "HBOS" else k
                                  for k in sorted(anomaly.DETECTORS)])
def test_anomaly_detector_round_trips_to_identical_scores(kind):
    windows = synthetic_windows()
    train = windows[windows["window_start"] < pd.Timestamp("2019-07-04", tz="UTC")]
    later = windows[windows["window_start"] >= pd.Timestamp("2019-07-04", tz="UTC")]
    detector = anomaly.AnomalyDetector(kind, 0.01, list(ANOMALY_FEATURES)).fit(train, seed=7)
    files = detector.to_files()
    assert set(files) == {"detector.json", "detector.npz"}
    assert json.loads(files["detector.json"])["kind"] == kind
    loaded = anomaly.AnomalyDetector.from_files(files)
    before, after = detector.score(later), loaded.score(later)
    assert before["score"].notna().all()
    np.testing.assert_allclose(after["score"].to_numpy(float), before["score"].to_numpy(float))
    np.testing.assert_allclose(after["threshold"].to_numpy(float), before["threshold"].to_numpy(float))
    assert after["anomaly"].tolist() == before["anomaly"].tolist()


def test_anomaly_detector_refuses_a_pickle():
    windows = synthetic_windows(devices=1, days=3)
    files = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(windows, seed=0).to_files()
    # A pickle where the NPZ should be, and an NPZ holding a pickled object array: both refused.
    with pytest.raises(ValueError, match="detector.npz"):
        anomaly.AnomalyDetector.from_files({**files, "detector.npz": pickle.dumps({"center_0": np.zeros(3)})})
    buffer = io.BytesIO()
    np.savez(buffer, center_0=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="detector.npz"):
        anomaly.AnomalyDetector.from_files({**files, "detector.npz": buffer.getvalue()})
    with pytest.raises(ValueError, match="detector.json"):
        anomaly.AnomalyDetector.from_files({**files, "detector.json": pickle.dumps({"kind": "KNN"})})


def test_classifier_round_trips_through_json_files():
    windows = synthetic_windows(devices=3, days=2)
    labels = sorted(windows["device_name"].unique())
    booster = xgb.XGBClassifier(n_estimators=5, max_depth=3, random_state=0, n_jobs=1)
    booster.fit(windows[FEATURES].to_numpy(np.float32), windows["device_name"].map({l: i for i, l in enumerate(labels)}))
    model = classifier.DeviceClassifier(booster, labels, list(FEATURES), {"window_minutes": 60})
    files = model.to_files()
    assert "learner" in json.loads(files["model.json"])
    assert json.loads(files["meta.json"])["labels"] == ["device 0", "device 1", "device 2"]
    loaded = classifier.DeviceClassifier.from_files(files)
    assert loaded.labels == labels and loaded.info == {"window_minutes": 60}
    np.testing.assert_allclose(loaded.predict_proba(windows), model.predict_proba(windows))
    with pytest.raises(ValueError, match="model.json"):
        classifier.DeviceClassifier.from_files({**files, "model.json": pickle.dumps(booster)})
