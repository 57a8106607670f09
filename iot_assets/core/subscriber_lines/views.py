"""Line views: what the ISP's edge collector records of a subscriber line, and the ground truth behind it.

The Internet-bound flows of the devices behind the line, with every device identifier gone
(no MAC, no LAN address, no device port: the NAT rewrote them), packet-sampled 1:N.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from iot_assets.contracts.schemas import Text, UtcMs
from iot_assets.core.subscriber_lines.manufacturers import manufacturer_of
from iot_assets.core.subscriber_lines.membership import LinesInputError, line_key

DEFAULT_SAMPLING_RATES = (1, 100, 1000)


def parse_sampling_rates(raw: str, source: str = "IOT_ASSETS_SAMPLING") -> tuple[int, ...]:
    """`"1,100,1000"` -> (1, 100, 1000): packet sampling rates 1:N, each a whole number >= 1."""
    if not raw.strip():
        return DEFAULT_SAMPLING_RATES
    rates = []
    for part in raw.split(","):
        text = part.strip()
        if not text.isdigit() or int(text) < 1:
            raise LinesInputError(f"{source}={raw!r}: {text!r} is not a sampling rate (a whole number N >= 1 for 1:N)")
        rates.append(int(text))
    if len(set(rates)) != len(rates):
        raise LinesInputError(f"{source}={raw!r}: a rate is listed twice")
    return tuple(sorted(rates))


VIEW_COLUMNS = ["line_id", "sampling_rate", "flow_start", "flow_end", "remote_ip", "remote_port", "protocol",
                "bytes_out", "bytes_in", "packets_out", "packets_in"]


class LineViews(pa.DataFrameModel):
    """What the ISP edge records of a subscriber line: public side only, packet-sampled."""

    line_id: Series[Text] = pa.Field(description="the subscriber line (its one public address)")
    sampling_rate: Series[int] = pa.Field(ge=1, description="packet sampling 1:N applied to this copy of the flows")
    flow_start: Series[UtcMs] = pa.Field(description="first packet, UTC")
    flow_end: Series[UtcMs] = pa.Field(description="last packet, UTC")
    remote_ip: Series[Text] = pa.Field(description="the Internet peer")
    remote_port: Series[int] = pa.Field(ge=0, le=65535, description="the Internet peer's port")
    protocol: Series[int] = pa.Field(ge=0, le=255)
    bytes_out: Series[int] = pa.Field(ge=0, description="bytes from the line to the peer, scaled back by N")
    bytes_in: Series[int] = pa.Field(ge=0, description="bytes from the peer to the line, scaled back by N")
    packets_out: Series[int] = pa.Field(ge=0, description="sampled packets to the peer times N")
    packets_in: Series[int] = pa.Field(ge=0, description="sampled packets from the peer times N")

    @pa.dataframe_check(error="flow_end before flow_start")
    def ends_after_start(cls, df: pd.DataFrame) -> Series[bool]:
        return df["flow_end"] >= df["flow_start"]

    @pa.dataframe_check(error="a sampled flow without packets")
    def has_packets(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["packets_out"] + df["packets_in"]) > 0

    class Config:
        strict = True  # no other column: nothing that names a device can ride along
        coerce = True


VIEW_SOURCE_COLUMNS = ["flow_start", "flow_end", "remote_ip", "remote_port", "protocol", "bytes_out", "bytes_in",
                       "packets_out", "packets_in"]


# The columns of the clean flows `line_views` and `line_truth` read.
CLEAN_COLUMNS = ["device_mac", "device_name", "remote_scope", "sampling_rate", *VIEW_SOURCE_COLUMNS]


def _on_lines(clean: pd.DataFrame, membership: pd.DataFrame) -> pd.DataFrame:
    """Internet-bound flows copied into every line their device sits on, from its `since`."""
    # Only the columns a view keeps: a day of clean flows has many more, and the join copies its rows.
    stated = ["sampling_rate"] if "sampling_rate" in clean.columns else []
    internet = clean.loc[clean["remote_scope"] == "internet", ["device_mac", *stated, *VIEW_SOURCE_COLUMNS]]
    joined = internet.merge(membership[["device_mac", "line_id", "since"]], on="device_mac", how="inner")
    return joined[joined["since"].isna() | (joined["flow_start"] >= joined["since"])]


def line_views(clean: pd.DataFrame, membership: pd.DataFrame, day: str,
               rates: tuple[int, ...] = DEFAULT_SAMPLING_RATES, seed: int = 0) -> pd.DataFrame:
    """The day's flows as the ISP edge sees them, once per sampling rate.

    A flow of p packets survives 1:N packet sampling when at least one of its packets is
    sampled: probability 1-(1-1/N)^p. Each direction's sampled packets are drawn
    (binomial), and packets and bytes are scaled back by N as collectors do; bytes follow
    the flow's mean packet size; first and last packet times stay those of the flow.
    Deterministic for (seed, day, rate, line): each line draws from its own stream, so the
    views of a shard of the lines (`shard_membership`) are exactly those lines' rows of the
    views of every line.

    A flow its exporter sampled already (`sampling_rate` S > 1 in the clean flows: a collector
    flow whose counts are the sampled packets) is in the views at rates N >= S only: each of its
    packets is kept with probability S/N and stands for N. The views are made at every rate in
    `rates` and at every rate an exporter stated, so a stated rate needs no setting.
    """
    if not rates:
        raise LinesInputError("no sampling rate: give at least one (1 for unsampled)")
    on_lines = _on_lines(clean, membership)
    base = pd.DataFrame({
        "line_id": on_lines["line_id"].astype(str), "flow_start": on_lines["flow_start"],
        "flow_end": on_lines["flow_end"], "remote_ip": on_lines["remote_ip"].astype(str),
        "remote_port": on_lines["remote_port"].astype(np.int64), "protocol": on_lines["protocol"].astype(np.int64),
        "bytes_out": on_lines["bytes_out"].astype(np.int64), "bytes_in": on_lines["bytes_in"].astype(np.int64),
        "packets_out": on_lines["packets_out"].astype(np.int64), "packets_in": on_lines["packets_in"].astype(np.int64),
    })
    # A fixed order whatever order the day's flows came in, so that the sampling draws are reproducible.
    # The strings sort as their ranks among the distinct values (the same order, compared as integers).
    keys = base[["line_id", "flow_start", "flow_end", "remote_ip", "remote_port", "protocol",
                 "packets_out", "packets_in", "bytes_out", "bytes_in"]].copy()
    for column in ("line_id", "remote_ip"):
        keys[column] = pd.factorize(keys[column], sort=True)[0]
    base["stated_rate"] = (on_lines["sampling_rate"].fillna(1).astype(np.int64).to_numpy()
                           if "sampling_rate" in on_lines else np.ones(len(on_lines), np.int64))
    keys["stated_rate"] = base["stated_rate"]
    base = base.take(np.lexsort([keys[c].astype(np.int64).to_numpy() for c in reversed(keys.columns)])).reset_index(drop=True)
    stated = base["stated_rate"].to_numpy()
    rates = tuple(sorted(set(rates) | set(np.unique(stated[stated > 1]).tolist())))
    frames = []
    day_number = date.fromisoformat(day).toordinal()
    ids = base["line_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.empty(0, np.int64)
    blocks = [(line_key(ids[a]), a, b) for a, b in zip(starts, [*starts[1:], len(ids)])]  # one per line
    for rate in rates:
        view = base.copy()
        if rate > 1:
            sampled_out, sampled_in = (np.empty(len(view), np.int64) for _ in range(2))
            packets_out, packets_in = view["packets_out"].to_numpy(), view["packets_in"].to_numpy()
            # The share of the packets in the flow this view keeps: 1/N of every packet, S/N of the packets an
            # exporter sampled 1:S already, none of a flow sampled more coarsely than the view.
            keep = 1.0 / rate if (stated == 1).all() else np.where(stated <= rate, stated / rate, 0.0)
            for key, a, b in blocks:
                rng = np.random.default_rng([seed, rate, day_number, key])
                share = keep if np.isscalar(keep) else keep[a:b]
                sampled_out[a:b] = rng.binomial(packets_out[a:b], share)
                sampled_in[a:b] = rng.binomial(packets_in[a:b], share)
            for direction, sampled in (("out", sampled_out), ("in", sampled_in)):
                packets = view[f"packets_{direction}"].to_numpy()
                mean_size = np.where(packets > 0, view[f"bytes_{direction}"].to_numpy() / np.maximum(packets, 1), 0.0)
                view[f"bytes_{direction}"] = np.round(mean_size * sampled * rate).astype(np.int64)
                view[f"packets_{direction}"] = (sampled * rate).astype(np.int64)
            view = view[(sampled_out + sampled_in) > 0]
        else:
            view = view[stated <= rate]
        frames.append(view.assign(sampling_rate=rate))
    return pd.concat(frames, ignore_index=True)[VIEW_COLUMNS]


TRUTH_COLUMNS = ["line_id", "device_mac", "model", "manufacturer", "day", "flows", "internet_flows",
                 "first_internet_flow"]


def line_truth(clean: pd.DataFrame, membership: pd.DataFrame, day: str) -> pd.DataFrame:
    """Ground truth of the day: per line and device, its flows and its first Internet-bound flow.

    Only a simulation knows this; it is what the metrics judge the inventory against.
    A device with flows but no Internet-bound flow that day is on the line but invisible at the edge.
    """
    joined = clean[["device_mac", "device_name", "flow_start", "remote_scope"]].merge(
        membership[["device_mac", "line_id", "since"]], on="device_mac", how="inner")
    joined = joined[joined["since"].isna() | (joined["flow_start"] >= joined["since"])]
    if joined.empty:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
            ("line_id", object), ("device_mac", object), ("model", object), ("manufacturer", object), ("day", object),
            ("flows", np.int64), ("internet_flows", np.int64), ("first_internet_flow", UtcMs))})
    internet = joined["remote_scope"] == "internet"
    joined = joined.assign(internet=internet.astype(np.int64),
                           internet_start=joined["flow_start"].where(internet))
    truth = joined.groupby(["line_id", "device_mac"], as_index=False).agg(
        model=("device_name", "first"), flows=("flow_start", "size"), internet_flows=("internet", "sum"),
        first_internet_flow=("internet_start", "min"))
    truth["manufacturer"] = truth["model"].map(lambda m: manufacturer_of(m) if isinstance(m, str) else None)
    truth["day"] = day
    truth["first_internet_flow"] = pd.to_datetime(truth["first_internet_flow"], utc=True).astype(UtcMs)
    return truth[TRUTH_COLUMNS]
