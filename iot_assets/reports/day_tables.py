"""A day's products as the analyst reads them: inventory, incidents, exposure and vulnerability worklists, lines.

Each function takes one day's table (as the lake holds it) and returns a `DayTable`: the rows
an analyst reads, with every column named and explained. The same tables are the Dagster UI's
table metadata (`iot_assets.defs.day_metadata`) and what `iot-assets show` prints. Rendering
only: frames in, rows out. A column shown as the lake holds it takes its type and description
from the table's pandera model (`lake_column`): the contract is the one place they are written.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa

from iot_assets.contracts.schemas import AnomalyIncidents, DeviceVulnerabilities
from iot_assets.core import exposure
from iot_assets.core import vulnerabilities as vuln

MAX_ROWS = 500  # a day's table in the UI: past this, the lake has the rest
VULNERABILITY_ROWS = 100  # the day's vulnerability worklist in the UI (the lake table has them all)
# pandera dtypes as Dagster's table column types; a time is shown as text.
_TABLE_TYPES = {"str": "string", "float64": "float", "int64": "int", "bool": "bool"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "string", "float", "int", "bool": Dagster's table column types
    description: str


@dataclass(frozen=True)
class DayTable:
    """One day's rows (plain str/int/float/bool/None values), with the columns that explain them."""

    day: str
    columns: tuple[Column, ...]
    rows: list[dict]
    total_rows: int  # before `MAX_ROWS` cut

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=[c.name for c in self.columns])


def lake_column(model: type[pa.DataFrameModel], name: str, shown_as: str | None = None) -> Column:
    """Column `name` of the lake table `model` shown as it is: type and description from the model."""
    column = model.to_schema().columns[name]
    return Column(shown_as or name, _TABLE_TYPES.get(str(column.dtype), "string"), column.description or "")


def _plain(value):
    """A cell as a plain value: NaN and NaT become None, numpy scalars Python ones."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value.item() if hasattr(value, "item") else value


def _table(day: str, columns: tuple[Column, ...], frame: pd.DataFrame, max_rows: int = MAX_ROWS) -> DayTable:
    names = [c.name for c in columns]
    rows = [{name: _plain(value) for name, value in zip(names, values)}
            for values in frame[names].head(max_rows).itertuples(index=False, name=None)]
    return DayTable(day, columns, rows, len(frame))


def _text(series: pd.Series) -> pd.Series:
    return series.astype(object).where(series.notna(), None)


INVENTORY_COLUMNS = (
    Column("device", "string", "the device's key: its MAC address, ip:<private address> when the flows carry no "
                               "MAC, line:<address> when only the subscriber line is known"),
    Column("identity", "string", "what the device key is: mac, private_ip or line"),
    Column("model", "string", "the device model the classifier names from the MAC's traffic of the last week; "
                              "`unknown` when it resembles no model it was trained on"),
    Column("category", "string", "the model's kind of device (camera, speaker, plug ...)"),
    Column("confidence", "float", "the classifier's probability for the named model, 0..1"),
    Column("status", "string", "known: a model the classifier was trained on; unknown: none of them"),
    Column("in_catalogue", "bool", "the MAC is one of the catalogue's devices (the dataset's 25)"),
    Column("catalogue_model", "string", "the catalogue's model of the MAC, if it has one"),
    Column("line", "string", "the subscriber line(s) the MAC sits on that day (line_membership)"),
)


def lines_of_macs(membership: pd.DataFrame | None, day: str) -> dict[str, str]:
    """Per MAC, the subscriber lines it sits on by the end of `day` (a membership with a later `since` not yet)."""
    if membership is None or membership.empty:
        return {}
    end_of_day = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
    since = pd.to_datetime(membership["since"], utc=True)
    present = membership[since.isna() | (since < end_of_day)]
    return present.groupby("device_mac")["line_id"].agg(lambda s: ", ".join(sorted(set(s)))).to_dict()


def inventory_table(inventory: pd.DataFrame, day: str, membership: pd.DataFrame | None = None) -> DayTable:
    """device_inventory of a day: which MAC is which model, how sure, known or not, on which line."""
    if inventory.empty:
        return _table(day, INVENTORY_COLUMNS, pd.DataFrame(columns=[c.name for c in INVENTORY_COLUMNS]))
    status = inventory["status"].astype(str)
    shown = pd.DataFrame({
        "device": inventory["device_key"].astype(str),
        "identity": inventory["identity"].astype(str) if "identity" in inventory else "mac",
        "model": _text(inventory["predicted_device"]).where(status != "unknown", "unknown"),
        "category": _text(inventory["predicted_category"]),
        "confidence": inventory["confidence"].astype(float).round(3),
        "status": status,
        "in_catalogue": inventory["in_catalogue"].astype(bool),
        "catalogue_model": _text(inventory["catalogue_device"]),
        "line": inventory["device_key"].map(lines_of_macs(membership, day)).fillna("none"),
    })
    return _table(day, INVENTORY_COLUMNS, shown.sort_values(["status", "model", "device"], ascending=[False, True, True]))


INCIDENT_COLUMNS = (
    Column("day", "string", "the day the incident is listed on (one going on at midnight is on both days)"),
    Column("device", "string", "the catalogue device, or the device key when it is not in the catalogue"),
    lake_column(AnomalyIncidents, "start"),
    lake_column(AnomalyIncidents, "end"),
    lake_column(AnomalyIncidents, "kind"),
    lake_column(AnomalyIncidents, "peak_score_ratio", shown_as="peak"),
    Column("evidence", "string", "the remote peers and services (protocol/port; ICMP has no port) of the device's "
                                 "flows during the incident, with flows and MB"),
    lake_column(AnomalyIncidents, "new_peers"),
    lake_column(AnomalyIncidents, "incident"),
)


def incidents_table(incidents: pd.DataFrame, day: str) -> DayTable:
    """anomaly_incidents of a day: one row per incident with its day, span, kind and evidence."""
    if incidents.empty:
        return _table(day, INCIDENT_COLUMNS, pd.DataFrame(columns=[c.name for c in INCIDENT_COLUMNS]))
    start, end = pd.to_datetime(incidents["start"], utc=True), pd.to_datetime(incidents["end"], utc=True)
    evidence = [f"peers: {peers or 'none'}; services: {ports or 'none'}"
                for peers, ports in zip(incidents["evidence_peers"].fillna(""), incidents["evidence_ports"].fillna(""))]
    shown = pd.DataFrame({
        "day": day, "device": incidents["device_name"].fillna(incidents["device_key"]).astype(str),
        "start": start.dt.strftime("%Y-%m-%d %H:%M"), "end": end.dt.strftime("%Y-%m-%d %H:%M"),
        "kind": incidents["kind"].astype(str), "peak": incidents["peak_score_ratio"].astype(float).round(1),
        "evidence": evidence, "new_peers": incidents["new_peers"].fillna(0).astype(int),
        "incident": incidents["incident"].astype(str),
    })
    return _table(day, INCIDENT_COLUMNS, shown.sort_values(["start", "device"]))


EXPOSURE_COLUMNS = (
    Column("day", "string", "the day the finding was seen"),
    Column("device", "string", "the catalogue device, or the device key when it is not in the catalogue"),
    Column("finding", "string", "the kind of exposure (docs/exposure.md)"),
    Column("severity", "string", "high: reachable or abusable from the Internet; medium: credentials, commands or "
                                 "video in cleartext; low: metadata leaks; info: not a fault"),
    Column("since", "string", "the first day this device had this finding"),
    Column("change", "string", "new: first seen today; worse: more severe than the day before; ongoing; "
                               "baseline: the first day of history (nothing to compare with)"),
    Column("what it means", "string", "the finding in plain words"),
    Column("what to do", "string", "the remediation"),
    Column("evidence", "string", "examples of the flows' peers (peer:port), or the advisories for known_advisory"),
    Column("explained_by_incident", "string", "the device's incidents that day whose span overlaps the finding's "
                                              "evidence flows (ids: device key @ start): likely their side effect"),
    Column("device_key", "string", "the device's key: its MAC address, ip:<private address> or line:<address>"),
)


def exposure_changes(today: pd.DataFrame, previous: pd.DataFrame | None) -> pd.Series:
    """Per finding seen today: `new` (never before), `worse` (more severe than the day before) or `ongoing`;
    `baseline` without a day before (`previous` None): the first day of history."""
    change = pd.Series("ongoing", index=today.index, dtype=object)
    change[today["new_today"].astype(bool)] = "new" if previous is not None else "baseline"
    if previous is not None and len(previous):
        before = previous.drop_duplicates(["device_key", "kind"]).set_index(["device_key", "kind"])["severity"]
        prior = before.reindex(pd.MultiIndex.from_frame(today[["device_key", "kind"]]))
        rank = {s: i for i, s in enumerate(exposure.SEVERITIES)}
        worse = today["severity"].map(rank).to_numpy() > prior.map(rank).fillna(99).to_numpy()
        change[worse & (change != "new").to_numpy()] = "worse"
    return change


def exposure_table(findings: pd.DataFrame, day: str, previous: pd.DataFrame | None = None) -> DayTable:
    """device_exposure of a day as the worklist: worst device first, each finding explained with what to do."""
    work = exposure.worklist(findings) if len(findings) else findings
    if work.empty:
        return _table(day, EXPOSURE_COLUMNS, pd.DataFrame(columns=[c.name for c in EXPOSURE_COLUMNS]))
    shown = pd.DataFrame({
        "day": day, "device": work["device"].fillna(work["device_key"]).astype(str), "finding": work["kind"].astype(str),
        "severity": work["severity"].astype(str), "since": work["first_seen"].astype(str),
        "change": exposure_changes(work, previous).to_numpy(),
        "what it means": work["kind"].map(exposure.finding_meaning), "what to do": work["kind"].map(exposure.finding_remediation),
        "evidence": [", ".join(str(x).split(" ")[0] if kind == "known_advisory" else str(x) for x in list(ev)[:3])
                     for kind, ev in zip(work["kind"], work["evidence"])],
        # Tables built before the links have no column: no incident named.
        "explained_by_incident": work.get("explained_by_incident", pd.Series("", index=work.index)).fillna("").astype(str),
        "device_key": work["device_key"].astype(str),
    })
    return _table(day, EXPOSURE_COLUMNS, shown)


LINE_COLUMNS = (
    Column("line", "string", "the subscriber line"),
    Column("models", "string", "the device models (or manufacturers) detected on the line over the window, "
                               "each with the day it was first detected"),
    Column("first_seen", "string", "when the line's first detection was made (UTC)"),
    Column("sampling", "string", "the packet sampling the detections are at (1:1 = every packet)"),
)


def line_table(line_inventory: pd.DataFrame, day: str) -> DayTable:
    """line_inventory of a day at its finest sampling: per line, the models on it and since when."""
    detected = line_inventory[line_inventory["detected"].astype(bool)] if len(line_inventory) else line_inventory
    if detected.empty:
        return _table(day, LINE_COLUMNS, pd.DataFrame(columns=[c.name for c in LINE_COLUMNS]))
    rate = int(detected["sampling_rate"].min())
    finest = detected[detected["sampling_rate"] == rate].assign(
        at=pd.to_datetime(detected["detected_at"], utc=True)).sort_values(["line_id", "at", "label"])
    rows = []
    for line_id, part in finest.groupby("line_id", sort=True):
        models = ", ".join(f"{r.label} ({r.at:%Y-%m-%d})" for r in part.itertuples())
        rows.append({"line": line_id, "models": models, "first_seen": f"{part['at'].min():%Y-%m-%d %H:%M}",
                     "sampling": f"1:{rate}"})
    return _table(day, LINE_COLUMNS, pd.DataFrame(rows))


VULNERABILITY_COLUMNS = (
    lake_column(DeviceVulnerabilities, "device"),
    lake_column(DeviceVulnerabilities, "device_mac", shown_as="mac"),
    *(lake_column(DeviceVulnerabilities, name)
      for name in ("cve", "cvss", "kev", "epss", "exposed", "status", "days_open", "risk", "remediation")),
)


def vulnerabilities_table(findings: pd.DataFrame, day: str) -> DayTable:
    """device_vulnerabilities of a day as the worklist: unresolved findings, the riskiest device first."""
    work = vuln.device_worklist(findings)
    shown = work.rename(columns={"device_mac": "mac"}).assign(risk=work["risk"].astype(float).round(2))
    return _table(day, VULNERABILITY_COLUMNS, shown, max_rows=VULNERABILITY_ROWS)
