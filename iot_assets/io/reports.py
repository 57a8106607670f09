"""Reports and metrics as files under `<base>/reports/`: what people open and tools read."""

from __future__ import annotations

import json
from datetime import date

import dagster as dg
from upath import UPath

from iot_assets.io.location import base_path, local_path, write_text_atomic


def _is_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
        return len(text) == 10
    except ValueError:
        return False


class ReportFiles(dg.ConfigurableResource):
    """Writes report files (HTML, JSON, Markdown) atomically on the base location."""

    base_url: str

    def path(self, name: str) -> UPath:
        return base_path(self.base_url) / "reports" / name

    def write_text(self, name: str, text: str) -> UPath:
        path = self.path(name)
        write_text_atomic(path, text)
        return path

    def write_json(self, name: str, document) -> UPath:
        return self.write_text(name, json.dumps(document, indent=2, default=str))

    def prune_daily_outside(self, keep: set[str]) -> list[str]:
        """Remove the daily reports (`daily/<day>...`) of days not in `keep`; returns those days."""
        folder = base_path(self.base_url) / "reports" / "daily"
        removed = set()
        for path in folder.iterdir() if folder.exists() else []:
            day = path.name[:10]
            if _is_day(day) and day not in keep:
                path.unlink()
                removed.add(day)
        return sorted(removed)

    def metadata(self, path: UPath) -> dict:
        """Where a report is, as asset metadata: a path, and a URL a browser opens."""
        local = local_path(path)
        return {"report": dg.MetadataValue.path(str(path)),
                "url": dg.MetadataValue.url(local.as_uri() if local else str(path))}
