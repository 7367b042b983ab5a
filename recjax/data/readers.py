"""Readers from files on disk to `Dataset`s: LightGCN txt, SASRec txt, and
CSV / Parquet event logs with an optional item catalog.

Every malformed input raises one `DataError` whose `str` is
`PATH:LINE: COLUMN: reason`. LINE counts from 1 with the header line
included: CSV data row r (0-based) is line r + 2, and Parquet row r is
reported as line r + 2 too, as if the file had a header line. The txt readers
scan the file's bytes with numpy (`validate.scan_ints`) rather than splitting
tokens in Python, so gowalla (810k pairs) and ml-1m (1M lines) load in about a
second; the table readers validate whole columns at once with pandas.

CSV line numbers assume no quoted field spans several lines.
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import Optional

import numpy as np
import pandas as pd

from recjax.data import splits
from recjax.data import validate as V
from recjax.data.schema import (DataError, Dataset, DEVICES, EVENT_TYPES,
                                Catalog, Interactions, Vocab)

EVENT_COLUMNS = ('user_id', 'item_id', 'timestamp', 'event_type')
CATALOG_COLUMNS = ('item_id', 'seller_id', 'category', 'price')
MAX_TEXT_TOKENS = 32
_MAX_INDEX = 2**31 - 2          # so that max id + 1 still fits int32

log = logging.getLogger(__name__)


# ----------------------------------------------------------------- txt files

def _lightgcn_file(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(users int64 [P], items int64 [P]) of one LightGCN txt file."""
  values, line, field = V.scan_ints(
      path, lambda f: 'user' if f == 0 else 'item')
  big = np.flatnonzero(values > _MAX_INDEX)[:1]
  if big.size:
    col = 'user' if field[big[0]] == 0 else 'item'
    raise DataError(path, int(line[big[0]]) + 1, col,
                    f'id {values[big[0]]} is too large (max {_MAX_INDEX})')
  is_user = field == 0
  line_user = np.full(int(line[-1]) + 1, -1, np.int64)
  line_user[line[is_user]] = values[is_user]
  items, item_line = values[~is_user], line[~is_user]
  dup = V.first_duplicate([item_line << 31 | items])   # one key: faster sort
  if dup is not None:
    later = dup[0]
    raise DataError(path, int(item_line[later]) + 1, 'item',
                    f'duplicate item {items[later]} on this line')
  return line_user[item_line], items


def count_seen(train: Interactions, test: Interactions) -> int:
  """Number of test rows whose (user, item) pair also occurs in train."""
  key = lambda x: x.user.astype(np.int64) << 32 | x.item
  # Sort + binary search: several times faster than np.isin's hashing here.
  train_keys = np.sort(key(train))
  test_keys = key(test)
  at = np.minimum(np.searchsorted(train_keys, test_keys), len(train_keys) - 1)
  return int((train_keys[at] == test_keys).sum()) if len(train_keys) else 0


def read_lightgcn(path: str) -> Dataset:
  """Reads a LightGCN directory (train.txt, test.txt) or a single such file.

  Each line is `user item item ...` with 0-based ids (a line may hold just
  the user id; blank lines are skipped). Ids are kept as they are:
  num_users / num_items are the max id + 1 over both files, and the vocabs
  are identities. timestamp is the pair's position in its file. Test pairs
  that also occur in train are kept (the published splits have none) and
  logged; `count_seen` counts them.

  Args:
    path: a directory with train.txt and test.txt, or one txt file (then it
      is the train set and test is empty).

  Raises:
    DataError: missing file, bad token (column 'user' or 'item'), negative
      id, empty file, or an item repeated on a line.
  """
  if os.path.isdir(path):
    name = os.path.basename(os.path.normpath(path))
    parts = [_lightgcn_file(os.path.join(path, f))
             for f in ('train.txt', 'test.txt')]
  else:
    name = os.path.splitext(os.path.basename(path))[0]
    parts = [_lightgcn_file(path), (np.zeros(0, np.int64),) * 2]
  train, test = (Interactions.create(u, i, timestamp=np.arange(len(u)))
                 for u, i in parts)
  num_users = int(max((p[0].max() for p in parts if len(p[0])), default=-1)) + 1
  num_items = int(max((p[1].max() for p in parts if len(p[1])), default=-1)) + 1
  seen = count_seen(train, test)
  if seen:
    log.warning('%s: %d test pairs also occur in train', path, seen)
  return Dataset(name=name, num_users=num_users, num_items=num_items,
                 train=train, test=test,
                 vocabs=dict(user=Vocab(range(num_users)),
                             item=Vocab(range(num_items))))


def read_sasrec(path: str, num_valid: int = 1, valid_users: int = 0,
                seed: int = 0) -> Dataset:
  """Reads a SASRec txt file: `user item` per line, time-ordered per user.

  Raw ids (1-based in the standard ml-1m.txt) are mapped to 0-based indices
  by `Vocab.fit` (vocabs 'user' and 'item'); timestamp is the 1-based line
  number. Split by `splits.leave_last_out(num_valid)`: each user's last item
  is test and the `num_valid` before it valid (valid is None for 0), for
  every user or, with `valid_users` > 0, for that many users drawn with
  `seed` (the others train on them).

  Raises:
    DataError: missing or empty file, a line without exactly two fields, or
      a field that is not a non-negative integer.
  """
  values, line, field = V.scan_ints(
      path, lambda f: ('user', 'item')[f] if f < 2 else '-')
  counts = np.bincount(line)
  bad = np.flatnonzero(counts != 2)[:1]
  if bad.size:
    raise DataError(path, int(bad[0]) + 1, '-',
                    f'expected 2 fields "user item", got {counts[bad[0]]}')
  user_vocab, user = Vocab.fit(values[0::2])
  item_vocab, item = Vocab.fit(values[1::2])
  inter = Interactions.create(user, item, timestamp=line[0::2] + 1)
  train, valid, test = splits.leave_last_out(
      inter, num_valid=num_valid, valid_users=valid_users, seed=seed)
  return Dataset(name=os.path.splitext(os.path.basename(path))[0],
                 num_users=len(user_vocab), num_items=len(item_vocab),
                 train=train, valid=valid, test=test,
                 vocabs=dict(user=user_vocab, item=item_vocab))


# --------------------------------------------------------------- table files

def table_format(path: str, fmt: str = 'auto') -> str:
  """'csv' or 'parquet' from `fmt`, or from the extension when 'auto'."""
  if fmt in ('csv', 'parquet'):
    return fmt
  if fmt != 'auto':
    raise ValueError(f"fmt must be 'csv', 'parquet' or 'auto', got {fmt!r}")
  base = path.lower().removesuffix('.gz')
  if base.endswith(('.parquet', '.pq')):
    return 'parquet'
  if base.endswith(('.csv', '.txt')):
    return 'csv'
  raise DataError(path, 0, '-', "cannot tell the format from the extension; "
                  "pass fmt='csv' or fmt='parquet'")


def read_table(path: str, fmt: str, required: tuple[str, ...]) -> pd.DataFrame:
  """A CSV (all cells as text) or Parquet table with `required` columns.

  Raises:
    DataError: unreadable/empty file, malformed CSV, or a missing column
      (line 1, column = its name).
  """
  if table_format(path, fmt) == 'parquet':
    V.check_file(path)
    try:
      df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types.
      raise DataError(path, 0, '-',
                      f'not a readable Parquet file: {e}') from None
  else:
    text = V.decode_utf8(path, V.read_bytes(path))
    try:
      # Blank lines are kept (as empty rows) so row r stays on line r + 2.
      df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False,
                       skip_blank_lines=False)
    except pd.errors.ParserError as e:
      m = re.search(r'Expected (\d+) fields in line (\d+), saw (\d+)', str(e))
      if not m:
        raise DataError(path, 0, '-', f'malformed CSV: {e}') from None
      raise DataError(path, int(m[2]), '-',
                      f'expected {m[1]} fields, got {m[3]}') from None
    # Blank lines at the very end are not empty data rows.
    n = len(df)
    while n and not any(str(v).strip() for v in df.iloc[n - 1]):
      n -= 1
    df = df.iloc[:n]
  df.columns = [str(c).strip() for c in df.columns]
  for col in required:
    if col not in df.columns:
      raise DataError(path, 1, col, f'missing required column {col!r} '
                      f'(columns: {", ".join(df.columns)})')
  if not len(df):
    raise DataError(path, 1, '-', 'empty file (no data rows)')
  return df


def _category_levels(s: pd.Series, checks: V.RowChecks) -> pd.DataFrame:
  """Checks taxonomy paths 'A>B>C'; returns the stripped levels [I, L]."""
  text = V.strings(s)
  empty = (text == '').to_numpy()
  checks.check(empty, 'category', lambda r: 'empty category')
  parts = text.str.split('>', expand=True).fillna('')
  parts = parts.apply(lambda c: c.str.strip())
  levels = text.str.count('>').to_numpy() + 1
  ref = int(np.argmin(empty))               # first non-empty row
  want = levels[ref]
  checks.check(~empty & (levels != want), 'category', lambda r: (
      f'category {text.iloc[r]!r} has {levels[r]} levels, expected {want} '
      f'(as on line {checks.line_of_row(ref)})'))
  blank = (parts.iloc[:, :want] == '').any(axis=1).to_numpy()
  checks.check(~empty & blank & (levels == want), 'category', lambda r: (
      f'category {text.iloc[r]!r} has an empty level'))
  return parts.iloc[:, :want]


def _category_taxonomy(parts: pd.DataFrame
                       ) -> tuple[np.ndarray, np.ndarray, Vocab]:
  """Checked levels [I, L] -> (taxonomy int32 [I, L], parent [C], vocab).

  A category is identified by its whole path prefix ('A>B'), so equal names
  under different parents stay distinct and every category has one parent.
  """
  prefixes = [parts.iloc[:, 0]]
  for level in range(1, parts.shape[1]):
    prefixes.append(prefixes[-1] + '>' + parts.iloc[:, level])
  # Level-major order: roots get the smallest indices.
  vocab, flat = Vocab.fit(
      np.concatenate([p.to_numpy(object) for p in prefixes]))
  taxonomy = flat.reshape(parts.shape[1], len(parts)).T.astype(np.int32)
  parent = np.full(len(vocab), -1, np.int32)
  parent[taxonomy[:, 1:]] = taxonomy[:, :-1]
  return taxonomy, parent, vocab


def _text_tokens(s: pd.Series) -> tuple[np.ndarray, Vocab]:
  """Lower-cased whitespace tokens -> (int32 [I, T] ids, vocab); 0 = pad.

  T is the longest text capped at MAX_TEXT_TOKENS (at least 1).
  """
  tokens = V.strings(s).str.lower().str.split()
  width = max(1, min(MAX_TEXT_TOKENS, int(tokens.str.len().max())))
  flat = tokens.str[:width].explode().dropna()
  # Fitting '' first reserves index 0 for padding.
  vocab, ids = Vocab.fit(np.r_[np.array([''], object), flat.to_numpy(object)])
  rows = np.asarray(flat.index, np.int64)
  pos = flat.groupby(level=0).cumcount().to_numpy()
  text = np.zeros((len(s), width), np.int32)
  text[rows, pos] = ids[1:]
  return text, vocab


def _image(s: pd.Series, checks: V.RowChecks) -> np.ndarray:
  """Space-separated floats, same count on every row -> float32 [I, D].

  Only meaningful once `checks` has passed (ragged rows are not reshaped).
  """
  values = V.strings(s).str.split()
  size = values.str.len().to_numpy()
  checks.check(size == 0, 'image', lambda r: 'empty image')
  ref = int(np.argmax(size > 0))
  checks.check((size != size[ref]) & (size > 0), 'image', lambda r: (
      f'image has {size[r]} values, expected {size[ref]} '
      f'(as on line {checks.line_of_row(ref)})'))
  flat = values.explode().dropna()
  num = pd.to_numeric(flat, errors='coerce').to_numpy(np.float64)
  bad = np.flatnonzero(~np.isfinite(num))[:1]
  if bad.size:                 # flat is in row order: first bad = first row.
    checks.add(int(flat.index[bad[0]]), 'image',
               f'image value {flat.iloc[bad[0]]!r} is not a finite number')
  if (size != size[ref]).any() or bad.size:
    return np.zeros((len(s), 0), np.float32)
  return num.astype(np.float32).reshape(len(s), size[ref])


def read_catalog(path: str, fmt: str = 'auto'
                 ) -> tuple[Catalog, dict[str, Vocab], np.ndarray]:
  """Reads an item catalog (CSV or Parquet); row i describes item index i.

  Columns: item_id, seller_id, category ('A>B>C', the same number of levels
  on every row), price (>= 0); optional margin (default 0), created_at
  (seconds or ISO-8601; default 0), text, image (space-separated floats).

  Returns:
    (catalog, vocabs 'item', 'seller', 'category' and 'token' when there is
    text, raw item ids [I]).
  """
  df = read_table(path, fmt, CATALOG_COLUMNS)
  checks = V.RowChecks(path)
  n = len(df)
  item_raw = V.parse_ids(df['item_id'], 'item_id', checks)
  seller_raw = V.parse_ids(df['seller_id'], 'seller_id', checks)
  levels = _category_levels(df['category'], checks)
  price = V.parse_float(df['price'], 'price', checks, minimum=0.0)
  margin = (V.parse_float(df['margin'], 'margin', checks, default=0.0)
            if 'margin' in df else np.zeros(n, np.float32))
  created = (V.parse_time(df['created_at'], 'created_at', checks, default=0)
             if 'created_at' in df else np.zeros(n, np.int64))
  image = _image(df['image'], checks) if 'image' in df else None
  checks.raise_first()
  dup = V.first_duplicate([pd.factorize(item_raw)[0]])
  if dup is not None:
    raise DataError(path, checks.line_of_row(dup[0]), 'item_id',
                    f'duplicate item_id {item_raw[dup[0]]!r} (first on line '
                    f'{checks.line_of_row(dup[1])})')
  taxonomy, parent, category_vocab = _category_taxonomy(levels)
  seller_vocab, seller = Vocab.fit(seller_raw)
  vocabs = dict(item=Vocab(item_raw.tolist()), seller=seller_vocab,
                category=category_vocab)
  if 'text' in df:
    text, vocabs['token'] = _text_tokens(df['text'])
  else:
    text = np.zeros((n, 1), np.int32)
  catalog = Catalog(seller=seller, taxonomy=taxonomy, price=price,
                    margin=margin, created_at=created, text=text,
                    category_parent=parent, image=image)
  return catalog, vocabs, item_raw


# ---------------------------------------------------------------- event logs

def read_events(path: str, catalog: Optional[str] = None, fmt: str = 'auto',
                allow_duplicates: bool = False
                ) -> tuple[Interactions, Optional[Catalog], dict[str, Vocab]]:
  """Reads a CSV or Parquet event log, and optionally its item catalog.

  Columns: user_id, item_id (raw ids of any type), timestamp (seconds since
  the epoch, or ISO-8601 text), event_type (one of EVENT_TYPES, any case);
  optional rating (float, empty = NaN), device (one of DEVICES, empty =
  unknown), location (any text; index 0 = unknown/empty), hour (0..23, empty
  = unknown). Errors name `line = row + 2` for CSV and Parquet alike.

  Args:
    path: the event file.
    catalog: optional catalog file (see `read_catalog`); then every event
      item must be in it and item indices follow the catalog's rows.
    fmt: 'csv', 'parquet' or 'auto' (by extension) for `path`; the catalog's
      format comes from its own extension, else `fmt`.
    allow_duplicates: keep rows repeating an earlier (user_id, item_id,
      timestamp) instead of raising.

  Returns:
    (interactions in file order, catalog or None, vocabs: 'user', 'item',
    'location' when present, plus the catalog's 'seller', 'category' and
    'token').
  """
  df = read_table(path, fmt, EVENT_COLUMNS)
  checks = V.RowChecks(path)
  user_raw = V.parse_ids(df['user_id'], 'user_id', checks)
  item_raw = V.parse_ids(df['item_id'], 'item_id', checks)
  fields = dict(
      timestamp=V.parse_time(df['timestamp'], 'timestamp', checks),
      event=V.parse_choice(df['event_type'], 'event_type', EVENT_TYPES, checks))
  if 'rating' in df:
    fields['rating'] = V.parse_float(df['rating'], 'rating', checks,
                                     default=np.nan)
  if 'device' in df:
    fields['device'] = V.parse_choice(df['device'], 'device', DEVICES, checks,
                                      default=0)
  if 'hour' in df:
    fields['hour'] = V.parse_hour(df['hour'], 'hour', checks)
  checks.raise_first()
  vocabs = {}
  user_vocab, user = Vocab.fit(user_raw)
  if 'location' in df:
    # Fitting '' first reserves index 0 for unknown / empty.
    loc = V.strings(df['location']).to_numpy(object)
    vocabs['location'], ids = Vocab.fit(np.r_[np.array([''], object), loc])
    fields['location'] = ids[1:]

  cat = None
  if catalog is None:
    vocabs['item'], item = Vocab.fit(item_raw)
  else:
    try:
      cat_fmt = table_format(catalog)
    except DataError:
      cat_fmt = table_format(path, fmt)
    cat, cat_vocabs, cat_raw = read_catalog(catalog, cat_fmt)
    vocabs.update(cat_vocabs)
    item_raw, cat_raw = V.unify_ids(item_raw, cat_raw)
    item = pd.Index(cat_raw).get_indexer(item_raw)
    checks.check(item < 0, 'item_id', lambda r: (
        f'item {item_raw[r]!r} is not in the catalog {catalog}'))
  if not allow_duplicates:
    dup = V.first_duplicate([user, item, fields['timestamp']])
    if dup is not None:
      later, earlier = dup
      checks.add(later, '-', (
          f'duplicate event (user_id={user_raw[later]!r}, item_id='
          f'{item_raw[later]!r}, timestamp={df["timestamp"].iloc[later]}) '
          f'first seen on line {checks.line_of_row(earlier)}; pass '
          'allow_duplicates=True to keep repeated events'))
  checks.raise_first()
  vocabs['user'] = user_vocab
  return Interactions.create(user, item, **fields), cat, vocabs


def make_dataset(inter: Interactions, catalog: Optional[Catalog],
                 vocabs: dict[str, Vocab], name: str, split: str = 'temporal',
                 test_frac: float = 0.2, seed: int = 0,
                 cold_user_frac: float = 0.0, cold_item_frac: float = 0.0,
                 num_valid: int = 0) -> Dataset:
  """Splits events into a Dataset with `recjax.data.splits`.

  Cold users/items (if any fraction is > 0) are removed from training
  entirely; their rows go to test, where `np.isin(test.user, cold_users)`
  selects the cold-start slice. Test rows whose pair is in train (and
  repeats) are dropped with `splits.drop_seen`.

  Args:
    split: 'temporal' (global time cut-off at the 1 - test_frac quantile),
      'random' (per-user random test_frac) or 'leave_last_out' (each user's
      last event; `num_valid` events before it become valid).
  """
  if split not in ('temporal', 'random', 'leave_last_out'):
    raise ValueError(f"split must be 'temporal', 'random' or "
                     f"'leave_last_out', got {split!r}")
  num_users = len(vocabs['user'])
  num_items = len(catalog) if catalog is not None else len(vocabs['item'])
  cold = None
  cold_users = cold_items = np.zeros(0, np.int32)
  if cold_user_frac > 0 or cold_item_frac > 0:
    inter, cold, cold_users, cold_items = splits.hold_out_cold(
        inter, num_users, num_items, cold_user_frac, cold_item_frac, seed)
  valid = None
  if split == 'temporal':
    train, test = splits.temporal_split(inter, test_frac=test_frac)
  elif split == 'random':
    train, test = splits.random_holdout(inter, test_frac=test_frac, seed=seed)
  else:
    train, valid, test = splits.leave_last_out(inter, num_valid=num_valid)
  if cold is not None:
    test = Interactions.concat([test, cold])
  return Dataset(name=name, num_users=num_users, num_items=num_items,
                 train=train, valid=valid,
                 test=splits.drop_seen(test, train), catalog=catalog,
                 vocabs=vocabs, cold_users=cold_users, cold_items=cold_items)


def read_events_dataset(path: str, catalog: Optional[str] = None,
                        fmt: str = 'auto', allow_duplicates: bool = False,
                        name: Optional[str] = None, **split_kwargs) -> Dataset:
  """`read_events` then `make_dataset` (split_kwargs go to the latter)."""
  inter, cat, vocabs = read_events(path, catalog, fmt, allow_duplicates)
  if name is None:
    name = os.path.basename(path).split('.')[0]
  return make_dataset(inter, cat, vocabs, name, **split_kwargs)
