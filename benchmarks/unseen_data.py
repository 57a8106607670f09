"""The data `unseen_devices.py` evaluates on: archives with injected episodes, as clean flows and windows.

A source is the generated sample (all 25 devices) or the real archives of
/work/shared/data/kddi-iot-2019/. Each archive gets the anomaly episodes of
`iot_assets.synthetic.inject` (seed fixed), is decoded and cleaned as the pipeline does, and
its windows are built day by day with the day before as history (`features.build_windows`).
The results are cached under `--work` (parquet) so that a second run only evaluates.
"""

from __future__ import annotations

import tempfile
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from iot_assets.core.archive import find_archives
from iot_assets.core.clean import to_device_centric
from iot_assets.core.features import FLOW_COLUMNS, build_windows
from iot_assets.core.ingest import decode_archive
from iot_assets.synthetic import sample
from iot_assets.synthetic.inject import inject, read_episodes

REAL_ARCHIVES = Path("/work/shared/data/kddi-iot-2019")
SAMPLE_FIRST_DAY = date(2019, 7, 1)
INJECT_SEED = 7
# The clean-flow columns kept beside the windows: what endpoint evidence reads.
ENDPOINT_COLUMNS = ["device_key", "device_mac", "device_name", "flow_start", "remote_ip", "remote_port", "device_port",
                    "remote_scope", "protocol", "device_initiated"]


def _injected_archives(raw: Path, out: Path) -> pd.DataFrame:
    """Every archive of `raw` with its episodes, written to `out`; the episodes."""
    archives, errors = find_archives(raw)
    if errors:
        raise SystemExit(f"{raw}: unreadable archives: {errors}")
    for archive in archives:
        inject(archive, out, INJECT_SEED)
    return read_episodes(out / "episodes.csv")


def _clean_flows(injected: Path) -> pd.DataFrame:
    archives, _ = find_archives(injected)
    frames, macs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for archive in archives:
            summary = decode_archive(archive, Path(tmp) / archive.name, date(2019, 1, 1), date(2100, 1, 1))
            if summary.error:
                raise SystemExit(f"{archive.name}: does not decode: {summary.error}")
            macs[archive.name] = summary.local_mac
            frames.append(pq.read_table(Path(tmp) / archive.name / "flows.parquet").to_pandas())
    clean, _ = to_device_centric(pd.concat(frames, ignore_index=True), macs)
    return clean


def _windows(clean: pd.DataFrame) -> pd.DataFrame:
    day = clean["flow_start"].dt.strftime("%Y-%m-%d")
    by_day = {d: part[FLOW_COLUMNS] for d, part in clean.groupby(day)}
    out = []
    for d in sorted(by_day):
        before = (date.fromisoformat(d) - timedelta(days=1)).isoformat()
        out.append(build_windows(by_day[d], by_day.get(before), d))
    return pd.concat(out, ignore_index=True)


def load(source: str, work: Path, days: int, scale: float,
         with_episodes: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(windows, episodes, endpoint flows) of `source` ("sample" or "real"), built once into `work`;
    without episodes: the archives as they are (no episodes)."""
    tag = (f"sample-{days}d-{scale:g}" if source == "sample" else "real") + ("" if with_episodes else "-clean")
    cache = work / tag
    files = [cache / name for name in ("windows.parquet", "episodes.parquet", "endpoints.parquet")]
    # Windows cached before flows were keyed by `device_key` are rebuilt, not misread.
    if all(f.exists() for f in files) and "device_key" in pq.read_schema(files[0]).names:
        return tuple(pd.read_parquet(f) for f in files)  # type: ignore[return-value]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        if source == "sample":
            sample.generate(raw, SAMPLE_FIRST_DAY, days, scale=scale, seed=1)
        else:
            raw = REAL_ARCHIVES
        if with_episodes:
            episodes = _injected_archives(raw, Path(tmp) / "injected")
            clean = _clean_flows(Path(tmp) / "injected")
        else:
            episodes = pd.DataFrame({"device": pd.Series(dtype=object), "type": pd.Series(dtype=object),
                                     "start": pd.Series(dtype="datetime64[ns, UTC]"),
                                     "end": pd.Series(dtype="datetime64[ns, UTC]")})
            clean = _clean_flows(raw)
    windows = _windows(clean)
    cache.mkdir(parents=True, exist_ok=True)
    windows.to_parquet(files[0])
    episodes.to_parquet(files[1])
    clean[ENDPOINT_COLUMNS].to_parquet(files[2])
    return windows, episodes, clean[ENDPOINT_COLUMNS]
