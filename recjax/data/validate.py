"""Vectorised input checks shared by the readers in `recjax.data.readers`.

Every check reports through `DataError(path, line, column, reason)`, whose
`str` is `PATH:LINE: COLUMN: reason`. Lines count from 1 with the header line
included, so data row r (0-based) of a CSV file is line r + 2; Parquet rows
are reported the same way, as if the file had a header line.

Table columns are checked with pandas/numpy over whole columns; per-cell
checks only record the *first* failing row of each check (`np.flatnonzero`)
and `RowChecks.raise_first` raises the earliest one, so the message points at
the first bad line of the file whatever order the checks ran in.
"""

from __future__ import annotations

import gzip
import re
import os
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from recjax.data.schema import DataError

# Timestamps beyond this are surely not seconds (year ~146 billion) and would
# overflow int64 nanoseconds elsewhere.
_MAX_SECONDS = 2.0 ** 62
_NAN_WORDS = frozenset({'nan', 'na', 'n/a', 'null', 'none'})


def check_file(path: str) -> None:
  """Raises a DataError (line 0) unless `path` is an existing regular file."""
  if not os.path.exists(path):
    raise DataError(path, 0, '-', 'no such file')
  if os.path.isdir(path):
    raise DataError(path, 0, '-', 'is a directory, expected a file')


def read_bytes(path: str) -> bytes:
  """The file's bytes (gunzipped for `.gz`), or a DataError if unreadable."""
  check_file(path)
  try:
    with open(path, 'rb') as f:
      data = f.read()
    return gzip.decompress(data) if path.endswith('.gz') else data
  except (OSError, EOFError) as e:
    raise DataError(path, 0, '-', f'cannot read file: {e}') from None


def decode_utf8(path: str, data: bytes) -> str:
  """Decodes UTF-8 (dropping a BOM); the error names the first bad byte's line.

  Raises:
    DataError: at the line of the first byte that is not valid UTF-8, column
      '-', and 'empty file' (line 1) when there is nothing but whitespace.
  """
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data.count(b'\n', 0, e.start) + 1
    raise DataError(
        path, line, '-',
        f'invalid UTF-8 encoding (byte 0x{data[e.start]:02x} at offset '
        f'{e.start}); re-save the file as UTF-8') from None
  text = text.removeprefix('\ufeff')
  if not text.strip():
    raise DataError(path, 1, '-', 'empty file')
  return text


class RowChecks:
  """Collects the first failing row of each check; raises the earliest one.

  Args:
    path: file named in the error.
    line_of_row: maps a 0-based data row to the reported line number.
  """

  def __init__(self, path: str,
               line_of_row: Callable[[int], int] = lambda r: r + 2):
    self.path = path
    self.line_of_row = line_of_row
    self._found: list[tuple[int, str, str]] = []

  def check(self, bad: np.ndarray, column: str,
            reason: Callable[[int], str]) -> None:
    """Records `reason(row)` for the first row where bool [N] `bad` is set."""
    rows = np.flatnonzero(np.asarray(bad))
    if rows.size:
      row = int(rows[0])
      self._found.append((self.line_of_row(row), column, reason(row)))

  def add(self, row: int, column: str, reason: str) -> None:
    """Records a failure found by a cross-row check at 0-based `row`."""
    self._found.append((self.line_of_row(row), column, reason))

  def raise_first(self) -> None:
    if self._found:
      line, column, reason = min(self._found, key=lambda f: f[0])
      raise DataError(self.path, line, column, reason)


def is_text(s: pd.Series) -> bool:
  return not (pd.api.types.is_numeric_dtype(s.dtype) or
              pd.api.types.is_datetime64_any_dtype(s.dtype))


def empty_mask(s: pd.Series) -> np.ndarray:
  """bool [N]: the cell is missing (None/NaN/NaT) or blank text."""
  empty = s.isna().to_numpy().copy()
  if is_text(s):
    empty |= (s.astype(str).str.strip() == '').to_numpy()
  return empty


def strings(s: pd.Series) -> pd.Series:
  """Stripped text of every cell ('' where missing)."""
  return s.astype(object).where(s.notna(), '').astype(str).str.strip()


def _quote(s: pd.Series, row: int) -> str:
  return repr(s.iloc[row] if not is_text(s) else str(s.iloc[row]).strip())


def parse_ids(s: pd.Series, column: str, checks: RowChecks) -> np.ndarray:
  """Raw ids: int64 [N] when every value is an integer, else str objects [N].

  Integer text such as '42' becomes 42 (so CSV and Parquet files with the same
  ids agree); text with leading zeros or any non-integer keeps the whole
  column as strings, so no two distinct raw ids collide.
  """
  empty = empty_mask(s)
  checks.check(empty, column, lambda r: f'missing {column}')
  if pd.api.types.is_integer_dtype(s.dtype):
    return s.to_numpy(np.int64, na_value=0)
  if pd.api.types.is_float_dtype(s.dtype):
    v = s.to_numpy(np.float64)
    checks.check(~empty & (v != np.floor(v)), column,
                 lambda r: f'{column} must be an integer or text, got {v[r]!r}')
    return np.nan_to_num(v).astype(np.int64)
  text = strings(s)
  if text.str.fullmatch(r'0|-?[1-9][0-9]{0,17}').all():
    return pd.to_numeric(text).to_numpy(np.int64)
  return text.to_numpy(dtype=object)


def unify_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Makes two raw-id arrays comparable: ints become text if either is text."""
  if (a.dtype == object) != (b.dtype == object):
    a, b = (x.astype(str).astype(object) for x in (a, b))
  return a, b


def _numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(float64 values [N], empty [N], is-not-a-number text [N])."""
  empty = empty_mask(s)
  if not is_text(s):
    v = np.array(s.to_numpy(np.float64, na_value=np.nan))   # writable copy
    return v, empty, np.zeros(len(s), bool)
  text = strings(s)
  v = np.array(pd.to_numeric(text.where(~empty, 'nan'), errors='coerce'),
               np.float64)                          # writable copy
  nan_word = text.str.lower().isin(_NAN_WORDS).to_numpy()
  return v, empty, np.isnan(v) & ~empty & ~nan_word


def parse_time(s: pd.Series, column: str, checks: RowChecks,
               default: Optional[int] = None) -> np.ndarray:
  """Seconds since the epoch, int64 [N].

  Accepts integer or float seconds (floored) and ISO-8601 text (naive times
  are UTC). Purely numeric text is seconds, never a year.

  Args:
    default: value for empty cells; None makes an empty cell an error.
  """
  n = len(s)
  if pd.api.types.is_datetime64_any_dtype(s.dtype):
    dt = s.dt.tz_localize('UTC') if s.dt.tz is None else s.dt.tz_convert('UTC')
    secs = ((dt - pd.Timestamp(0, tz='UTC')) / pd.Timedelta(1, 's')).to_numpy(
        np.float64, na_value=np.nan)
    empty, bad_text = np.isnan(secs), np.zeros(n, bool)
  else:
    secs, empty, bad_text = _numbers(s)
    if bad_text.any():
      # Only the non-numeric cells go through the (slower) date parser.
      text = strings(s)[bad_text]
      dt = pd.to_datetime(text, format='ISO8601', utc=True, errors='coerce')
      iso = ((dt - pd.Timestamp(0, tz='UTC')) / pd.Timedelta(1, 's')).to_numpy(
          np.float64, na_value=np.nan)
      secs[bad_text] = iso
      bad_text[np.flatnonzero(bad_text)[~np.isnan(iso)]] = False
  checks.check(bad_text, column, lambda r: (
      f'{column} {_quote(s, r)} is neither seconds since the epoch nor an '
      'ISO-8601 date'))
  if default is None:
    checks.check(empty, column, lambda r: (
        f'empty {column}' if is_text(s) else f'missing {column} (null/NaN)'))
  nan = np.isnan(secs) & ~empty & ~bad_text
  checks.check(nan, column, lambda r: f'{column} is NaN')
  checks.check(np.isinf(secs), column,
               lambda r: f'{column} must be finite, got {_quote(s, r)}')
  checks.check(secs < 0, column, lambda r: (
      f'negative {column} {_quote(s, r)} (must be seconds since 1970)'))
  checks.check(np.isfinite(secs) & (secs >= _MAX_SECONDS), column,
               lambda r: f'{column} {_quote(s, r)} is out of range')
  ok = np.isfinite(secs) & (secs >= 0) & (secs < _MAX_SECONDS)
  return np.where(ok, np.floor(np.where(ok, secs, 0)),
                  0 if default is None else default).astype(np.int64)


def parse_float(s: pd.Series, column: str, checks: RowChecks,
                minimum: Optional[float] = None,
                default: Optional[float] = None) -> np.ndarray:
  """float32 [N]; finite, >= `minimum` if given; `default` fills empty cells.

  With default=None an empty cell is an error; pass np.nan to keep it as NaN.
  """
  v, empty, bad_text = _numbers(s)
  if default is not None:      # 'nan' / 'null' text means absent here too
    empty = empty | (np.isnan(v) & ~bad_text)
  low = '' if minimum is None else f' >= {minimum:g}'
  reason = lambda r: (
      f'{column} must be a finite number{low}, got {_quote(s, r)}')
  if default is None:
    checks.check(empty, column, lambda r: f'empty {column}')
  bad = bad_text | (~empty & ~np.isfinite(v))
  if minimum is not None:
    bad |= ~empty & (v < minimum)
  checks.check(bad, column, reason)
  fill = 0.0 if default is None else default
  return np.where(empty | bad, fill, v).astype(np.float32)


def parse_choice(s: pd.Series, column: str, choices: Sequence[str],
                 checks: RowChecks, default: Optional[int] = None
                 ) -> np.ndarray:
  """Index into `choices` (case-insensitive), int64 [N].

  Args:
    default: index for empty cells; None makes an empty cell an error.
  """
  empty = empty_mask(s)
  index = {c: i for i, c in enumerate(choices)}
  idx = strings(s).str.lower().map(index).to_numpy(np.float64, na_value=np.nan)
  allowed = ', '.join(choices)
  if default is None:
    checks.check(empty, column,
                 lambda r: f'empty {column} (allowed: {allowed})')
  checks.check(~empty & np.isnan(idx), column, lambda r: (
      f'unknown {column} {_quote(s, r)} (allowed: {allowed})'))
  fill = -1 if default is None else default
  return np.where(np.isnan(idx), fill, np.nan_to_num(idx)).astype(np.int64)


def parse_hour(s: pd.Series, column: str, checks: RowChecks) -> np.ndarray:
  """Hour of day 0..23 as int64 [N]; empty cells are -1 (unknown)."""
  v, empty, bad_text = _numbers(s)
  bad = ~empty & (bad_text | ~np.isfinite(v) | (v != np.floor(v)) |
                  (v < 0) | (v > 23))
  checks.check(bad, column, lambda r: (
      f'{column} must be an integer 0..23, got {_quote(s, r)}'))
  return np.where(empty | bad, -1, np.nan_to_num(v)).astype(np.int64)


def first_duplicate(keys: Sequence[np.ndarray]) -> Optional[tuple[int, int]]:
  """The earliest row repeating an earlier row on every key column.

  Args:
    keys: arrays [N] compared together (e.g. user, item, timestamp indices).

  Returns:
    (later_row, earlier_row) for the smallest later row, or None.
  """
  n = len(keys[0])
  if n < 2:
    return None
  if len(keys) == 1:        # a stable argsort is much faster than lexsort
    order = np.argsort(keys[0], kind='stable')
  else:
    order = np.lexsort((np.arange(n),) + tuple(reversed(keys)))
  same = np.ones(n - 1, bool)
  for k in keys:
    ks = k[order]
    same &= ks[1:] == ks[:-1]
  later = np.flatnonzero(same)
  if not later.size:
    return None
  # Rows are sorted by position within a group, so the minimal later row is
  # its group's second member and its predecessor is the group's first.
  j = later[np.argmin(order[later + 1])]
  return int(order[j + 1]), int(order[j])


# ----------------------------------------------------------------- txt files

_MAX_DIGITS = 18          # any such id fits int64


def scan_ints(path: str, field_name: Callable[[int], str]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Whitespace-separated non-negative integers of a txt file, vectorised.

  Works on the raw bytes with numpy (no per-token Python loop): digits are
  summed per token with their place values.

  Args:
    path: file to read.
    field_name: column name for an error in 0-based field f of a line.

  Returns:
    (values int64 [K], line int64 [K] 0-based line of each token,
    field int64 [K] 0-based index of each token within its line).

  Raises:
    DataError: missing/empty/non-UTF-8 file, a token that is not a
      non-negative integer, or one with more than 18 digits.
  """
  data = read_bytes(path)
  decode_utf8(path, data)                     # encoding and empty-file errors
  buf = np.frombuffer(data, np.uint8)
  is_digit = (buf >= ord('0')) & (buf <= ord('9'))
  is_space = np.isin(buf, np.frombuffer(b' \t\r\n', np.uint8))
  is_start = is_digit & ~np.r_[False, is_digit[:-1]]
  starts = np.flatnonzero(is_start)
  ends = np.flatnonzero(is_digit & ~np.r_[is_digit[1:], False]) + 1
  bad = np.flatnonzero(~(is_digit | is_space))[:1]
  long = starts[ends - starts > _MAX_DIGITS][:1]
  if bad.size or long.size:
    pos = int(min(np.r_[bad, long]))
    line_start = data.rfind(b'\n', 0, pos) + 1
    line_end = data.find(b'\n', pos)
    line_bytes = data[line_start:line_end if line_end >= 0 else len(data)]
    for field, m in enumerate(re.finditer(rb'\S+', line_bytes)):
      if m.start() <= pos - line_start < m.end():
        break
    token = m.group().decode('utf-8', 'replace')
    if bad.size and pos == bad[0]:
      reason = (f'negative id {token}' if re.fullmatch(r'-[0-9]+', token)
                else f'not a non-negative integer: {token!r}')
    else:
      reason = f'id {token} is too large'
    raise DataError(path, data.count(b'\n', 0, pos) + 1, field_name(field),
                    reason)
  if not starts.size:
    raise DataError(path, 1, '-', 'empty file')
  # value = sum over a token's digits of digit * 10^(digits to its right).
  token_of_digit = np.cumsum(is_start)[is_digit] - 1
  power = ends[token_of_digit] - 1 - np.flatnonzero(is_digit)
  digits = buf[is_digit].astype(np.int64) - ord('0')
  first_digit = np.r_[0, np.cumsum(ends - starts)[:-1]]
  values = np.add.reduceat(digits * 10 ** power, first_digit)
  line = np.cumsum(buf == ord('\n'))[starts]
  # field = token index minus the index of its line's first token.
  k = np.arange(len(starts))
  new_line = np.r_[True, line[1:] != line[:-1]]
  field = k - np.maximum.accumulate(np.where(new_line, k, 0))
  return values, line, field
