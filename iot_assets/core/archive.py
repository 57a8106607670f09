"""Finding and opening published archives: single `.tar.gz` or byte parts `.tar.gzNN`.

Opening an archive streams its single JSON member out of the gzip stream of its parts,
in bounded memory, and turns everything the compression or the container can report
into an `ArchiveError` naming the archive: a damaged or truncated gzip stream (any
error of the inflater, zlib's or isal's), a checksum mismatch, a corrupt, empty or
unsafe tar, a second member, and inflation past the caps below.

Caps on inflation (arguments of `open_json_member`, defaults here). Memory does not
depend on them (everything is streamed); they end a decompression bomb as damage in
seconds instead of letting it run for hours:
- `MAX_INFLATED_BYTES`: inflated bytes per archive. The largest published archive
  (Google Home gen1, 6.1 million records) holds about 7.5 GB of JSON.
- `MAX_INFLATION_RATIO`: inflated bytes per compressed byte consumed, checked once more
  than `RATIO_CHECKED_AFTER_BYTES` are inflated (a tar header or a few lines inflate far
  more than JSON in bulk). The real archives inflate 30-40 times; deflate cannot exceed
  about 1032; 16 MB of empty lines inflate about 1000 times.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zlib
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterator, Protocol

from isal import isal_zlib

_PART = re.compile(r"^(?P<stem>.+)\.tar\.gz(?P<part>\d{2})?$")

MAX_INFLATED_BYTES = 64 << 30
MAX_INFLATION_RATIO = 200
RATIO_CHECKED_AFTER_BYTES = 32 << 20

_READ_BYTES = 1 << 18  # compressed bytes read from a part at a time
_MAX_READ_BYTES = 1 << 20  # inflated bytes returned at a time: bounds memory whatever the ratio
_GZIP_MAGIC = b"\x1f\x8b"


class PartPath(Protocol):
    """What an archive part needs to be: a local `Path` or a `upath.UPath` (s3://...)."""

    name: str

    def open(self, mode: str = "rb") -> BinaryIO: ...

    def stat(self): ...


class ArchiveError(Exception):
    """An archive that cannot be read (further); names the archive and what is wrong."""

    def __init__(self, archive: str, message: str):
        super().__init__(f"{archive}: {message}")
        self.archive = archive
        self.message = message


@dataclass(frozen=True)
class ArchiveFile:
    name: str  # the stem: `google_home_gen1` for google_home_gen1.tar.gz00..02
    parts: tuple[PartPath, ...]  # in order; one path for a single archive

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.parts)

    def sha256(self) -> str:
        """Checksum of the gzip stream, the concatenation of the parts."""
        digest = hashlib.sha256()
        for part in self.parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()


def find_archives(directory) -> tuple[list[ArchiveFile], list[ArchiveError]]:
    """Group the archives in `directory` (a `Path`, a `UPath` or a str); split archives
    with a missing part become errors.

    Files whose names are not archive names (a README beside the archives) are not records
    and are left alone.
    """
    directory = Path(directory) if isinstance(directory, str) else directory
    paths = sorted((p for p in directory.iterdir() if _PART.match(p.name) and p.is_file()), key=lambda p: p.name)
    return group_archives(paths)


def is_plain_name(stem: str) -> bool:
    """A device name that is one plain folder name: not `.`/`..`, not hidden (`.work`), no separator."""
    return bool(stem) and not stem.startswith(".") and not any(c in stem for c in "/\\\0")


def group_archives(paths: list[PartPath]) -> tuple[list[ArchiveFile], list[ArchiveError]]:
    """Archives from file paths: `x.tar.gz`, or the parts `x.tar.gz00`, `x.tar.gz01`, ..."""
    groups: dict[str, dict[str | None, PartPath]] = defaultdict(dict)
    errors: list[ArchiveError] = []
    for path in paths:
        match = _PART.match(path.name)
        if not match:
            errors.append(ArchiveError(path.name, "not an archive name (<device>.tar.gz or <device>.tar.gzNN)"))
            continue
        if not is_plain_name(match["stem"]):
            # `...tar.gz` has the stem `..`: staged under it, it would land beside staging/, not in it.
            errors.append(ArchiveError(path.name, f"{match['stem']!r} is not a plain device name (it starts with a "
                                                  f"dot or holds a separator): rename the file"))
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


# ---------------------------------------------------------------- the gzip stream


def _compressed_chunks(archive: ArchiveFile, single_bytes_from: int | None = None) -> Iterator[bytes]:
    """The concatenated parts in chunks; from offset `single_bytes_from` on, a byte at a time."""
    offset = 0
    for part in archive.parts:
        try:
            f = part.open("rb")
        except OSError as exc:
            raise ArchiveError(archive.name, f"cannot open part {part.name}: {exc}") from exc
        with f:
            while True:
                try:
                    chunk = f.read(_READ_BYTES)
                except OSError as exc:
                    raise ArchiveError(archive.name, f"cannot read part {part.name}: {exc}") from exc
                if not chunk:
                    break
                if single_bytes_from is not None and offset + len(chunk) > single_bytes_from:
                    head = max(single_bytes_from - offset, 0)
                    if head:
                        yield chunk[:head]
                    for i in range(head, len(chunk)):
                        yield chunk[i : i + 1]
                else:
                    yield chunk
                offset += len(chunk)


class _GzipStream:
    """The inflated bytes of an archive's parts (one or more gzip members), in bounded pieces.

    Any exception of the inflater is damage. isal cannot copy its state, so on damage the
    stream is inflated again from the start with zlib, a byte at a time from where the
    failing call began: every byte the stream holds before the damaged point is delivered.
    """

    def __init__(self, archive: ArchiveFile, max_inflated_bytes: int | None = MAX_INFLATED_BYTES,
                 max_inflation_ratio: float | None = MAX_INFLATION_RATIO,
                 engine: Callable = isal_zlib.decompressobj, single_bytes_from: int | None = None):
        self.archive = archive
        self.max_inflated_bytes = max_inflated_bytes
        self.max_inflation_ratio = max_inflation_ratio
        self.inflated_bytes = 0
        self.consumed_bytes = 0  # compressed bytes the inflater has consumed
        self._engine = engine
        self._chunks = _compressed_chunks(archive, single_bytes_from)
        self._input = b""  # compressed bytes not yet consumed
        self._input_offset = 0  # offset of `_input` in the concatenated parts
        self._inflater = None  # inside a gzip member when set
        self._members = 0
        self._recovered = b""  # bytes recovered after damage, delivered before the error
        self._failure: ArchiveError | None = None
        self._ended = False

    def _damage(self, message: str) -> ArchiveError:
        return ArchiveError(self.archive.name, message)

    def _more_input(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._input = self._input + chunk if self._input else chunk
        return True

    def _start_member(self) -> bool:
        """At a member boundary: False at the end of the stream (zero padding is allowed)."""
        while True:
            stripped = self._input.lstrip(b"\0")
            self._input_offset += len(self._input) - len(stripped)
            self.consumed_bytes += len(self._input) - len(stripped)
            self._input = stripped
            if len(self._input) >= 2:
                break
            if not self._more_input():
                if self._input:
                    raise self._damage(f"1 stray byte after the gzip stream at byte {self._input_offset:,}")
                if self._members == 0:
                    raise self._damage("not a gzip stream (no data)")
                return False
        if not self._input.startswith(_GZIP_MAGIC):
            if self._members == 0:
                raise self._damage("not a gzip stream (no gzip header)")
            raise self._damage(f"bytes that are not gzip after the end of the gzip stream, at byte {self._input_offset:,}")
        self._inflater = self._engine(wbits=31)
        self._members += 1
        return True

    def read(self, size: int) -> bytes:
        """Up to `size` inflated bytes (at most 1 MiB); b"" at the end of the stream; ArchiveError
        on damage, and again on every later call."""
        try:
            return self._read(min(size, _MAX_READ_BYTES))
        except ArchiveError as exc:
            self._failure = exc
            raise

    def _read(self, size: int) -> bytes:
        while True:
            if self._recovered:
                out, self._recovered = self._recovered[:size], self._recovered[size:]
                self.inflated_bytes += len(out)
                return out
            if self._failure is not None:
                raise self._failure
            if self._ended:
                return b""
            if self._inflater is None and not self._start_member():
                self._ended = True
                return b""
            if not self._input and not self._more_input():
                out = self._call(b"", size)  # output still held inside the inflater
                if out:
                    return self._count(out)
                if self._inflater is not None and self._failure is None:
                    raise self._damage(f"the gzip stream ends early, after {self.consumed_bytes:,} compressed bytes "
                                       "(truncated)")
                continue
            out = self._call(self._input, size)
            if out:
                return self._count(out)

    def _call(self, data: bytes, size: int) -> bytes:
        """One call of the inflater; on damage, records the failure and returns nothing."""
        try:
            out = self._inflater.decompress(data, size)
        except Exception as exc:  # zlib.error, isal's IsalError, ...: damage, whatever its class
            self._fail(exc, len(data), size)
            return b""
        consumed = len(data) - len(self._inflater.unconsumed_tail)
        self.consumed_bytes += consumed
        self._input_offset += consumed
        self._input = self._inflater.unconsumed_tail
        if self._inflater.eof:
            self._input = self._inflater.unused_data + self._input
            self.consumed_bytes -= len(self._inflater.unused_data)
            self._input_offset -= len(self._inflater.unused_data)
            self._inflater = None
        return out

    def _count(self, out: bytes) -> bytes:
        self.inflated_bytes += len(out)
        if self.max_inflated_bytes is not None and self.inflated_bytes > self.max_inflated_bytes:
            self._failure = self._damage(
                f"inflates past the cap of {self.max_inflated_bytes:,} bytes (max_inflated_bytes)")
        elif (self.max_inflation_ratio is not None and self.inflated_bytes > RATIO_CHECKED_AFTER_BYTES
              and self.inflated_bytes > self.max_inflation_ratio * max(self.consumed_bytes, 1)):
            self._failure = self._damage(
                f"inflates {self.inflated_bytes / max(self.consumed_bytes, 1):,.0f} times its compressed size, past the "
                f"cap of {self.max_inflation_ratio:g} (max_inflation_ratio): a decompression bomb")
        return out

    def _fail(self, exc: Exception, input_bytes: int, size: int) -> None:
        where = self._input_offset
        self._failure = self._damage(f"the gzip stream is damaged at or after compressed byte {where:,} ({exc})")
        if self._engine is isal_zlib.decompressobj:
            self._recovered = self._recover(where, where + input_bytes, size)

    def _recover(self, call_from: int, call_to: int, size: int) -> bytes:
        """The bytes zlib inflates, a byte of input at a time from where the failing call
        began, past what was delivered: at most what that call could have returned."""
        delivered = self.inflated_bytes
        replay = _GzipStream(self.archive, None, None, engine=zlib.decompressobj, single_bytes_from=call_from)
        recovered = []
        total = 0
        while replay._input_offset <= call_to and total < delivered + size:
            try:
                out = replay.read(_MAX_READ_BYTES)
            except ArchiveError:
                break
            if not out:
                break
            if total + len(out) > delivered:
                recovered.append(out[max(delivered - total, 0):])
            total += len(out)
        return b"".join(recovered)[:size]


# ---------------------------------------------------------------- the tar container


def _check_member(archive: str, member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ArchiveError(archive, f"tar member {member.name!r} has an unsafe path")
    if not member.isreg() or member.issparse():
        raise ArchiveError(archive, f"tar member {member.name!r} is not a regular file (a link, device or sparse file)")


def _read_header(archive: str, gz: _GzipStream) -> tuple[tarfile.TarInfo, bytes]:
    """The first member's header, and every byte read so far.

    Damage met while reading ahead is raised here only if the header cannot be read
    without the missing bytes; otherwise the member's stream meets it again where it is.
    """
    head = b""
    damage: ArchiveError | None = None
    for want in (64 << 10, 1 << 20, 16 << 20):  # long pax headers need more than the first read
        try:
            while len(head) < want and (more := gz.read(want - len(head))):
                head += more
        except ArchiveError as exc:
            damage = exc
        try:
            tar = tarfile.open(fileobj=io.BytesIO(head), mode="r:")
            member = tar.firstmember
        except Exception as exc:  # tarfile reports a bad header in several ways
            if damage is not None:
                raise damage
            if len(head) == want and "empty file" not in str(exc):
                continue
            if not head.strip(b"\0"):
                raise ArchiveError(archive, "the tar stream is empty") from exc
            raise ArchiveError(archive, f"not a readable tar stream ({exc})") from exc
        if member is None:
            raise damage or ArchiveError(archive, "the tar holds no member")
        return member, head
    raise ArchiveError(archive, "tar header larger than 16 MB")


class JsonMember(io.RawIOBase):
    """The bytes of the archive's one tar member, streamed from the inflater.

    `read` returns b"" only once the archive has been checked to end cleanly after the
    member (tar padding and end blocks only, the gzip checksum right); otherwise it
    raises ArchiveError. `bytes_read` counts the member's bytes delivered so far.
    """

    def __init__(self, archive: str, member: tarfile.TarInfo, head: bytes, gz: _GzipStream):
        self.archive = archive
        self.name = member.name
        self.size = member.size
        self.bytes_read = 0
        self._member = member
        self._head = head[member.offset_data :]
        self._gz = gz
        self._checked = False

    def readable(self) -> bool:
        return True

    @property
    def fully_read(self) -> bool:
        """Every byte of the member was delivered (what fails now is after it)."""
        return self.bytes_read >= self.size

    def read(self, size: int = -1) -> bytes:
        left = self.size - self.bytes_read
        if left <= 0:
            if not self._checked:
                self._check_end()
            return b""
        want = left if size < 0 else min(size, left)
        if self._head:
            out, self._head = self._head[:want], self._head[want:]
        else:
            out = self._gz.read(want)
            if not out:
                raise ArchiveError(self.archive, f"the archive ends {left:,} bytes before the end of its member "
                                                 f"{self.name!r} (truncated)")
        self.bytes_read += len(out)
        return out

    def _check_end(self) -> None:
        """After the member come padding and zero blocks, then the end of the gzip stream."""
        self._checked = True
        padding = (-self.size) % tarfile.BLOCKSIZE
        after = self._head  # what was read past the member with its header
        while len(after) < padding + tarfile.BLOCKSIZE and (more := self._gz.read(1 << 16)):
            after += more
        rest = after[padding:]
        if rest.strip(b"\0"):
            try:
                extra = tarfile.TarInfo.frombuf(rest[: tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape").name
            except Exception:
                extra = "(unreadable header)"
            raise ArchiveError(self.archive, f"holds more than one member: {self.name!r}, then {extra!r}")
        while more := self._gz.read(1 << 20):  # to the gzip trailer, whose checksum covers everything
            if more.strip(b"\0"):
                raise ArchiveError(self.archive, f"data after the end of the tar, after member {self.name!r}")


@contextmanager
def open_json_member(archive: ArchiveFile, max_inflated_bytes: int | None = MAX_INFLATED_BYTES,
                     max_inflation_ratio: float | None = MAX_INFLATION_RATIO) -> Iterator[JsonMember]:
    """Stream the single JSON member of an archive; nothing is extracted to disk.

    tarfile only parses the header: its stream mode copies every block several times,
    which cost more than inflating. The member's bytes come straight from the inflater.
    Raises ArchiveError when the archive cannot be opened, and from `read` on damage.
    """
    gz = _GzipStream(archive, max_inflated_bytes, max_inflation_ratio)
    member, head = _read_header(archive.name, gz)
    _check_member(archive.name, member)
    yield JsonMember(archive.name, member, head, gz)
