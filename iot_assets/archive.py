"""Finding and opening published archives: single `.tar.gz` or byte parts `.tar.gzNN`."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from isal import igzip_threaded

_PART = re.compile(r"^(?P<stem>.+)\.tar\.gz(?P<part>\d{2})?$")


class ArchiveError(Exception):
    """An archive that cannot be read as a whole; names the archive and what is wrong."""

    def __init__(self, archive: str, message: str):
        super().__init__(f"{archive}: {message}")
        self.archive = archive
        self.message = message


@dataclass(frozen=True)
class ArchiveFile:
    name: str  # the stem: `google_home_gen1` for google_home_gen1.tar.gz00..02
    parts: tuple[Path, ...]  # in order; one path for a single archive

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.parts)

    def sha256(self) -> str:
        """Checksum of the gzip stream, the concatenation of the parts."""
        digest = hashlib.sha256()
        for part in self.parts:
            with open(part, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()


def find_archives(directory: Path) -> tuple[list[ArchiveFile], list[ArchiveError]]:
    """Group the archives in `directory`; split archives with a missing part become errors."""
    groups: dict[str, dict[str | None, Path]] = defaultdict(dict)
    for path in sorted(Path(directory).iterdir()):
        match = _PART.match(path.name)
        if match and path.is_file():
            groups[match["stem"]][match["part"]] = path
    archives: list[ArchiveFile] = []
    errors: list[ArchiveError] = []
    for stem, parts in sorted(groups.items()):
        if None in parts and len(parts) > 1:
            errors.append(ArchiveError(stem, "both a single .tar.gz and split parts are present"))
            continue
        if None in parts:
            archives.append(ArchiveFile(stem, (parts[None],)))
            continue
        numbers = sorted(int(p) for p in parts)
        missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
        if missing:
            names = ", ".join(f"{stem}.tar.gz{n:02d}" for n in missing)
            errors.append(ArchiveError(stem, f"split archive is missing part(s) {names}"))
            continue
        archives.append(ArchiveFile(stem, tuple(parts[f"{n:02d}"] for n in numbers)))
    return archives, errors


class _ConcatenatedParts(io.RawIOBase):
    """The byte parts of a split archive read as one stream."""

    def __init__(self, parts: tuple[Path, ...]):
        self._paths = list(parts)
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._current is None:
                if not self._paths:
                    return 0
                self._current = open(self._paths.pop(0), "rb")
            n = self._current.readinto(buffer)
            if n:
                return n
            self._current.close()
            self._current = None

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
        super().close()


def _check_member(archive: str, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(archive, f"tar member {member.name!r} has an unsafe path")
    if not member.isreg():
        raise ArchiveError(archive, f"tar member {member.name!r} is not a regular file (a link or device)")


@contextmanager
def open_json_member(archive: ArchiveFile) -> Iterator[BinaryIO]:
    """Stream the single JSON member of an archive; nothing is extracted to disk.

    Inflating runs in isal's own thread so that it overlaps with parsing.
    """
    raw = _ConcatenatedParts(archive.parts)
    try:
        gz = igzip_threaded.open(io.BufferedReader(raw, 1 << 20), "rb", threads=1, block_size=4 << 20)
    except Exception as exc:
        raw.close()
        raise ArchiveError(archive.name, f"not a gzip stream ({exc})") from exc
    try:
        try:
            tar = tarfile.open(fileobj=gz, mode="r|")
            member = tar.next()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(archive.name, f"not a readable tar stream ({exc})") from exc
        if member is None:
            raise ArchiveError(archive.name, "the tar holds no member")
        _check_member(archive.name, member)
        stream = tar.extractfile(member)
        assert stream is not None
        yield stream
        try:
            extra = tar.next()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(archive.name, f"damaged after member {member.name!r} ({exc})") from exc
        if extra is not None:
            raise ArchiveError(
                archive.name, f"holds more than one member: {member.name!r}, then {extra.name!r}"
            )
    finally:
        gz.close()
        raw.close()
