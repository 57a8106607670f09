"""Findings an incident explains: an attack's side effect is not a separate problem.

A device that beacons to a server on 8080 during a compromise shows a `cleartext_http` finding
beside the incident; the analyst should see that the finding belongs to the incident. A finding
is EXPLAINED BY an incident of the same device and day when the incident's span (start of its
first flagged window .. end of its last) overlaps the span of at least one of the finding's
evidence flows (flow_start .. flow_end). A finding of a device with no such incident, a finding
without flows (`known_advisory`) and a finding carried from an earlier day (not seen today) are
explained by none.
"""

from __future__ import annotations

import pandas as pd

from iot_assets.core.exposure import match_rules

# The clean-flow columns the links need on top of `exposure.FLOW_COLUMNS`.
TIME_COLUMNS = ["flow_start", "flow_end"]
COLUMN = "explained_by_incident"


def evidence_spans(flows: pd.DataFrame, isp_resolvers: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per (evidence flow, finding kind): device_key, kind, flow_start, flow_end (UTC)."""
    missing = [c for c in TIME_COLUMNS if c not in flows.columns]
    if missing:
        raise ValueError(f"the flows lack {', '.join(missing)}: the incident links need each flow's span")
    matched = match_rules(flows, isp_resolvers)
    spans = matched[["device_key", "kind", *TIME_COLUMNS]].copy()
    for column in TIME_COLUMNS:
        spans[column] = pd.to_datetime(spans[column], utc=True)
    return spans


def explaining_incidents(findings: pd.DataFrame, spans: pd.DataFrame, incidents: pd.DataFrame) -> pd.Series:
    """Per finding row (device_key, kind, seen_today): the ids of the incidents that explain it, sorted and joined
    by ", " ("" for none: a text column, the same type on every day of the lake)."""
    out = pd.Series("", index=findings.index, dtype=object)
    if findings.empty or spans.empty or incidents is None or incidents.empty:
        return out
    episodes = incidents[["device_key", "incident", "start", "end"]].assign(
        start=pd.to_datetime(incidents["start"], utc=True), end=pd.to_datetime(incidents["end"], utc=True))
    pairs = spans.merge(episodes, on="device_key")
    overlapping = pairs[(pairs["start"] <= pairs["flow_end"]) & (pairs["end"] >= pairs["flow_start"])]
    by_finding = overlapping.groupby(["device_key", "kind"])["incident"].agg(lambda ids: sorted(set(ids)))
    seen = findings["seen_today"].astype(bool) if "seen_today" in findings else pd.Series(True, index=findings.index)
    for index, mac, kind in zip(findings.index, findings["device_key"], findings["kind"]):
        if seen[index] and (mac, kind) in by_finding.index:
            out[index] = ", ".join(by_finding[(mac, kind)])
    return out


def link_incidents(exposure_day: pd.DataFrame, flows: pd.DataFrame, incidents: pd.DataFrame | None,
                   isp_resolvers: frozenset[str] = frozenset()) -> pd.DataFrame:
    """The day's exposure table with `explained_by_incident` (the ids of the incidents that explain each finding)."""
    spans = evidence_spans(flows, isp_resolvers) if len(flows) else pd.DataFrame(columns=["device_key", "kind",
                                                                                          *TIME_COLUMNS])
    return exposure_day.assign(**{COLUMN: explaining_incidents(exposure_day, spans, incidents)})
