"""Batched Crypto-PAn (iot_assets.core.pseudonymise) against `yacryptopan`, per address, in one run.

    python benchmarks/pseudonymise.py [--addresses 1000000] [--reference-sample 4000] [--archive PATH]

Measures, on the same addresses, with outputs checked equal:
  v4 unique    N distinct random IPv4 addresses (as integers): the batched core over all N;
               yacryptopan.anonymize_bin on a random sample of them (at ~2,500 addresses/s the
               whole set would take minutes); the rates are compared.
  v4 text      N address texts with a flow table's repetition (Zipf over 254 home addresses and
               20,000 remote peers), full Crypto-PAn text to text: batched (distinct values,
               then one take) against yacryptopan.anonymize with a dict cache (each distinct
               address once, as a plain implementation would); every output compared.
  v6 unique    N/10 distinct IPv6 addresses (EUI-64 link-local, ULA and global /64s): the batched
               core; yacryptopan on a sample.
  flows        (with --archive) decode_archive of a real archive, then pseudonymise_flows on its
               flows: rows per second of each, to show the pseudonymisation keeps pace.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from yacryptopan import CryptoPAn as ReferenceCryptoPAn

from iot_assets.core import pseudonymise as ps

KEY = bytes(range(32))  # the key of yacryptopan's own example; any 32 bytes would do


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def _v6_int(words: np.ndarray) -> list[int]:
    return [int(hi) << 64 | int(lo) for hi, lo in words]


def bench_v4_unique(n: int, sample: int, rng: np.random.Generator) -> None:
    addresses = np.unique(rng.integers(0, 2**32, int(n * 1.01), dtype=np.uint64).astype(np.uint32))
    addresses = rng.permutation(addresses)[:n]
    batched, batched_s = _timed(ps.CryptoPAn(KEY).anonymise_v4, addresses)
    reference = ReferenceCryptoPAn(KEY)
    picked = rng.choice(len(addresses), size=min(sample, len(addresses)), replace=False)
    expected, reference_s = _timed(lambda: [reference.anonymize_bin(int(a), 4) for a in addresses[picked]])
    assert expected == [int(b) for b in batched[picked]], "v4: batched differs from yacryptopan"
    _report("v4 unique", len(addresses), batched_s, len(picked), reference_s)


def _flow_like_texts(n: int, rng: np.random.Generator) -> np.ndarray:
    home = [f"192.168.1.{i}" for i in range(1, 255)]
    remote = [str(ipaddress.IPv4Address(int(a))) for a in rng.integers(1 << 24, 223 << 24, 20_000)]
    pool = np.array(home + remote, dtype=object)
    ranks = rng.zipf(1.3, size=n)
    return pool[(ranks - 1) % len(pool)]


def _batched_texts(texts: pa.Array, cryptopan: ps.CryptoPAn) -> pa.Array:
    encoded = pc.dictionary_encode(texts)
    words = ps._v4_words(encoded.dictionary)
    return ps._v4_texts(cryptopan.anonymise_v4(words[:, 0]).reshape(-1, 1)).take(encoded.indices)


def bench_v4_text(n: int, rng: np.random.Generator) -> None:
    texts = pa.array(_flow_like_texts(n, rng), pa.string())
    batched, batched_s = _timed(_batched_texts, texts, ps.CryptoPAn(KEY))
    reference = ReferenceCryptoPAn(KEY)

    def per_address() -> list[str]:
        cache: dict[str, str] = {}
        out = []
        for text in texts.to_pylist():
            if text not in cache:
                cache[text] = reference.anonymize(text)
            out.append(cache[text])
        return out

    expected, reference_s = _timed(per_address)
    assert expected == batched.to_pylist(), "v4 text: batched differs from yacryptopan"
    distinct = len(pc.unique(texts))
    _report(f"v4 text ({distinct:,} distinct)", n, batched_s, n, reference_s)


def _v6_addresses(n: int, rng: np.random.Generator) -> np.ndarray:
    kinds = rng.integers(0, 3, n)
    prefixes = np.array([0xFE80_0000_0000_0000, 0xFD12_3456_789A_0001, 0x2001_0DB8_0042_0000], dtype=np.uint64)
    high = prefixes[kinds] + (kinds == 2) * rng.integers(0, 1 << 16, n, dtype=np.uint64)
    # EUI-64 interface identifiers: ff:fe in the middle of a MAC, the universal bit flipped.
    mac = rng.integers(0, 1 << 48, n, dtype=np.uint64)
    low = ((mac >> np.uint64(24)) << np.uint64(40)) | np.uint64(0xFFFE << 24) | (mac & np.uint64(0xFFFFFF))
    low ^= np.uint64(0x0200_0000_0000_0000)
    words = np.unique(np.stack([high, low], axis=1), axis=0)
    return rng.permutation(words)


def bench_v6_unique(n: int, sample: int, rng: np.random.Generator) -> None:
    addresses = _v6_addresses(n, rng)
    batched, batched_s = _timed(ps.CryptoPAn(KEY).anonymise_v6, addresses)
    reference = ReferenceCryptoPAn(KEY)
    picked = rng.choice(len(addresses), size=min(sample, len(addresses)), replace=False)
    expected, reference_s = _timed(lambda: [reference.anonymize_bin(a, 6) for a in _v6_int(addresses[picked])])
    assert expected == _v6_int(batched[picked]), "v6: batched differs from yacryptopan"
    _report("v6 unique", len(addresses), batched_s, len(picked), reference_s)


def bench_flows(archive_path: Path) -> None:
    import pyarrow.parquet as pq

    from iot_assets.core.archive import find_archives
    from iot_assets.core.ingest import decode_archive

    archives, _ = find_archives(archive_path.parent)
    archive = next(a for a in archives if a.name == _archive_stem(archive_path))
    with tempfile.TemporaryDirectory() as tmp:
        _, decode_s = _timed(decode_archive, archive, Path(tmp) / "staged", date(2019, 6, 25), date(2019, 10, 10))
        flows = pq.read_table(Path(tmp) / "staged" / "flows.parquet")
    keys = ps.PseudonymKeys(KEY)
    _, pseudonymise_s = _timed(ps.pseudonymise_flows, flows, keys)
    print(f"{'flows ' + archive.name:<28} decode {flows.num_rows / decode_s:>12,.0f} rows/s   "
          f"pseudonymise_flows {flows.num_rows / pseudonymise_s:>12,.0f} rows/s   "
          f"({pseudonymise_s / decode_s:.1%} of the decode time)")


def _archive_stem(path: Path) -> str:
    return path.name.split(".tar.gz")[0]


def _report(name: str, batched_n: int, batched_s: float, reference_n: int, reference_s: float) -> None:
    batched_rate, reference_rate = batched_n / batched_s, reference_n / reference_s
    print(f"{name:<28} batched {batched_rate:>12,.0f} addresses/s ({batched_n:,} in {batched_s:.2f} s)   "
          f"yacryptopan {reference_rate:>10,.0f} addresses/s ({reference_n:,} in {reference_s:.2f} s)   "
          f"ratio {batched_rate / reference_rate:,.0f}x   outputs equal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--reference-sample", type=int, default=4_000)
    parser.add_argument("--archive", type=Path, help="a real archive, e.g. .../kddi-iot-2019/nature_remo.tar.gz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    bench_v4_unique(args.addresses, args.reference_sample, rng)
    bench_v4_text(args.addresses, rng)
    bench_v6_unique(args.addresses // 10, args.reference_sample // 4, rng)
    if args.archive:
        bench_flows(args.archive)


if __name__ == "__main__":
    main()
