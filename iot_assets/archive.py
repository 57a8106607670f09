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

from isal import igzip

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
    """Group the archives in `directory`; split archives with a missing part become errors.

    Files whose names are not archive names (a README beside the archives) are not records
    and are left alone.
    """
    paths = sorted(p for p in Path(directory).iterdir() if p.is_file() and _PART.match(p.name))
    return group_archives(paths)


def group_archives(paths: list[Path]) -> tuple[list[ArchiveFile], list[ArchiveError]]:
    """Archives from file paths: `x.tar.gz`, or the parts `x.tar.gz00`, `x.tar.gz01`, ..."""
    groups: dict[str, dict[str | None, Path]] = defaultdict(dict)
    errors: list[ArchiveError] = []
    for path in paths:
        match = _PART.match(path.name)
        if not match:
            errors.append(ArchiveError(path.name, "not an archive name (<device>.tar.gz or <device>.tar.gzNN)"))
            continue
        groups[match["stem"]][match["part"]] = path
    archives: list[ArchiveFile] = []
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


class _MemberStream(io.RawIOBase):
    """The bytes of one tar member: what is already buffered, then the rest of the stream."""

    def __init__(self, head: bytes, rest: BinaryIO, size: int):
        self._head = memoryview(head)[:size]
        self._rest = rest
        self._left = size - len(self._head)
        self.trailer = memoryview(head)[size:].tobytes()  # bytes after the member, if any were read

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if len(self._head):
            out = self._head.tobytes() if size < 0 or size >= len(self._head) else self._head[:size].tobytes()
            self._head = self._head[len(out) :]
            return out
        if self._left <= 0:
            return b""
        want = self._left if size < 0 else min(size, self._left)
        data = self._rest.read(want)
        if not data:
            raise EOFError(f"the stream ended {self._left:,} bytes before the end of the tar member")
        self._left -= len(data)
        return data


def _read_header(archive: str, gz: BinaryIO) -> tuple[tarfile.TarInfo, bytes]:
    """The first member's header, and every byte read so far."""
    head = b""
    for want in (64 << 10, 1 << 20, 16 << 20):  # long pax headers need more than the first read
        more = gz.read(want - len(head))
        head += more
        try:
            tar = tarfile.open(fileobj=io.BytesIO(head), mode="r:")
        except tarfile.ReadError as exc:
            if more and "empty file" not in str(exc) and len(head) == want:
                continue
            if not head:
                raise ArchiveError(archive, "the tar stream is empty") from exc
            raise ArchiveError(archive, f"not a readable tar stream ({exc})") from exc
        member = tar.firstmember
        if member is None:
            raise ArchiveError(archive, "the tar holds no member")
        return member, head
    raise ArchiveError(archive, "tar header larger than 16 MB")


def _check_end(archive: str, member: tarfile.TarInfo, after: bytes) -> None:
    """After the member come padding and zero blocks; anything else is another member."""
    padding = (-member.size) % tarfile.BLOCKSIZE
    rest = after[padding:]
    if rest.strip(b"\0"):
        try:
            extra = tarfile.TarInfo.frombuf(rest[: tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape").name
        except tarfile.TarError:
            extra = "(unreadable header)"
        raise ArchiveError(archive, f"holds more than one member: {member.name!r}, then {extra!r}")


@contextmanager
def open_json_member(archive: ArchiveFile) -> Iterator[BinaryIO]:
    """Stream the single JSON member of an archive; nothing is extracted to disk.

    tarfile only parses the header: its stream mode copies every block several times,
    which cost more than inflating. The member's bytes come straight from the inflater.
    """
    raw = _ConcatenatedParts(archive.parts)
    gz = igzip.open(io.BufferedReader(raw, 1 << 20), "rb")
    try:
        try:
            member, head = _read_header(archive.name, gz)
        except (EOFError, OSError) as exc:
            raise ArchiveError(archive.name, f"not a gzip stream ({exc})") from exc
        _check_member(archive.name, member)
        stream = _MemberStream(head[member.offset_data :], gz, member.size)
        yield stream
        try:
            after = stream.trailer + gz.read(64 << 10)
        except (EOFError, OSError) as exc:
            raise ArchiveError(archive.name, f"damaged after member {member.name!r} ({exc})") from exc
        _check_end(archive.name, member, after)
    finally:
        gz.close()
        raw.close()
