"""Device vulnerabilities: CVEs matched to each device's model, ranked by risk, with a lifecycle.

Matching. A device's model (the inventory's `predicted_device`) has CPE names
(core.device_cpes). A CVE matches when one of its configuration entries marked `vulnerable`
names the same CPE vendor and product. Where the device's firmware version is known (a
`firmware` frame: device_mac, firmware_version) it is compared with the entry's version and
range (versionStart/End Including/Excluding) by `packaging.version`; a device outside every
range is not affected. From flows the version is never known: the finding says
`possibly affected (firmware unknown)`. NVD's AND/negate structure (firmware running on a
given hardware) is not evaluated: the hardware is the model itself.

Exposure evidence, from the day's device_exposure table (core exposure's EXPOSURE_COLUMNS,
rows `seen_today`):
- a CVE whose description names a port ("TCP port 8080", "port tcp/80") is exposed when
  an exposure finding of the device shows that port with an Internet peer, either way;
- a CVE with network attack vector (CVSS AV:N) and no port named is exposed when the
  device is reachable from the Internet (REACHABLE_KINDS);
- a lasting behaviour change (`behaviour_changes`: device_mac, change_day) after the CVE was
  published is stated in the evidence (a firmware update may have fixed it); it does not
  resolve the finding, as nothing in the flows says which version runs.

Risk, per finding:

    risk = cvss * (1 + KEV_BOOST * kev) * (1 + epss) * (EXPOSED_WEIGHT if exposed else 1)

`cvss` the base score (UNSCORED_CVSS when NVD has none), `kev` 1 when the CVE is in CISA's
catalogue, `epss` the probability (0..1) of exploitation in the next 30 days. A KEV entry
doubles the risk, EPSS raises it by up to double, and exposure seen in the traffic by half:
of two findings with equal CVSS, KEV and EPSS, the exposed one ranks first.

Lifecycle, carried from the previous day's table (like exposure.carry_history): a finding
(device_mac, cve) is `open` from the first day it matches, `acknowledged` from the first day
an acknowledgement (device_mac, from_day, optional cve) covers it, `resolved` on the first
day it no longer matches (the device is gone, the firmware is outside the affected range,
or the evidence is gone: the device is no longer identified as the model, or the CVE left
the feed). A resolved finding stays as a row; one that matches again is reopened with its
first_seen kept. `days_open` counts calendar days from first_seen to the day (to the
resolution for a resolved one).
"""

from __future__ import annotations

import html
import re

import markdown
import numpy as np
import pandas as pd
from packaging.version import InvalidVersion, Version

from iot_assets.contracts.schemas import DeviceVulnerabilities

POSSIBLY_AFFECTED = "possibly affected (firmware unknown)"
KEV_BOOST = 1.0
EXPOSED_WEIGHT = 1.5
UNSCORED_CVSS = 5.0
# Exposure kinds that show the device answering or opening to Internet peers.
REACHABLE_KINDS = ("inbound_from_internet", "udp_reflector", "telnet", "upnp_ssdp_internet")
STATUSES = ("open", "acknowledged", "resolved")

MATCH_COLUMNS = ["device_mac", "device", "cpe", "cve", "affected", "fixed_version", "fixed_after_version"]
VULN_COLUMNS = list(DeviceVulnerabilities.to_schema().columns)  # the day table's columns, in the contract's order

_PORT_PATTERNS = (re.compile(r"\b(?:tcp|udp)/(\d{1,5})\b", re.I), re.compile(r"\bports?\s+(\d{1,5})\b", re.I),
                  re.compile(r"\b(?:tcp|udp)\s+ports?\s+(\d{1,5})\b", re.I))
_EVIDENCE_PORT = re.compile(r":(\d{1,5})$")
_BOUNDS = ("versionStartIncluding", "versionStartExcluding", "versionEndIncluding", "versionEndExcluding")


# ---------------------------------------------------------------- matching


def _version(text) -> Version | None:
    if not isinstance(text, str) or not text or text in ("*", "-"):
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def version_affected(firmware: str | None, match: dict) -> bool | None:
    """Whether `firmware` falls in a CPE-match entry's version or range; None when it cannot be told."""
    if not firmware:
        return None
    exact = match.get("cpe_version")
    if isinstance(exact, str) and exact not in ("*", "-", ""):
        left, right = _version(firmware), _version(exact)
        return left == right if left is not None and right is not None else firmware.casefold() == exact.casefold()
    current = _version(firmware)
    if current is None:
        return None
    bounds = {k: _version(match[k]) for k in _BOUNDS if isinstance(match.get(k), str) and match[k]}
    if None in bounds.values():
        return None  # a bound packaging cannot read: not comparable
    start_in, start_ex = bounds.get("versionStartIncluding"), bounds.get("versionStartExcluding")
    end_in, end_ex = bounds.get("versionEndIncluding"), bounds.get("versionEndExcluding")
    return ((start_in is None or current >= start_in) and (start_ex is None or current > start_ex)
            and (end_in is None or current <= end_in) and (end_ex is None or current < end_ex))


def match_devices(inventory: pd.DataFrame, device_cpes: pd.DataFrame, cpe_matches: pd.DataFrame,
                  firmware: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (device MAC, CVE) whose vulnerable CPE vendor and product are its model's (MATCH_COLUMNS).

    `affected`: `affected (firmware V)`, `not affected (firmware V)`, `possibly affected
    (firmware V not comparable)` or POSSIBLY_AFFECTED. CVEs are matched once per model and
    then given to its devices; only devices with a known firmware version are compared.
    """
    named = device_cpes[device_cpes["cpe"].notna()].assign(model=lambda t: t["device"].str.casefold())
    hits = named[["model", "cpe", "vendor", "product"]].merge(cpe_matches[cpe_matches["vulnerable"].astype(bool)],
                                                             on=["vendor", "product"])
    devices = inventory[["device_mac", "predicted_device"]].dropna().drop_duplicates("device_mac")
    devices = devices.assign(model=devices["predicted_device"].str.casefold())
    if hits.empty or devices.empty:
        return pd.DataFrame(columns=MATCH_COLUMNS)
    per_model = hits.drop_duplicates(["model", "cve"])[["model", "cve", "cpe"]]
    keys = list(zip(per_model["model"], per_model["cve"]))
    for bound, column in (("versionEndExcluding", "fixed_version"), ("versionEndIncluding", "fixed_after_version")):
        given = hits[hits[bound].notna()]
        highest = {}
        for key, value in zip(zip(given["model"], given["cve"]), given[bound]):
            highest[key] = value if key not in highest else _higher(highest[key], value)
        per_model[column] = [highest.get(key) for key in keys]
    pairs = devices.merge(per_model, on="model").rename(columns={"predicted_device": "device"})
    pairs["affected"] = POSSIBLY_AFFECTED
    versions = (firmware.dropna(subset=["firmware_version"]).set_index("device_mac")["firmware_version"]
                if firmware is not None and len(firmware) else pd.Series(dtype=object))
    known = pairs["device_mac"].isin(versions.index)
    if known.any():
        entries = {key: group.to_dict("records") for key, group in hits.groupby(["model", "cve"])}
        pairs.loc[known, "affected"] = [
            _verdict(versions[mac], entries[(model, cve)])
            for mac, model, cve in zip(pairs.loc[known, "device_mac"], pairs.loc[known, "model"],
                                       pairs.loc[known, "cve"])]
    return pairs[MATCH_COLUMNS].sort_values(["device_mac", "cve"]).reset_index(drop=True)


def _verdict(version: str, entries: list[dict]) -> str:
    verdicts = [version_affected(version, entry) for entry in entries]
    if any(v is True for v in verdicts):
        return f"affected (firmware {version})"
    if all(v is False for v in verdicts):
        return f"not affected (firmware {version})"
    return f"possibly affected (firmware {version} not comparable)"


def _higher(left: str, right: str) -> str:
    """The later of two version strings (by `packaging` where both parse, else as text)."""
    a, b = _version(left), _version(right)
    if a is not None and b is not None:
        return right if b > a else left
    return max(left, right)


# ---------------------------------------------------------------- exposure evidence, risk, remediation


def cve_ports(description: str) -> set[int]:
    """The ports a CVE description names ("TCP port 8080", "port tcp/80", "tcp/23")."""
    return {int(p) for pattern in _PORT_PATTERNS for p in pattern.findall(description or "") if 0 < int(p) < 65536}


def exposure_evidence(attack_vector: str | None, description: str, rows: pd.DataFrame) -> tuple[bool, str]:
    """(exposed, evidence text) of one finding, from its device's exposure findings seen today (`rows`)."""
    if rows is None or rows.empty:
        return False, ""
    ports = cve_ports(description)
    if ports:
        seen = []
        for row in rows.itertuples():
            shown = [e for e in row.evidence if (m := _EVIDENCE_PORT.search(str(e))) and int(m.group(1)) in ports]
            if shown:
                seen.append(f"{row.kind} on port {'/'.join(map(str, sorted(ports)))} with Internet peers "
                            f"({', '.join(shown[:3])})")
        return bool(seen), "; ".join(seen)
    if attack_vector == "N":
        reachable = rows[rows["kind"].isin(REACHABLE_KINDS)]
        texts = [f"reachable from the Internet: {r.kind} ({', '.join(list(r.evidence)[:3])})"
                 for r in reachable.itertuples()]
        return bool(texts), "; ".join(texts)
    return False, ""


def risk_score(cvss, kev, epss, exposed):
    """The risk (module docstring's formula) of one finding, or of equal-length arrays of them."""
    base = np.asarray(cvss, dtype=float)
    base = np.where(np.isnan(base), UNSCORED_CVSS, base)
    probability = np.asarray(epss, dtype=float)
    probability = np.where(np.isnan(probability), 0.0, probability)
    risk = (base * (1 + KEV_BOOST * np.asarray(kev, dtype=float)) * (1 + probability)
            * np.where(np.asarray(exposed, dtype=bool), EXPOSED_WEIGHT, 1.0))
    return float(risk) if risk.ndim == 0 else risk


def remediation(fixed_version: str | None, fixed_after_version: str | None, kev_action: str | None,
                advisory_url: str | None) -> str:
    """What fixes the finding: the fixed version, else KEV's required action, else the vendor's advice."""
    if fixed_version:
        return f"Update the firmware to version {fixed_version} or later."
    if fixed_after_version:
        return f"Update the firmware to a version later than {fixed_after_version}."
    if isinstance(kev_action, str) and kev_action:
        return kev_action
    if isinstance(advisory_url, str) and advisory_url:
        return f"Follow the vendor's advice: {advisory_url}"
    return "No fix is published: keep the device unreachable from the Internet and check the vendor for updates."


def title_of(description: str) -> str:
    """The first sentence of a CVE description."""
    text = (description or "").strip()
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text, maxsplit=1)[0] if text else ""


def day_findings(inventory: pd.DataFrame, device_cpes: pd.DataFrame, cves: pd.DataFrame, cpe_matches: pd.DataFrame,
                 kev: pd.DataFrame, epss: pd.DataFrame, exposure: pd.DataFrame | None = None,
                 firmware: pd.DataFrame | None = None,
                 behaviour_changes: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the day's findings with risk and evidence, the matches ruled out by a known firmware version)."""
    matches = match_devices(inventory, device_cpes, cpe_matches, firmware)
    ruled_out = matches[matches["affected"].str.startswith("not affected")]
    found = matches[~matches["affected"].str.startswith("not affected")]
    found = found.merge(cves[["cve", "published", "description", "cvss_base_score", "cvss_severity",
                              "cvss_attack_vector", "advisory_url"]], on="cve", how="inner")
    found = found.merge(kev[["cve", "due_date", "required_action"]].assign(in_kev=True), on="cve", how="left")
    found = found.merge(epss[["cve", "epss"]], on="cve", how="left")
    changes = {}
    if behaviour_changes is not None and len(behaviour_changes):
        changes = behaviour_changes.assign(change_day=pd.to_datetime(behaviour_changes["change_day"]).dt.strftime(
            "%Y-%m-%d")).groupby("device_mac")["change_day"].max().to_dict()
    seen = exposure[exposure["seen_today"]] if exposure is not None and len(exposure) else None
    # Exposure is keyed by device key, which is the MAC of a MAC-known device: the devices matched here.
    by_device = dict(tuple(seen.groupby("device_key"))) if seen is not None else {}
    exposed, evidence = [], []
    for mac, vector, description, published in zip(found["device_mac"], found["cvss_attack_vector"],
                                                   found["description"], found["published"]):
        shown, text = exposure_evidence(vector, description, by_device.get(mac)) if mac in by_device else (False, "")
        change = changes.get(mac)
        if change and change >= published:
            note = (f"lasting behaviour change from {change}, after the CVE was published on {published}: "
                    "a firmware update may have fixed it")
            text = f"{text}; {note}" if text else note
        exposed.append(shown)
        evidence.append(text)
    in_kev = found["in_kev"].notna().to_numpy(dtype=bool)
    titles = found.drop_duplicates("cve").set_index("cve")["description"].map(title_of)
    table = pd.DataFrame({
        "device_mac": found["device_mac"], "device": found["device"], "cpe": found["cpe"], "cve": found["cve"],
        "title": found["cve"].map(titles), "published": found["published"],
        "cvss": found["cvss_base_score"].astype(float), "cvss_severity": found["cvss_severity"], "kev": in_kev,
        "kev_due_date": found["due_date"].where(in_kev, None), "epss": found["epss"].astype(float),
        "exposed": exposed, "evidence": evidence,
        "risk": risk_score(found["cvss_base_score"], in_kev, found["epss"], exposed) if len(found) else [],
        "affected": found["affected"],
        "remediation": [remediation(fixed, after, action if kev else None, url) for fixed, after, action, kev, url
                        in zip(found["fixed_version"], found["fixed_after_version"], found["required_action"],
                               in_kev, found["advisory_url"])],
    })
    columns = [c for c in VULN_COLUMNS if c not in ("day", "line", "first_seen", "last_seen", "status", "new_today",
                                                     "resolved_on", "resolution", "days_open")]
    return table[columns].reset_index(drop=True), ruled_out


# ---------------------------------------------------------------- lifecycle


def _acknowledged(acknowledgements: pd.DataFrame | None, day: str) -> tuple[set[str], set[tuple[str, str]]]:
    """(MACs acknowledged as a whole, (MAC, CVE) pairs acknowledged) on `day`."""
    if acknowledgements is None or acknowledgements.empty:
        return set(), set()
    missing = {"device_mac", "from_day"} - set(acknowledgements.columns)
    if missing:
        raise ValueError(f"acknowledgements lack column(s) {', '.join(sorted(missing))}")
    acks = acknowledgements[pd.to_datetime(acknowledgements["from_day"]).dt.strftime("%Y-%m-%d") <= day]
    cve = acks["cve"].fillna("").astype(str).str.strip() if "cve" in acks else pd.Series("", index=acks.index)
    whole = set(acks.loc[cve == "", "device_mac"])
    return whole, set(zip(acks.loc[cve != "", "device_mac"], cve[cve != ""]))


def _days_between(first: pd.Series, last: pd.Series) -> np.ndarray:
    return (pd.to_datetime(last) - pd.to_datetime(first)).dt.days.to_numpy(dtype=np.int64)


def carry_lifecycle(previous: pd.DataFrame | None, today: pd.DataFrame, day: str,
                    acknowledgements: pd.DataFrame | None = None, lines: pd.DataFrame | None = None,
                    resolutions: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """The day's table (VULN_COLUMNS): today's findings with their history, and every earlier one carried on.

    `previous` is the table of the day before (None on the first day); `lines` maps
    device_mac to line; `resolutions` says why a (MAC, CVE) that no longer matches is
    resolved (default: the evidence is gone).
    """
    resolutions = resolutions or {}
    line_of = lines.set_index("device_mac")["line"].to_dict() if lines is not None and len(lines) else {}
    now = today.assign(day=day, last_seen=day, resolved_on=None, resolution=None)
    prior = previous.set_index(["device_mac", "cve"]) if previous is not None and len(previous) else None
    key = list(zip(now["device_mac"], now["cve"]))
    known = [prior is not None and k in prior.index for k in key]
    was_resolved = [bool(kn) and prior.at[k, "status"] == "resolved" for k, kn in zip(key, known)]
    now["first_seen"] = [prior.at[k, "first_seen"] if kn else day for k, kn in zip(key, known)]
    now["new_today"] = [not kn or res for kn, res in zip(known, was_resolved)]
    now["line"] = [prior.at[k, "line"] if kn else None for k, kn in zip(key, known)]
    whole, pairs = _acknowledged(acknowledgements, day)
    now["status"] = ["acknowledged" if mac in whole or (mac, cve) in pairs else "open" for mac, cve in key]
    parts = [now]
    if prior is not None:
        today_keys = set(key)
        gone = previous[[k not in today_keys for k in zip(previous["device_mac"], previous["cve"])]].copy()
        closing = gone["status"] != "resolved"
        gone["resolution"] = gone["resolution"].astype(object)
        gone.loc[closing, "resolution"] = [resolutions.get(k, "evidence gone: no longer matched")
                                           for k in zip(gone.loc[closing, "device_mac"], gone.loc[closing, "cve"])]
        gone.loc[closing, "resolved_on"] = day
        gone.loc[closing, "status"] = "resolved"
        gone = gone.assign(day=day, new_today=False)
        parts.append(gone)
    table = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else now
    table["line"] = table["device_mac"].map(line_of).fillna(table["line"]).fillna("unknown")
    end = table["resolved_on"].where(table["status"] == "resolved", day)
    table["days_open"] = _days_between(table["first_seen"], end) if len(table) else np.array([], dtype=np.int64)
    return _ordered(table)


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    table = table.reindex(columns=VULN_COLUMNS).copy()
    for column in ("kev", "exposed", "new_today"):
        table[column] = table[column].fillna(False).astype(bool)
    for column in ("risk", "cvss", "epss"):
        table[column] = table[column].astype(float)
    table["days_open"] = table["days_open"].astype(np.int64)
    return table.sort_values(["device_mac", "cve"]).reset_index(drop=True)


def device_vulnerabilities(day: str, inventory: pd.DataFrame, previous: pd.DataFrame | None,
                           device_cpes: pd.DataFrame, cves: pd.DataFrame, cpe_matches: pd.DataFrame,
                           kev: pd.DataFrame, epss: pd.DataFrame, exposure: pd.DataFrame | None = None,
                           acknowledgements: pd.DataFrame | None = None, lines: pd.DataFrame | None = None,
                           firmware: pd.DataFrame | None = None,
                           behaviour_changes: pd.DataFrame | None = None) -> pd.DataFrame:
    """The day's device_vulnerabilities table: matching, evidence, risk and lifecycle in one call."""
    today, ruled_out = day_findings(inventory, device_cpes, cves, cpe_matches, kev, epss, exposure, firmware,
                                    behaviour_changes)
    present = set(inventory["device_mac"])
    in_feed = set(cves["cve"])
    resolutions = {}
    if previous is not None and len(previous):
        fixed = dict(zip(zip(ruled_out["device_mac"], ruled_out["cve"]), ruled_out["affected"]))
        for mac, cve in zip(previous["device_mac"], previous["cve"]):
            if mac not in present:
                resolutions[(mac, cve)] = f"device gone: not in the inventory of {day}"
            elif (mac, cve) in fixed:
                resolutions[(mac, cve)] = f"firmware changed: {fixed[(mac, cve)]}, outside the affected range"
            elif cve not in in_feed:
                resolutions[(mac, cve)] = "evidence gone: the CVE is no longer in the NVD feed"
            else:
                resolutions[(mac, cve)] = "evidence gone: the device is no longer identified as a model with this CPE"
    return carry_lifecycle(previous, today, day, acknowledgements, lines, resolutions)


# ---------------------------------------------------------------- worklists and reports


def _unresolved(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] != "resolved"]


def device_worklist(table: pd.DataFrame) -> pd.DataFrame:
    """Unresolved findings, the riskiest device first and its riskiest finding first within it."""
    open_rows = _unresolved(table)
    top = open_rows.groupby("device_mac")["risk"].transform("max")
    ordered = open_rows.assign(device_risk=top).sort_values(["device_risk", "device_mac", "risk", "cve"],
                                                            ascending=[False, True, False, True])
    return ordered.reset_index(drop=True)


def line_worklist(table: pd.DataFrame) -> pd.DataFrame:
    """Unresolved findings per subscriber line: the line with the most risk (sum over its findings) first."""
    work = device_worklist(table)
    line_risk = work.groupby("line")["risk"].transform("sum")
    ordered = work.assign(line_risk=line_risk).sort_values(
        ["line_risk", "line", "device_risk", "device_mac", "risk", "cve"],
        ascending=[False, True, False, True, False, True])
    return ordered.reset_index(drop=True)


def _plain(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def vulnerabilities_json(findings: pd.DataFrame) -> list[dict]:
    """`reports/vulnerabilities.json`: per device {device, mac, line, cpe, risk, findings}, highest risk first.

    A device's risk is that of its riskiest unresolved finding (0 when all are resolved);
    findings list unresolved ones first, each group by risk.
    """
    result = []
    if findings.empty:
        return result
    rank = findings.assign(resolved=findings["status"] == "resolved")
    device_risk = rank[~rank["resolved"]].groupby("device_mac")["risk"].max()
    macs = sorted(rank["device_mac"].unique(), key=lambda m: (-float(device_risk.get(m, 0.0)), m))
    fields = ["cve", "title", "cvss", "kev", "kev_due_date", "epss", "exposed", "evidence", "status", "affected",
              "first_seen", "days_open", "resolved_on", "resolution", "remediation", "risk", "cpe"]
    per_device = dict(tuple(rank.groupby("device_mac")))
    for mac in macs:
        rows = per_device[mac].sort_values(["resolved", "risk", "cve"], ascending=[True, False, True])
        result.append({
            "device": rows["device"].iloc[0], "mac": mac, "line": rows["line"].iloc[0],
            "cpe": sorted(rows["cpe"].dropna().unique().tolist()), "risk": float(device_risk.get(mac, 0.0)),
            "findings": [{f: _plain(r[f]) for f in fields} for r in rows.to_dict("records")],
        })
    return result


def risk_words(rows: pd.DataFrame) -> str:
    """The risk of one device's unresolved findings, in plain words."""
    if (rows["kev"] & rows["exposed"]).any():
        return "very high"
    if rows["kev"].any() or (rows["exposed"] & (rows["cvss"].fillna(UNSCORED_CVSS) >= 7)).any():
        return "high"
    if rows["exposed"].any() or (rows["cvss"].fillna(UNSCORED_CVSS) >= 7).any():
        return "medium"
    return "low"


def _md(text) -> str:
    return html.escape(str(text), quote=False)


def line_notice_markdown(findings: pd.DataFrame, line: str) -> str:
    """A notice for the subscriber of `line`: each device, its risk in plain words, and what to do."""
    work = device_worklist(findings[findings["line"] == line])
    out = [f"# Security notice for your Internet line {_md(line)}", ""]
    if work.empty:
        out += ["We found no known security flaw in the devices on your home network. No action is needed.", ""]
        return "\n".join(out)
    devices = list(dict.fromkeys(work["device_mac"]))
    out += [f"We compared the devices on your home network with public lists of security flaws. "
            f"{len(devices)} of your devices {'needs' if len(devices) == 1 else 'need'} your attention.", ""]
    for mac in devices:
        rows = work[work["device_mac"] == mac]
        out += [f"## {_md(rows['device'].iloc[0])} ({_md(mac)})", "", f"**Risk: {risk_words(rows)}.** "
                f"It has {len(rows)} known security {'flaw' if len(rows) == 1 else 'flaws'}."]
        if rows["kev"].any():
            out.append("Criminals are already using at least one of these flaws to attack devices like yours.")
        if rows["exposed"].any():
            out.append("Your device can be reached from the Internet, which makes an attack easier.")
        if rows["affected"].eq(POSSIBLY_AFFECTED).any():
            out.append("We cannot see which software version your device runs, so it may already be fixed.")
        out += ["", "What to do:", ""]
        for action in dict.fromkeys(rows["remediation"]):
            out.append(f"- {_md(action)}")
        if rows["exposed"].any():
            out.append("- Turn off remote access and port forwarding for this device in your router's settings.")
        out += ["- If the maker no longer provides updates, consider replacing the device.", "",
                f"Reference for our support team: {', '.join(rows['cve'])}", ""]
    return "\n".join(out)


def notice_html(notice_markdown: str, title: str = "Security notice") -> str:
    """The notice as a standalone HTML page (rendered by `markdown`)."""
    body = markdown.markdown(notice_markdown)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"</head>\n<body>\n{body}\n</body></html>\n")


def day_summary(table: pd.DataFrame) -> dict[str, int]:
    """Counts of the day's table for the daily report and asset metadata."""
    unresolved = _unresolved(table)
    resolved_today = (table["status"] == "resolved") & (table["resolved_on"] == table["day"])
    return {"open": int((table["status"] == "open").sum()),
            "acknowledged": int((table["status"] == "acknowledged").sum()),
            "new_today": int(table["new_today"].sum()), "resolved_today": int(resolved_today.sum()),
            "kev": int(unresolved["kev"].sum()), "exposed": int(unresolved["exposed"].sum()),
            "devices": int(unresolved["device_mac"].nunique())}


def report_section_markdown(table: pd.DataFrame, top: int = 20) -> str:
    """The daily report's section: the day's counts, new and resolved findings, and the top of the worklist."""
    counts = day_summary(table)
    out = ["## Device vulnerabilities", "",
           f"{counts['open']} open and {counts['acknowledged']} acknowledged findings on {counts['devices']} devices "
           f"({counts['kev']} known exploited, {counts['exposed']} with the vulnerable service exposed); "
           f"{counts['new_today']} new and {counts['resolved_today']} resolved today.", ""]
    columns = ["device", "device_mac", "line", "cve", "cvss", "kev", "epss", "exposed", "status", "days_open", "risk"]
    work = device_worklist(table).head(top)
    if len(work):
        out += ["Highest risk first:", "", work[columns].round({"risk": 1, "epss": 3}).to_markdown(index=False), ""]
    resolved = table[(table["status"] == "resolved") & (table["resolved_on"] == table["day"])]
    if len(resolved):
        out += ["Resolved today:", "",
                resolved[["device", "device_mac", "cve", "resolution", "days_open"]].to_markdown(index=False), ""]
    return "\n".join(out)
