"""Column converters of the decoder: each kind of source value (times, hex, TCP flag letters, MACs,
addresses, seconds) to its typed column, with a mask of the values that are not what YAF writes.
Vectorised over pyarrow arrays; `core.decode` applies them per field of the flow contract."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from iot_assets.contracts.flows import END_REASONS, TCP_FLAG_BITS

# Each takes the values of one field and returns (converted values, bad mask).


def _matrix(text: pa.Array, width: int) -> np.ndarray:
    """The bytes of strings that all have `width` ASCII characters, as an (n, width) array."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset : text.offset + len(text) + 1]
    return np.frombuffer(text.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(len(text), width)


# Arrow to numpy and back by the buffers, without pyarrow's conversions: those copy, and
# the first one in a process imports pandas (see `skip_pyarrow_pandas_check`).


class _NoPandas:
    """An import finder that finds no pandas."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is not imported by the decode command", name=name)
        return None


def skip_pyarrow_pandas_check() -> None:
    """Spare a process that only decodes pyarrow's import of pandas (0.25-0.3 s of CPU,
    holding the GIL, in the first block's conversions).

    pyarrow asks once per process, on its first conversion of a Python or numpy value,
    whether pandas can be imported (to recognise pandas objects); here that one check finds
    no pandas. A later explicit use (`to_pandas`, `Table.from_pandas`) imports pandas as
    usual; what stays is that pyarrow takes no argument for a pandas object, so call this
    only in a process that hands pyarrow none (the `decode` command). Nothing is done
    when pandas is already imported.
    """
    import sys

    if "pandas" in sys.modules:
        return
    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


def _arrow(values: np.ndarray, type: pa.DataType | None = None, mask: np.ndarray | None = None) -> pa.Array:
    """A numpy array (booleans, or fixed-width numbers) as an Arrow array; `mask` True is null."""
    n = len(values)
    validity = None
    null_count = 0
    if mask is not None:
        null_count = int(np.count_nonzero(mask))
        if null_count:
            validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
    if values.dtype == bool:
        return pa.Array.from_buffers(pa.bool_(), n, [validity, pa.py_buffer(np.packbits(values, bitorder="little"))],
                                     null_count)
    type = type or pa.from_numpy_dtype(values.dtype)
    if pa.types.is_integer(type):
        values = values.astype(f"{'u' if pa.types.is_unsigned_integer(type) else ''}int{type.bit_width}", copy=False)
    data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(type, n, [validity, pa.py_buffer(data)], null_count)


def _bits(buffer: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    if n == 0 or buffer is None:
        return np.zeros(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), count=offset + n, bitorder="little")
    return bits[offset:].view(bool)


def _present(values) -> np.ndarray:
    """Which values are not null."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    validity = values.buffers()[0]
    if validity is None or values.null_count == 0:
        return np.ones(len(values), dtype=bool)
    return _bits(validity, values.offset, len(values))


def _mask(values) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as False."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return _bits(values.buffers()[1], values.offset, len(values)) & _present(values)


def _int64s(values) -> np.ndarray:
    """An int64-compatible Arrow array as numpy int64, nulls as 0."""
    values = pc.fill_null(values.cast(pa.int64()), 0)
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values)]


_TIME_FORMAT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,3})?$"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


# A time of 23 characters as `_TIME_FORMAT` has it, byte by byte ("0" for a digit).
_TIME_LAYOUT = np.frombuffer(b"0000-00-00 00:00:00.000", dtype=np.uint8)
_TIME_DIGIT = _TIME_LAYOUT == ord("0")
_EPOCH_DIGITS = np.frombuffer(b"1970-01-01 00:00:00.000", dtype=np.uint8)


def _time_digits(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The times as an (n, 23) matrix of digit values (`YYYY-MM-DD hh:mm:ss.fff`, the
    fraction padded with zeros) and which of them are well formed; a time that is not
    stands as 1970-01-01 in the matrix."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    if values.null_count == 0 and (np.diff(offsets) == 23).all():
        # YAF's times all have milliseconds: the regular expression's test, byte by byte.
        chars = _matrix(values, 23)
        well_formed = np.where(_TIME_DIGIT, (chars >= 48) & (chars <= 57), chars == _TIME_LAYOUT).all(axis=1)
        if not well_formed.all():
            chars = np.where(well_formed[:, None], chars, _EPOCH_DIGITS)
        return chars.astype(np.int64) - 48, well_formed
    well_formed = _mask(pc.match_substring_regex(values, _TIME_FORMAT))
    text = pc.if_else(_arrow(well_formed), values, "1970-01-01 00:00:00")
    text = pc.if_else(pc.equal(pc.binary_length(text), 19), pc.binary_join_element_wise(text, ".", ""), text)
    return _matrix(pc.utf8_rpad(text, width=23, padding="0"), 23).astype(np.int64) - 48, well_formed


def _parse_times(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """YAF's UTC times `2019-06-25 08:36:29.747` to timestamps; anything else, or a date or
    time that does not exist (`2019-02-30`, `24:00:00`, full-width digits), is bad."""
    n = len(values)
    if n == 0:
        return pa.array([], pa.timestamp("ms", tz="UTC")), np.zeros(0, dtype=bool)
    present = _present(values)
    digits, well_formed = _time_digits(values)

    def number(first: int, last: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        for i in range(first, last):
            out = out * 10 + digits[:, i]
        return out

    year, month, day = number(0, 4), number(5, 7), number(8, 10)
    hour, minute, second, milli = number(11, 13), number(14, 16), number(17, 19), number(20, 23)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_ok = (month >= 1) & (month <= 12)
    days_in_month = _DAYS_IN_MONTH[np.where(month_ok, month, 1)] + (leap & (month == 2))
    real = month_ok & (day >= 1) & (day <= days_in_month) & (hour < 24) & (minute < 60) & (second < 60)
    ok = well_formed & real
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    days = era * 146097 + year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year - 719468
    ms = (((days * 24 + hour) * 60 + minute) * 60 + second) * 1000 + milli
    bad = present & ~ok
    return _arrow(ms, pa.timestamp("ms", tz="UTC"), mask=~ok), bad


_HEX_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
_NIBBLE_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)


def _hex_to_int(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Hex strings with or without `0x` (at most 16 digits, below 2**63) to int64."""
    present = _present(values)
    lower = pc.utf8_lower(values)
    ok = _mask(pc.match_substring_regex(lower, "^(0x)?[0-9a-f]{1,16}$"))
    digits = pc.if_else(_arrow(ok), pc.replace_substring_regex(lower, pattern="^0x", replacement=""), "0")
    nibbles = _HEX_LUT[_matrix(pc.utf8_lpad(digits, width=16, padding="0"), 16)] if len(values) else np.zeros((0, 16), np.uint8)
    ok &= nibbles[:, 0] < 8  # past int64
    ints = (nibbles.astype(np.uint64) << _NIBBLE_SHIFTS).sum(axis=1, dtype=np.uint64).view(np.int64)
    return _arrow(ints, pa.int64(), mask=~ok), present & ~ok


def _tcp_flags_to_int(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Letters FSRPAUEC (or `0`) to the flag bits; any other character is bad."""
    mapped, bad = [], []
    for word in values.to_pylist():
        bits = 0
        ok = word is not None
        if ok and word != "0":
            for letter in word:
                if letter not in TCP_FLAG_BITS:
                    ok = False
                    break
                bits |= TCP_FLAG_BITS[letter]
        mapped.append(bits if ok else None)
        bad.append(word is not None and not ok)
    return pa.array(mapped, type=pa.int16()), np.array(bad, dtype=bool)


def _end_reason(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    words = values.to_pylist()
    out = pa.array([END_REASONS.get(w) for w in words], type=pa.string())
    return out, np.array([w is not None and w not in END_REASONS for w in words], dtype=bool)


_MAC = r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"
_IPV4 = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$"
_IPV6 = r"^[0-9a-fA-F:.]{2,45}$"


def _mac(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    out = pc.utf8_rtrim(pc.utf8_lower(values), characters=":")
    return out, _present(values) & ~_mask(pc.match_substring_regex(out, _MAC))


def _ip(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """IPv4 dotted quads, or IPv6 text (YAF writes both into the `*IPv4Address` fields)."""
    v4 = _mask(pc.match_substring_regex(values, _IPV4))
    v6 = _mask(pc.and_(pc.match_substring_regex(values, _IPV6), pc.match_substring(values, ":")))
    return values, _present(values) & ~(v4 | v6)


def _seconds_to_ms(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    ms = pc.round(pc.multiply(values, 1000.0))
    finite = pc.and_(pc.is_finite(ms), pc.less(pc.abs(ms), 2.0**62))
    ms = pc.if_else(finite, ms, None)
    return pc.cast(ms, pa.int64()), _present(values) & ~_mask(finite)


def _no_bad(values: pa.Array) -> np.ndarray:
    return np.zeros(len(values), dtype=bool)


def _per_distinct(convert: Callable[[pa.Array], tuple[pa.Array, np.ndarray]]):
    """Apply a string converter to the distinct values only: a block has few distinct MACs or flags."""

    def apply(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
        encoded = pc.dictionary_encode(values)
        out, bad = convert(encoded.dictionary)
        indices = encoded.indices
        bad_rows = _mask(pc.take(_arrow(bad), indices))
        return pc.take(out, indices), bad_rows

    return apply


_CONVERTERS: dict[str, Callable[[pa.Array], tuple[pa.Array, np.ndarray]]] = {
    "time": _parse_times,
    "seconds": _seconds_to_ms,
    "int": lambda v: (v, _no_bad(v)),
    "ip": _per_distinct(_ip),
    "mac": _per_distinct(_mac),
    "hex": _per_distinct(_hex_to_int),
    "tcp_flags": _per_distinct(_tcp_flags_to_int),
    "end_reason": _per_distinct(_end_reason),
    "text": lambda v: (v, _no_bad(v)),
}


