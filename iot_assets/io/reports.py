"""Reports and metrics as files under `<base>/reports/`: what people open and tools read."""

from __future__ import annotations

import json
from datetime import date
from urllib.parse import quote

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
    """Writes report files (HTML, JSON, Markdown) atomically on the base location.

    `public_url` is where a browser reaches the reports folder over http (IOT_ASSETS_REPORTS_URL;
    `iot-assets ui` serves the local folder there): the UI links each report below it, since a
    browser does not open `file://` links from a web page.
    """

    base_url: str
    public_url: str = ""

    def path(self, name: str) -> UPath:
        return base_path(self.base_url) / "reports" / name

    def write_text(self, name: str, text: str) -> UPath:
        path = self.path(name)
        write_text_atomic(path, text)
        return path

    def write_json(self, name: str, document) -> UPath:
        return self.write_text(name, json.dumps(document, indent=2, default=str))

    def url(self, path: UPath) -> str:
        """The report's http address below `public_url` (a file:// or object-store address without one)."""
        root = str(self.path("x").parent.path).rstrip("/") + "/"
        if self.public_url and str(path.path).startswith(root):
            return f"{self.public_url.rstrip('/')}/{quote(str(path.path)[len(root):])}"
        local = local_path(path)
        return local.as_uri() if local else str(path)
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
        return {"report": dg.MetadataValue.path(str(path)), "url": dg.MetadataValue.url(self.url(path))}
