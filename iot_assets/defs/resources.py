"""Resources, one per concern: where bytes live (IO managers, archives, reports) and the models' settings."""

import dagster as dg
import pandas as pd

from iot_assets.config import Settings
from iot_assets.core.pseudonymiser import Pseudonymiser
from iot_assets.defs.loading import current_deployment
from iot_assets.io.lake import LakeIOManager
from iot_assets.io.location import base_path
from iot_assets.io.models import ModelIOManager, ServedModels
from iot_assets.io.reports import ReportFiles
from iot_assets.io.staging import ArchiveStore


class ModelSettings(dg.ConfigurableResource):
    """Windows, the time split, the alert budget and the seed the models are built with."""

    window_minutes: int = 60
    train_fraction: float = 0.7
    target_fpr: float = 0.01
    seed: int = 0
    episodes: str = ""  # an episodes.csv with ground truth for the anomaly metrics, if any
    acknowledgements: str = ""  # a CSV device_mac,from_day: changes an analyst accepted (re-baselined at once)
    stable_days: int = 3  # changed days in a row at a steady score level before a device is re-baselined
    pseudonymiser: dg.ResourceDependency[Pseudonymiser]  # names the MACs of episodes and acknowledgements as the flows do

    def read_episodes(self, types: tuple[str, ...] | None = None) -> pd.DataFrame | None:
        """The ground-truth episodes of `types` (default: the anomaly episodes), or None without a file."""
        from iot_assets.synthetic.inject import EPISODE_TYPES, read_episodes

        if not self.episodes:
            return None
        with base_path(self.episodes).open("rb") as handle:
            return self.pseudonymiser.episodes(read_episodes(handle, types or EPISODE_TYPES))

    def read_acknowledgements(self) -> pd.DataFrame | None:
        """The analyst's acknowledged changes (device_mac, from_day), or None without a file."""
        if not self.acknowledgements:
            return None
        with base_path(self.acknowledgements).open("rb") as handle:
            table = pd.read_csv(handle, dtype=str)
        missing = {"device_mac", "from_day"} - set(table.columns)
        if missing:
            raise ValueError(f"{self.acknowledgements}: acknowledgements need column(s) {', '.join(sorted(missing))}")
        return self.pseudonymiser.acknowledgements(table, self.acknowledgements)


class ExposureSettings(dg.ConfigurableResource):
    """The advisories file joined to each MAC's predicted model (IOT_ASSETS_ADVISORIES; default the packaged one)."""

    advisories: str = ""

    @property
    def advisories_path(self) -> str:
        from iot_assets.core.exposure import DEFAULT_ADVISORIES

        return self.advisories or str(DEFAULT_ADVISORIES)


class VulnerabilitySettings(dg.ConfigurableResource):
    """Where the vulnerability feeds are dropped (IOT_ASSETS_FEEDS_DIR) and the age past which one is stale."""

    feeds_dir: str
    max_age_days: int = 7  # IOT_ASSETS_FEED_MAX_AGE_DAYS

    def local_feeds(self):
        """A context manager giving the feeds folder as a local folder (a temporary copy of an object store's)."""
        from iot_assets.io.feeds import local_feeds

        return local_feeds(self.feeds_dir)


class LineSettings(dg.ConfigurableResource):
    """Subscriber lines: a lines.csv (IOT_ASSETS_LINES) or synthetic lines, and the sampling rates."""

    lines_csv: str = ""  # device_mac,line_id[,since]; empty: synthetic lines
    sampling: str = "1,100,1000"  # IOT_ASSETS_SAMPLING: packet sampling rates 1:N
    synthetic_lines: int = 40
    max_devices_per_line: int = 6
    joining_share: float = 0.5  # synthetic memberships that start mid-range
    threshold: float = 1.0  # evidence that makes a detection

    @property
    def rates(self) -> tuple[int, ...]:
        from iot_assets.core.subscriber_lines import parse_sampling_rates

        return parse_sampling_rates(self.sampling)


class LakeIOManagerFactory(dg.ConfigurableIOManagerFactory):
    """Tables as hive-style Parquet under `<base_url>/lake`."""

    base_url: str

    def create_io_manager(self, context) -> LakeIOManager:
        return LakeIOManager(self.base_url)


def build_resources(settings: Settings, pseudonymiser: Pseudonymiser | None = None) -> dict:
    """The resources of `settings`; `pseudonymiser` (built from the settings when not given) holds the loaded key."""
    base = settings.data_dir
    pseudonymiser = pseudonymiser or Pseudonymiser.from_settings(settings)
    return {
        "pseudonymiser": pseudonymiser,
        "archives": ArchiveStore(base_url=base, first_day=settings.first_day.isoformat(),
                                 last_day=settings.last_day.isoformat(), pseudonymiser=pseudonymiser,
                                 max_reject_share=settings.max_reject_share),
        "reports": ReportFiles(base_url=base, public_url=settings.reports_url),
        "model_settings": ModelSettings(window_minutes=settings.window_minutes, train_fraction=settings.train_fraction,
                                        target_fpr=settings.target_fpr, seed=settings.seed, episodes=settings.episodes,
                                        acknowledgements=settings.acknowledgements, stable_days=settings.stable_days,
                                        pseudonymiser=pseudonymiser),
        "exposure_settings": ExposureSettings(advisories=settings.advisories),
        "vulnerability_settings": VulnerabilitySettings(feeds_dir=settings.feeds_dir,
                                                        max_age_days=settings.feed_max_age_days),
        "line_settings": LineSettings(lines_csv=settings.lines_csv, sampling=settings.sampling),
        "lake_io_manager": LakeIOManagerFactory(base_url=base),
        "model_io_manager": ModelIOManager(base_url=base, pins=settings.model_pins, auto_promote=settings.auto_promote),
        "served_models": ServedModels(base_url=base, pins=settings.model_pins),
    }


@dg.definitions
def defs() -> dg.Definitions:
    deployment = current_deployment()
    return dg.Definitions(resources=build_resources(deployment.settings, deployment.pseudonymiser))
