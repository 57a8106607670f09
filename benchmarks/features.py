"""Feature building (flows/s) and anomaly scoring (windows/s) against straightforward pandas.

    python benchmarks/features.py [--days 2] [--scale 0.2]

Generates a sample for all 25 devices, decodes and cleans it, then times in the same run:
  features  ours: vectorised indicators summed per window, trailing context by rolling sums
            baseline: groupby(device, hour).apply() computing each window's features in Python
  scoring   ours: each device's windows scored in one batch
            baseline: each window scored on its own, as a loop over rows does
and prints the rates and ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iot_assets.core import anomaly  # noqa: E402
from iot_assets.core.archive import find_archives  # noqa: E402
from iot_assets.core.clean import to_device_centric  # noqa: E402
from iot_assets.core.features import (  # noqa: E402
    ANOMALY_FEATURES,
    FEATURES,
    SERVICE_PORTS,
    build_windows,
)
from iot_assets.core.ingest import decode_archive  # noqa: E402
from iot_assets.synthetic import sample  # noqa: E402


def clean_flows(days: int, scale: float) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        sample.generate(raw, date(2019, 7, 1), days, scale=scale, seed=1)
        archives, _ = find_archives(raw)
        frames, macs = [], {}
        for archive in archives:
            summary = decode_archive(archive, Path(tmp) / archive.name, date(2019, 6, 25), date(2019, 10, 10))
            macs[archive.name] = summary.local_mac
            frames.append(pq.read_table(Path(tmp) / archive.name / "flows.parquet").to_pandas())
    clean, _ = to_device_centric(pd.concat(frames, ignore_index=True), macs)
    return clean


def baseline_window(g: pd.DataFrame) -> pd.Series:
    """What a first version usually looks like: one window's features computed in Python."""
    n = len(g)
    own = g[g["remote_scope"] != "gateway"]
    services = np.minimum(own["remote_port"], own["device_port"]).map(SERVICE_PORTS)
    row = {
        "flows": n, "bytes_out": g["bytes_out"].sum(), "bytes_in": g["bytes_in"].sum(),
        "dev_init_share": g["device_initiated"].mean(), "tcp_share": (g["protocol"] == 6).mean(),
        "udp_share": (g["protocol"] == 17).mean(), "distinct_ips": g.loc[g["remote_scope"] == "internet", "remote_ip"].nunique(),
        "mean_duration": g["duration_ms"].mean(), "long_share": (g["duration_ms"] >= 1_700_000).mean(),
    }
    for scope in ("gateway", "lan", "internet", "broadcast", "multicast"):
        row[f"scope_{scope}"] = (g["remote_scope"] == scope).mean()
    for name in set(SERVICE_PORTS.values()):
        row[f"svc_{name}"] = (services == name).mean() if len(own) else 0.0
    return pd.Series(row)


def best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--scale", type=float, default=0.2)
    args = parser.parse_args()
    flows = clean_flows(args.days, args.scale)
    days = sorted(flows["flow_start"].dt.strftime("%Y-%m-%d").unique())
    last = flows[flows["flow_start"].dt.strftime("%Y-%m-%d") == days[-1]]
    before = flows[flows["flow_start"].dt.strftime("%Y-%m-%d") < days[-1]]
    print(f"{len(flows):,} clean flows of {flows['device_mac'].nunique()} devices over {len(days)} days")

    ours = best_of(lambda: build_windows(last, before, days[-1]))
    columns = ["remote_scope", "remote_port", "device_port", "bytes_out", "bytes_in", "device_initiated", "protocol",
               "remote_ip", "duration_ms"]
    grouped = flows.assign(window=flows["flow_start"].dt.floor("60min")).groupby(["device_mac", "window"])[columns]
    baseline = best_of(lambda: grouped.apply(baseline_window), repeat=1)
    n = len(flows)
    print(f"features  ours {n / ours:12,.0f} flows/s ({ours:.2f} s, {len(FEATURES)} features incl. 24 h context)")
    print(f"features  baseline groupby.apply {n / baseline:12,.0f} flows/s ({baseline:.2f} s, 20 features, no context)")
    print(f"features  ours / baseline: {baseline / ours:.1f}x")

    windows = pd.concat([build_windows(flows[flows["flow_start"].dt.strftime("%Y-%m-%d") == d],
                                       None, d) for d in days], ignore_index=True)
    windows = pd.concat([windows] * max(1, 6000 // len(windows)), ignore_index=True)
    detector = anomaly.AnomalyDetector("KNN", 0.01, list(ANOMALY_FEATURES)).fit(windows, seed=0)
    ours = best_of(lambda: detector.score(windows))
    subset = windows.head(300)
    per_row = best_of(lambda: [detector.score(subset.iloc[[i]]) for i in range(len(subset))], repeat=1)
    print(f"scoring   ours {len(windows) / ours:12,.0f} windows/s ({len(windows):,} windows, KNN)")
    print(f"scoring   baseline row by row {len(subset) / per_row:12,.0f} windows/s")
    print(f"scoring   ours / baseline: {(len(windows) / ours) / (len(subset) / per_row):.1f}x")


if __name__ == "__main__":
    main()
