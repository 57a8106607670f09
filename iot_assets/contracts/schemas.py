"""Data contracts: one pandera model per table, used by the assets, the UI and the tests."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as arrow
import pyarrow.compute as pc
from pandas.api.types import infer_dtype
from pandera import dtypes, extensions
from pandera.engines import pandas_engine
from pandera.typing import Series

from iot_assets.contracts.flows import END_REASONS, FIELDS, Field
from iot_assets.contracts.vocabulary import KIND_RULES, REMOTE_SCOPES

MAC_PATTERN = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
# A device key (`core.clean.device_keys`): a MAC, `ip:<address>` or `line:<address>`.
DEVICE_KEY_PATTERN = r"^([0-9a-f]{2}(:[0-9a-f]{2}){5}|ip:[0-9a-fA-F.:]+|line:[0-9a-fA-F.:]+)$"
UtcMs = pd.DatetimeTZDtype(unit="ms", tz="UTC")


# pandera checks `str` columns (and `str_matches`) one value at a time in Python: 1.4 s of a
# full-scale day's 190,000 flows, a fifth of `daily_flows_job`. These two do the common case in one
# pass in C and fall back to pandera's value-by-value answer only when a value is wrong, so that the
# failure cases still name each bad row.
@pandas_engine.Engine.register_dtype
@dtypes.immutable
class Text(pandas_engine.NpString):
    """`str`, checked by one `infer_dtype` pass when every value is a string or missing."""

    def check(self, pandera_dtype, data_container=None):
        if data_container is not None and isinstance(pandera_dtype, pandas_engine.numpy_engine.Object) \
                and infer_dtype(data_container, skipna=True) in ("string", "empty"):
            return True
        return super().check(pandera_dtype, data_container)

    def __str__(self) -> str:
        return "str"


@extensions.register_check_method(statistics=["pattern"])
def matches(pandas_obj: pd.Series, *, pattern: str) -> pd.Series:
    """Each value matches the regular expression `pattern` (RE2, through pyarrow); missing values do not."""
    try:
        values = arrow.array(pandas_obj.to_numpy(), type=arrow.string(), from_pandas=True)
    except (arrow.ArrowInvalid, arrow.ArrowTypeError):  # not all strings: the slow way, per value
        return pandas_obj.str.match(pattern, na=False).fillna(False).astype(bool)
    hit = pc.fill_null(pc.match_substring_regex(values, pattern), False)
    return pd.Series(hit.to_numpy(zero_copy_only=False), index=pandas_obj.index)


def _decoded_column(field: Field):
    """A contract field as a pandera column: its type, its bounds, its description."""
    kind_types = {"time": UtcMs, "seconds": int, "int": int}
    checks: dict = {}
    if field.bounds is not None:
        checks.update({k: v for k, v in (("ge", field.bounds.low), ("le", field.bounds.high)) if v is not None})
    if field.kind == "mac":
        checks["matches"] = {"pattern": MAC_PATTERN}
    if field.kind == "end_reason":
        checks["isin"] = sorted(set(END_REASONS.values()))
    return Series[kind_types.get(field.kind, Text)], pa.Field(description=field.description or None, **checks)


def _ends_after_start(cls, df: pd.DataFrame) -> Series[bool]:
    return df["flow_end"] >= df["flow_start"]


def _decoded_flows_model() -> type[pa.DataFrameModel]:
    """DecodedFlows from the flow contract: the fields YAF always writes, the end reason, lineage and derived columns."""
    columns = {
        "archive": (Series[Text], pa.Field(description="archive the record came from (lineage)")),
        "line_number": (Series[int], pa.Field(ge=1, description="line of the record in the archive's JSON member")),
        **{f.name: _decoded_column(f) for f in FIELDS if f.required or f.kind == "end_reason"},
        "ip_version": (Series[np.int8], pa.Field(isin=[4, 6])),
        "has_flow_stats": (Series[bool], pa.Field(description="YAF kept payload statistics for the flow")),
    }

    class Config:
        strict = False  # the remaining YAF fields pass through as decoded

    namespace = {
        "__doc__": "Every flow record of a day, typed, source-oriented as YAF exported it.",
        "__module__": __name__,
        "__annotations__": {name: annotation for name, (annotation, _) in columns.items()},
        **{name: field for name, (_, field) in columns.items()},
        "ends_after_start": pa.dataframe_check(error="flow_end before flow_start")(classmethod(_ends_after_start)),
        "Config": Config,
    }
    return type("DecodedFlows", (pa.DataFrameModel,), namespace)


DecodedFlows = _decoded_flows_model()


class CleanFlows(pa.DataFrameModel):
    """Flows seen from their local device: out of and into the device, labelled."""

    archive: Series[Text] = pa.Field(description="archive the record came from (lineage)")
    line_number: Series[int] = pa.Field(ge=1, description="line of the record in the archive's JSON member")
    flow_start: Series[UtcMs] = pa.Field(description="first packet, UTC")
    flow_end: Series[UtcMs] = pa.Field(description="last packet, UTC")
    duration_ms: Series[int] = pa.Field(ge=0, le=86_400_000)
    rtt_ms: Series[int] = pa.Field(ge=0, description="delay of the first reverse packet")
    device_key: Series[Text] = pa.Field(matches={"pattern": DEVICE_KEY_PATTERN},
                                        description="the device every product keys on: its MAC, else ip:<private "
                                                    "address>, else line:<the line's address> (see `identity`)")
    device_mac: Series[Text] = pa.Field(matches={"pattern": MAC_PATTERN}, nullable=True,
                                        description="the local device; null for a collector flow without MACs")
    device_name: Series[Text] = pa.Field(nullable=True, description="catalogue device, null if not in the catalogue")
    device_category: Series[Text] = pa.Field(nullable=True)
    in_catalogue: Series[bool] = pa.Field()
    identity: Series[Text] = pa.Field(isin=["mac", "private_ip", "line"],
                                      description="how the device is known: its MAC, its private address (no MAC), "
                                                  "or only the subscriber line")
    device_ip: Series[Text] = pa.Field()
    device_port: Series[int] = pa.Field(ge=0, le=65535)
    remote_ip: Series[Text] = pa.Field()
    remote_mac: Series[Text] = pa.Field(matches={"pattern": MAC_PATTERN}, nullable=True,
                                        description="null for a collector flow without MACs")
    remote_port: Series[int] = pa.Field(ge=0, le=65535)
    remote_scope: Series[Text] = pa.Field(isin=list(REMOTE_SCOPES))
    device_initiated: Series[bool] = pa.Field(description="the device sent the first packet YAF saw")
    protocol: Series[int] = pa.Field(ge=0, le=255)
    ip_version: Series[int] = pa.Field(isin=[4, 6])
    end_reason: Series[Text] = pa.Field(isin=sorted(set(END_REASONS.values())), nullable=True,
                                        description="null when the exporter does not say (nfcapd files)")
    has_flow_stats: Series[bool] = pa.Field(description="payload statistics are real (YAF); when False they are 0")
    sampling_rate: Series[int] = pa.Field(ge=1, description="packets each counted packet stands for (1: unsampled)")
    bytes_out: Series[int] = pa.Field(ge=0, description="bytes sent by the device")
    bytes_in: Series[int] = pa.Field(ge=0, description="bytes received by the device")
    packets_out: Series[int] = pa.Field(ge=0)
    packets_in: Series[int] = pa.Field(ge=0)
    payload_bytes_out: Series[int] = pa.Field(ge=0)
    payload_bytes_in: Series[int] = pa.Field(ge=0)
    non_empty_packets_out: Series[int] = pa.Field(ge=0)
    non_empty_packets_in: Series[int] = pa.Field(ge=0)
    small_packets_out: Series[int] = pa.Field(ge=0)
    small_packets_in: Series[int] = pa.Field(ge=0)
    large_packets_out: Series[int] = pa.Field(ge=0)
    large_packets_in: Series[int] = pa.Field(ge=0)
    max_payload_bytes_out: Series[int] = pa.Field(ge=0)
    max_payload_bytes_in: Series[int] = pa.Field(ge=0)
    first_payload_bytes_out: Series[int] = pa.Field(ge=0)
    first_payload_bytes_in: Series[int] = pa.Field(ge=0)
    mean_interarrival_ms_out: Series[float] = pa.Field(ge=0, nullable=True)
    mean_interarrival_ms_in: Series[float] = pa.Field(ge=0, nullable=True)
    stddev_payload_bytes_out: Series[int] = pa.Field(ge=0)
    stddev_payload_bytes_in: Series[int] = pa.Field(ge=0)
    initial_tcp_flags_out: Series[int] = pa.Field(ge=0, le=255)
    initial_tcp_flags_in: Series[int] = pa.Field(ge=0, le=255)
    union_tcp_flags_out: Series[int] = pa.Field(ge=0, le=255)
    union_tcp_flags_in: Series[int] = pa.Field(ge=0, le=255)

    @pa.dataframe_check(error="flow_end before flow_start")
    def ends_after_start(cls, df: pd.DataFrame) -> Series[bool]:
        return df["flow_end"] >= df["flow_start"]

    @pa.dataframe_check(error="a flow without packets")
    def has_packets(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["packets_out"] + df["packets_in"]) > 0

    class Config:
        strict = True
        coerce = True


class FlowRejects(pa.DataFrameModel):
    """Records that did not make it into a flow table, each with its reason."""

    archive: Series[Text] = pa.Field()
    line_number: Series[int] = pa.Field(ge=1)
    reason: Series[Text] = pa.Field()
    detail: Series[Text] = pa.Field(nullable=True)

    class Config:
        strict = True
        coerce = True


class AnomalyIncidents(pa.DataFrameModel):
    """Incidents: consecutive flagged windows of a device grouped, what moved, and the flows behind them."""

    device_key: Series[Text] = pa.Field(matches={"pattern": DEVICE_KEY_PATTERN},
                                        description="the device: its MAC, ip:<private address> or line:<address>")
    device_name: Series[Text] = pa.Field(nullable=True, description="catalogue device, null if not in the catalogue")
    incident: Series[Text] = pa.Field(unique=True, description="the incident's id: device key @ start")
    start: Series[UtcMs] = pa.Field(description="start of the first flagged window (UTC)")
    end: Series[UtcMs] = pa.Field(description="end of the last flagged window (UTC)")
    windows_flagged: Series[int] = pa.Field(ge=1)
    peak_score_ratio: Series[float] = pa.Field(gt=0, description="the highest anomaly score over the device's "
                                                                 "threshold (1 = at the threshold)")
    peak_window: Series[UtcMs] = pa.Field()
    top_features: Series[Text] = pa.Field(description="the features that moved most in the peak window, in spreads")
    kind: Series[Text] = pa.Field(isin=list(KIND_RULES), description="what the deviations look like: "
                                  f"{', '.join(KIND_RULES)} (the rules of core/incidents.py)")
    kind_reason: Series[Text] = pa.Field(description="the rule that named the kind, with the deviations behind it")
    evidence_peers: Series[Text] = pa.Field(description="top remote peers during the incident")
    evidence_ports: Series[Text] = pa.Field(description="top services (protocol/server port; ICMP has no port) during the incident")
    usual_peers: Series[Text] = pa.Field(description="top remote peers of the device's other flows that day")
    usual_ports: Series[Text] = pa.Field(description="top services of the device's other flows that day")
    new_peers: Series[int] = pa.Field(ge=0, description="peers during the incident never seen outside it that day")
    model_version: Series[Text] = pa.Field(description="the anomaly detector's version")

    @pa.dataframe_check(error="an incident ends before it starts")
    def ends_after_start(cls, df: pd.DataFrame) -> Series[bool]:
        return df["end"] > df["start"]

    class Config:
        strict = True
        coerce = True


def column_schema(model: type[pa.DataFrameModel]) -> dg.TableSchema:
    """The model as Dagster column metadata, so the UI documents every column."""
    schema = model.to_schema()
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=str(column.dtype),
                description=column.description,
                constraints=dg.TableColumnConstraints(nullable=column.nullable),
            )
            for name, column in schema.columns.items()
        ]
    )


CVE_ID_PATTERN = r"^CVE-\d{4}-\d{4,}$"
DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


class DeviceVulnerabilities(pa.DataFrameModel):
    """A day's device_vulnerabilities: each (device MAC, CVE) finding with its risk, evidence and lifecycle."""

    day: Series[Text] = pa.Field(matches={"pattern": DAY_PATTERN}, description="the partition's day")
    device_mac: Series[Text] = pa.Field(matches={"pattern": MAC_PATTERN}, description="the device's MAC address")
    device: Series[Text] = pa.Field(description="the inventory's predicted model, whose CPE matched")
    line: Series[Text] = pa.Field(description="the subscriber line(s) of the device on the day; `unknown` if none")
    cpe: Series[Text] = pa.Field(description="the model's CPE 2.3 name that matched (contracts/device_cpes.csv)")
    cve: Series[Text] = pa.Field(matches={"pattern": CVE_ID_PATTERN}, description="the CVE id")
    title: Series[Text] = pa.Field(description="first sentence of the NVD description")
    published: Series[Text] = pa.Field(nullable=True, description="NVD publication day")
    cvss: Series[float] = pa.Field(ge=0, le=10, nullable=True, description="CVSS base score (NVD's, 3.x first)")
    cvss_severity: Series[Text] = pa.Field(nullable=True)
    kev: Series[bool] = pa.Field(description="in CISA's Known Exploited Vulnerabilities catalogue")
    kev_due_date: Series[Text] = pa.Field(nullable=True, description="KEV's remediation due date")
    epss: Series[float] = pa.Field(ge=0, le=1, nullable=True, description="FIRST EPSS: exploitation within 30 days")
    exposed: Series[bool] = pa.Field(description="the vulnerable service was seen reachable or in use with Internet peers")
    evidence: Series[Text] = pa.Field(nullable=True, description="the exposure findings behind `exposed`, and notes")
    risk: Series[float] = pa.Field(ge=0, description="cvss x (1 + kev) x (1 + epss) x (1.5 if exposed)")
    affected: Series[Text] = pa.Field(description="`possibly affected (firmware unknown)` unless the firmware is known")
    remediation: Series[Text] = pa.Field(description="fixed version, KEV's required action or the vendor's advice")
    first_seen: Series[Text] = pa.Field(matches={"pattern": DAY_PATTERN})
    last_seen: Series[Text] = pa.Field(matches={"pattern": DAY_PATTERN}, description="last day the finding matched")
    status: Series[Text] = pa.Field(isin=["open", "acknowledged", "resolved"],
                                    description="open; acknowledged by an operator; resolved")
    new_today: Series[bool] = pa.Field(description="first matched today, or matched again after it was resolved")
    resolved_on: Series[Text] = pa.Field(nullable=True)
    resolution: Series[Text] = pa.Field(nullable=True, description="why it was resolved: device gone, firmware, evidence")
    days_open: Series[int] = pa.Field(ge=0, description="calendar days from first_seen to the day (or the resolution)")

    @pa.dataframe_check(error="a (device_mac, cve) finding appears twice in a day")
    def one_row_per_finding(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df.duplicated(["device_mac", "cve"], keep=False)

    @pa.dataframe_check(error="a resolved finding without resolved_on, or an unresolved one with it")
    def resolved_has_its_day(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["status"] == "resolved") == df["resolved_on"].notna()

    @pa.dataframe_check(error="first_seen after the day")
    def first_seen_not_after_day(cls, df: pd.DataFrame) -> Series[bool]:
        return df["first_seen"].astype(str) <= df["day"].astype(str)

    class Config:
        strict = True
        coerce = True
