"""Days of clean flows from sample archives, without Dagster."""

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from iot_assets.core.archive import find_archives
from iot_assets.core.clean import to_device_centric
from iot_assets.core.ingest import decode_archive
from iot_assets_tests.support.records import FIRST_DAY, LAST_DAY


def clean_days(raw: Path, work: Path) -> dict[str, pd.DataFrame]:
    archives, _ = find_archives(raw)
    frames, macs = [], {}
    for archive in archives:
        summary = decode_archive(archive, work / archive.name, FIRST_DAY, LAST_DAY)
        macs[archive.name] = summary.local_mac
        frames.append(pq.read_table(work / archive.name / "flows.parquet").to_pandas())
    clean, _ = to_device_centric(pd.concat(frames, ignore_index=True), macs)
    day = clean["flow_start"].dt.strftime("%Y-%m-%d")
    return {d: clean[day == d].reset_index(drop=True) for d in sorted(day.unique())}
