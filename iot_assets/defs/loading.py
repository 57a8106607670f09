"""What a definitions load is for: the settings resolved once at load, and the partitions made from them.

`iot_assets.definitions.build_definitions` sets it while the defs folder loads; each group's
`@dg.definitions` reads it. Nothing here reads the environment at import.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from iot_assets.config import Settings
from iot_assets.core.pseudonymiser import Pseudonymiser
from iot_assets.defs.partitions import Partitions


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    partitions: Partitions
    pseudonymiser: Pseudonymiser  # its key loaded here, once per load

    @classmethod
    def of(cls, settings: Settings) -> "Deployment":
        return cls(settings, Partitions.from_settings(settings), Pseudonymiser.from_settings(settings))


LOADING: ContextVar[Deployment | None] = ContextVar("iot_assets_loading", default=None)


def current_deployment() -> Deployment:
    """The deployment being loaded; a group loaded on its own (`dg` tooling) resolves the environment now."""
    return LOADING.get() or Deployment.of(Settings.from_env())
