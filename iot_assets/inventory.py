"""The device inventory of a day: which device model is behind each MAC."""

from __future__ import annotations

import numpy as np
import pandas as pd

from iot_assets import catalogue
from iot_assets.classifier import DeviceClassifier


def predict_inventory(model: DeviceClassifier, windows: pd.DataFrame, day: str) -> pd.DataFrame:
    columns = ["day", "device_mac", "windows", "predicted_device", "predicted_category", "confidence",
               "runner_up", "runner_up_confidence", "catalogue_device", "in_catalogue", "disagrees"]
    if windows.empty:
        return pd.DataFrame(columns=columns)
    proba = pd.DataFrame(model.predict_proba(windows), columns=model.labels, index=windows.index)
    # A MAC's verdict is the mean of its windows' probabilities over the day.
    per_mac = proba.groupby(windows["device_mac"]).mean()
    ranked = np.argsort(-per_mac.to_numpy(), axis=1)
    categories = {d.name: d.category for d in catalogue.DEVICES}
    rows = []
    for i, mac in enumerate(per_mac.index):
        best, second = ranked[i, 0], ranked[i, 1] if per_mac.shape[1] > 1 else ranked[i, 0]
        known = catalogue.BY_MAC.get(mac)
        predicted = model.labels[best]
        rows.append({
            "day": day, "device_mac": mac, "windows": int((windows["device_mac"] == mac).sum()),
            "predicted_device": predicted, "predicted_category": categories.get(predicted),
            "confidence": float(per_mac.iat[i, best]), "runner_up": model.labels[second],
            "runner_up_confidence": float(per_mac.iat[i, second]),
            "catalogue_device": known.name if known else None, "in_catalogue": known is not None,
            "disagrees": bool(known is not None and known.name != predicted),
        })
    return pd.DataFrame(rows, columns=columns)
