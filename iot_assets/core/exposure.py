"""Exposure: which devices are vulnerable, why, and since when, from flow records alone.

A finding is a (device MAC, kind) pair for a day, proved by the device's own flows (or, for
`known_advisory`, by the model the inventory predicts for it). Every flow rule is in `RULES`
below, one row per kind: protocol, service ports, which side's port names the service, and
what evidence a flow must carry. Only flows with an Internet peer count (`remote_scope ==
"internet"` in the device-centric clean table).

Evidence, in flow terms (YAF exports biflows; `device_initiated` says which side YAF saw
first, `initial_tcp_flags_*` are the first packet's flags of each direction):

- `device_sent`: the device sent at least one packet.
- `answered`: both sides sent packets, and for TCP the side YAF saw second did not answer
  with a reset (a closed port answers RST; a scan's SYN to 23 is never answered). A split
  piece of a long connection (YAF's 30-minute active timeout) has data both ways: it counts,
  as its connection did.
- `peer_opened`: TCP whose first packet came from the Internet peer, a SYN without ACK,
  and the device's first packet a SYN+ACK. The later pieces of a long outbound connection
  cut by YAF's timeouts also start with the server's packet (in the real archives, 1,878 of
  Nature Remo's records do), but with ACK/PSH flags, never a bare SYN: they do not count.
- `device_answered`: UDP whose first packet came from the Internet peer, to the device's
  service port, and the device sent packets back.

Severity says how directly an attacker on the Internet can use the finding: `high` the
device can be reached or abused from the Internet, or speaks a cleartext remote login
(telnet); `medium` credentials, commands or video travel in cleartext (MQTT, FTP, TFTP,
RTSP) or UPnP leaks onto the Internet; `low` cleartext or unmanaged traffic that leaks
metadata (HTTP, DNS sent past the ISP's resolver); `info` not a fault (DNS over TLS).
`known_advisory` takes the worst severity of the model's advisories.

The exposure score of a device is the sum of `SEVERITY_WEIGHTS` over its distinct findings;
a subscriber line's score is the sum over the line's devices. Both only grow when a finding
is added or gets more severe, so sorting by them is stable.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from iot_assets.core.features import SERVICE_PORTS

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
SYN, RST, ACK = 0x02, 0x04, 0x10

SEVERITIES = ("info", "low", "medium", "high")
# The weights of the exposure score, in one place: one high finding outweighs three medium ones.
SEVERITY_WEIGHTS = {"info": 0.0, "low": 1.0, "medium": 3.0, "high": 10.0}

HTTP_PORTS = (80, 81, 8000, 8008, 8080, 8888)
# UDP services abused for reflection and amplification (US-CERT alert TA14-017A and later
# additions: WS-Discovery, CoAP, memcached, Ubiquiti discovery).
AMPLIFICATION_PORTS = (17, 19, 53, 69, 111, 123, 137, 161, 389, 520, 1900, 3283, 3702, 5353, 5683, 10001, 11211)
EVIDENCE = ("device_sent", "answered", "peer_opened", "device_answered")


@dataclass(frozen=True)
class Rule:
    kind: str
    severity: str
    protocols: tuple[int, ...]
    ports: tuple[int, ...]  # the service's ports; empty: any port
    port_side: str  # "remote": the peer's port (the device is the client); "device": the device's; "either"
    evidence: str  # one of EVIDENCE
    why: str  # what the flows showed, in flow terms
    meaning: str = ""  # what it means for the subscriber, in plain words
    remediation: str = ""  # what to do about it


# Every flow rule, one per kind. `known_advisory` is not a flow rule (see `advisory_findings`).
RULES: tuple[Rule, ...] = (
    Rule("cleartext_http", "low", (TCP,), HTTP_PORTS, "remote", "answered",
         "HTTP without TLS to an Internet server",
         "Anyone on the path (Wi-Fi, ISP, transit) can read and alter what the device exchanges with its server, "
         "including commands and firmware it downloads.",
         "Check the vendor for firmware that uses HTTPS; if the device fetches updates over HTTP, keep it on a "
         "separate network segment. If this traffic started with an incident, follow the incident first."),
    Rule("cleartext_mqtt", "medium", (TCP,), (1883,), "either", "answered",
         "MQTT without TLS: device commands and credentials in cleartext",
         "The device's control channel and its login travel unencrypted: someone on the path can read them and "
         "send the device commands.",
         "Ask the vendor for MQTT over TLS (port 8883) or firmware that uses it; tell the subscriber to change "
         "the device's cloud password."),
    Rule("telnet", "high", (TCP,), (23, 2323), "either", "answered",
         "a telnet session with an Internet peer, either direction",
         "A remote login without encryption is open between the device and the Internet: the way Mirai-style "
         "botnets take over IoT devices.",
         "Contact the subscriber today: disable telnet or block TCP 23/2323 inbound, change the device's default "
         "password, update its firmware; check the device's incidents for signs it is already taken over."),
    Rule("ftp", "medium", (TCP,), (20, 21), "either", "answered", "FTP: credentials and files in cleartext",
         "Files and the password that protects them cross the Internet unencrypted.",
         "Switch the device to SFTP/FTPS or turn the FTP feature off; change the FTP password."),
    Rule("rtsp", "medium", (TCP, UDP), (554, 8554), "either", "answered", "RTSP video control in cleartext",
         "A camera's video stream control is reachable or sent in cleartext: others may watch the stream.",
         "Turn off direct RTSP access from the Internet (router port forwarding, UPnP); use the vendor's "
         "encrypted app or a VPN for remote viewing."),
    Rule("tftp", "medium", (UDP,), (69,), "either", "device_sent", "TFTP: unauthenticated transfers",
         "Files move with no login and no encryption: an attacker on the path can swap a firmware or "
         "configuration file.",
         "Find out what the device fetches over TFTP; ask the vendor for an authenticated update channel and keep "
         "TFTP inside the home network."),
    Rule("upnp_ssdp_internet", "medium", (UDP,), (1900,), "either", "device_sent",
         "SSDP (UPnP discovery) exchanged with an Internet peer",
         "UPnP discovery, meant for the home network, reaches the Internet: the device can be found by scanners "
         "and used to amplify attacks on others.",
         "Turn UPnP off on the home router or the device, or block UDP 1900 at the line's edge."),
    Rule("hardcoded_dns", "low", (UDP, TCP), (53,), "remote", "device_sent",
         "DNS sent to a public resolver instead of the home gateway",
         "The device ignores the network's resolver: the ISP's DNS protection does not cover it, and its lookups "
         "cross the Internet unencrypted (or an attacker may have changed its DNS server).",
         "If it is new, check whether the device's DNS setting was changed (DNS hijacking); otherwise note it: "
         "blocking outbound DNS except to the ISP resolver brings the device back under protection."),
    Rule("dns_over_tls", "info", (TCP,), (853,), "remote", "device_sent", "DNS over TLS (information, not a fault)",
         "The device encrypts its DNS lookups: not a fault, but the ISP's DNS filtering does not see them.",
         "Nothing to fix; note it when a DNS-based protection does not seem to apply to this device."),
    Rule("inbound_from_internet", "high", (TCP,), (), "device", "peer_opened",
         "an Internet peer opened a TCP connection to the device and it answered",
         "The device accepts connections from the Internet: anyone who finds it can try to log in or attack the "
         "service it offers.",
         "Contact the subscriber: remove the router's port forwarding or UPnP mapping to the device, or block "
         "inbound connections at the line; update the device's firmware."),
    Rule("udp_reflector", "high", (UDP,), AMPLIFICATION_PORTS, "device", "device_answered",
         "the device answers UDP requests from Internet peers on an amplification port",
         "The device answers spoofed requests from the Internet with larger replies: it can be used in "
         "denial-of-service attacks against others, and it is reachable from outside.",
         "Block the UDP port inbound at the line or turn the service off on the device (UPnP/SSDP, discovery "
         "protocols); contact the subscriber if it keeps answering."),
)
RULES_BY_KIND = {rule.kind: rule for rule in RULES}

# Device clouds on ports neither the rules nor the known-service table name, identified in
# the real archives (the device is the client, the port the cloud's). Extend it when
# `exposure_rules_cover_traffic` names a port you have identified; a port that leaves this
# table (a firmware change moving Xiaomi's cloud to 16053) shows up in the check again.
VENDOR_CLOUD_PORTS = {
    (UDP, 10001): "au network camera: its relay servers (AWS Tokyo), about 144 flows a day",
    (UDP, 8053): "Xiaomi Mijia LED: the miIO cloud protocol",
}
KINDS = tuple(rule.kind for rule in RULES) + ("known_advisory",)
# `known_advisory` is not a flow rule, but is explained and remedied like one.
ADVISORY_MEANING = ("The device model has published security advisories (listed with the finding): a firmware older "
                    "than the fixed version can be attacked as the advisory describes.")
ADVISORY_REMEDIATION = ("Ask the subscriber to update the device to the fixed firmware (or newer); where no fix "
                        "exists, follow the advisory's mitigation or replace the device.")


def finding_meaning(kind: str) -> str:
    """What a finding kind means for the subscriber, in plain words."""
    return ADVISORY_MEANING if kind == "known_advisory" else RULES_BY_KIND[kind].meaning


def finding_remediation(kind: str) -> str:
    """What to do about a finding kind."""
    return ADVISORY_REMEDIATION if kind == "known_advisory" else RULES_BY_KIND[kind].remediation


FINDING_COLUMNS = ["device_key", "device", "predicted_device", "kind", "severity", "flows", "bytes",
                   "remote_peers", "evidence"]
EXPOSURE_COLUMNS = ["day", "device_key", "device", "predicted_device", "line", "kind", "severity", "seen_today",
                    "new_today", "first_seen", "last_seen", "days_seen", "flows", "bytes", "remote_peers", "evidence"]
EVIDENCE_EXAMPLES = 5


# ---------------------------------------------------------------- flows to findings


# The columns of the clean flows the findings, lines and coverage of a day read.
FLOW_COLUMNS = ["device_key", "device_name", "device_port", "remote_ip", "remote_mac", "remote_port", "remote_scope",
                "device_initiated", "protocol", "bytes_out", "bytes_in", "packets_out", "packets_in",
                "initial_tcp_flags_out", "initial_tcp_flags_in"]


def _responder_first_flags(flows: pd.DataFrame) -> np.ndarray:
    """Initial TCP flags of the side YAF saw second (the responder)."""
    return np.where(flows["device_initiated"], flows["initial_tcp_flags_in"], flows["initial_tcp_flags_out"])


def evidence_masks(flows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per evidence name (see the module docstring), which flows carry it."""
    tcp = (flows["protocol"] == TCP).to_numpy()
    udp = (flows["protocol"] == UDP).to_numpy()
    out = (flows["packets_out"] > 0).to_numpy()
    both = out & (flows["packets_in"] > 0).to_numpy()
    reset = (_responder_first_flags(flows) & RST) > 0
    peer_first = ~flows["device_initiated"].to_numpy()
    peer_flags = flows["initial_tcp_flags_in"].to_numpy()
    device_flags = flows["initial_tcp_flags_out"].to_numpy()
    return {
        "device_sent": out,
        "answered": both & ~(tcp & reset),
        "peer_opened": tcp & peer_first & ((peer_flags & (SYN | ACK)) == SYN)
        & ((device_flags & (SYN | ACK | RST)) == (SYN | ACK)),
        "device_answered": udp & peer_first & out,
    }


def match_rules(flows: pd.DataFrame, isp_resolvers: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per (Internet flow, kind it proves): the flow's columns plus `kind` and `service_port`.

    `isp_resolvers`: addresses of resolvers the ISP runs; DNS to them is not `hardcoded_dns`.
    """
    internet = flows[flows["remote_scope"] == "internet"].reset_index(drop=True)
    if internet.empty:
        return internet.assign(kind=pd.Series(dtype=object), service_port=pd.Series(dtype=np.int64))
    evidence = evidence_masks(internet)
    remote_port = internet["remote_port"].to_numpy()
    device_port = internet["device_port"].to_numpy()
    protocol = internet["protocol"].to_numpy()
    parts = []
    for rule in RULES:
        on_remote = np.isin(remote_port, rule.ports) if rule.ports else np.ones(len(internet), bool)
        on_device = np.isin(device_port, rule.ports) if rule.ports else np.ones(len(internet), bool)
        port_match = {"remote": on_remote, "device": on_device, "either": on_remote | on_device}[rule.port_side]
        mask = np.isin(protocol, rule.protocols) & port_match & evidence[rule.evidence]
        if rule.kind == "hardcoded_dns" and isp_resolvers:
            mask &= ~internet["remote_ip"].isin(list(isp_resolvers)).to_numpy()
        if mask.any():
            matched = internet[mask].copy()
            # The service's port: the peer's when it is the server, the device's otherwise.
            matched["service_port"] = np.where(on_remote[mask] & (rule.port_side != "device"),
                                               remote_port[mask], device_port[mask])
            matched["kind"] = rule.kind
            parts.append(matched)
    if not parts:
        return internet.iloc[:0].assign(kind=pd.Series(dtype=object), service_port=pd.Series(dtype=np.int64))
    return pd.concat(parts, ignore_index=True)


def _evidence_text(matched: pd.DataFrame) -> pd.Series:
    """`peer:port` when the peer is the server, `peer -> device:port` when the device is."""
    outbound = matched["service_port"] == matched["remote_port"]
    return pd.Series(np.where(outbound, matched["remote_ip"] + ":" + matched["service_port"].astype(str),
                              matched["remote_ip"] + " -> device:" + matched["service_port"].astype(str)),
                     index=matched.index)


def flow_findings(flows: pd.DataFrame, isp_resolvers: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Per device MAC and kind: flows, bytes, distinct Internet peers and up to 5 example peers."""
    matched = match_rules(flows, isp_resolvers)
    columns = ["device_key", "kind", "severity", "flows", "bytes", "remote_peers", "evidence"]
    if matched.empty:
        return pd.DataFrame(columns=columns)
    matched["bytes_total"] = matched["bytes_out"] + matched["bytes_in"]
    matched["evidence_text"] = _evidence_text(matched)
    grouped = matched.groupby(["device_key", "kind"], sort=True)
    table = grouped.agg(flows=("kind", "size"), bytes=("bytes_total", "sum"), remote_peers=("remote_ip", "nunique"))
    # Examples: the peers with the most flows (ties by address, so the choice is stable).
    counts = matched.groupby(["device_key", "kind", "evidence_text"]).size().rename("n").reset_index()
    counts = counts.sort_values(["device_key", "kind", "n", "evidence_text"], ascending=[True, True, False, True])
    examples = counts.groupby(["device_key", "kind"])["evidence_text"].agg(lambda s: list(s.head(EVIDENCE_EXAMPLES)))
    table["evidence"] = examples
    table = table.reset_index()
    table["severity"] = table["kind"].map({rule.kind: rule.severity for rule in RULES})
    return table[columns]


# ---------------------------------------------------------------- advisories

ADVISORY_COLUMNS = ["vendor", "model", "advisory_id", "severity", "title", "url", "checked_date"]
# Optional: files written before these columns existed still load (the fields are then empty).
ADVISORY_VERSION_COLUMNS = ["affected_versions", "fixed_version"]
ADVISORY_SEVERITIES = {"low": "low", "medium": "medium", "high": "high", "critical": "high"}
DEFAULT_ADVISORIES = Path(__file__).parents[1] / "contracts" / "advisories.csv"


def read_advisories(path: Path | str) -> tuple[pd.DataFrame, list[str]]:
    """(valid advisories, one problem per rejected record naming the file and line).

    The only place the advisories file is read. A file without the required columns is an
    error; a bad record is left out and reported, the others are used.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ADVISORY_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: advisories file lacks column(s) {', '.join(missing)}")
            rows, problems = [], []
            for line, record in enumerate(reader, start=2):
                values = {c: (record.get(c) or "").strip() for c in ADVISORY_COLUMNS + ADVISORY_VERSION_COLUMNS}
                reason = _advisory_problem(values)
                if reason:
                    problems.append(f"{path} line {line}: {reason}")
                else:
                    values["severity"] = ADVISORY_SEVERITIES[values["severity"].lower()]
                    rows.append(values)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot read the advisories file ({exc})") from exc
    return pd.DataFrame(rows, columns=ADVISORY_COLUMNS + ADVISORY_VERSION_COLUMNS), problems


def advisory_details(evidence: list[str], advisories: pd.DataFrame) -> list[dict]:
    """The advisories a `known_advisory` finding names (its evidence: `ID URL` each), as fields of their own.

    An advisory no longer in the file keeps its id and link, with the other fields empty.
    """
    by_id = advisories.drop_duplicates("advisory_id").set_index("advisory_id") if len(advisories) else None
    details = []
    for item in evidence:
        advisory_id, _, url = str(item).partition(" ")
        known = by_id is not None and advisory_id in by_id.index
        row = by_id.loc[advisory_id] if known else {}
        details.append({"advisory_id": advisory_id, "title": row.get("title", "") if known else "",
                        "severity": row.get("severity", "") if known else "",
                        "affected_versions": row.get("affected_versions", "") if known else "",
                        "fixed_version": row.get("fixed_version", "") if known else "",
                        "url": url or (row.get("url", "") if known else "")})
    return details


def _advisory_problem(values: dict[str, str]) -> str | None:
    empty = [c for c in ("model", "advisory_id", "severity", "url") if not values[c]]
    if empty:
        return f"empty {', '.join(empty)}"
    if values["severity"].lower() not in ADVISORY_SEVERITIES:
        return f"severity {values['severity']!r} is not one of {', '.join(ADVISORY_SEVERITIES)}"
    if not values["url"].startswith(("https://", "http://")):
        return f"url {values['url']!r} is not a web address"
    return None


def advisory_findings(inventory: pd.DataFrame, advisories: pd.DataFrame) -> pd.DataFrame:
    """`known_advisory` for each MAC whose predicted model has advisories (model names compared case-blind)."""
    columns = ["device_key", "kind", "severity", "flows", "bytes", "remote_peers", "evidence"]
    if inventory.empty or advisories.empty:
        return pd.DataFrame(columns=columns)
    models = advisories.assign(key=advisories["model"].str.strip().str.casefold())
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    rows = []
    for mac, predicted in zip(inventory["device_key"], inventory["predicted_device"]):
        if not isinstance(predicted, str):
            continue
        hits = models[models["key"] == predicted.strip().casefold()]
        if hits.empty:
            continue
        worst = max(hits["severity"], key=rank.__getitem__)
        ordered = hits.assign(r=hits["severity"].map(rank)).sort_values(["r", "advisory_id"], ascending=[False, True])
        rows.append({"device_key": mac, "kind": "known_advisory", "severity": worst, "flows": 0, "bytes": 0,
                     "remote_peers": 0,
                     "evidence": [f"{r.advisory_id} {r.url}" for r in ordered.head(EVIDENCE_EXAMPLES).itertuples()]})
    return pd.DataFrame(rows, columns=columns)


# ---------------------------------------------------------------- one day, and history


def device_lines(flows: pd.DataFrame, line_of: dict[str, str] | None = None) -> dict[str, str]:
    """The subscriber line of each device MAC.

    With `line_of` (an ISP's MAC -> line table, e.g. from its subscriber database) that
    mapping; otherwise the MAC of the gateway the device's Internet and gateway traffic
    goes through (every device behind one home gateway is one line).
    """
    macs = flows["device_key"].unique()
    if line_of is not None:
        return {mac: line_of.get(mac, "unknown") for mac in macs}
    # A collector's flows carry no MACs: their gateway is unknown.
    via = flows[flows["remote_scope"].isin(["internet", "gateway"]) & flows["remote_mac"].notna()]
    gateway = via.groupby("device_key")["remote_mac"].agg(lambda s: s.value_counts().index[0]) if len(via) else {}
    return {mac: (f"gateway {gateway[mac]}" if mac in gateway else "unknown") for mac in macs}


def day_findings(flows: pd.DataFrame, inventory: pd.DataFrame, advisories: pd.DataFrame,
                 isp_resolvers: frozenset[str] = frozenset()) -> pd.DataFrame:
    """The day's findings per device MAC and kind, with the catalogue and predicted device."""
    parts = [f for f in (flow_findings(flows, isp_resolvers), advisory_findings(inventory, advisories)) if len(f)]
    if not parts:
        return pd.DataFrame(columns=FINDING_COLUMNS)
    found = pd.concat(parts, ignore_index=True)
    names = flows.drop_duplicates("device_key").set_index("device_key")["device_name"] if len(flows) else pd.Series()
    predicted = inventory.set_index("device_key")["predicted_device"] if len(inventory) else pd.Series(dtype=object)
    found["device"] = found["device_key"].map(names)
    found["predicted_device"] = found["device_key"].map(predicted)
    for column in ("flows", "bytes", "remote_peers"):
        found[column] = found[column].astype(np.int64)
    return found[FINDING_COLUMNS].sort_values(["device_key", "kind"]).reset_index(drop=True)


def carry_history(previous: pd.DataFrame | None, today: pd.DataFrame, day: str,
                  lines: dict[str, str] | None = None) -> pd.DataFrame:
    """The day's exposure table: today's findings, and every earlier finding carried on.

    `previous` is the table of the day before (None or empty on the first day). A finding
    keeps the first day it was ever seen; one not seen today stays as a row with
    `seen_today=False` so that its history survives days without it. `new_today` marks a
    finding this MAC never had before.
    """
    lines = lines or {}
    now = today.assign(day=day, seen_today=True)
    now["line"] = now["device_key"].map(lines).fillna("unknown")
    if previous is None or previous.empty:
        now["first_seen"], now["last_seen"], now["days_seen"], now["new_today"] = day, day, 1, True
        return _ordered(now)
    before = previous.set_index(["device_key", "kind"])
    key = pd.MultiIndex.from_frame(now[["device_key", "kind"]])
    known = key.isin(before.index)
    prior = before.reindex(key)
    now["first_seen"] = np.where(known, prior["first_seen"].to_numpy(dtype=object), day)
    now["days_seen"] = np.where(known, prior["days_seen"].fillna(0).to_numpy(), 0).astype(np.int64) + 1
    now["last_seen"] = day
    now["new_today"] = ~known
    # A line known before wins over "unknown" today (a finding from advisories alone has no flows).
    now["line"] = np.where((now["line"] == "unknown") & known, prior["line"].fillna("unknown").to_numpy(), now["line"])
    carried = previous[~pd.MultiIndex.from_frame(previous[["device_key", "kind"]]).isin(key)].copy()
    carried = carried.assign(day=day, seen_today=False, new_today=False, flows=0, bytes=0, remote_peers=0,
                             evidence=[[] for _ in range(len(carried))])
    return _ordered(pd.concat([now, carried], ignore_index=True))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    table = table[EXPOSURE_COLUMNS].copy()
    for column in ("flows", "bytes", "remote_peers", "days_seen"):
        table[column] = table[column].astype(np.int64)
    for column in ("seen_today", "new_today"):
        table[column] = table[column].astype(bool)
    table["evidence"] = table["evidence"].map(lambda v: [str(x) for x in v] if v is not None else [])
    return table.sort_values(["device_key", "kind"]).reset_index(drop=True)


def empty_exposure() -> pd.DataFrame:
    return _ordered(pd.DataFrame(columns=EXPOSURE_COLUMNS))


# ---------------------------------------------------------------- scores, worklist, checks


def severity_rank(severity: pd.Series) -> pd.Series:
    return severity.map({s: i for i, s in enumerate(SEVERITIES)})


def device_scores(findings: pd.DataFrame) -> pd.DataFrame:
    """Per device MAC: the exposure score (sum of severity weights over its distinct kinds) and counts."""
    columns = ["device_key", "device", "line", "score", *SEVERITIES]
    if findings.empty:
        return pd.DataFrame(columns=columns)
    distinct = findings.drop_duplicates(["device_key", "kind"])
    counts = pd.crosstab(distinct["device_key"], distinct["severity"]).reindex(columns=list(SEVERITIES), fill_value=0)
    scores = (counts * pd.Series(SEVERITY_WEIGHTS)).sum(axis=1).rename("score")
    first = distinct.groupby("device_key")[["device", "line"]].first() if "line" in distinct else \
        distinct.groupby("device_key")[["device"]].first().assign(line="unknown")
    table = pd.concat([first, scores, counts], axis=1).reset_index(names="device_key")
    return table.sort_values(["score", "device_key"], ascending=[False, True]).reset_index(drop=True)[columns]


def line_scores(findings: pd.DataFrame) -> pd.DataFrame:
    """Per subscriber line: the sum of its devices' scores, and the devices it holds."""
    devices = device_scores(findings)
    if devices.empty:
        return pd.DataFrame(columns=["line", "score", "devices"])
    grouped = devices.groupby("line").agg(score=("score", "sum"), devices=("device_key", list)).reset_index()
    return grouped.sort_values(["score", "line"], ascending=[False, True]).reset_index(drop=True)


def worklist(exposure: pd.DataFrame) -> pd.DataFrame:
    """The day's findings for the security team: worst device first, worst finding first within it."""
    seen = exposure[exposure["seen_today"]]
    if seen.empty:
        return seen.assign(score=pd.Series(dtype=float))
    scores = device_scores(seen).set_index("device_key")["score"]
    table = seen.assign(score=seen["device_key"].map(scores), rank=severity_rank(seen["severity"]))
    table = table.sort_values(["score", "device_key", "rank", "kind"], ascending=[False, True, False, True])
    return table.drop(columns="rank").reset_index(drop=True)


def new_high_findings(exposure: pd.DataFrame) -> pd.DataFrame:
    """High-severity findings a device has today and never had on an earlier day."""
    return exposure[exposure["seen_today"] & exposure["new_today"] & (exposure["severity"] == "high")]


def rules_coverage(flows: pd.DataFrame) -> pd.DataFrame:
    """Per device: its Internet flows, and the share on ports no rule or known-service table explains.

    A flow is explained when a rule's protocol and port match it on the rule's side (the
    evidence aside), either of its ports is in the known-service table
    (`features.SERVICE_PORTS`), or its peer's port is a known device cloud's
    (`VENDOR_CLOUD_PORTS`); ICMP carries no ports and counts as explained. Rules without
    ports (`inbound_from_internet`) explain nothing by port.
    """
    columns = ["device_key", "device", "internet_flows", "unexplained_flows", "unexplained_share", "unexplained_ports"]
    internet = flows[flows["remote_scope"] == "internet"]
    if internet.empty:
        return pd.DataFrame(columns=columns)
    known = list(SERVICE_PORTS)
    explained = (internet["remote_port"].isin(known) | internet["device_port"].isin(known)
                 | internet["protocol"].isin([ICMP, ICMPV6])).to_numpy()
    for protocol, port in VENDOR_CLOUD_PORTS:
        explained |= ((internet["protocol"] == protocol) & (internet["remote_port"] == port)).to_numpy()
    for rule in RULES:
        if not rule.ports:
            continue
        on_remote = internet["remote_port"].isin(rule.ports).to_numpy()
        on_device = internet["device_port"].isin(rule.ports).to_numpy()
        side = {"remote": on_remote, "device": on_device, "either": on_remote | on_device}[rule.port_side]
        explained |= internet["protocol"].isin(rule.protocols).to_numpy() & side
    explained = pd.Series(explained, index=internet.index)
    unexplained = internet[~explained]
    service = np.minimum(unexplained["remote_port"], unexplained["device_port"])
    labels = np.where(unexplained["protocol"] == TCP, "tcp/", np.where(unexplained["protocol"] == UDP, "udp/", "ip/"))
    unexplained = unexplained.assign(port_label=labels + service.astype(str))
    top = unexplained.groupby("device_key")["port_label"].agg(
        lambda s: ", ".join(f"{p} ({n})" for p, n in s.value_counts().head(5).items()))
    table = internet.groupby("device_key").agg(device=("device_name", "first"), internet_flows=("protocol", "size"))
    table["unexplained_flows"] = (~explained).groupby(internet["device_key"]).sum()
    table["unexplained_share"] = table["unexplained_flows"] / table["internet_flows"]
    table["unexplained_ports"] = top.reindex(table.index).fillna("")
    return table.reset_index()[columns]


# ---------------------------------------------------------------- summaries for the reports


def findings_per_day(exposure: pd.DataFrame) -> pd.DataFrame:
    """Per day (rows) and severity (columns): how many findings were seen that day."""
    seen = exposure[exposure["seen_today"]] if len(exposure) else exposure
    if seen.empty:
        return pd.DataFrame(columns=list(SEVERITIES))
    counts = pd.crosstab(seen["day"], seen["severity"]).reindex(columns=list(SEVERITIES), fill_value=0)
    return counts.sort_index()


def fleet_view(exposure: pd.DataFrame, inventory: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(devices per predicted model and kind, share of all devices with each kind).

    `exposure` holds the findings of any range of days; `inventory` the MACs seen in that
    range with their predicted device (the fleet the shares are taken over).
    """
    seen = exposure[exposure["seen_today"]] if len(exposure) else exposure
    fleet = inventory.drop_duplicates("device_key", keep="last") if len(inventory) else inventory
    total = len(fleet)
    if seen.empty or total == 0:
        return pd.DataFrame(columns=list(KINDS)), pd.DataFrame(columns=["kind", "devices", "share"])
    distinct = seen.drop_duplicates(["device_key", "kind"])
    models = distinct["device_key"].map(fleet.set_index("device_key")["predicted_device"]).fillna("(not in inventory)")
    by_model = pd.crosstab(models.rename("predicted_device"), distinct["kind"])
    by_model = by_model.reindex(columns=[k for k in KINDS if k in by_model.columns])
    per_kind = distinct.groupby("kind")["device_key"].nunique().reindex(list(KINDS)).dropna().astype(int)
    shares = pd.DataFrame({"kind": per_kind.index, "devices": per_kind.to_numpy(),
                           "share": per_kind.to_numpy() / total})
    return by_model, shares
