"""Configuration: read from the environment once, here, and nowhere else.

`definitions.py` turns these values into Dagster resources; `partitions.py` into the daily
partitions. Nothing else reads `IOT_ASSETS_*`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from iot_assets.contracts.calendar import DATASET_FIRST_DAY, DATASET_LAST_DAY


class SettingsError(ValueError):
    pass


def _parse_day(env, name: str, default: date) -> date:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a date of the form YYYY-MM-DD") from None


def _parse_number(env, name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw} is outside {low}..{high}")
    return value


def _parse_whole_number(env, name: str, default: int, low: int, high: int) -> int:
    value = _parse_number(env, name, default, low, high)
    if value != int(value):
        raise SettingsError(f"{name}={env.get(name, '').strip()} is not a whole number")
    return int(value)
def _on_off(env, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off"):
        raise SettingsError(f"{name}={raw!r} is neither on nor off")
    return raw == "on"


def _config_home(env) -> Path:
    """$XDG_CONFIG_HOME (from `env`, else the process environment), else ~/.config: where keys live by default."""
    raw = env.get("XDG_CONFIG_HOME", "").strip() or os.environ.get("XDG_CONFIG_HOME", "").strip()
    return Path(raw) if raw else Path.home() / ".config"


def _pseudonymise_settings(env) -> dict:
    """The IOT_ASSETS_PSEUDONYMISE_* settings checked (the key itself is read at load, not here)."""
    from iot_assets.core.pseudonymise import ROTATIONS, PseudonymiseError, SubscriberNetworks

    key_file = env.get("IOT_ASSETS_PSEUDONYMISE_KEY_FILE", "").strip()
    key = env.get("IOT_ASSETS_PSEUDONYMISE_KEY", "").strip()
    if key_file and key:
        raise SettingsError("IOT_ASSETS_PSEUDONYMISE_KEY_FILE and IOT_ASSETS_PSEUDONYMISE_KEY are both set: set one")
    rotation = env.get("IOT_ASSETS_PSEUDONYMISE_ROTATION", "").strip() or "year"
    if rotation not in ROTATIONS:
        raise SettingsError(f"IOT_ASSETS_PSEUDONYMISE_ROTATION={rotation!r} is not one of {', '.join(ROTATIONS)}")
    networks = env.get("IOT_ASSETS_PSEUDONYMISE_NETWORKS", "").strip()
    if networks:
        try:
            SubscriberNetworks.parse(networks.split(","))
        except PseudonymiseError as exc:
            raise SettingsError(f"IOT_ASSETS_PSEUDONYMISE_NETWORKS: {exc}") from None
    config = _config_home(env) / "iot-assets"
    audit_log = env.get("IOT_ASSETS_REVEAL_AUDIT_LOG", "").strip()
    return dict(
        pseudonymise=_on_off(env, "IOT_ASSETS_PSEUDONYMISE", True),
        pseudonymise_key_file=str(Path(key_file).expanduser().resolve()) if key_file else "",
        pseudonymise_key=key,
        pseudonymise_default_key_file=str(config / "pseudonymise.key"),
        pseudonymise_networks=networks,
        pseudonymise_remote=_on_off(env, "IOT_ASSETS_PSEUDONYMISE_REMOTE", False),
        pseudonymise_rotation=rotation,
        reveal_audit_log=str(Path(audit_log).expanduser().resolve()) if audit_log else str(config / "reveal-audit.jsonl"),
    )


def _location(raw: str) -> str:
    """A local folder becomes an absolute path; an object-store URL stays as it is."""
    raw = raw or "data"
    return raw if "://" in raw and not raw.startswith("file://") else str(Path(raw.removeprefix("file://")).resolve())


DEFAULT_REPORTS_PORT = 8765


def _reports_url(env, data_dir: str) -> str:
    """IOT_ASSETS_REPORTS_URL; for a local data folder by default where `iot-assets ui` serves its reports.
    An object store's reports need a static web endpoint of their own: no default."""
    raw = env.get("IOT_ASSETS_REPORTS_URL", "").strip().rstrip("/")
    if not raw:
        return "" if "://" in data_dir else f"http://127.0.0.1:{DEFAULT_REPORTS_PORT}"
    if not raw.startswith(("http://", "https://")):
        raise SettingsError(f"IOT_ASSETS_REPORTS_URL={raw!r} is not an http(s) address")
    return raw


@dataclass(frozen=True)
class Settings:
    data_dir: str  # the base location: an absolute local path or an object-store URL (s3://bucket/prefix)
    first_day: date  # inclusive
    last_day: date  # inclusive
    window_minutes: int = 60
    train_fraction: float = 0.7
    target_fpr: float = 0.01
    seed: int = 0
    episodes: str = ""  # an episodes.csv with ground truth for the anomaly metrics, if any
    model_pins: str = ""  # ASSET=VERSION,...: model versions to serve instead of the current ones
    # A retrain or a challenger that beat the served model is served at once (else only proposed, for
    # `iot-assets models use`): a policy one turns on, never a default (iot_assets/core/promotion.py).
    auto_promote: bool = False
    advisories: str = ""  # a CSV of advisories per device model; empty: the one shipped in the package
    lines_csv: str = ""  # device_mac,line_id[,since]: subscriber lines; empty: synthetic lines
    sampling: str = "1,100,1000"  # packet sampling rates 1:N of the line views
    line_window_days: int = 3  # days of line views a line inventory accumulates
    days_per_run: int = 7  # days a backfill run of the daily assets covers at most
    acknowledgements: str = ""  # a CSV device_mac,from_day: changes an analyst accepted as the new normal
    stable_days: int = 3  # changed days in a row, at a steady score level, that make a new normal
    line_shards: int = 1  # subscriber-line shards a day of the line assets is split into (1: partitioned by day)
    feeds_dir: str = ""  # where an operator drops the NVD, KEV and EPSS files; empty: `<data_dir>/feeds`
    feed_max_age_days: int = 7  # a feed older than this (against today) fails the WARN check feeds_fresh
    # Pseudonymisation at the edge (docs/pseudonymisation.md); the key is loaded at load, by
    # iot_assets.core.pseudonymiser.Pseudonymiser.from_settings, and kept out of every repr.
    pseudonymise: bool = True
    pseudonymise_key_file: str = ""  # the configured key file; empty: the key value, or the default file
    pseudonymise_key: str = field(default="", repr=False, compare=False)  # the key as hex text, if given so
    pseudonymise_default_key_file: str = ""  # used (and created) when neither is configured
    pseudonymise_networks: str = ""  # comma-separated subscriber-side CIDRs; empty: the core's defaults
    pseudonymise_remote: bool = False  # Internet peers too (they are evidence: kept in clear by default)
    pseudonymise_rotation: str = "year"  # year | month: how long a pseudonym lasts
    reveal_audit_log: str = ""  # where `iot-assets reveal` appends its audit lines
    reports_url: str = ""  # where a browser reaches the reports folder over http (`iot-assets ui` serves it)
    min_free_gb: float = 1.0  # free space `iot-assets run` asks of the data folder before it starts (0: no check)
    max_reject_share: float = 0.5  # an archive rejecting more of its flow lines than this fails (a changed format?)

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        env = os.environ if env is None else env
        data_dir = _location(env.get("IOT_ASSETS_DATA_DIR", "").strip())
        first = _parse_day(env, "IOT_ASSETS_START_DATE", DATASET_FIRST_DAY)
        last = _parse_day(env, "IOT_ASSETS_END_DATE", DATASET_LAST_DAY)
        if last < first:
            raise SettingsError(f"IOT_ASSETS_END_DATE ({last}) is before IOT_ASSETS_START_DATE ({first})")
        window = int(_parse_number(env, "IOT_ASSETS_WINDOW_MINUTES", 60, 5, 1440))
        if 1440 % window:
            raise SettingsError(f"IOT_ASSETS_WINDOW_MINUTES={window} does not divide a day")
        episodes = env.get("IOT_ASSETS_EPISODES", "").strip()
        default_episodes = f"{data_dir}/episodes/episodes.csv"
        if not episodes and "://" not in data_dir and Path(default_episodes).exists():
            episodes = default_episodes  # where `iot-assets run` puts the sample's
        return cls(
            data_dir=data_dir, first_day=first, last_day=last, window_minutes=window,
            train_fraction=_parse_number(env, "IOT_ASSETS_TRAIN_FRACTION", 0.7, 0.1, 0.95),
            target_fpr=_parse_number(env, "IOT_ASSETS_TARGET_FPR", 0.01, 0.0001, 0.5),
            seed=int(_parse_number(env, "IOT_ASSETS_SEED", 0, 0, 2**31)),
            episodes=str(Path(episodes).resolve()) if episodes and "://" not in episodes else episodes,
            model_pins=env.get("IOT_ASSETS_MODEL_PINS", "").strip(),
            auto_promote=_on_off(env, "IOT_ASSETS_AUTO_PROMOTE", False),
            advisories=env.get("IOT_ASSETS_ADVISORIES", "").strip(),
            lines_csv=env.get("IOT_ASSETS_LINES", "").strip(),
            sampling=env.get("IOT_ASSETS_SAMPLING", "").strip() or "1,100,1000",
            line_window_days=int(_parse_number(env, "IOT_ASSETS_LINE_WINDOW_DAYS", 3, 1, 30)),
            days_per_run=int(_parse_number(env, "IOT_ASSETS_DAYS_PER_RUN", 7, 1, 366)),
            acknowledgements=env.get("IOT_ASSETS_ACKNOWLEDGEMENTS", "").strip(),
            stable_days=int(_parse_number(env, "IOT_ASSETS_STABLE_DAYS", 3, 1, 60)),
            line_shards=int(_parse_number(env, "IOT_ASSETS_LINE_SHARDS", 1, 1, 4096)),
            feeds_dir=_location(env.get("IOT_ASSETS_FEEDS_DIR", "").strip() or f"{data_dir}/feeds"),
            feed_max_age_days=_parse_whole_number(env, "IOT_ASSETS_FEED_MAX_AGE_DAYS", 7, 0, 3650),
            **_pseudonymise_settings(env),
            reports_url=_reports_url(env, data_dir),
            min_free_gb=_parse_number(env, "IOT_ASSETS_MIN_FREE_GB", 1.0, 0, 1e6),
            max_reject_share=_parse_number(env, "IOT_ASSETS_MAX_REJECT_SHARE", 0.5, 0, 1),
        )

    @property
    def is_local(self) -> bool:
        return "://" not in self.data_dir

    @property
    def raw_url(self) -> str:
        return f"{self.data_dir}/raw"



