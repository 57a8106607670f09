"""Pseudonymisation of subscribers at the edge: addresses, MACs, keys, re-identification.

Applied to decoded flows right after decode, before anything is written past staging, and
to every other table that names a MAC or a home address (catalogue, ground truth, episodes,
acknowledgements, line membership) through `pseudonymise_mac` / `pseudonymise_ip`, so that
all of them agree. Dagster-free: the caller resolves the secret (a file path or the value of
an environment variable) and passes bytes, text and paths in.

Decisions, and why:
- Addresses: Crypto-PAn (Xu et al. 2002), AES-128 keyed, 32-byte key (first 16 the AES key,
  last 16 the pad), bit for bit the reference and `yacryptopan` (`iot_assets.core.cryptopan`,
  tested on the published vectors). It is prefix-preserving: two addresses sharing k leading bits
  have pseudonyms sharing exactly k, so /24s, /64s and lines stay groups. Batched: one AES-ECB
  call (`cryptography`) per bit position over all the distinct addresses of a column.
- Subscriber-side addresses are those in `SubscriberNetworks` (by default the private,
  CGNAT, link-local, ULA and solicited-node multicast ranges). Each network's own prefix is
  kept in clear and only the bits below it are pseudonymised (Crypto-PAn's output bits from
  the prefix length on; the mapping stays a prefix-preserving bijection of the network onto
  itself). The prefix says only "a private LAN", "link-local", which every home has, and it
  keeps `clean.remote_scope` (lan / link_local / multicast / gateway tests on the text)
  working, so the features and the models are the same with and without pseudonyms.
  The networks must not overlap: then no pseudonym can collide with another address.
- Remote Internet peers stay in clear by default: they are the evidence (C2 servers,
  scanners, resolvers). With `pseudonymise_remote` they are pseudonymised too, by full
  Crypto-PAn with cycle walking (re-encrypt until the result is again a global address
  outside the subscriber networks), which keeps the mapping a bijection on that set.
  Special addresses (multicast groups, broadcast, unspecified, loopback) are always kept.
- MACs: HMAC-SHA256 of the six bytes under a per-period key, first six bytes of the digest,
  with the locally administered bit set (so a pseudonym can never be a vendor-assigned MAC)
  and the group bit copied from the real MAC (unicast stays unicast: `remote_scope` and the
  host-MAC test read it). ff:ff:ff:ff:ff:ff and 00:00:00:00:00:00 stay as they are.
  The OUI is NOT kept. The features never see a MAC (features.py: "No identity reaches the
  features"), so the classifier loses nothing; a kept OUI would name the vendor of every
  device in clear, would stay the same across periods (linking a home's rare OUIs month to
  month, which is what rotating keys is meant to prevent) and would leave only a 24-bit NIC
  part, often allocated in sequence, to guess once a key leaks.
- Keys: one master secret (>= 32 bytes, hex text in a file or an environment value); per
  period (calendar month `YYYY-MM` of `flow_start`, UTC; or `YYYY` with rotation "year")
  HKDF-SHA256 derives the Crypto-PAn key and the MAC key, so pseudonyms of two periods cannot
  be linked without the secret. That is also why a device's pseudonyms change at each
  rotation: whatever follows a device across periods (baselines, drift) sees a new device.
  The key file is refused inside the data folder and must be readable by its owner only.
- Re-identification: an address pseudonym is decrypted (`reveal`). HMAC cannot be
  inverted, so a MAC is revealed by matching it against candidate real MACs the operator
  holds (the catalogue, the CPE registry, DHCP leases): honest, and a MAC that no record of
  the ISP knows cannot be revealed. Every call appends one JSON line (who, when, why, which
  pseudonym, the outcome) to the audit log before it returns; the real value is never
  written to the log. If the log cannot be written, nothing is revealed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iot_assets.core.cryptopan import CryptoPAn

IP_COLUMNS = ("src_ip", "dst_ip")
MAC_COLUMNS = ("src_mac", "dst_mac")
MASTER_KEY_BYTES = 32
KEPT_MACS = frozenset({"ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"})
DEFAULT_SUBSCRIBER_NETWORKS = (
    "10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "fd00::/8", "fe80::/64",
    # Solicited-node multicast: its last 24 bits are those of a home address (of the MAC with EUI-64).
    "ff02::1:ff00:0/104",
)
# Never pseudonymised, even with pseudonymise_remote: groups, broadcast, loopback, unspecified,
# and private space of other networks (a pseudonym must not land among the home's addresses).
_SPECIAL_NETWORKS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/8", "fc00::/7", "fe80::/10", "ff00::/8",
)
ROTATIONS = ("month", "year")
_PERIOD = re.compile(r"^\d{4}(-(0[1-9]|1[0-2]))?$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HKDF_SALT = b"iot-assets pseudonymisation v1"


class PseudonymiseError(ValueError):
    """A value, key or setting that pseudonymisation cannot take; the message names it."""


class RevealError(PseudonymiseError):
    """A pseudonym that cannot be turned back into a real value (the attempt is still logged)."""


# ---------------------------------------------------------------- keys


@dataclass(frozen=True, repr=False)
class PeriodKeys:
    """The keys of one period (a month): Crypto-PAn for addresses, HMAC for MACs."""

    period: str
    cryptopan: CryptoPAn
    mac_key: bytes

    def __repr__(self) -> str:
        return f"PeriodKeys({self.period}, <keys hidden>)"


class PseudonymKeys:
    """The master secret and the period keys derived from it (derived once per period)."""

    def __init__(self, master: bytes):
        if len(master) < MASTER_KEY_BYTES:
            raise PseudonymiseError(f"the pseudonymisation secret has {len(master)} bytes; it needs at least "
                                    f"{MASTER_KEY_BYTES}")
        self._master = bytes(master)
        self._periods: dict[str, PeriodKeys] = {}

    def __repr__(self) -> str:
        return "PseudonymKeys(<secret hidden>)"

    def period(self, period: str) -> PeriodKeys:
        """The keys of `period` (`YYYY-MM`, or `YYYY` for yearly rotation)."""
        if not isinstance(period, str) or not _PERIOD.match(period):
            raise PseudonymiseError(f"period {period!r} is not a month YYYY-MM or a year YYYY")
        if period not in self._periods:
            self._periods[period] = PeriodKeys(period, CryptoPAn(self._derive(b"cryptopan", period)),
                                               self._derive(b"mac-hmac-sha256", period))
        return self._periods[period]

    def fingerprint(self) -> str:
        """16 hex digits naming this secret without revealing it (for staged keys and lineage)."""
        return self._derive(b"fingerprint", "0000").hex()[:16]

    def _derive(self, purpose: bytes, period: str) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=purpose + b" " + period.encode())
        return hkdf.derive(self._master)


def parse_master_key(text: str, source: str) -> bytes:
    """The secret written as hex text (at least 64 hex digits); `source` names it in errors."""
    digits = text.strip()
    try:
        secret = bytes.fromhex(digits)
    except ValueError:
        raise PseudonymiseError(f"{source}: the pseudonymisation key is not hex text") from None
    if len(secret) < MASTER_KEY_BYTES:
        raise PseudonymiseError(f"{source}: the pseudonymisation key has {len(secret)} bytes; it needs at least "
                                f"{MASTER_KEY_BYTES} ({2 * MASTER_KEY_BYTES} hex digits)")
    return secret


def _is_inside(path: Path, folder: Path | str) -> bool:
    if "://" in str(folder):  # the data folder is on an object store: a local file is never inside it
        return False
    return path.expanduser().resolve().is_relative_to(Path(folder).expanduser().resolve())


def read_master_key_file(path: Path, data_dir: Path) -> bytes:
    """The secret in `path`, refused when it lies in `data_dir` or others may read it."""
    if _is_inside(path, data_dir):
        raise PseudonymiseError(f"{path}: the pseudonymisation key must not be inside the data folder {data_dir}")
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise PseudonymiseError(f"{path}: no such pseudonymisation key file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PseudonymiseError(f"{path}: cannot read the pseudonymisation key ({exc})") from None
    if mode & 0o077:
        raise PseudonymiseError(f"{path}: the pseudonymisation key is readable by others (mode {mode & 0o777:o}); "
                                f"run chmod 600 {path}")
    return parse_master_key(text, str(path))


def create_master_key_file(path: Path, data_dir: Path) -> Path:
    """Write a new random secret to `path` (mode 0600, never overwriting) and return its path."""
    path = path.expanduser()
    if _is_inside(path, data_dir):
        raise PseudonymiseError(f"{path}: the pseudonymisation key must not be inside the data folder {data_dir}")
    if path.exists():
        raise PseudonymiseError(f"{path}: a key file is already there; it is never overwritten")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, written = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    except OSError as exc:
        raise PseudonymiseError(f"{path}: cannot create the pseudonymisation key ({exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(MASTER_KEY_BYTES) + "\n")
            out.flush()
            os.fsync(out.fileno())
        # A hard link appears whole or not at all and never replaces a file: two processes loading at
        # once (Celery workers on a first run) never read half a key, and only one key is made.
        os.link(written, path)
    except FileExistsError:
        raise PseudonymiseError(f"{path}: a key file is already there; it is never overwritten") from None
    except OSError as exc:
        raise PseudonymiseError(f"{path}: cannot create the pseudonymisation key ({exc})") from None
    finally:
        os.unlink(written)
    return path.resolve()


def load_keys(key_file: Path | None, key_value: str | None, data_dir: Path,
              default_key_file: Path) -> tuple[PseudonymKeys, str]:
    """The keys from the configured file or value; with neither, from `default_key_file`,
    created on first use. Returns the keys and one line saying where they came from."""
    if key_file is not None and key_value:
        raise PseudonymiseError("both a pseudonymisation key file and a key value are set: set one")
    if key_value:
        return PseudonymKeys(parse_master_key(key_value, "the pseudonymisation key value")), \
            "pseudonymisation key: from the configured value"
    if key_file is not None:
        return PseudonymKeys(read_master_key_file(key_file, data_dir)), f"pseudonymisation key: {key_file}"
    if default_key_file.expanduser().exists():
        return PseudonymKeys(read_master_key_file(default_key_file.expanduser(), data_dir)), \
            f"pseudonymisation key: {default_key_file}"
    try:
        created = create_master_key_file(default_key_file, data_dir)
    except PseudonymiseError:
        if not default_key_file.expanduser().exists():
            raise
        # Another process created it since the check above: use that one.
        return PseudonymKeys(read_master_key_file(default_key_file.expanduser(), data_dir)), \
            f"pseudonymisation key: {default_key_file}"
    return PseudonymKeys(read_master_key_file(created, data_dir)), \
        f"pseudonymisation key: none configured, created {created} (mode 0600); keep it apart from the data"


# ---------------------------------------------------------------- networks

_ALL64 = (1 << 64) - 1


@dataclass(frozen=True)
class _Network:
    text: str
    version: int
    prefix_length: int
    masks: tuple[int, ...]  # IPv4: (mask,); IPv6: (high mask, low mask)
    values: tuple[int, ...]

    @staticmethod
    def parse(text: str) -> _Network:
        try:
            net = ipaddress.ip_network(text.strip(), strict=True)
        except ValueError as exc:
            raise PseudonymiseError(f"subscriber network {text!r} is not a network ({exc})") from None
        if net.version == 4:
            return _Network(str(net), 4, net.prefixlen, (int(net.netmask),), (int(net.network_address),))
        mask, value = int(net.netmask), int(net.network_address)
        return _Network(str(net), 6, net.prefixlen, (mask >> 64, mask & _ALL64), (value >> 64, value & _ALL64))

    def contains(self, words: np.ndarray) -> np.ndarray:
        inside = np.ones(len(words), dtype=bool)
        for i, (mask, value) in enumerate(zip(self.masks, self.values)):
            inside &= (words[:, i] & words.dtype.type(mask)) == words.dtype.type(value)
        return inside


@dataclass(frozen=True)
class SubscriberNetworks:
    """The address ranges on the subscriber's side; their prefixes are kept, the rest pseudonymised."""

    networks: tuple[_Network, ...]

    @staticmethod
    def parse(cidrs: Iterable[str]) -> SubscriberNetworks:
        """From CIDR texts, e.g. the comma-separated IOT_ASSETS_PSEUDONYMISE_NETWORKS; overlaps refused."""
        networks = tuple(_Network.parse(text) for text in cidrs if text.strip())
        parsed = [ipaddress.ip_network(n.text) for n in networks]
        for i, a in enumerate(parsed):
            for b in parsed[i + 1:]:
                if a.version == b.version and a.overlaps(b):
                    raise PseudonymiseError(f"subscriber networks {a} and {b} overlap: a pseudonym of one could "
                                            "be an address of the other")
        return SubscriberNetworks(networks)

    def of_version(self, version: int) -> list[_Network]:
        return [n for n in self.networks if n.version == version]

    def containing(self, words: np.ndarray, version: int) -> np.ndarray:
        inside = np.zeros(len(words), dtype=bool)
        for network in self.of_version(version):
            inside |= network.contains(words)
        return inside


DEFAULT_NETWORKS = SubscriberNetworks.parse(DEFAULT_SUBSCRIBER_NETWORKS)
_SPECIAL = SubscriberNetworks(tuple(_Network.parse(text) for text in _SPECIAL_NETWORKS))


# ---------------------------------------------------------------- addresses as text


def _v4_words(texts: pa.Array) -> np.ndarray | None:
    """(n, 1) uint32 of dotted quads, None when one of them is not a canonical dotted quad."""
    parts = pc.split_pattern(texts, ".")
    if not pc.all(pc.equal(pc.list_value_length(parts), 4)).as_py():
        return None
    flat = pc.list_flatten(parts)
    try:
        octets = pc.cast(flat, pa.uint8())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not pc.all(pc.equal(pc.cast(octets, pa.string()), flat)).as_py():  # "01", "+1", " 1"
        return None
    quads = octets.to_numpy(zero_copy_only=False).astype(np.uint32).reshape(-1, 4)
    return (quads[:, 0] << 24 | quads[:, 1] << 16 | quads[:, 2] << 8 | quads[:, 3]).reshape(-1, 1)


def _v4_texts(words: np.ndarray) -> pa.Array:
    octets = [pc.cast(pa.array(((words[:, 0] >> shift) & 0xFF).astype(np.uint8)), pa.string())
              for shift in (24, 16, 8, 0)]
    return pc.binary_join_element_wise(*octets, ".")


def _v6_words(texts: list[str]) -> np.ndarray | str:
    """(n, 2) uint64 of IPv6 texts, or the first text that is not an IPv6 address."""
    words = np.empty((len(texts), 2), np.uint64)
    for i, text in enumerate(texts):
        try:
            value = int(ipaddress.IPv6Address(text))
        except ValueError:
            return text
        words[i] = (value >> 64, value & _ALL64)
    return words


def _v6_texts(words: np.ndarray) -> list[str]:
    return [str(ipaddress.IPv6Address(int(hi) << 64 | int(lo))) for hi, lo in words]


def _first_bad_v4(texts: pa.Array) -> str:
    """The first text `_v4_words` refuses (by the same test, so one is always found)."""
    return next(t.as_py() for t in texts if _v4_words(pa.array([t.as_py()], pa.string())) is None)


# ---------------------------------------------------------------- address mapping


def _map_words(words: np.ndarray, version: int, cryptopan: CryptoPAn, networks: SubscriberNetworks,
               pseudonymise_remote: bool, inverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """The mapped words and which of them changed (were on the subscriber side, or remote)."""
    out = words.copy()
    changed = np.zeros(len(words), dtype=bool)
    forward, backward = (cryptopan.anonymise_v4, cryptopan.deanonymise_v4) if version == 4 else \
        (cryptopan.anonymise_v6, cryptopan.deanonymise_v6)
    crypt = backward if inverse else forward
    for network in networks.of_version(version):
        inside = network.contains(words)
        if inside.any():
            mapped = crypt(words[inside], network.prefix_length)
            out[inside] = mapped.reshape(-1, words.shape[1])
            changed |= inside
    if pseudonymise_remote:
        remote = ~networks.containing(words, version) & ~_SPECIAL.containing(words, version)
        walking = np.flatnonzero(remote)
        values = words[walking]
        # Cycle walking: a result outside the remote set is encrypted again, until it is inside.
        while len(walking):
            values = crypt(values, 0).reshape(-1, words.shape[1])
            out[walking] = values
            outside = networks.containing(values, version) | _SPECIAL.containing(values, version)
            walking, values = walking[outside], values[outside]
        changed |= remote
    return out, changed


def _map_unique_ips(texts: pa.Array, cryptopan: CryptoPAn, networks: SubscriberNetworks,
                    pseudonymise_remote: bool, inverse: bool = False) -> pa.Array | str:
    """Distinct address texts mapped; the first bad text instead when one is not an address."""
    texts = texts.cast(pa.string())
    is_v6 = pc.fill_null(pc.match_substring(texts, ":"), False).to_numpy(zero_copy_only=False)
    present = pc.is_valid(texts).to_numpy(zero_copy_only=False)
    out = texts
    v4_positions = np.flatnonzero(~is_v6 & present)
    if len(v4_positions):
        v4_texts = texts.take(pa.array(v4_positions))
        words = _v4_words(v4_texts)
        if words is None:
            return _first_bad_v4(v4_texts)
        mapped, changed = _map_words(words, 4, cryptopan, networks, pseudonymise_remote, inverse)
        out = _replace(out, v4_positions[changed], _v4_texts(mapped[changed]))
    v6_positions = np.flatnonzero(is_v6)
    if len(v6_positions):
        words = _v6_words(texts.take(pa.array(v6_positions)).to_pylist())
        if isinstance(words, str):
            return words
        mapped, changed = _map_words(words, 6, cryptopan, networks, pseudonymise_remote, inverse)
        out = _replace(out, v6_positions[changed], pa.array(_v6_texts(mapped[changed]), pa.string()))
    return out


def _replace(texts: pa.Array, positions: np.ndarray, replacements: pa.Array) -> pa.Array:
    if not len(positions):
        return texts
    mask = np.zeros(len(texts), dtype=bool)
    mask[positions] = True  # positions ascend: replace_with_mask fills the masked slots in order
    return pc.replace_with_mask(texts, pa.array(mask), replacements)


# ---------------------------------------------------------------- MACs


def _normalise_mac(mac: str) -> str | None:
    text = mac.strip().lower().rstrip(":") if isinstance(mac, str) else None
    return text if text is not None and _MAC.match(text) else None


def _mac_pseudonym(mac: str, mac_key: bytes) -> str:
    if mac in KEPT_MACS:
        return mac
    real = bytes.fromhex(mac.replace(":", ""))
    digest = bytearray(hmac.digest(mac_key, real, hashlib.sha256)[:6])
    # Locally administered (0x02) so it is never a vendor's MAC; the group bit (0x01) as in the real one.
    digest[0] = (digest[0] & 0xFC) | 0x02 | (real[0] & 0x01)
    return ":".join(f"{b:02x}" for b in digest)


def pseudonymise_mac(mac: str, keys: PseudonymKeys, period: str) -> str:
    """The pseudonym of one MAC in `period` (the same as in pseudonymised flows)."""
    normal = _normalise_mac(mac)
    if normal is None:
        raise PseudonymiseError(f"{mac!r} is not a MAC address")
    return _mac_pseudonym(normal, keys.period(period).mac_key)


def pseudonymise_ip(address: str, keys: PseudonymKeys, period: str, networks: SubscriberNetworks = DEFAULT_NETWORKS,
                    pseudonymise_remote: bool = False) -> str:
    """The pseudonym of one address in `period`; a remote peer is returned as is by default."""
    mapped = _map_unique_ips(pa.array([address], pa.string()), keys.period(period).cryptopan, networks,
                             pseudonymise_remote)
    if isinstance(mapped, str):
        raise PseudonymiseError(f"{address!r} is not an IP address")
    return mapped[0].as_py()


# ---------------------------------------------------------------- flow tables


def _where(flows: pa.Table, row: int) -> str:
    if "archive" in flows.column_names and "line_number" in flows.column_names:
        return f"{flows.column('archive')[row].as_py()} line {flows.column('line_number')[row].as_py()}"
    return f"row {row}"


def period_of(moment: date, rotation: str = "month") -> str:
    """The key period of a day or time (UTC): `YYYY-MM` for rotation "month", `YYYY` for "year"."""
    if rotation not in ROTATIONS:
        raise PseudonymiseError(f"rotation {rotation!r} is not one of {', '.join(ROTATIONS)}")
    if isinstance(moment, datetime) and moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}" if rotation == "month" else f"{moment.year:04d}"


def _periods(flows: pa.Table, rotation: str) -> tuple[list[str], np.ndarray]:
    """The distinct periods of `flow_start` and each row's index into them."""
    if rotation not in ROTATIONS:
        raise PseudonymiseError(f"rotation {rotation!r} is not one of {', '.join(ROTATIONS)}")
    start = flows.column("flow_start")
    if start.null_count:
        row = int(np.flatnonzero(pc.is_null(start).to_numpy(zero_copy_only=False))[0])
        raise PseudonymiseError(f"{_where(flows, row)}: flow_start is missing; the pseudonym's period is its month")
    years = pc.year(start).to_numpy().astype(np.int64)
    if rotation == "year":
        distinct, index = np.unique(years, return_inverse=True)
        return [f"{y:04d}" for y in distinct], index.reshape(-1)
    months = years * 12 + pc.month(start).to_numpy().astype(np.int64) - 1
    distinct, index = np.unique(months, return_inverse=True)
    return [f"{m // 12:04d}-{m % 12 + 1:02d}" for m in distinct], index.reshape(-1)


def _map_columns(flows: pa.Table, columns: tuple[str, ...], periods: list[str], period_of_row: np.ndarray,
                 map_unique) -> list[pa.Array]:
    """The columns mapped together (one mapping per period over their distinct values)."""
    n = flows.num_rows
    values = pa.concat_arrays([flows.column(c).combine_chunks().cast(pa.string()) for c in columns])
    encoded = pc.dictionary_encode(values)
    uniques = encoded.dictionary
    mapped = []
    for period in periods:
        result = map_unique(uniques, period)
        if isinstance(result, str):  # the first bad value
            position = int(np.flatnonzero(pc.equal(values, result).to_numpy(zero_copy_only=False))[0])
            raise PseudonymiseError(f"{_where(flows, position % n)}: {columns[position // n]} {result!r} "
                                    f"is not a valid {'address' if columns == IP_COLUMNS else 'MAC'}")
        mapped.append(result)
    indices = pc.fill_null(encoded.indices, 0).to_numpy()  # a null's row is masked below
    take = np.tile(period_of_row, len(columns)) * len(uniques) + indices
    out = pa.concat_arrays(mapped).take(pa.array(take, mask=~pc.is_valid(values).to_numpy(zero_copy_only=False)))
    return [out.slice(i * n, n) for i in range(len(columns))]


def pseudonymise_flows(flows: pa.Table, keys: PseudonymKeys, networks: SubscriberNetworks = DEFAULT_NETWORKS,
                       pseudonymise_remote: bool = False, rotation: str = "month") -> pa.Table:
    """A decoded-flow pyarrow Table (contracts.flows.DECODED_SCHEMA) with src/dst addresses and MACs
    pseudonymised under the keys of each row's `flow_start` period; other columns untouched."""
    missing = [c for c in ("flow_start", *IP_COLUMNS, *MAC_COLUMNS) if c not in flows.column_names]
    if missing:
        raise PseudonymiseError(f"the flow table lacks the column(s) {', '.join(missing)}")
    if flows.num_rows == 0:
        return flows
    periods, period_of_row = _periods(flows, rotation)

    def map_ips(uniques: pa.Array, period: str):
        return _map_unique_ips(uniques, keys.period(period).cryptopan, networks, pseudonymise_remote)

    def map_macs(uniques: pa.Array, period: str):
        mac_key = keys.period(period).mac_key
        out = []
        for mac in uniques.to_pylist():
            normal = _normalise_mac(mac)
            if normal is None:
                return mac
            out.append(_mac_pseudonym(normal, mac_key))
        return pa.array(out, pa.string())

    out = flows
    for columns, map_unique in ((IP_COLUMNS, map_ips), (MAC_COLUMNS, map_macs)):
        for name, array in zip(columns, _map_columns(flows, columns, periods, period_of_row, map_unique)):
            index = out.schema.get_field_index(name)
            out = out.set_column(index, out.schema.field(index), array.cast(out.schema.field(index).type))
    return out


# ---------------------------------------------------------------- re-identification


def reveal(pseudonym: str, keys: PseudonymKeys, period: str, audit_log: Path, operator: str, reason: str,
           candidate_macs: Iterable[str] = (), networks: SubscriberNetworks = DEFAULT_NETWORKS,
           pseudonymise_remote: bool = False) -> str:
    """The real address or MAC behind `pseudonym` in `period`, after one line is appended to
    `audit_log`. A MAC is found among `candidate_macs` (HMAC is not invertible)."""
    if not operator.strip() or not reason.strip():
        raise PseudonymiseError("reveal needs the operator's name and the reason, for the audit log")
    period_keys = keys.period(period)
    mac = _normalise_mac(pseudonym)
    real: str | None
    if mac is not None:
        kind = "mac"
        matches = {c for c in map(_normalise_mac, candidate_macs) if c and _mac_pseudonym(c, period_keys.mac_key) == mac}
        real = matches.pop() if len(matches) == 1 else None
        outcome = "revealed" if real else ("ambiguous" if matches else "not_among_candidates")
    else:
        kind = "ip"
        mapped = _map_unique_ips(pa.array([pseudonym], pa.string()), period_keys.cryptopan, networks,
                                 pseudonymise_remote, inverse=True)
        if isinstance(mapped, str):
            raise PseudonymiseError(f"{pseudonym!r} is neither an IP address nor a MAC")
        real = mapped[0].as_py()
        outcome = "in_clear" if real == pseudonym else "revealed"
    record = {"time_utc": datetime.now(UTC).isoformat(timespec="seconds"), "operator": operator,
              "reason": reason, "period": period, "kind": kind, "pseudonym": pseudonym, "outcome": outcome}
    try:
        audit_log.parent.mkdir(parents=True, exist_ok=True)
        with open(audit_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
            log.flush()
            os.fsync(log.fileno())
    except OSError as exc:
        raise PseudonymiseError(f"{audit_log}: cannot write the audit log, so nothing is revealed ({exc})") from None
    if real is None:
        raise RevealError(f"{pseudonym} ({period}): {outcome.replace('_', ' ')}; a MAC is revealed only by "
                          "matching it against the real MACs given as candidates")
    return real
