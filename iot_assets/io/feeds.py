"""The feeds folder an operator drops vulnerability feeds into, on the base location (a folder or s3://).

The importers (`iot_assets.core.feeds`) read local files; a folder in an object store is copied
to a temporary local folder first, only the files whose names the importers read.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iot_assets.core.feeds import EPSS_GLOB, KEV_FILE, NVD_GLOB
from iot_assets.io.location import base_path, local_path

# Every name an importer reads: the NVD files with their .meta, the KEV catalogue, the EPSS days.
FEED_PATTERNS = (NVD_GLOB, NVD_GLOB.removesuffix(".json.gz") + ".meta", KEV_FILE, EPSS_GLOB)


@contextmanager
def local_feeds(url: str) -> Iterator[Path]:
    """The feeds folder at `url` as a local folder: the folder itself, or a temporary copy of an object store's."""
    folder = base_path(url)
    local = local_path(folder)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="iot-assets-feeds-") as copy:
        if folder.exists():
            for pattern in FEED_PATTERNS:
                for remote in folder.glob(pattern):
                    folder.fs.get_file(remote.path, str(Path(copy) / remote.name))
        yield Path(copy)
