"""Feature drift against the training reference, per device, with Jensen–Shannon distance.

For every device and feature the reference keeps the bin edges (deciles of the training
windows), the training distribution over those bins, and how far single training days
strayed from it. A day drifts on a feature when its distance exceeds what the training
days themselves reached; the share of drifted features says how much a device changed.
Histograms keep the cost independent of the number of rows: a day of millions of flows
is a few thousand windows, binned once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iot_assets.core.features import FEATURES

# Share of a device's features that drift: at or above MODERATE a WARN, at or above MAJOR an ERROR.
MODERATE = 0.10
MAJOR = 0.30
MIN_DISTANCE = 0.2  # below this Jensen–Shannon distance no feature counts as drifted
MIN_MIX_DISTANCE = 0.1
# A service or endpoint mix this many times further from the reference than any training day: major.
MAJOR_MIX_RATIO = 2.0
# Share of a day's own flows on services a device never used in training: above it moderate.
NOVEL_SERVICES = 0.02


def _edges(values: np.ndarray) -> np.ndarray:
    # Quintiles: a day has only 24 hourly windows, and more bins would mostly measure noise.
    return np.unique(np.quantile(values, [0.2, 0.4, 0.6, 0.8]))


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1).astype(float)
    return counts / max(counts.sum(), 1.0)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1]) between two histograms."""
    p = (p + 1e-6) / (p + 1e-6).sum()
    q = (q + 1e-6) / (q + 1e-6).sum()
    m = (p + q) / 2
    divergence = 0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m))
    return float(np.sqrt(max(divergence, 0.0)))


def _mixes(windows: pd.DataFrame) -> dict[str, np.ndarray]:
    """A day's flows spread over services and over cloud prefixes, rebuilt from window shares.

    Thousands of flows make these mixes steady from day to day: where the per-feature
    histograms of 24 windows are noisy, a change of services or endpoints stands out here.
    """
    own = np.expm1(windows["w_log_own_flows"].to_numpy(dtype=float))
    internet = np.expm1(windows["w_log_flows"].to_numpy(dtype=float)) * windows["w_scope_internet_share"].to_numpy(dtype=float)
    services = [c for c in windows.columns if c.startswith(("w_svc_", "w_port_b"))]
    prefixes = [c for c in windows.columns if c.startswith("w_prefix_b")]
    mix = {
        "mix:services": (windows[services].to_numpy(dtype=float) * own[:, None]).sum(axis=0),
        "mix:endpoints": (windows[prefixes].to_numpy(dtype=float) * internet[:, None]).sum(axis=0),
    }
    return {name: counts / counts.sum() if counts.sum() > 0 else counts for name, counts in mix.items()}


def build_reference(train: pd.DataFrame, features: list[str] = FEATURES) -> dict:
    """Per device: edges, training histogram and the largest daily distance seen in training."""
    reference = {}
    days = train["window_start"].dt.strftime("%Y-%m-%d")
    for mac, part in train.groupby("device_key"):
        if part["window_start"].dt.strftime("%Y-%m-%d").nunique() < 2:
            continue
        entry = {"device_name": part["device_name"].iloc[0], "features": {}, "mixes": {}}
        part_days = days.loc[part.index]
        # A new day exceeds the largest of n training days with chance 1/(n + 1): with few
        # training days the limit needs room, or a tenth of the features "drift" by chance.
        margin = 1.0 + 2.0 / np.sqrt(part_days.nunique())
        expected_mix = _mixes(part)
        daily_mix = [_mixes(part[part_days == d]) for d in part_days.unique()]
        for name, expected in expected_mix.items():
            distances = [js_distance(m[name], expected) for m in daily_mix if m[name].sum() > 0]
            entry["mixes"][name] = {"expected": expected.tolist(),
                                    "limit": max(max(distances, default=0.0) * margin, MIN_MIX_DISTANCE)}
        day_codes, day_names = pd.factorize(part_days)
        matrix = part[features].to_numpy(dtype=float)
        for column, feature in enumerate(features):
            values = matrix[:, column]
            edges = _edges(values)
            expected = _histogram(values, edges)
            # Every day's histogram in one count: bin b of day d is cell d * bins + b.
            bins = len(edges) + 1
            counts = np.bincount(day_codes * bins + np.searchsorted(edges, values, side="right"),
                                 minlength=len(day_names) * bins).reshape(len(day_names), bins).astype(float)
            daily = [js_distance(histogram, expected)
                     for histogram in counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)]
            entry["features"][feature] = {
                "edges": edges.tolist(),
                "expected": expected.tolist(),
                "limit": max(float(np.max(daily)) * margin, MIN_DISTANCE),
            }
        reference[mac] = entry
    return reference


def _feature_distances(values: np.ndarray, references: dict) -> list[float]:
    """`js_distance(_histogram(values[:, j], edges_j), expected_j)` for every feature j at once.

    A feature has up to four edges, so five bins: each feature's row is padded to five, and the
    padding adds nothing to its sums (a day's 5,000 distances per device, one at a time, were most of
    `feature_drift`).
    """
    refs = list(references.values())
    width = max((len(r["edges"]) for r in refs), default=0) + 1
    edges = np.full((len(refs), width - 1), np.inf)
    expected = np.zeros((len(refs), width))
    valid = np.zeros((len(refs), width), dtype=bool)
    for j, r in enumerate(refs):
        edges[j, :len(r["edges"])] = r["edges"]
        expected[j, :len(r["expected"])] = r["expected"]
        valid[j, :len(r["edges"]) + 1] = True
    # searchsorted(edges, v, side="right") is the number of edges at or below v (NaN: past them all).
    bins = np.where(np.isnan(values), valid.sum(axis=1) - 1, (values[:, :, None] >= edges[None, :, :]).sum(axis=2))
    counts = np.zeros((len(refs), width))
    np.add.at(counts, (np.broadcast_to(np.arange(len(refs)), bins.shape), bins), 1.0)
    observed = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    p = np.where(valid, observed + 1e-6, 0.0)
    q = np.where(valid, expected + 1e-6, 0.0)
    p, q = p / p.sum(axis=1, keepdims=True), q / q.sum(axis=1, keepdims=True)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(valid, 0.5 * p * np.log2(p / m), 0.0), np.where(valid, 0.5 * q * np.log2(q / m), 0.0)
    divergence = terms[0].sum(axis=1) + terms[1].sum(axis=1)
    return np.sqrt(np.maximum(divergence, 0.0)).tolist()


def day_drift(windows: pd.DataFrame, reference: dict) -> pd.DataFrame:
    """One row per device and feature (and service / endpoint mix): the day's distance to the
    reference and whether it drifted."""
    rows = []
    for mac, part in windows.groupby("device_key"):
        entry = reference.get(mac)
        if entry is None:
            continue
        for name, observed in _mixes(part).items():
            ref = entry["mixes"][name]
            expected = np.asarray(ref["expected"])
            distance = js_distance(observed, expected) if observed.sum() > 0 else 0.0
            rows.append({"device_key": mac, "device_name": entry["device_name"], "feature": name,
                         "js_distance": distance, "limit": ref["limit"], "drifted": distance > ref["limit"]})
            if name == "mix:services":
                # Services the device never used in training: the sharpest sign of new firmware or malware.
                novel = float(observed[expected == 0].sum())
                rows.append({"device_key": mac, "device_name": entry["device_name"], "feature": "mix:novel_services",
                             "js_distance": novel, "limit": NOVEL_SERVICES, "drifted": novel > NOVEL_SERVICES})
        names = list(entry["features"])
        for feature, distance in zip(names, _feature_distances(part[names].to_numpy(dtype=float), entry["features"])):
            limit = entry["features"][feature]["limit"]
            rows.append({"device_key": mac, "device_name": entry["device_name"], "feature": feature,
                         "js_distance": distance, "limit": limit, "drifted": distance > limit})
    return pd.DataFrame(rows, columns=["device_key", "device_name", "feature", "js_distance", "limit", "drifted"])


def summarize(drift: pd.DataFrame) -> pd.DataFrame:
    """Per device: the share of drifted features, how far the mixes moved against their limits,
    the level, and the features that moved most."""
    if drift.empty:
        return pd.DataFrame(columns=["device_key", "device_name", "drifted_share", "mix_ratio", "level", "top_drifted"])
    rows = []
    for (mac, name), part in drift.groupby(["device_key", "device_name"], dropna=False):
        is_mix = part["feature"].str.startswith("mix:")
        share = float(part.loc[~is_mix, "drifted"].mean())
        ratios = (part["js_distance"] / part["limit"])[is_mix]
        ratios.index = part.loc[is_mix, "feature"]
        mix_ratio = float(ratios.max())
        moved = part[part["drifted"]].sort_values("js_distance", ascending=False)
        # Cloud providers rotate endpoints on their own, and devices do start using mDNS one
        # day: a moved endpoint mix or a new service alone is moderate.
        major = share >= MAJOR or ratios.get("mix:services", 0.0) >= MAJOR_MIX_RATIO
        moderate = share >= MODERATE or mix_ratio > 1.0
        rows.append({
            "device_key": mac, "device_name": name, "drifted_share": share, "mix_ratio": mix_ratio,
            "level": "major" if major else "moderate" if moderate else "none",
            "top_drifted": ", ".join(f"{f} ({d:.2f})" for f, d in zip(moved["feature"].head(5), moved["js_distance"].head(5))),
        })
    return pd.DataFrame(rows).sort_values("drifted_share", ascending=False).reset_index(drop=True)
