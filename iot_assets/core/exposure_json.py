"""`reports/exposure.json`: every built day's exposure findings per device and per subscriber line.

Built from the concatenated `device_exposure` partitions with the scoring and wording of
`iot_assets.core.exposure`; nothing here reads or writes files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from iot_assets.core.exposure import (
    EVIDENCE_EXAMPLES,
    SEVERITIES,
    advisory_details,
    device_scores,
    finding_meaning,
    finding_remediation,
    line_scores,
)


def exposure_json(exposure: pd.DataFrame, days: list[str] | None = None, advisories: pd.DataFrame | None = None) -> dict:
    """`reports/exposure.json`: the findings in `exposure` (device_exposure partitions, concatenated).

    `days`: the days evaluated (the materialized partitions); by default the days with rows.
    Each finding says what it means and what to do; a `known_advisory` lists its advisories
    (`advisory_details`, from `advisories`) instead of example peers.
    """
    seen = exposure[exposure["seen_today"]] if len(exposure) else exposure
    days = sorted(days if days is not None else (exposure["day"].unique() if len(exposure) else []))
    result: dict = {"day_range": [days[0], days[-1]] if days else [], "devices": [], "lines": []}
    if seen.empty:
        return result
    if "explained_by_incident" not in seen:  # tables written before incidents were linked
        seen = seen.assign(explained_by_incident="")
    per_kind = seen.groupby(["device_key", "kind"]).agg(
        severity=("severity", "last"), first_seen=("first_seen", "min"), last_seen=("day", "max"),
        days=("day", "nunique"), flows=("flows", "sum"),
        example_peers=("evidence", lambda s: list(dict.fromkeys(x for v in s for x in v))[:EVIDENCE_EXAMPLES]),
        explained_by_incident=("explained_by_incident", _incident_ids),
    ).reset_index()
    identity = seen.sort_values("day").groupby("device_key")[["device", "predicted_device", "line"]].last()
    latest = per_kind.merge(identity, left_on="device_key", right_index=True)
    scores = device_scores(latest).set_index("device_key")
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    for mac in scores.index:
        rows = latest[latest["device_key"] == mac]
        rows = rows.assign(r=rows["severity"].map(rank)).sort_values(["r", "kind"], ascending=[False, True])
        result["devices"].append({
            "device_key": mac, "device": _none(identity.at[mac, "device"]),
            "predicted_device": _none(identity.at[mac, "predicted_device"]), "score": float(scores.at[mac, "score"]),
            "findings": [_finding_json(r, advisories) for r in rows.itertuples()],
        })
    result["lines"] = [{"line": r.line, "score": float(r.score), "devices": list(r.devices)}
                       for r in line_scores(latest).itertuples()]
    return result


def _finding_json(r, advisories: pd.DataFrame | None) -> dict:
    advisory = r.kind == "known_advisory"
    finding = {"kind": r.kind, "severity": r.severity, "first_seen": r.first_seen, "last_seen": r.last_seen,
               "days": int(r.days), "flows": int(r.flows), "example_peers": [] if advisory else list(r.example_peers),
               "meaning": finding_meaning(r.kind), "remediation": finding_remediation(r.kind),
               "explained_by_incident": list(r.explained_by_incident)}
    if advisory:
        finding["advisories"] = advisory_details(list(r.example_peers), advisories if advisories is not None
                                                 else pd.DataFrame(columns=["advisory_id"]))
    return finding


def _incident_ids(values: pd.Series) -> list[str]:
    """The incident ids of a finding over its days (each day's cell: "id, id" or empty), once each, sorted."""
    return sorted({i for v in values.dropna() for i in str(v).split(", ") if i})


def _none(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else value
