"""The in-memory data model every recjax component shares.

A `Dataset` is plain numpy: `Interactions` (one row per event), an optional
`Catalog` (one row per item, indexed by contiguous item index), `Vocab`s that
map raw ids of any type to contiguous indices, and the split (train / valid /
test plus held-out cold-start users and items). Nothing here imports JAX.

Shapes use N = number of events, I = number of items, L = taxonomy levels,
T = text tokens per item, D = image vector size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import numpy as np

EVENT_TYPES = ('view', 'click', 'cart', 'purchase', 'review')
EVENT_INDEX = {name: i for i, name in enumerate(EVENT_TYPES)}
DEVICES = ('unknown', 'desktop', 'mobile', 'tablet', 'app')


def check_event_types(names: Sequence[str], key: str) -> tuple[str, ...]:
  """`names` as a non-empty tuple of known event types.

  Raises:
    ValueError naming the config `key` and the unknown names.
  """
  names = (names,) if isinstance(names, str) else tuple(names)
  unknown = [n for n in names if n not in EVENT_INDEX]
  if unknown or not names:
    raise ValueError(f'{key}={names!r}: expected a non-empty subset of '
                     f'{list(EVENT_TYPES)}, unknown: {unknown}')
  return names


class DataError(ValueError):
  """A malformed input, located precisely.

  `str(err)` is `PATH:LINE: COLUMN: reason`; LINE counts from 1 with the
  header line included (for Parquet it is the row number + 1, as if a header
  line were present), so editors and humans can jump to it.
  """

  def __init__(self, path: str, line: Optional[int], column: Optional[str],
               reason: str):
    self.path, self.line, self.column, self.reason = path, line, column, reason
    where = f'{path}:{line if line is not None else 0}'
    super().__init__(f'{where}: {column or "-"}: {reason}')


@dataclasses.dataclass
class Interactions:
  """Events as parallel arrays of length N (contiguous indices, not raw ids).

  Attributes:
    user: int32 [N] user index.
    item: int32 [N] item index.
    timestamp: int64 [N] seconds since the epoch (or an order key when the
      source has no time, e.g. SASRec txt: the position in the file).
    event: int8 [N] index into EVENT_TYPES.
    rating: float32 [N], NaN where absent.
    device: int8 [N] index into DEVICES (0 = unknown).
    location: int32 [N] location index (0 = unknown).
    hour: int8 [N] local hour 0..23, -1 = unknown.
  """
  user: np.ndarray
  item: np.ndarray
  timestamp: np.ndarray
  event: np.ndarray
  rating: np.ndarray
  device: np.ndarray
  location: np.ndarray
  hour: np.ndarray

  FIELDS = ('user', 'item', 'timestamp', 'event', 'rating', 'device',
            'location', 'hour')
  DTYPES = dict(user=np.int32, item=np.int32, timestamp=np.int64,
                event=np.int8, rating=np.float32, device=np.int8,
                location=np.int32, hour=np.int8)

  def __post_init__(self):
    n = len(self.user)
    for f in self.FIELDS:
      arr = np.asarray(getattr(self, f), dtype=self.DTYPES[f])
      if arr.shape != (n,):
        raise ValueError(f'Interactions.{f} has shape {arr.shape}, want ({n},)')
      setattr(self, f, arr)

  @classmethod
  def create(cls, user, item, timestamp=None, event=None, rating=None,
             device=None, location=None, hour=None) -> 'Interactions':
    """Builds interactions, filling absent optional fields with defaults."""
    n = len(user)
    return cls(
        user=user, item=item,
        timestamp=np.arange(n) if timestamp is None else timestamp,
        event=np.full(n, EVENT_INDEX['click']) if event is None else event,
        rating=np.full(n, np.nan) if rating is None else rating,
        device=np.zeros(n) if device is None else device,
        location=np.zeros(n) if location is None else location,
        hour=np.full(n, -1) if hour is None else hour)

  def __len__(self) -> int:
    return len(self.user)

  def take(self, index: np.ndarray) -> 'Interactions':
    """Rows selected by a boolean mask or an integer index array."""
    return Interactions(**{f: getattr(self, f)[index] for f in self.FIELDS})

  @staticmethod
  def concat(parts: Sequence['Interactions']) -> 'Interactions':
    return Interactions(**{f: np.concatenate([getattr(p, f) for p in parts])
                           for f in Interactions.FIELDS})

  def pairs(self) -> np.ndarray:
    """Unique (user, item) pairs, int64 [P, 2], sorted by user then item."""
    key = np.unique(self.user.astype(np.int64) << 32 | self.item)
    return np.stack([key >> 32, key & 0xFFFFFFFF], axis=1)


@dataclasses.dataclass
class Catalog:
  """Per-item attributes, row i describes item index i (length I).

  Attributes:
    seller: int32 [I] seller index.
    taxonomy: int32 [I, L] category index at each level, root level first;
      the leaf category is taxonomy[:, -1]. Category indices are global
      across levels (one category vocabulary).
    price: float32 [I].
    margin: float32 [I] fraction of price.
    created_at: int64 [I] seconds since the epoch.
    text: int32 [I, T] token ids, 0 = padding.
    image: optional float32 [I, D] precomputed image vectors.
    category_parent: int32 [C] parent category index, -1 for roots.
  """
  seller: np.ndarray
  taxonomy: np.ndarray
  price: np.ndarray
  margin: np.ndarray
  created_at: np.ndarray
  text: np.ndarray
  category_parent: np.ndarray
  image: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.seller)

  @property
  def leaf_category(self) -> np.ndarray:
    return self.taxonomy[:, -1]


class Vocab:
  """Maps raw ids (any hashable printable type) to contiguous indices 0..n-1.

  Saved with the data as JSON so indices mean the same thing at serving time.
  """

  def __init__(self, raw_ids: Sequence[Any] = ()):
    self._raw = list(raw_ids)
    self._index = {r: i for i, r in enumerate(self._raw)}
    if len(self._index) != len(self._raw):
      raise ValueError('Vocab raw ids must be unique')

  @classmethod
  def fit(cls, values: np.ndarray) -> tuple['Vocab', np.ndarray]:
    """Builds a vocab in order of first appearance; returns (vocab, indices)."""
    uniq, first, inverse = np.unique(np.asarray(values), return_index=True,
                                     return_inverse=True)
    order = np.argsort(first, kind='stable')      # first-appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return cls(uniq[order].tolist()), rank[inverse].astype(np.int32)

  def __len__(self) -> int:
    return len(self._raw)

  def __contains__(self, raw) -> bool:
    return raw in self._index

  def index(self, raw) -> int:
    return self._index[raw]

  def lookup(self, raw_ids: Sequence[Any], default: int = -1) -> np.ndarray:
    return np.array([self._index.get(r, default) for r in raw_ids], np.int64)

  def raw(self, index: int):
    return self._raw[index]

  def to_json(self) -> list:
    return [r.item() if isinstance(r, np.generic) else r for r in self._raw]

  def save(self, path: str) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(self.to_json(), f)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> 'Vocab':
    with open(path) as f:
      return cls(json.load(f))


@dataclasses.dataclass
class Dataset:
  """Everything a model needs: the split, sizes, catalog and vocabularies.

  Attributes:
    name: short name, e.g. 'gowalla' or 'marketplace'.
    num_users, num_items: sizes of the user and item index spaces (including
      cold-start users/items that never appear in `train`).
    train: training interactions (the only ones graphs may be built from).
    test: evaluation interactions.
    valid: optional validation interactions.
    catalog: optional per-item attributes (None for LightGCN/SASRec txt).
    vocabs: name -> Vocab ('user', 'item', and where known 'seller',
      'category', 'location').
    cold_users: int32 [U_cold] users held out of training entirely.
    cold_items: int32 [I_cold] items held out of training entirely.
  """
  name: str
  num_users: int
  num_items: int
  train: Interactions
  test: Interactions
  valid: Optional[Interactions] = None
  catalog: Optional[Catalog] = None
  vocabs: dict = dataclasses.field(default_factory=dict)
  cold_users: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int32))
  cold_items: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(0, np.int32))

  @property
  def num_sellers(self) -> int:
    return 0 if self.catalog is None else int(self.catalog.seller.max()) + 1

  @property
  def num_categories(self) -> int:
    return 0 if self.catalog is None else len(self.catalog.category_parent)

  def summary(self) -> dict:
    return dict(name=self.name, users=self.num_users, items=self.num_items,
                train=len(self.train), test=len(self.test),
                valid=0 if self.valid is None else len(self.valid),
                cold_users=len(self.cold_users),
                cold_items=len(self.cold_items))
