"""The stages a day's data goes through, declared on each asset as a tag: the jobs select by it.

A stage cuts across the groups (the lines group has an asset in every stage), so it is a
property of the asset, not of its group: `tags=stage(DAILY_FLOWS)` puts an asset in
`daily_flows_job` and in the `iot-assets run` stage of that name, without editing the jobs.

- ingest: the landing zone and what is imported with it (archives, collector files, lines, feeds);
- daily_flows: day-partitioned tables built from the flows alone;
- training: the models, on the days built so far;
- daily_scoring: day-partitioned tables that read a model;
- reports: what sums up the models and the scored days.
"""

from __future__ import annotations

STAGE_TAG = "iot_assets/stage"

INGEST = "ingest"
DAILY_FLOWS = "daily_flows"
TRAINING = "training"
DAILY_SCORING = "daily_scoring"
REPORTS = "reports"
# In the order `iot-assets run` goes through them: each reads what the ones before it built.
STAGES = (INGEST, DAILY_FLOWS, TRAINING, DAILY_SCORING, REPORTS)
DAILY_STAGES = (DAILY_FLOWS, DAILY_SCORING)


def stage(name: str) -> dict[str, str]:
    """The tags that put an asset in stage `name`."""
    if name not in STAGES:
        raise ValueError(f"no stage {name!r}: one of {', '.join(STAGES)}")
    return {STAGE_TAG: name}
