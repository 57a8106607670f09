"""How well the exposure rules find injected exposure episodes: per kind, against ground truth."""

from __future__ import annotations

import pandas as pd

EPISODE_KINDS = {
    "open_telnet": ("telnet", "inbound_from_internet"),
    "reflector": ("udp_reflector", "upnp_ssdp_internet"),
    "dns_hijack": ("hardcoded_dns",),
}


def _episode_days(start: pd.Timestamp, end: pd.Timestamp) -> list[str]:
    last = end - pd.Timedelta(milliseconds=1)
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(start.floor("D"), last.floor("D"), freq="D")]


def pre_existing_pairs(findings: pd.DataFrame, episodes: pd.DataFrame) -> set[tuple[str, str]]:
    """(MAC, kind) pairs seen before the first exposure episode began: the devices' own exposures."""
    relevant = episodes[episodes["type"].isin(list(EPISODE_KINDS))] if len(episodes) else episodes
    seen = findings[findings["seen_today"]] if len(findings) else findings
    if relevant.empty or seen.empty:
        return set()
    first_day = relevant["start"].min().strftime("%Y-%m-%d")
    before = seen[seen["day"] < first_day]
    return set(zip(before["device_key"], before["kind"]))


def exposure_metrics(findings: pd.DataFrame, episodes: pd.DataFrame,
                     pre_existing: set[tuple[str, str]] | None = None, days: list[str] | None = None) -> dict:
    """Per kind an exposure episode must raise: precision and recall over device-days, and detection delay.

    `findings`: device_exposure rows over the evaluated days; `episodes`: episodes.csv rows
    (`device` a catalogue name or a MAC). A flagged device-day inside an episode that implies
    the kind is a true positive; outside any, a false positive, unless the (MAC, kind) pair is
    `pre_existing`: a real exposure of the device, not a false alarm, counted apart. By
    default the pairs seen before the first exposure episode began (`pre_existing_pairs`);
    pass the findings of the same traffic without injection for a stricter baseline. The
    delay is in days from the episode's first day to the first day it is flagged. `days`: the
    days evaluated (the materialized partitions; a day without any finding has no rows); by
    default the days with rows.
    """
    seen = findings[findings["seen_today"]] if len(findings) else findings
    evaluated_days = set(days) if days is not None else (set(findings["day"]) if len(findings) else set())
    if pre_existing is None:
        pre_existing = pre_existing_pairs(findings, episodes)
    identity = findings[["device_key", "device"]].drop_duplicates() if len(findings) else pd.DataFrame(
        columns=["device_key", "device"])
    relevant = episodes[episodes["type"].isin(list(EPISODE_KINDS))] if len(episodes) else episodes
    result: dict = {"days": len(evaluated_days), "pre_existing": sorted(f"{mac} {kind}" for mac, kind in pre_existing),
                    "episodes": [], "kinds": {}}
    for ep in relevant.itertuples():
        macs = identity.loc[(identity["device"] == ep.device) | (identity["device_key"] == ep.device), "device_key"]
        result["episodes"].append({"device": ep.device, "type": ep.type, "start": ep.start.isoformat(),
                                   "end": ep.end.isoformat(), "macs": sorted(set(macs))})
    for kind in sorted({k for kinds in EPISODE_KINDS.values() for k in kinds}):
        flagged = _flagged(seen, kind)
        truth: set[tuple[str, str]] = set()
        delays = []
        for ep, info in zip(relevant.itertuples(), result["episodes"]):
            if kind not in EPISODE_KINDS[ep.type]:
                continue
            days = [d for d in _episode_days(ep.start, ep.end) if d in evaluated_days]
            cells = {(mac, d) for mac in info["macs"] for d in days}
            truth |= cells
            hit_days = sorted(d for _, d in flagged & cells)
            delays.append({"device": ep.device, "type": ep.type, "first_day": days[0] if days else None,
                           "first_flagged_day": hit_days[0] if hit_days else None,
                           "delay_days": (pd.Timestamp(hit_days[0]) - pd.Timestamp(days[0])).days
                           if hit_days and days else None})
        outside = flagged - truth
        known = {(mac, d) for mac, d in outside if (mac, kind) in pre_existing}
        false = outside - known
        tp, fp, fn = len(flagged & truth), len(false), len(truth - flagged)
        result["kinds"][kind] = {
            "episode_days": len(truth), "flagged_days": len(flagged), "true_positive_days": tp,
            "false_positive_days": fp, "missed_days": fn, "pre_existing_days": len(known),
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "false_positive_devices": sorted({mac for mac, _ in false}), "delays": delays,
        }
    return result


def _flagged(seen: pd.DataFrame, kind: str) -> set[tuple[str, str]]:
    rows = seen[seen["kind"] == kind] if len(seen) else seen
    return set(zip(rows["device_key"], rows["day"])) if len(rows) else set()
