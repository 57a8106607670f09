"""Incidents: what an analyst works with instead of flagged windows.

Consecutive flagged windows of a device, with up to `gap_windows` unflagged windows
between them, are one incident: its start and end, the peak score (as a ratio to the
device's threshold), the features that moved most in the peak window (in the device's
spreads beyond its usual band), a guessed kind and evidence from the day's clean flows.

The kind, by the first rule that holds on the deviations of the incident's peak window
(`KIND_RULES`; the mean over all its windows would dilute a one-hour flood with the day
of 24-hour context after it):
1. scan-like: SYN-only flows up, or unanswered flows AND distinct addresses up: probing;
2. flood-like: packets out up while packets in and distinct addresses are not: one-way
   volume at few targets;
3. service-mix: a service or port class rises while one the device used falls, in the
   hour or over 24 hours by at least half as much as the rise (anything new dilutes the
   24-hour shares of the rest a little): its conversations moved (a firmware change, a
   new cloud);
4. new-endpoint: a service or port class, or the share on server ports never used in
   training, rises, none falls: something new on top of the usual (a beacon, an upload to
   a new service);
5. volume: bytes, packets or flows moved (up or down) and nothing above did;
6. other: none of these; the moved features say what happened.
"Moved" is a mean deviation of at least one spread beyond the band (`MOVED`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

GAP_WINDOWS = 2
# A lone flagged window just over the threshold is not an incident: on the samples' clean
# days these were the false incidents (one window, peak 1.0-1.6x the threshold: an hour of
# unusually large payloads), while attacks flag several windows or one far over it.
SINGLE_WINDOW_MIN_RATIO = 2.0
MOVED = 1.0
SWAP = 0.5
INCIDENT_COLUMNS = ["device_key", "device_name", "incident", "start", "end", "windows_flagged", "peak_score_ratio",
                    "peak_window", "top_features", "kind", "kind_reason"]
EVIDENCE_COLUMNS = ["evidence_peers", "evidence_ports", "usual_peers", "usual_ports", "new_peers"]
# Service shares, port classes, and the share on server ports the device never used in training
# (features.SERVICE_FEATURES): what a device talks to.
SERVICE_PREFIXES = ("w_svc_", "w_port_b", "c_svc_", "c_port_b", "w_unseen_port", "c_unseen_port")
VOLUME_FEATURES = ("w_log_bytes_out", "w_log_bytes_in", "w_log_packets_out", "w_log_packets_in", "w_log_flows")
from iot_assets.contracts.vocabulary import KIND_RULES  # noqa: F401 (guess_kind returns these)


def _moved(features: dict[str, float], names) -> list[str]:
    return [f"{name} ({features[name]:+.1f})" for name in names]


def guess_kind(mean_deviation: dict[str, float]) -> tuple[str, str]:
    """(kind, the rule's reason) from a window's deviation per feature (module docstring)."""
    def up(name: str) -> bool:
        return mean_deviation.get(name, 0.0) >= MOVED

    if up("w_syn_only_share") or (up("w_unanswered_share") and up("w_log_distinct_ips")):
        names = [n for n in ("w_syn_only_share", "w_unanswered_share", "w_log_distinct_ips") if n in mean_deviation]
        return "scan-like", "probing: " + ", ".join(_moved(mean_deviation, names))
    if up("w_log_packets_out") and not up("w_log_packets_in") and not up("w_log_distinct_ips"):
        names = [n for n in ("w_log_packets_out", "w_log_packets_in", "w_log_distinct_ips") if n in mean_deviation]
        return "flood-like", "one-way volume: " + ", ".join(_moved(mean_deviation, names))
    services = {n: v for n, v in mean_deviation.items() if n.startswith(SERVICE_PREFIXES)}
    risen = sorted((n for n, v in services.items() if v >= MOVED), key=lambda n: -services[n])
    # Anything new dilutes the 24-hour shares of the rest: a 24-hour share counts as fallen
    # only when it fell at least half as far as the most risen one rose (a swap, not a dilution).
    top_rise = max((v for n, v in services.items() if n.startswith("c_")), default=0.0)
    fallen = sorted((n for n, v in services.items() if v <= -MOVED
                     and (n.startswith("w_") or -v >= SWAP * top_rise)), key=lambda n: services[n])
    if risen and fallen:
        return "service-mix", ("rose: " + ", ".join(_moved(mean_deviation, risen[:3]))
                               + "; fell: " + ", ".join(_moved(mean_deviation, fallen[:3])))
    if risen:
        return "new-endpoint", "rose: " + ", ".join(_moved(mean_deviation, risen[:3]))
    volume = [n for n in VOLUME_FEATURES if abs(mean_deviation.get(n, 0.0)) >= MOVED]
    if volume:
        return "volume", ", ".join(_moved(mean_deviation, volume))
    top = sorted(mean_deviation, key=lambda n: -abs(mean_deviation[n]))[:3]
    return "other", "largest moves: " + ", ".join(_moved(mean_deviation, top))


# Features over the trailing 24 hours (`c_`) carry an hour's scan or flood for a day: a window
# flagged while none of its own hourly features (`w_`) moved is the aftermath of what
# happened, not more of it. On the sample, a one-hour scan became an incident of 22 windows.
LINGERING_ENDS_INCIDENT = True


def lingering(deviations: pd.DataFrame) -> np.ndarray:
    """Per window (rows of `AnomalyDetector.deviations`): moved by the 24-hour context only,
    some context feature (`c_`) and none of its hourly features (`w_`) MOVED spreads beyond the band."""
    moved = deviations.abs().fillna(0.0) >= MOVED
    hourly = [c for c in deviations.columns if str(c).startswith("w_")]
    context = [c for c in deviations.columns if str(c).startswith("c_")]
    if not context:
        return np.zeros(len(deviations), dtype=bool)
    return (moved[context].any(axis=1) & ~moved[hourly].any(axis=1)).to_numpy()


def group_incidents(scores: pd.DataFrame, deviations: pd.DataFrame, window_minutes: int,
                    gap_windows: int = GAP_WINDOWS, top: int = 5,
                    single_window_min_ratio: float = SINGLE_WINDOW_MIN_RATIO) -> pd.DataFrame:
    """Incidents (INCIDENT_COLUMNS) from anomaly scores and the detector's deviations.

    A group of a single flagged window whose score is under `single_window_min_ratio`
    times the threshold is left out (the window stays flagged in the scores), and so are
    flagged windows that only the 24-hour context moved (`lingering`).

    `scores` is `AnomalyDetector.score(...)` (device_key, window_start, anomaly, score_ratio,
    optionally device_name); `deviations` is `AnomalyDetector.deviations(...)` of the same
    windows (same index). One row per incident, sorted by device and start.
    """
    missing = {"device_key", "window_start", "anomaly", "score_ratio"} - set(scores.columns)
    if missing:
        raise ValueError(f"anomaly scores lack column(s) {', '.join(sorted(missing))}")
    flagged = scores[scores["anomaly"].fillna(False).astype(bool)]
    if LINGERING_ENDS_INCIDENT:
        flagged = flagged[~lingering(deviations.loc[flagged.index])]
    window = pd.Timedelta(minutes=window_minutes)
    rows = []
    for mac, part in flagged.sort_values("window_start").groupby("device_key", sort=True):
        starts = part["window_start"]
        # A new incident when more than `gap_windows` unflagged windows separate two flagged ones.
        new = starts.diff() > window * (gap_windows + 1)
        for _, incident in part.groupby(new.cumsum().to_numpy()):
            peak = incident["score_ratio"].idxmax()
            if len(incident) == 1 and incident.loc[peak, "score_ratio"] < single_window_min_ratio:
                continue
            at_peak = deviations.loc[peak].dropna()
            moved = at_peak[at_peak.abs() > 0].sort_values(key=np.abs, ascending=False)
            kind, reason = guess_kind(at_peak.to_dict())
            start = incident["window_start"].min()
            rows.append({
                "device_key": mac,
                "device_name": incident["device_name"].iloc[0] if "device_name" in incident else None,
                "incident": f"{mac}@{start:%Y-%m-%dT%H:%M}",
                "start": start, "end": incident["window_start"].max() + window,
                "windows_flagged": int(len(incident)),
                "peak_score_ratio": float(incident.loc[peak, "score_ratio"]),
                "peak_window": incident.loc[peak, "window_start"],
                "top_features": ", ".join(f"{name} ({value:+.1f})" for name, value in moved.head(top).items()),
                "kind": kind, "kind_reason": reason,
            })
    return pd.DataFrame(rows, columns=INCIDENT_COLUMNS)


def day_incidents(scores: pd.DataFrame, deviations: pd.DataFrame, day: str, window_minutes: int) -> pd.DataFrame:
    """The incidents of `day`: those with a flagged window on it, grouped over whatever else
    `scores` holds (the day before), so that an incident going on at midnight keeps its start,
    id and windows instead of being cut in two."""
    found = group_incidents(scores, deviations, window_minutes)
    return found[found["end"] > pd.Timestamp(day, tz="UTC")].reset_index(drop=True)


PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


def service_labels(flows: pd.DataFrame) -> pd.Series:
    """The service of each flow: `tcp/443`, `udp/53`; `icmp` alone, since the numbers YAF puts in an ICMP
    flow's port fields are its type and code, not ports. The server's port is the lower of the two, as in
    the features."""
    port = np.minimum(flows["remote_port"], flows["device_port"]).astype(int).astype(str)
    protocol = flows["protocol"].astype(int)
    names = protocol.map(PROTOCOL_NAMES).fillna("ip" + protocol.astype(str))
    no_port = protocol.isin([1, 58])
    return pd.Series(np.where(no_port, names, names + "/" + port), index=flows.index)


def _top(flows: pd.DataFrame, key: pd.Series, top: int) -> str:
    if flows.empty:
        return ""
    table = flows.assign(key=key.to_numpy()).groupby("key").agg(flows=("bytes_out", "size"), bytes_out=("bytes_out", "sum"),
                                                               bytes_in=("bytes_in", "sum"))
    table = table.sort_values(["flows", "bytes_out"], ascending=False).head(top)
    return "; ".join(f"{k} ({r.flows:,} flows, {r.bytes_out / 1e6:,.2f} MB out, {r.bytes_in / 1e6:,.2f} MB in)"
                     for k, r in table.iterrows())


# The columns of the clean flows `incident_evidence` reads.
FLOW_COLUMNS = ["device_key", "flow_start", "remote_ip", "remote_port", "device_port", "protocol", "bytes_out",
                "bytes_in"]


def incident_evidence(incidents: pd.DataFrame, clean_flows: pd.DataFrame, top: int = 3) -> pd.DataFrame:
    """The incidents with the flows behind them: the top remote peers and server ports during
    (`service_labels`) the incident against the device's usual ones (its other flows in `clean_flows`, which
    should hold the incident's day), and how many peers during it were never seen outside it."""
    out = incidents.copy()
    for column in EVIDENCE_COLUMNS:
        out[column] = pd.Series([None] * len(out), index=out.index, dtype=object)
    if incidents.empty:
        return out
    missing = set(FLOW_COLUMNS) - set(clean_flows.columns)
    if missing:
        raise ValueError(f"clean flows lack column(s) {', '.join(sorted(missing))} needed for incident evidence")
    by_device = dict(tuple(clean_flows.groupby("device_key")))
    for i, incident in incidents.iterrows():
        flows = by_device.get(incident["device_key"], clean_flows.iloc[0:0])
        during_mask = (flows["flow_start"] >= incident["start"]) & (flows["flow_start"] < incident["end"])
        during, usual = flows[during_mask], flows[~during_mask]
        out.at[i, "evidence_peers"] = _top(during, during["remote_ip"], top)
        out.at[i, "evidence_ports"] = _top(during, service_labels(during), top)
        out.at[i, "usual_peers"] = _top(usual, usual["remote_ip"], top)
        out.at[i, "usual_ports"] = _top(usual, service_labels(usual), top)
        out.at[i, "new_peers"] = int(len(set(during["remote_ip"]) - set(usual["remote_ip"])))
    return out


def incident_metrics(incidents: pd.DataFrame, episodes: pd.DataFrame | None, evaluation_windows: pd.DataFrame,
                     window_minutes: int, context: pd.Timedelta) -> dict:
    """Incident-level figures on the evaluation days.

    - false incidents: incidents that overlap no episode of their device nor the `context`
      after one, per device and per month of clean device-days (days without an episode
      or its aftermath; 30 days a month);
    - recall: the share of episodes (per type) that an incident of their device overlaps;
    - delay: minutes from an episode's start to the first incident overlapping it (0 when
      that incident started earlier).
    """
    names = evaluation_windows.groupby("device_key")["device_name"].first()
    day = evaluation_windows["window_start"].dt.floor("D")
    device_days = pd.DataFrame({"device_key": evaluation_windows["device_key"], "day": day}).drop_duplicates()
    episodes = episodes if episodes is not None else pd.DataFrame(columns=["device", "type", "start", "end"])
    spans: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for ep in episodes.itertuples():
        for mac in names.index[(names == ep.device) | (names.index == ep.device)]:
            spans.setdefault(mac, []).append((ep.start, ep.end + context))
    window = pd.Timedelta(minutes=window_minutes)

    def touched(mac: str, start: pd.Timestamp, end: pd.Timestamp) -> bool:
        return any(start < s_end and end > s_start for s_start, s_end in spans.get(mac, []))

    clean_days = device_days[[not touched(r.device_key, r.day, r.day + pd.Timedelta(days=1))
                              for r in device_days.itertuples()]]
    incidents = incidents.copy()
    incidents["false"] = [not touched(r.device_key, r.start, r.end) for r in incidents.itertuples()]
    per_device = {}
    for mac, days in clean_days.groupby("device_key"):
        false = int(incidents.loc[(incidents["device_key"] == mac) & incidents["false"]].shape[0])
        per_device[str(names.get(mac, mac))] = {"clean_days": int(len(days)), "false_incidents": false}
    clean_total = int(len(clean_days))
    false_total = int(incidents["false"].sum())
    per_type: dict[str, dict] = {}
    for ep in episodes.itertuples():
        macs = names.index[(names == ep.device) | (names.index == ep.device)]
        if len(macs) == 0 or not ((evaluation_windows["device_key"].isin(macs))
                                  & (evaluation_windows["window_start"] + window > ep.start)
                                  & (evaluation_windows["window_start"] < ep.end)).any():
            continue  # the episode is not in the evaluated windows
        hits = incidents[incidents["device_key"].isin(macs) & (incidents["start"] < ep.end) & (incidents["end"] > ep.start)]
        entry = per_type.setdefault(ep.type, {"episodes": 0, "detected": 0, "delays_minutes": []})
        entry["episodes"] += 1
        if len(hits):
            entry["detected"] += 1
            entry["delays_minutes"].append(max(0.0, (hits["start"].min() - ep.start).total_seconds() / 60))
    for entry in per_type.values():
        delays = entry.pop("delays_minutes")
        entry["recall"] = entry["detected"] / entry["episodes"]
        entry["delay_minutes_median"] = float(np.median(delays)) if delays else None
        entry["delay_minutes_max"] = float(np.max(delays)) if delays else None
    return {
        "incidents": int(len(incidents)),
        "false_incidents": false_total,
        "clean_device_days": clean_total,
        "false_incidents_per_device_month": 30.0 * false_total / clean_total if clean_total else None,
        "per_device": per_device,
        "per_episode_type": dict(sorted(per_type.items())),
        "gap_windows": GAP_WINDOWS,
    }
