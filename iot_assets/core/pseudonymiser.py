"""The one mapping from real MACs and addresses to what the outputs hold, for a deployment.

Built once at load from the settings (`Pseudonymiser.from_settings`) and handed to everything
that knows a MAC or an address: the edge (decoded flows, `core/ingest.py`), the catalogue and
the home network (`catalogue`), ground-truth episodes, acknowledgements and line membership.
Turned off, it maps every value to itself, so the callers never ask whether it is on.
The cryptography is `iot_assets.core.pseudonymise` (its docstring gives the decisions).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from iot_assets.contracts import catalogue
from iot_assets.contracts.catalogue import Device
from iot_assets.core.pseudonymise import (
    DEFAULT_NETWORKS,
    PseudonymiseError,
    PseudonymKeys,
    SubscriberNetworks,
    load_keys,
    period_of,
    pseudonymise_flows,
    pseudonymise_ip,
    pseudonymise_mac,
    reveal,
)


@dataclass(frozen=True)
class HomeCatalogue:
    """The catalogue and the testbed's home network as the flows of a period name them."""

    by_mac: dict[str, Device]
    gateway_macs: frozenset[str]
    gateway_ips: frozenset[str]
    lan_prefixes: tuple[str, ...]  # e.g. "192.168.1." (a pseudonymised /24 stays a /24)


CLEAR_CATALOGUE = HomeCatalogue(dict(catalogue.BY_MAC), frozenset({catalogue.GATEWAY_MAC}),
                                frozenset({catalogue.GATEWAY_IP}), (catalogue.LAN_PREFIX,))


def _as_date(day: date | datetime | str) -> date:
    if isinstance(day, str):
        return date.fromisoformat(day[:10])
    return day


class Pseudonymiser:
    """Real MACs and addresses to their pseudonyms under the deployment's keys (identity when off)."""

    def __init__(self, keys: PseudonymKeys | None, first_day: date, last_day: date,
                 networks: SubscriberNetworks = DEFAULT_NETWORKS, pseudonymise_remote: bool = False,
                 rotation: str = "year", audit_log: Path | None = None):
        self.keys = keys
        self.first_day, self.last_day = first_day, last_day
        self.networks = networks
        self.pseudonymise_remote = pseudonymise_remote
        self.rotation = rotation
        self.audit_log = audit_log
        self._catalogues: dict[str | None, HomeCatalogue] = {}

    def __repr__(self) -> str:
        return f"Pseudonymiser({'off' if self.keys is None else f'rotation={self.rotation}, <keys hidden>'})"

    @classmethod
    def off(cls, first_day: date = date(2019, 1, 1), last_day: date = date(2019, 12, 31)) -> Pseudonymiser:
        """The identity: every value stays as it is."""
        return cls(None, first_day, last_day)

    @classmethod
    def from_settings(cls, settings) -> Pseudonymiser:
        """The deployment's pseudonymiser (a `config.Settings`); loads the key, creating the default
        key file on first use and saying where on stderr. A key problem is a SettingsError."""
        from iot_assets.config import SettingsError

        if not settings.pseudonymise:
            return cls.off(settings.first_day, settings.last_day)
        key_file = Path(settings.pseudonymise_key_file) if settings.pseudonymise_key_file else None
        default = Path(settings.pseudonymise_default_key_file)
        try:
            keys, source = load_keys(key_file, settings.pseudonymise_key or None, settings.data_dir, default)
            networks = SubscriberNetworks.parse(settings.pseudonymise_networks.split(",")) \
                if settings.pseudonymise_networks else DEFAULT_NETWORKS
        except PseudonymiseError as exc:
            raise SettingsError(str(exc)) from None
        if "none configured, created" in source:  # the first use: say once where the new key is
            print(f"iot-assets: {source}", file=sys.stderr)
        return cls(keys, settings.first_day, settings.last_day, networks, settings.pseudonymise_remote,
                   settings.pseudonymise_rotation, Path(settings.reveal_audit_log))

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    @property
    def fingerprint(self) -> str:
        """16 hex digits that change with the key, the rotation, the networks or the remote setting ("" when off)."""
        if self.keys is None:
            return ""
        setup = "|".join([self.keys.fingerprint(), self.rotation, str(self.pseudonymise_remote),
                          *(n.text for n in self.networks.networks)])
        return hashlib.sha256(setup.encode()).hexdigest()[:16]

    # ------------------------------------------------------------ single values

    def period(self, day: date | datetime | str) -> str:
        """The key period of a day (`YYYY` or `YYYY-MM`)."""
        return period_of(_as_date(day), self.rotation)

    def periods(self) -> list[str]:
        """The key periods of the configured days, oldest first."""
        months, day = [], self.first_day.replace(day=1)
        while day <= self.last_day:
            months.append(day)
            day = day.replace(year=day.year + day.month // 12, month=day.month % 12 + 1)
        return list(dict.fromkeys(period_of(m, self.rotation) for m in months))

    def mac_in_period(self, mac: str, period: str) -> str:
        return mac if self.keys is None else pseudonymise_mac(mac, self.keys, period)

    def ip_in_period(self, ip: str, period: str) -> str:
        if self.keys is None:
            return ip
        return pseudonymise_ip(ip, self.keys, period, self.networks, self.pseudonymise_remote)

    def mac(self, mac: str, day: date | datetime | str) -> str:
        """The MAC as the flows of `day` name it."""
        return self.mac_in_period(mac, self.period(day))

    def ip(self, ip: str, day: date | datetime | str) -> str:
        """The address as the flows of `day` name it (a remote peer stays in clear unless configured)."""
        return self.ip_in_period(ip, self.period(day))

    def macs_over_periods(self, mac: str) -> list[str]:
        """The MAC's names in every period of the configured days (one name when off)."""
        return [mac] if self.keys is None else [self.mac_in_period(mac, p) for p in self.periods()]

    # ------------------------------------------------------------ tables

    def flows(self, table: pa.Table) -> pa.Table:
        """Decoded flows (pyarrow) with their MACs and subscriber addresses pseudonymised."""
        if self.keys is None:
            return table
        return pseudonymise_flows(table, self.keys, self.networks, self.pseudonymise_remote, self.rotation)

    def catalogue(self, day: date | datetime | str | None = None) -> HomeCatalogue:
        """The catalogue and home network as named on `day`; with no day, under every period's name."""
        if self.keys is None:
            return CLEAR_CATALOGUE
        periods = self.periods() if day is None else [self.period(day)]
        key = None if day is None else periods[0]
        if key not in self._catalogues:
            lan = catalogue.LAN_PREFIX + "0"
            self._catalogues[key] = HomeCatalogue(
                {self.mac_in_period(d.mac, p): d for p in periods for d in catalogue.DEVICES},
                frozenset(self.mac_in_period(catalogue.GATEWAY_MAC, p) for p in periods),
                frozenset(self.ip_in_period(catalogue.GATEWAY_IP, p) for p in periods),
                tuple(sorted({self.ip_in_period(lan, p).rsplit(".", 1)[0] + "." for p in periods})),
            )
        return self._catalogues[key]

    def catalogue_by_mac(self, day: date | datetime | str | None = None) -> dict[str, Device]:
        """The catalogue devices by their MAC as named on `day` (every period's names when no day)."""
        return self.catalogue(day).by_mac

    def episodes(self, episodes: pd.DataFrame | None) -> pd.DataFrame | None:
        """Ground-truth episodes whose device is a MAC get its name in the period the episode starts."""
        if episodes is None or self.keys is None or not len(episodes):
            return episodes
        out = episodes.copy()
        out["device"] = [self._mac_or_name(device, start) for device, start in zip(out["device"], out["start"])]
        return out

    def _mac_or_name(self, device, start) -> str:
        try:
            return self.mac(str(device), start)
        except PseudonymiseError:  # a catalogue name, not a MAC
            return device

    def acknowledgements(self, table: pd.DataFrame | None, source: str) -> pd.DataFrame | None:
        """Acknowledged changes (device_mac, from_day) with each MAC named as on its from_day."""
        if table is None or self.keys is None:
            return table
        out = table.copy()
        macs = []
        for row, (mac, day) in enumerate(zip(out["device_mac"], out["from_day"]), start=2):
            try:
                macs.append(self.mac(str(mac), str(day)))
            except (PseudonymiseError, ValueError) as exc:
                raise PseudonymiseError(f"{source} line {row}: {exc}") from None
        out["device_mac"] = macs
        return out

    def membership(self, membership: pd.DataFrame) -> pd.DataFrame:
        """Line membership (line_id, device_mac, since) with one row per period name of each MAC."""
        if self.keys is None:
            return membership
        rows = [{**record, "device_mac": name} for record in membership.to_dict("records")
                for name in self.macs_over_periods(record["device_mac"])]
        return pd.DataFrame(rows, columns=membership.columns).astype(membership.dtypes.to_dict())

    # ------------------------------------------------------------ re-identification

    def reveal(self, pseudonym: str, period: str, operator: str, reason: str,
               candidate_macs: Iterable[str] = ()) -> str:
        """The real value behind `pseudonym` in `period`, after the audit line is written."""
        if self.keys is None:
            raise PseudonymiseError("pseudonymisation is off (IOT_ASSETS_PSEUDONYMISE=off): nothing to reveal")
        return reveal(pseudonym, self.keys, period, self.audit_log, operator, reason, candidate_macs,
                      self.networks, self.pseudonymise_remote)
