"""Giving memory back between the days of a run and after a step.

A step process (a Celery worker, or the one process of an in-process run) lives on after a day
or a step is done; what pandas, NumPy and pyarrow freed stays in the process unless handed back:
- pyarrow's pool (jemalloc or mimalloc) keeps freed pages for reuse: `release_unused`;
- glibc keeps freed heap pages in its arenas, and after large arrays are freed it raises its
  mmap threshold, so later large arrays land on the heap too and stay resident when freed.
  `malloc_trim(0)` returns every free page. Measured on a full-scale 2-day run, one step per fresh
  process: it leaves a step's own peak as it was (within 5 MB) but the process holds 120-170 MB
  less after `clean_flows`, `line_views` and `device_windows` (452 against 572 MB, 430 against 601,
  586 against 755): what a Celery worker carries into its next step.

A full collection walks every tracked object: with the code location loaded (Dagster, pandas, the
assets) that is about 400,000 objects and 0.25 s a call, whatever the day's size; called per day and
asset that was 15 s of a 14-day sample's `daily_flows_job`. `freeze_long_lived()`, called once the code
location is loaded, leaves those objects out of every later collection (they live as long as the
process): a call then takes about 0.05 s. `iot-assets run` builds its definitions itself and freezes
them too (cli.py). Between the days of a step only the young generations are collected
(`between_days=True`): a day's frames are freed by their reference counts, the cycles a day makes
are young, and a full collection per day and asset was the largest fixed cost of a day partition
(benchmarks/day_cost.py); the full collection runs once per step, before it reads its inputs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pyarrow as pa

_libc = None


def _malloc_trim():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def freeze_long_lived() -> None:
    """Leave every object that exists now out of later collections: call once what lives for the process is loaded."""
    gc.collect()
    gc.freeze()


def release_unused_memory(between_days: bool = False) -> None:
    """Collect cycles (only the young ones `between_days`), then hand freed pages back to the operating system
    (pyarrow's pool, glibc's heap)."""
    gc.collect(1 if between_days else 2)
    pa.default_memory_pool().release_unused()
    _malloc_trim()
