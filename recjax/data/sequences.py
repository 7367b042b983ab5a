"""Per-user histories for sequence models: padded arrays, features, batches.

A `Sequences` holds one row per user: the user's most recent events, right-
aligned in a fixed width L (left-padded, so the latest event is always in
column L - 1, as SASRec does). Besides the item (index + 1, so 0 is
padding) each position carries its event type, a log-bucketed time gap to
the previous event and the context fields (device, local hour, location).

Protocols (`eval_set`):
  leave-last-out  a Dataset from `read_sasrec` (or split 'leave_last_out'):
                  train on all but each user's last 2 events, validate on
                  the second-to-last (history = train), test on the last
                  (history = train + valid), as SASRec does.
  temporal        any Dataset with a time cut-off (the synthetic
                  marketplace): history = the user's training events,
                  targets = all of the user's test items.

`SequenceBatcher` serves training rows in deterministic per-step batches of
a few static widths (length buckets: ml-1m's truncated mean length is about
half of its 200 cap, so bucketing halves the work); `to_tf_dataset` wraps the
same arrays in a tf.data pipeline. Nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from recjax.data.schema import Dataset, Interactions

NUM_GAP_BUCKETS = 32        # 0 pad, 1 first event, 2.. log2(1 + seconds)
FEATURES = ('item', 'event', 'gap', 'device', 'hour', 'location')


def gap_buckets(timestamp: np.ndarray, first: np.ndarray) -> np.ndarray:
  """Log-bucketed seconds since the previous event, int8 [N].

  Args:
    timestamp: int64 [N] event times, ordered within each user.
    first: bool [N], True where a user's history starts (bucket 1).

  Returns:
    2 + floor(log2(1 + gap)) capped at NUM_GAP_BUCKETS - 1; 1 for first
    events. Gaps span seconds to months in a handful of buckets.
  """
  gap = np.diff(timestamp, prepend=timestamp[:1]).astype(np.float64)
  b = 2 + np.floor(np.log2(1.0 + np.maximum(gap, 0.0)))
  b = np.minimum(b, NUM_GAP_BUCKETS - 1)
  return np.where(first, 1, b).astype(np.int8)


@dataclasses.dataclass
class Sequences:
  """Histories of S users, right-aligned in width L (0 = padding).

  Attributes:
    users: int32 [S] user index of each row.
    item: int32 [S, L] item index + 1.
    event: int8 [S, L] index into EVENT_TYPES (the deepest event when
      repeats were collapsed).
    gap: int8 [S, L] `gap_buckets` of the time since the previous event.
    device: int8 [S, L] index into DEVICES.
    hour: int8 [S, L] local hour + 1 (0 = unknown or padding).
    location: int32 [S, L] location index.
    length: int32 [S] valid positions in each row (<= L).
    seen: list of S int arrays, every item (0-based) in the user's full
      history, truncated or not: what full ranking masks.
  """
  users: np.ndarray
  item: np.ndarray
  event: np.ndarray
  gap: np.ndarray
  device: np.ndarray
  hour: np.ndarray
  location: np.ndarray
  length: np.ndarray
  seen: list

  @property
  def width(self) -> int:
    return self.item.shape[1]

  def take(self, rows) -> 'Sequences':
    """The sub-batch of `rows` (an index array)."""
    rows = np.asarray(rows)
    arrays = {f.name: getattr(self, f.name)[rows]
              for f in dataclasses.fields(self) if f.name != 'seen'}
    return Sequences(seen=[self.seen[r] for r in rows], **arrays)

  def features(self, rows, width: Optional[int] = None) -> dict:
    """The feature arrays [len(rows), w] of `rows`, keeping the last `width`
    columns, plus 'user': each row's user index repeated along the window
    (models with a user node, e.g. the hybrid's graph user, read it; one
    shape for every feature keeps batching and sharding uniform)."""
    w = width or self.width
    out = {f: getattr(self, f)[rows, self.width - w:] for f in FEATURES}
    out['user'] = np.repeat(self.users[rows][:, None], w, axis=1)
    return out


def _ordered(inter: Interactions, collapse_repeats: bool) -> Interactions:
  """Events sorted by user then time; optionally one row per repeat run.

  Marketplace funnels emit view, click, cart... of one item seconds apart;
  collapsing consecutive repeats of an item keeps one position per item
  visit, carrying its deepest event type, so next-item targets are new
  items rather than the same item's next funnel stage.
  """
  order = np.lexsort((np.arange(len(inter)), inter.timestamp, inter.user))
  inter = inter.take(order)
  if not collapse_repeats or len(inter) < 2:
    return inter
  same = np.r_[False, (inter.user[1:] == inter.user[:-1])
               & (inter.item[1:] == inter.item[:-1])]
  run = np.cumsum(~same) - 1
  deepest = np.zeros(run[-1] + 1, np.int8)
  np.maximum.at(deepest, run, inter.event)
  keep = inter.take(~same)
  keep.event = deepest
  return keep


def build(inter: Interactions, num_users: int, width: int,
          users: Optional[np.ndarray] = None,
          collapse_repeats: bool = False,
          stride: Optional[int] = None,
          min_length: int = 1) -> Sequences:
  """Pads each user's last `width` events into a `Sequences`.

  Args:
    inter: events of any order (sorted here by user, time, file order).
    num_users: size of the user index space.
    width: L, the padded length.
    users: rows to build, in this order (default: users with events).
    collapse_repeats: merge consecutive events on the same item.
    stride: None: one row per user, its last `width` events. s: also the
      earlier windows ending s, 2s, ... events before the last that still
      hold `min_length` events (rows of one user are adjacent, latest
      first), so long histories are not cut at `width`.
    min_length: the shortest earlier window kept (with `stride`).
  """
  inter = _ordered(inter, collapse_repeats)
  counts = np.bincount(inter.user, minlength=num_users)
  starts = np.r_[0, np.cumsum(counts)[:-1]]
  if users is None:
    users = np.flatnonzero(counts)
  users = np.asarray(users, np.int32)
  ends = counts[users]
  if stride is not None:
    if stride < 1:
      raise ValueError(f'stride must be >= 1, got {stride}')
    # Windows j = 0.. end j * stride events before the last; j = 0 always.
    extra = np.maximum((ends - min_length) // stride, 0)
    per_user = 1 + extra
    j = np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user,
                                               per_user)
    users = np.repeat(users, per_user)
    ends = np.repeat(ends, per_user) - j * stride
  first = np.r_[True, inter.user[1:] != inter.user[:-1]]
  cols = dict(item=inter.item + 1, event=inter.event,
              gap=gap_buckets(inter.timestamp, first), device=inter.device,
              hour=inter.hour.astype(np.int16) + 1, location=inter.location)
  n = np.minimum(ends, width)
  # Column c of row r holds event starts + end - width + c (if >= start).
  c = np.arange(width)[None, :]
  src = (starts[users] + ends)[:, None] - width + c
  valid = c >= (width - n)[:, None]
  src = np.where(valid, src, 0)
  out = {}
  for name, col in cols.items():
    dtype = np.int32 if name in ('item', 'location') else np.int8
    out[name] = np.where(valid, col[src] if len(col) else 0, 0).astype(dtype)
  seen = [inter.item[s:s + k] for s, k in zip(starts[users], counts[users])]
  return Sequences(users=users, length=n.astype(np.int32), seen=seen, **out)


# ----------------------------------------------------------- protocols

@dataclasses.dataclass
class EvalSet:
  """Histories and held-out targets for one evaluation split.

  Attributes:
    name: 'valid' or 'test'.
    history: Sequences (width L) of the evaluated users.
    targets: int32 [S, W] held-out items (0-based), -1 padded; column 0 is
      the next item (what sampled metrics rank).
  """
  name: str
  history: Sequences
  targets: np.ndarray


def _grouped(inter: Interactions, users: np.ndarray, num_users: int):
  order = np.lexsort((np.arange(len(inter)), inter.timestamp, inter.user))
  u, items = inter.user[order], inter.item[order]
  counts = np.bincount(u, minlength=num_users)
  starts = np.r_[0, np.cumsum(counts)[:-1]]
  width = max(1, int(counts[users].max(initial=1)))
  col = np.arange(width)[None, :]
  mask = col < counts[users][:, None]
  src = np.where(mask, starts[users][:, None] + col, 0)
  return np.where(mask, items[src] if len(items) else 0, -1).astype(np.int32)


def restrict_targets(es: EvalSet, items: np.ndarray) -> Optional[EvalSet]:
  """The slice of `es` whose targets are in `items` (e.g. the cold-start
  items): other targets become -1, users left without one are dropped;
  None if nobody is left."""
  keep = np.isin(es.targets, items) & (es.targets >= 0)
  rows = np.flatnonzero(keep.any(1))
  if not len(rows):
    return None
  t = np.where(keep[rows], es.targets[rows], -1)
  # Targets first in each row (column 0 is what sampled protocols rank).
  t = t[np.arange(len(rows))[:, None],
        np.argsort(t < 0, axis=1, kind='stable')]
  return EvalSet(f'{es.name}_slice', es.history.take(rows), t)


def among(es: EvalSet, items: np.ndarray) -> Optional[EvalSet]:
  """`es` re-indexed to rank only `items` (sorted 0-based ids, e.g. the
  cold-start items): targets and masked history items become positions in
  `items`, others are dropped, users left without a target are dropped.
  Model inputs (the history windows) are unchanged; score the result
  against keys[items]."""
  items = np.asarray(items)
  es = restrict_targets(es, items)
  if es is None:
    return None
  t = es.targets
  pos = np.searchsorted(items, np.maximum(t, 0))
  targets = np.where(t >= 0, pos, -1).astype(np.int32)
  h = es.history
  seen = [np.searchsorted(items, x[np.isin(x, items)]).astype(np.int32)
          for x in map(np.asarray, h.seen)]
  return EvalSet(f'{es.name}_among', dataclasses.replace(h, seen=seen),
                 targets)


def eval_set(ds: Dataset, width: int, which: str = 'test',
             collapse_repeats: bool = False) -> Optional[EvalSet]:
  """Histories and targets for `which` ('valid' or 'test').

  Leave-last-out: the test history includes the validation event. Users
  without history (cold-start users) or without targets are left out.
  Returns None for 'valid' when the Dataset has no validation split.
  """
  if which == 'valid':
    if ds.valid is None or not len(ds.valid):
      return None
    history, target = ds.train, ds.valid
  elif which == 'test':
    history, target = ds.train, ds.test
    if ds.valid is not None and len(ds.valid):
      history = Interactions.concat([ds.train, ds.valid])
  else:
    raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
  has_hist = np.bincount(history.user, minlength=ds.num_users) > 0
  users = np.unique(target.user)
  users = users[has_hist[users] & ~np.isin(users, ds.cold_users)]
  if not len(users):
    raise ValueError(f'{which}: no user has both a history and a target')
  hist = build(history, ds.num_users, width, users, collapse_repeats)
  return EvalSet(which, hist, _grouped(target, users, ds.num_users))


def train_sequences(ds: Dataset, width: int, min_length: int = 2,
                    collapse_repeats: bool = False,
                    stride: Optional[int] = None) -> Sequences:
  """Training histories (width L), users with at least `min_length` events.

  For next-item training pass width = max_len + 1: inputs are columns
  [:-1] and targets [1:]. `stride` (see `build`) adds the earlier windows
  of histories longer than L: stride L - 1 for next-item training (windows
  overlap by one event, so every event is a target exactly once), L for
  Cloze training.
  """
  seqs = build(ds.train, ds.num_users, width, None, collapse_repeats,
               stride=stride, min_length=min_length)
  keep = np.flatnonzero(seqs.length >= min_length)
  return Sequences(users=seqs.users[keep],
                   **{f: getattr(seqs, f)[keep] for f in FEATURES},
                   length=seqs.length[keep],
                   seen=[seqs.seen[i] for i in keep])


# ------------------------------------------------------------- batching

def bucket_widths(width: int, buckets: Sequence[int]) -> tuple[int, ...]:
  """Sorted distinct widths <= width, always ending with width itself."""
  return tuple(sorted({int(b) for b in buckets if 0 < b < width} | {width}))


class SequenceBatcher:
  """Deterministic training batches of rows with a few static widths.

  Each epoch permutes the rows, groups them by length bucket (stable, so
  the order within a bucket stays random), cuts consecutive groups of B
  rows and shuffles the batches; a batch is as wide as the bucket of its
  longest row. Columns are the rows' last `w` columns, so position p from
  the end is the same column in every width and results equal those of
  the full width. The last partial batch of an epoch is dropped.

  Args:
    seqs: training Sequences.
    batch_size: B.
    buckets: candidate widths (the full width is always one).
    seed: base seed; `batch(step)` depends only on (seed, step).
  """

  def __init__(self, seqs: Sequences, batch_size: int,
               buckets: Sequence[int] = (), seed: int = 0):
    if len(seqs.users) < batch_size:
      raise ValueError(f'batch_size {batch_size} exceeds the '
                       f'{len(seqs.users)} training sequences; lower '
                       'train.batch_size')
    self.seqs, self.batch_size, self.seed = seqs, batch_size, seed
    self.widths = bucket_widths(seqs.width, buckets)
    self.bucket = np.searchsorted(self.widths, seqs.length)
    self._epoch, self._plan = -1, None

  @property
  def steps_per_epoch(self) -> int:
    return len(self.seqs.users) // self.batch_size

  def _epoch_plan(self, epoch: int):
    rng = np.random.default_rng([self.seed, epoch])
    perm = rng.permutation(len(self.seqs.users))
    perm = perm[np.argsort(self.bucket[perm], kind='stable')]
    b = self.batch_size
    rows = perm[:self.steps_per_epoch * b].reshape(-1, b)
    rows = rows[rng.permutation(len(rows))]
    return rows, self.bucket[rows].max(axis=1)

  def _rows(self, step: int):
    epoch, offset = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._plan, self._epoch = self._epoch_plan(epoch), epoch
    return self._plan[0][offset], self._plan[1][offset]

  def batch(self, step: int) -> dict:
    """Feature arrays [B, w] of training step `step` (w: its bucket)."""
    rows, bucket = self._rows(step)
    return self.seqs.features(rows, self.widths[bucket])

  def seen_mask(self, step: int, num_items: int) -> np.ndarray:
    """bool [B, num_items + 1] of step `step`: True at column i + 1 for
    every item i (0-based) of the row's user's training history (its whole
    history, not only the window; column 0 is padding)."""
    rows, _ = self._rows(step)
    seen = [self.seqs.seen[r] for r in rows]
    out = np.zeros((len(rows), num_items + 1), bool)
    out[np.repeat(np.arange(len(rows)), [len(x) for x in seen]),
        np.concatenate(seen).astype(np.int64) + 1] = True
    return out


def to_tf_dataset(seqs: Sequences, batch_size: int, seed: int = 0,
                  features: Sequence[str] = FEATURES):
  """The rows as a shuffled, batched, prefetched tf.data.Dataset (on CPU).

  For pipelines that stream many hosts' shards; the trainer uses
  `SequenceBatcher`, which needs no TensorFlow and resumes by step.
  """
  import tensorflow as tf   # Heavy and only needed here.
  data = {f: getattr(seqs, f) for f in features}
  ds = tf.data.Dataset.from_tensor_slices(data)
  ds = ds.shuffle(len(seqs.users), seed=seed, reshuffle_each_iteration=True)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def item_side_features(ds: Dataset, num_price_buckets: int = 10
                       ) -> Optional[dict]:
  """Catalog features per item id (index + 1; row 0 is padding), or None.

  Returns:
    dict of int32 [I + 1] arrays: 'seller' (index + 1), 'category' (leaf
    category + 1) and 'price' (price decile + 1), with 0 in row 0.
  """
  cat = ds.catalog
  if cat is None:
    return None
  edges = np.quantile(cat.price, np.linspace(0, 1, num_price_buckets + 1)[1:-1])
  pad = lambda a: np.r_[0, np.asarray(a) + 1].astype(np.int32)
  return dict(seller=pad(cat.seller), category=pad(cat.leaf_category),
              price=pad(np.searchsorted(edges, cat.price)))
