"""Open set: is a MAC's day any device model we know, or one never trained on?

Each known model has a profile per period of its training (centre and spread of every
feature over its training windows of that period); a MAC's day is `unknown` when even the
nearest profile is too far, the threshold being calibrated on held-out days of known
devices. Part of the device classifier's model (`classifier.DeviceClassifier.novelty`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from iot_assets.core import anomaly
from iot_assets.core.device_inventory import pooled_days
from iot_assets.core.splits import window_days

NOVELTY_CAP = 3.0  # a feature counts at most three spreads: one wild feature does not make a device unknown
CALIBRATION_FRACTION = 0.3  # the last 30% of the training days calibrate the novelty threshold
MIN_MODEL_WINDOWS = 24  # a model's profile needs at least a day of windows
HELD_OUT_QUANTILE = 0.1
DISTANCE_CHUNK_VALUES = 4_000_000  # floats of (rows, profiles, features) computed at once: 32 MB
PROFILE_DAYS: int | None = 28  # one novelty profile per four weeks of training, counted back from its last day


@dataclass
class NoveltyModel:
    """How far a MAC's day is from each known model's usual behaviour, in that model's own spreads.

    A MAC's day is summarised by the median of each feature over its windows of the day
    (robust to an odd hour). Its distance to a profile is the mean over features of
    min(|day - centre| / spread, NOVELTY_CAP), with centre and spread (10th-90th percentile
    range, floored) over the model's training windows of one period; its distance to model
    k is the smallest over k's profiles (`profile_labels` names the model of each row). A
    day is `unknown` when even the nearest model is further than `threshold`, which is
    chosen on held-out days of KNOWN devices (see `calibrate_threshold`).
    """

    labels: list[str]
    features: list[str]
    center: np.ndarray  # (profiles, features)
    spread: np.ndarray  # (profiles, features)
    threshold: float
    calibration: dict = field(default_factory=dict)
    profile_labels: list[str] | None = None  # the model of each profile row; None: one row per label, in order

    def __post_init__(self) -> None:
        if self.profile_labels is None:
            self.profile_labels = list(self.labels)

    def day_profiles(self, windows: pd.DataFrame, pool_days: int, days: list[str] | None = None) -> pd.DataFrame:
        """Median of each feature over each MAC's windows of each day, pooled with the days
        before it (`pooled_days`), indexed by (device_key, day)."""
        rows, keys = pooled_days(windows, pool_days, days)
        x = pd.DataFrame(windows[self.features].to_numpy(dtype=float)[rows], columns=self.features)
        return x.groupby(keys).median()

    def distances(self, profiles: pd.DataFrame) -> pd.DataFrame:
        """Distance of each profile (row) to each known model (column).

        What most MACs of a day moved the same way, each against its nearest model, is the
        network's and left out (`anomaly.network_moves`): on 2019-09-16 and 09-17 the real
        Xiaomi light and au camera both sent several times their usual DNS, and both were
        called unknown.
        """
        x = profiles[self.features].to_numpy(dtype=float)
        distance = np.empty((len(x), len(self.center)))
        nearest = np.empty_like(x)
        # (rows, profiles, features) at once would be rows x 100 x 214 floats with four periods
        # of 25 models: rows go in chunks of about 32 MB.
        step = max(1, DISTANCE_CHUNK_VALUES // max(1, self.center.size))
        for start in range(0, len(x), step):
            z = _signed_spreads(x[start:start + step], self.center, self.spread)
            distance[start:start + step] = _distance_of(z)
            if len(self.center):
                nearest[start:start + step] = z[np.arange(len(z)), distance[start:start + step].argmin(axis=1)]
        if len(x) and len(self.labels):
            network = anomaly.network_moves(nearest, profiles.index.get_level_values("day").to_numpy())
            moved_rows = np.flatnonzero(network.any(axis=1))
            for start in range(0, len(moved_rows), step):
                rows = moved_rows[start:start + step]
                z = _signed_spreads(x[rows], self.center, self.spread)
                distance[rows] = _distance_of(np.where(network[rows][:, None, :], 0.0, z))
        return pd.DataFrame(_nearest_per_label(distance, self.profile_labels, self.labels),
                            index=profiles.index, columns=self.labels)

    def without(self, label: str) -> "NoveltyModel":
        """The model as if `label` had never been trained: its profiles dropped, the threshold
        recalibrated without it. Each model's profile is fitted on its own windows only, so
        this equals a refit without that device."""
        keep = [i for i, name in enumerate(self.profile_labels) if name != label]
        threshold, figures = calibrate_threshold(self.calibration.get("distances"), exclude=label)
        return NoveltyModel([name for name in self.labels if name != label], self.features, self.center[keep],
                            self.spread[keep], threshold, {**self.calibration, **figures},
                            [self.profile_labels[i] for i in keep])

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        figures = {k: v for k, v in self.calibration.items() if k != "distances"}
        meta = {"labels": self.labels, "features": self.features, "threshold": self.threshold,
                "cap": NOVELTY_CAP, "calibration": figures, "profile_labels": self.profile_labels}
        return meta, {"center": self.center, "spread": self.spread}

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "NoveltyModel":
        # Versions saved before per-period profiles have one row per label and no profile_labels.
        profile_labels = meta.get("profile_labels", meta["labels"])
        unknown = sorted(set(profile_labels) - set(meta["labels"]))
        if unknown:
            raise ValueError(f"device classifier: novelty profile_labels name models not in labels: {unknown}")
        shape = (len(profile_labels), len(meta["features"]))
        for name in ("center", "spread"):
            if arrays[name].shape != shape:
                raise ValueError(f"device classifier: novelty array {name!r} has shape {arrays[name].shape}, "
                                 f"expected {shape} (profiles x features)")
        return cls(meta["labels"], meta["features"], arrays["center"], arrays["spread"], float(meta["threshold"]),
                   meta.get("calibration", {}), list(profile_labels))


def _signed_spreads(x: np.ndarray, center: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(profiles, models, features): how far each profile is from each model, in its spreads."""
    return (x[:, None, :] - center[None, :, :]) / spread[None, :, :]


def _distance_of(z: np.ndarray) -> np.ndarray:
    return np.minimum(np.abs(z), NOVELTY_CAP).mean(axis=2)


def _distances(x: np.ndarray, center: np.ndarray, spread: np.ndarray) -> np.ndarray:
    return _distance_of(_signed_spreads(x, center, spread))


def _nearest_per_label(distance: np.ndarray, profile_labels: list[str], labels: list[str]) -> np.ndarray:
    """(rows, labels): per label, the smallest distance over its profiles (columns of `distance`)."""
    owner = np.asarray(profile_labels, dtype=object)
    out = np.full((distance.shape[0], len(labels)), np.inf)
    for j, label in enumerate(labels):
        mine = owner == label
        if mine.any():
            out[:, j] = distance[:, mine].min(axis=1)
    return out


def profile_periods(days: list[str], profile_days: int | None) -> list[list[str]]:
    """The training days cut into periods of `profile_days`, counted back from the last day (one period when None)."""
    if profile_days is None or len(days) <= profile_days:
        return [list(days)] if days else []
    return [days[max(0, end - profile_days):end] for end in range(len(days), 0, -profile_days)][::-1]


def _profile_stats(windows: pd.DataFrame, labels_column: str, features: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    labels, centers, spreads = [], [], []
    for label, part in windows.groupby(labels_column):
        if len(part) < MIN_MODEL_WINDOWS:
            continue
        x = part[features].to_numpy(dtype=float)
        center = np.median(x, axis=0)
        spread = np.quantile(x, 0.9, axis=0) - np.quantile(x, 0.1, axis=0)
        # A feature that never varied for this model still has a scale: 5% of its value, at
        # least 0.02 (two points of a share, a few percent of a log count).
        labels.append(label)
        centers.append(center)
        spreads.append(np.maximum(spread, np.maximum(np.abs(center) * 0.05, 0.02)))
    return labels, np.array(centers).reshape(len(labels), len(features)), np.array(spreads).reshape(len(labels), len(features))


def calibrate_threshold(distances: pd.DataFrame | None, exclude: str | None = None) -> tuple[float, dict]:
    """The novelty threshold from calibration days of known devices.

    `distances` has one row per calibration device-day (index level `label`: the device's
    true model) and one column per model fitted on the earlier training days. Two figures
    come from it: how far known devices' days are from their OWN model (all must pass: the
    largest), and how far they are from the nearest OTHER model, as if they were unknown
    (held-out known devices: the 10th percentile). The threshold sits between the two
    (geometric mean) when they separate, else at the largest own distance, so that known
    devices stay named.
    """
    if distances is None or distances.empty:
        return float("inf"), {"threshold_rule": "not calibrated: too few training days or devices"}
    if exclude is not None:
        distances = distances.drop(columns=[exclude], errors="ignore")
        distances = distances[distances.index.get_level_values("label") != exclude]
    own, other = [], []
    for (label, *_), row in distances.iterrows():
        if label not in row.index:
            continue
        own.append(row[label])
        rest = row.drop(label)
        if len(rest):
            other.append(rest.min())
    if not own:
        return float("inf"), {"threshold_rule": "not calibrated: no calibration day of a modelled device"}
    own_max = float(np.max(own))
    other_low = float(np.quantile(other, HELD_OUT_QUANTILE)) if other else float("inf")
    separated = other_low > own_max and np.isfinite(other_low)
    threshold = float(np.sqrt(own_max * other_low)) if separated else own_max
    return threshold, {
        "threshold_rule": "geometric mean of the largest own distance and the 10th percentile of the nearest-other "
                          "distance on calibration days" if separated else
                          "largest own distance on calibration days (known and held-out distances overlap)",
        "calibration_device_days": len(own),
        "own_distance_max": own_max,
        "own_distance_median": float(np.median(own)),
        "held_out_distance_q10": other_low if other else None,
    }


def fit_novelty(train: pd.DataFrame, labels_column: str, features: list[str],
                calibration_fraction: float = CALIBRATION_FRACTION,
                profile_days: int | None = PROFILE_DAYS) -> NoveltyModel:
    """Profiles of every model, one per period of its training; the threshold from the later training days.

    A model gets one profile per `profile_days` of training (`profile_periods`; one over all
    days when None), and a day is as far from the model as from its nearest profile. One
    profile over every training day is too wide: a device whose behaviour changed for good
    (the real Nature Remo stopped its HTTPS cloud flows in August 2019) gets a profile
    spanning both states, wide enough to take in other quiet devices. A profile of the last
    weeks alone is too narrow: it calls the device's own earlier training days `unknown` (the
    Remo's 45 days before 2019-08-09, in clear and pseudonymised alike). Within the last
    period the earlier days fit provisional profiles and the last `calibration_fraction` are
    scored against them, which is what later days look like to a model: those distances set
    the threshold (`calibrate_threshold`).
    """
    periods = profile_periods(sorted(window_days(train).unique()), profile_days)
    everything = train
    days = periods[-1] if periods else []
    train = train[window_days(train).isin(days)]
    distances = None
    if len(days) >= 2:
        cut = min(max(1, round(len(days) * (1 - calibration_fraction))), len(days) - 1)
        early = window_days(train).isin(days[:cut])
        labels, center, spread = _profile_stats(train[early], labels_column, features)
        calibration = train[~early & train[labels_column].isin(labels)]
        if labels and len(calibration):
            profiles = calibration.groupby([calibration[labels_column].rename("label"),
                                            window_days(calibration).rename("day"), calibration["device_key"]])[features].median()
            distances = pd.DataFrame(_distances(profiles.to_numpy(dtype=float), center, spread),
                                     index=profiles.index, columns=labels)
    threshold, figures = calibrate_threshold(distances)
    profile_labels, centers, spreads = [], [], []
    for period in periods:
        labels, center, spread = _profile_stats(everything[window_days(everything).isin(period)], labels_column,
                                                features)
        profile_labels += labels
        centers.append(center)
        spreads.append(spread)
    labels = sorted(set(profile_labels))
    shape = (0, len(features))
    return NoveltyModel(labels, list(features), np.vstack(centers) if centers else np.empty(shape),
                        np.vstack(spreads) if spreads else np.empty(shape), threshold,
                        {**figures, "distances": distances, "profile_periods": [[p[0], p[-1]] for p in periods]},
                        profile_labels)


# ---------------------------------------------------------------- endpoint evidence (Haystack-style)

# DNS, NTP and DNS over TLS go to public resolvers and pools, never a product's own backend.
ENDPOINT_IGNORED_PORTS = (53, 123, 853)
# Pooled Internet flows (INVENTORY_DAYS of a MAC) below which endpoints say nothing: the
# window features alone decide.
MIN_ENDPOINT_FLOWS = 20
# Known devices' calibration days must all pass: the threshold is at most this share of
# the lowest coverage a known device had of its own model's services.
ENDPOINT_OWN_MARGIN = 0.5
ENDPOINT_FLOW_COLUMNS = ["device_key", "device_name", "flow_start", "remote_ip", "remote_port", "device_port",
                         "remote_scope", "protocol"]


class EndpointInputError(ValueError):
    """Flows handed to the endpoint evidence lack a column it needs."""


SERVICE_COLUMNS = ["device_key", "device_name", "day", "window_start", "service", "flows"]


def service_flows(flows: pd.DataFrame, window_minutes: int = 60) -> pd.DataFrame:
    """Internet flows per MAC, window and backend service: remote /24 (IPv6 /48), server port, protocol.

    Returns SERVICE_COLUMNS (`window_start`: the flow's start floored to `window_minutes`, as
    `features.build_windows` keys windows, so that the windows of attack episodes can be
    left out). Infrastructure ports (ENDPOINT_IGNORED_PORTS) are left out. The remote
    address is read as it is: Internet peers stay in clear under the default
    pseudonymisation (docs/pseudonymisation.md); peers inside the subscriber networks (the
    real au camera's P2P peers in 100.64/10) and, with IOT_ASSETS_PSEUDONYMISE_REMOTE on,
    every peer are Crypto-PAn pseudonyms, which keep one /24 one /24: within a key period the
    services are renamed one to one and every coverage share is the same as in clear.
    """
    missing = set(ENDPOINT_FLOW_COLUMNS) - set(flows.columns)
    if missing:
        raise EndpointInputError(f"endpoint evidence: flows lack column(s) {', '.join(sorted(missing))}")
    from iot_assets.core.subscriber_lines.signatures import day_strings, remote_prefix
    internet = flows[flows["remote_scope"] == "internet"]
    server_port = np.minimum(internet["remote_port"].to_numpy(), internet["device_port"].to_numpy()).astype(np.int64)
    internet = internet[~np.isin(server_port, ENDPOINT_IGNORED_PORTS)]
    server_port = server_port[~np.isin(server_port, ENDPOINT_IGNORED_PORTS)]
    keyed = pd.DataFrame({
        "device_key": internet["device_key"].to_numpy(),
        "device_name": internet["device_name"].astype(object).to_numpy(),
        "day": day_strings(internet["flow_start"]),
        "window_start": internet["flow_start"].dt.floor(f"{window_minutes}min").to_numpy(),
        "service": (remote_prefix(internet["remote_ip"]).to_numpy().astype(object) + ":" + server_port.astype(str)
                    + "/" + internet["protocol"].astype(np.int64).astype(str).to_numpy()),
    }).dropna(subset=["service", "day"])
    return keyed.groupby(SERVICE_COLUMNS[:-1], dropna=False, as_index=False).size() \
        .rename(columns={"size": "flows"})[SERVICE_COLUMNS]


def services_outside_attacks(services: pd.DataFrame, windows: pd.DataFrame, attacked: pd.Series | None) -> pd.DataFrame:
    """The `service_flows` rows outside the `attacked` windows of their MAC (a scan's thousands of
    peers are not the product's backend); rows and windows are matched on (device_key, window_start)."""
    if attacked is None or not attacked.any() or services.empty:
        return services
    bad = pd.MultiIndex.from_frame(windows.loc[attacked.to_numpy(), ["device_key", "window_start"]])
    keys = pd.MultiIndex.from_arrays([services["device_key"], services["window_start"]])
    return services[~keys.isin(bad)]


def endpoint_coverage(services: pd.DataFrame, known: dict[str, set[str]], pool_days: int,
                      days: list[str] | None = None) -> pd.DataFrame:
    """Per MAC and day (pooled with the `pool_days - 1` days before it): the share of its
    Internet flows that went to services each known model used in training.

    `services` is `service_flows(...)`; `known` maps a model to its services. Indexed by
    (device_key, day); one column per model plus `endpoint_flows` (the pooled flow count).
    Verdicts are made for the (MAC, day) pairs with flows, and only for `days` when given.
    """
    models = sorted(known)
    if services.empty:
        return pd.DataFrame(columns=models + ["endpoint_flows"],
                            index=pd.MultiIndex.from_arrays([[], []], names=["device_key", "day"]))
    day = pd.to_datetime(services["day"])
    present = services[["device_key", "day"]].drop_duplicates()
    if days is not None:
        present = present[present["day"].isin(days)]
    pooled = []
    for back in range(pool_days):
        pooled.append(services.assign(day=(day + pd.Timedelta(days=back)).dt.strftime("%Y-%m-%d")))
    pooled = pd.concat(pooled, ignore_index=True).merge(present, on=["device_key", "day"])
    totals = pooled.groupby(["device_key", "day"])["flows"].sum()
    membership = pd.DataFrame([(service, model) for model in models for service in known[model]],
                              columns=["service", "model"])
    covered = pooled.merge(membership, on="service").groupby(["device_key", "day", "model"])["flows"].sum() \
        .unstack("model").reindex(index=totals.index, columns=models).fillna(0.0)
    out = covered.div(totals, axis=0)
    out["endpoint_flows"] = totals
    return out


def calibrate_endpoints(coverage: pd.DataFrame | None, truth: pd.Series | None,
                        exclude: str | None = None) -> tuple[float, dict]:
    """The coverage under which a MAC's days are `unknown`, from calibration days of known devices.

    `coverage` is `endpoint_coverage` of the later training days against the services of the
    earlier ones, `truth` the model of each of its rows. Own: each known device's coverage
    by its own model (all must pass: ENDPOINT_OWN_MARGIN of the lowest); other: its best
    coverage by any other model, as if it were unknown (the 90th percentile). The threshold
    sits halfway between when they separate, else at the margin under the lowest own.
    """
    if coverage is None or truth is None or coverage.empty:
        return 0.0, {"endpoint_rule": "not calibrated: too few training days or flows"}
    models = [c for c in coverage.columns if c not in ("endpoint_flows", exclude)]
    keep = (coverage["endpoint_flows"] >= MIN_ENDPOINT_FLOWS).to_numpy() & truth.isin(models).to_numpy()
    coverage, truth = coverage[keep], truth[keep]
    if coverage.empty:
        return 0.0, {"endpoint_rule": "not calibrated: no calibration day with enough Internet flows"}
    values = coverage[models].to_numpy(dtype=float)
    column = np.array([models.index(t) for t in truth])
    own = values[np.arange(len(values)), column]
    others = values.copy()
    others[np.arange(len(values)), column] = -np.inf
    other = others.max(axis=1) if len(models) > 1 else np.zeros(len(values))
    own_low = float(own.min())
    other_high = float(np.quantile(other, 1 - HELD_OUT_QUANTILE))
    ceiling = ENDPOINT_OWN_MARGIN * own_low
    threshold = min((own_low + other_high) / 2, ceiling) if other_high < own_low else min(other_high, ceiling)
    return float(threshold), {
        "endpoint_rule": "halfway between the lowest own coverage and the 90th percentile of the best other "
                         f"coverage on calibration days, at most {ENDPOINT_OWN_MARGIN} of the lowest own",
        "endpoint_calibration_days": int(len(own)), "endpoint_own_low": own_low, "endpoint_other_q90": other_high,
    }


@dataclass
class EndpointModel:
    """Which backend services each known model talks to, and the coverage a known device keeps.

    A MAC's days are `unknown` when, over its pooled days, fewer than `threshold` of its
    Internet flows went to services the model the classifier named used in training
    (Haystack, IMC'20: devices are told apart by the backends they talk to). An unseen
    device that moves like a known model still talks to its own vendor's cloud.
    """

    services: dict[str, set[str]]
    threshold: float
    calibration: dict = field(default_factory=dict)

    def coverage(self, services: pd.DataFrame, pool_days: int, days: list[str] | None = None) -> pd.DataFrame:
        """`endpoint_coverage` of `service_flows` rows (the `device_services` asset) against this model's services."""
        return endpoint_coverage(services, self.services, pool_days, days)

    def unknown(self, coverage: pd.DataFrame, named: np.ndarray) -> np.ndarray:
        """Per row of `coverage`: too little of its traffic went to the named model's services."""
        if coverage.empty or not self.threshold:
            return np.zeros(len(coverage), dtype=bool)
        columns = {model: i for i, model in enumerate(coverage.columns)}
        values = coverage.to_numpy(dtype=float)
        own = np.array([values[i, columns[m]] if m in columns else np.nan for i, m in enumerate(named)])
        return (coverage["endpoint_flows"].fillna(0).to_numpy() >= MIN_ENDPOINT_FLOWS) & (own < self.threshold)

    def without(self, label: str) -> "EndpointModel":
        """As if `label` had never been trained: its services dropped, the threshold recalibrated."""
        coverage, truth = self.calibration.get("coverage"), self.calibration.get("truth")
        threshold, figures = calibrate_endpoints(coverage, truth, exclude=label)
        return EndpointModel({m: s for m, s in self.services.items() if m != label}, threshold,
                             {**self.calibration, **figures})

    def to_json(self) -> dict:
        figures = {k: v for k, v in self.calibration.items() if k not in ("coverage", "truth")}
        return {"threshold": self.threshold, "calibration": figures,
                "services": {model: sorted(keys) for model, keys in sorted(self.services.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "EndpointModel":
        return cls({model: set(keys) for model, keys in data["services"].items()}, float(data["threshold"]),
                   data.get("calibration", {}))


def fit_endpoints(train_services: pd.DataFrame, pool_days: int,
                  calibration_fraction: float = CALIBRATION_FRACTION) -> EndpointModel:
    """Each model's services over its training days (`service_flows` rows); the threshold from
    the later training days scored against the services of the earlier ones (`calibrate_endpoints`)."""
    services = train_services[train_services["device_name"].notna()]
    days = sorted(services["day"].unique())
    coverage = truth = None
    if len(days) >= 2:
        cut = min(max(1, round(len(days) * (1 - calibration_fraction))), len(days) - 1)
        early = services[services["day"].isin(days[:cut])]
        later = services[services["day"].isin(days[cut:])]
        known = {m: set(part["service"]) for m, part in early.groupby("device_name")}
        if known and len(later):
            coverage = endpoint_coverage(later, known, pool_days)
            names = later.groupby("device_key")["device_name"].first()
            truth = pd.Series(names.reindex(coverage.index.get_level_values("device_key")).to_numpy(), index=coverage.index)
    threshold, figures = calibrate_endpoints(coverage, truth)
    known = {m: set(part["service"]) for m, part in services.groupby("device_name")}
    return EndpointModel(known, threshold, {**figures, "coverage": coverage, "truth": truth})
