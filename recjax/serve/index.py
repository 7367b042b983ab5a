"""Candidate retrieval: the top-k items by inner product with a query.

Two indexes share one interface, `search(queries, k, exclude)` and the
single-query fast path `search_one(query, k, exclude)`:

  ExactIndex  brute force: a float32 matmul (chunked over queries to bound
              memory), argpartition, then a sort of the top k. The reference,
              and the right choice for small catalogues.
  ScannIndex  ScaNN (tree partitioning + anisotropic asymmetric hashing +
              exact re-ordering), through its numpy API (`scann_ops_pybind`;
              its import loads TensorFlow, so it happens on first use).

Out-of-stock items (`valid` False) are left out of the searched rows
altogether and ids are mapped back to the full catalogue, so they can never be
returned. `exclude[q]` (e.g. the user's seen items) is applied per query:
ExactIndex masks those scores; ScannIndex over-fetches k + (excluded in-stock
items) and filters. When fewer than k items remain (k above the number of
in-stock items, or everything excluded), rows are padded with id -1 and score
-inf; the output always has k columns.

ScaNN's accuracy/speed knobs (leaves searched, re-order size) are per call, so
`tune_scann` builds once and raises them until recall@k against exact search
reaches a target on a sample of queries. `to_config()` gives those parameters
as JSON, `from_config` rebuilds an index from them at load, and
`ScannIndex.save/load` keep the built searcher itself (no rebuild).

A search for more neighbours than the index was tuned for (k up to the
catalogue size) scales the re-order size with k and searches enough leaves to
hold the candidates; rows ScaNN still returns short (uneven leaves) are
searched again over every leaf.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

_NEG_INF = np.float32(-np.inf)
# ScaNN's LUT16 asymmetric hashing trains 16 centres per block, so it needs at
# least 16 rows; below this size the tree and hashing are pointless anyway.
_SCANN_MIN_TREE_ITEMS = 64
_CONFIG_FILE = 'recjax_index.json'
_IDS_FILE = 'recjax_index_ids.npy'


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
  """Mean fraction of the exact top k found in the approximate top k.

  Args:
    approx_ids: int [Q, >=k] approximate results (-1 = padding).
    exact_ids: int [Q, >=k] exact results (-1 = padding).
    k: cut-off.

  Returns:
    The recall averaged over rows whose exact top k is not empty.
  """
  approx_ids = np.atleast_2d(np.asarray(approx_ids))[:, :k]
  exact_ids = np.atleast_2d(np.asarray(exact_ids))[:, :k]
  if approx_ids.shape[0] != exact_ids.shape[0]:
    raise ValueError(f'row counts differ: {approx_ids.shape[0]} approximate, '
                     f'{exact_ids.shape[0]} exact')
  total, rows = 0.0, 0
  for a, e in zip(approx_ids, exact_ids):
    e = e[e >= 0]
    if len(e):
      total += len(np.intersect1d(a[a >= 0], e)) / len(e)
      rows += 1
  return total / max(rows, 1)


def _check_items(items, valid) -> tuple[np.ndarray, np.ndarray]:
  """Validated (float32 [I, d], bool [I])."""
  items = np.asarray(items)
  if items.ndim != 2 or items.shape[0] < 1 or items.shape[1] < 1:
    raise ValueError(f'items must be [num_items, dim] with both >= 1, got '
                     f'shape {items.shape}')
  items = np.ascontiguousarray(items, np.float32)
  if not np.isfinite(items).all():
    raise ValueError('items contain NaN or inf')
  if valid is None:
    valid = np.ones(items.shape[0], bool)
  else:
    valid = np.asarray(valid)
    if valid.shape != (items.shape[0],):
      raise ValueError(f'valid must be bool [{items.shape[0]}], got shape '
                       f'{valid.shape}')
    valid = valid.astype(bool)
  if not valid.any():
    raise ValueError('no valid (in-stock) items to index')
  return items, valid


class _Index:
  """Shared input checks and output padding; subclasses do the search."""

  kind = ''
  num_items: int       # catalogue size I (ids are in [0, I))
  dim: int
  _ids: np.ndarray     # int32 [V]: catalogue id of each searched row
  _valid: np.ndarray   # bool [I]

  @property
  def num_valid(self) -> int:
    """Number of in-stock (searchable) items."""
    return len(self._ids)

  def _check_k(self, k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f'k must be an integer >= 1, got {k!r}')
    return int(k)

  def _query(self, query) -> np.ndarray:
    q = np.asarray(query, np.float32)
    if q.shape != (self.dim,):
      raise ValueError(f'query must be [{self.dim}], got shape {q.shape}')
    if not np.isfinite(q).all():
      raise ValueError('query contains NaN or inf')
    return q

  def _queries(self, queries) -> np.ndarray:
    q = np.asarray(queries, np.float32)
    if q.ndim != 2 or q.shape[1] != self.dim:
      raise ValueError(f'queries must be [Q, {self.dim}] or [{self.dim}], got '
                       f'shape {q.shape}')
    if not np.isfinite(q).all():
      raise ValueError('queries contain NaN or inf')
    return np.ascontiguousarray(q)

  def _exclude_one(self, exclude) -> np.ndarray:
    """Unique in-stock catalogue ids to exclude: int64 [n] (maybe empty)."""
    if exclude is None:
      return np.empty(0, np.int64)
    ex = np.asarray(exclude).ravel()
    if ex.size == 0:
      return np.empty(0, np.int64)
    if not np.issubdtype(ex.dtype, np.integer):
      raise ValueError(f'exclude must hold integer item ids, got {ex.dtype}')
    ex = ex.astype(np.int64)
    if ex.max() >= self.num_items:
      raise ValueError(f'exclude id {int(ex.max())} out of range for '
                       f'{self.num_items} items')
    ex = ex[ex >= 0]   # negative ids are padding (as in padded id lists)
    # Out-of-stock ids are never returned, so they need no over-fetch.
    return np.unique(ex[self._valid[ex]])

  def _excludes(self, exclude, num_queries: int) -> list[np.ndarray]:
    if exclude is None:
      return [np.empty(0, np.int64)] * num_queries
    if len(exclude) != num_queries:
      raise ValueError(f'exclude has {len(exclude)} entries for '
                       f'{num_queries} queries')
    return [self._exclude_one(e) for e in exclude]

  def search_one(self, query, k: int, exclude=None):
    raise NotImplementedError

  def _search(self, queries: np.ndarray, k: int,
              excludes: list[np.ndarray]):
    raise NotImplementedError

  def search(self, queries, k: int,
             exclude: Optional[Sequence[Any]] = None):
    """Top-k items by inner product for each query, best first.

    Args:
      queries: float32 [Q, d], or [d] for one query (then `exclude` is that
        query's array of ids, and results are [k]).
      k: results per query; beyond the number of in-stock items (after
        exclusions) rows are padded with id -1 and score -inf.
      exclude: per query, an array of catalogue ids that must not be returned
        (negative ids are ignored as padding); or a [Q, W] int array padded
        with -1.

    Returns:
      (ids int32 [Q, k], scores float32 [Q, k]).
    """
    if np.ndim(queries) == 1:
      return self.search_one(queries, k, exclude)
    k = self._check_k(k)
    q = self._queries(queries)
    return self._search(q, k, self._excludes(exclude, q.shape[0]))

  def to_config(self) -> dict:
    raise NotImplementedError


def _pad(ids: np.ndarray, scores: np.ndarray, k: int):
  """Pads [n] or [Q, n] results to k columns with -1 / -inf."""
  n = ids.shape[-1]
  if n >= k:
    return ids[..., :k], scores[..., :k]
  width = [(0, 0)] * (ids.ndim - 1) + [(0, k - n)]
  return (np.pad(ids, width, constant_values=-1),
          np.pad(scores, width, constant_values=_NEG_INF))


class ExactIndex(_Index):
  """Brute-force maximum inner product search.

  Args:
    items: float32 [I, d] item embeddings.
    valid: optional bool [I]; False (out of stock) is never returned.
    max_chunk_bytes: bound on the [chunk, V] float32 score block of a batched
      search (argpartition's int64 indices take twice that again).

  With every item in stock, a float32 C-contiguous `items` is kept by
  reference, not copied.
  """

  kind = 'exact'

  def __init__(self, items, valid=None, max_chunk_bytes: int = 1 << 26):
    items, valid = _check_items(items, valid)
    self.num_items, self.dim = items.shape
    self._valid = valid
    self._ids = np.flatnonzero(valid).astype(np.int32)
    # [V, d]; no copy when everything is in stock (1M x 64 is 256 MB).
    self._items = items if valid.all() else items[self._ids]
    # Catalogue id -> row in self._items (-1: out of stock).
    self._row = np.full(self.num_items, -1, np.int64)
    self._row[self._ids] = np.arange(len(self._ids))
    self._chunk = max(1, max_chunk_bytes // (4 * len(self._ids)))

  def _top(self, scores: np.ndarray, k: int):
    """Top k of scores [B, V] (masked entries -inf), padded to k columns."""
    v = scores.shape[1]
    kk = min(k, v)
    if kk < v:
      # Partitioning at v - kk avoids a negated copy of the score block.
      top = np.argpartition(scores, v - kk, axis=1)[:, v - kk:]
    else:
      top = np.broadcast_to(np.arange(v), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind='stable')
    top = np.take_along_axis(top, order, axis=1)
    top_scores = np.take_along_axis(top_scores, order, axis=1)
    ids = np.where(top_scores > _NEG_INF, self._ids[top], -1).astype(np.int32)
    return _pad(ids, top_scores, k)

  def search_one(self, query, k: int, exclude=None):
    """One query: (ids int32 [k], scores float32 [k]); see `search`."""
    k = self._check_k(k)
    # einsum's own loop, not BLAS gemv: as fast for one (memory-bound) query,
    # and it leaves OpenBLAS's worker threads asleep. Waking them per request
    # made their spin-waiting slow the following argpartition ~30x on a
    # loaded 2-core machine.
    scores = np.einsum('vd,d->v', self._items, self._query(query))  # [V]
    ex = self._exclude_one(exclude)
    if len(ex):
      scores[self._row[ex]] = _NEG_INF
    ids, s = self._top(scores[None], k)
    return ids[0], s[0]

  def _search(self, queries, k, excludes):
    out_ids = np.empty((len(queries), k), np.int32)
    out_scores = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), self._chunk):
      stop = min(start + self._chunk, len(queries))
      scores = queries[start:stop] @ self._items.T                # [B, V]
      for r in range(start, stop):
        if len(excludes[r]):
          scores[r - start, self._row[excludes[r]]] = _NEG_INF
      out_ids[start:stop], out_scores[start:stop] = self._top(scores, k)
    return out_ids, out_scores

  def to_config(self) -> dict:
    return {'kind': 'exact'}


def _scann_ops():
  # Imported on first use: it loads TensorFlow (seconds), which exact-only
  # users and tests need not pay for.
  # pylint: disable-next=g-import-not-at-top
  from scann.scann_ops.py import scann_ops_pybind
  return scann_ops_pybind


class ScannIndex(_Index):
  """ScaNN maximum inner product search over the in-stock items.

  Args:
    items: float32 [I, d] item embeddings.
    valid: optional bool [I]; False (out of stock) is never returned.
    num_leaves: tree partitions; default about sqrt(in-stock items).
    leaves_to_search: partitions searched per query (default num_leaves/10).
    reorder_k: candidates re-scored exactly for a k-result search (>= k;
      default 10 k); scaled with k for larger searches.
    k: the number of results the parameters are meant for.
    training_sample_size: rows sampled to train the tree and the hashing.
    dims_per_block: asymmetric hashing dimensions per 4-bit code.
    anisotropic_quantization_threshold: ScaNN's anisotropic loss threshold
      (for inner products; 0.2 as ScaNN recommends).
    spherical: spherical k-means for the tree (centres normalised); often
      helps inner-product search over vectors of varying norm.
    soar_lambda: if set, SOAR spilling (each item also in a second,
      orthogonality-amplified leaf; ScaNN suggests 1.5): higher recall per
      leaf searched, for more memory and build time.
  """

  kind = 'scann'

  def __init__(self, items, valid=None, *, num_leaves: Optional[int] = None,
               leaves_to_search: Optional[int] = None,
               reorder_k: Optional[int] = None, k: int = 100,
               training_sample_size: int = 100_000, dims_per_block: int = 2,
               anisotropic_quantization_threshold: float = 0.2,
               spherical: bool = False, soar_lambda: Optional[float] = None,
               _searcher=None, _meta=None):
    if _searcher is not None:       # load(): a deserialised searcher
      self._searcher = _searcher
      self._set_meta(**_meta)
      return
    items, valid = _check_items(items, valid)
    self.num_items, self.dim = items.shape
    self._valid = valid
    self._ids = np.flatnonzero(valid).astype(np.int32)
    v = len(self._ids)
    k = self._check_k(k)
    if num_leaves is None:
      num_leaves = int(round(math.sqrt(v)))
    num_leaves = int(min(max(num_leaves, 1), v))
    if leaves_to_search is None:
      leaves_to_search = math.ceil(num_leaves / 10)
    leaves_to_search = int(min(max(leaves_to_search, 1), num_leaves))
    reorder_k = int(max(reorder_k or 10 * k, k))
    self._set_meta(
        num_items=self.num_items, dim=self.dim, num_leaves=num_leaves,
        leaves_to_search=leaves_to_search, reorder_k=reorder_k, k=k,
        training_sample_size=int(training_sample_size),
        dims_per_block=int(dims_per_block),
        anisotropic_quantization_threshold=float(
            anisotropic_quantization_threshold),
        spherical=bool(spherical),
        soar_lambda=None if soar_lambda is None else float(soar_lambda))
    db = items if valid.all() else items[self._ids]
    builder = _scann_ops().builder(db, min(k, v), 'dot_product')
    if v < _SCANN_MIN_TREE_ITEMS:
      builder = builder.score_brute_force()
    else:
      builder = builder.tree(
          num_leaves, leaves_to_search,
          training_sample_size=min(v, self.training_sample_size),
          spherical=self.spherical, soar_lambda=self.soar_lambda).score_ah(
              self.dims_per_block,
              anisotropic_quantization_threshold=(
                  self.anisotropic_quantization_threshold),
              training_sample_size=min(v, self.training_sample_size)).reorder(
                  reorder_k)
    self._searcher = builder.build()

  def _set_meta(self, *, num_items, dim, num_leaves, leaves_to_search,
                reorder_k, k, training_sample_size, dims_per_block,
                anisotropic_quantization_threshold, spherical=False,
                soar_lambda=None, ids=None):
    self.num_items, self.dim = int(num_items), int(dim)
    if ids is not None:
      self._ids = np.asarray(ids, np.int32)
      self._valid = np.zeros(self.num_items, bool)
      self._valid[self._ids] = True
    self.num_leaves = num_leaves
    self.leaves_to_search = leaves_to_search
    self.reorder_k = reorder_k
    self.k = k
    self.training_sample_size = training_sample_size
    self.dims_per_block = dims_per_block
    self.anisotropic_quantization_threshold = anisotropic_quantization_threshold
    self.spherical = spherical
    self.soar_lambda = soar_lambda
    self._tree = len(self._ids) >= _SCANN_MIN_TREE_ITEMS

  def to_config(self) -> dict:
    """The build and search parameters, JSON-serialisable."""
    return {'kind': 'scann', 'num_leaves': self.num_leaves,
            'leaves_to_search': self.leaves_to_search,
            'reorder_k': self.reorder_k, 'k': self.k,
            'training_sample_size': self.training_sample_size,
            'dims_per_block': self.dims_per_block,
            'anisotropic_quantization_threshold':
                self.anisotropic_quantization_threshold,
            'spherical': self.spherical, 'soar_lambda': self.soar_lambda}

  @classmethod
  def from_config(cls, items, valid, config: dict) -> 'ScannIndex':
    """Rebuilds an index with the parameters of `to_config()`.

    Keys other than those (e.g. a tuning report stored alongside) are
    ignored, so a bundle can keep both in one JSON object.
    """
    if config.get('kind', 'scann') != 'scann':
      raise ValueError(f'not a ScaNN config: {config}')
    params = ('num_leaves', 'leaves_to_search', 'reorder_k', 'k',
              'training_sample_size', 'dims_per_block',
              'anisotropic_quantization_threshold', 'spherical',
              'soar_lambda')
    return cls(items, valid, **{p: config[p] for p in params if p in config})

  def save(self, directory: str) -> None:
    """Writes the built searcher (ScaNN's assets) and the id map."""
    os.makedirs(directory, exist_ok=True)
    # Relative asset paths so the directory can be moved or copied.
    self._searcher.serialize(directory, relative_path=True)
    np.save(os.path.join(directory, _IDS_FILE), self._ids)
    meta = dict(self.to_config(), num_items=self.num_items, dim=self.dim)
    with open(os.path.join(directory, _CONFIG_FILE), 'w') as f:
      json.dump(meta, f, indent=1)

  @classmethod
  def load(cls, directory: str) -> 'ScannIndex':
    """Loads what `save` wrote, without rebuilding."""
    with open(os.path.join(directory, _CONFIG_FILE)) as f:
      meta = json.load(f)
    meta.pop('kind', None)
    meta['ids'] = np.load(os.path.join(directory, _IDS_FILE))
    searcher = _scann_ops().load_searcher(directory)
    return cls(None, _searcher=searcher, _meta=meta)

  # -- search ---------------------------------------------------------------

  def _params(self, fetch: int) -> tuple[int, int]:
    """(pre-reorder size, leaves to search) for a `fetch`-result search."""
    v = len(self._ids)
    # The tuned reorder_k gives the target recall for the top `k`; a larger
    # fetch (10,000 candidates for the ranker) keeps that margin on top
    # rather than scaling it: scaling by fetch / k re-scored 200k points
    # exactly per request at 1M items (15 ms) for an order the ranker redoes.
    pre = min(v, max(fetch, self.reorder_k + max(fetch - self.k, 0)))
    # Enough leaves that, at the average leaf size, they hold twice the
    # results wanted (searching fewer would return short rows).
    leaves = max(self.leaves_to_search,
                 math.ceil(2 * fetch * self.num_leaves / v))
    return pre, min(leaves, self.num_leaves)

  def _raw_one(self, q: np.ndarray, fetch: int):
    """Searched-row positions int64 [<=fetch] and scores of one query."""
    pre, leaves = self._params(fetch)
    if not self._tree:
      pos, dist = self._searcher.search(q, fetch, pre)
      return np.asarray(pos, np.int64), np.asarray(dist, np.float32)
    pos, dist = self._searcher.search(q, fetch, pre, leaves)
    if len(pos) < fetch and leaves < self.num_leaves:
      # Uneven leaves held too few points: search all of them.
      pos, dist = self._searcher.search(q, fetch, pre, self.num_leaves)
    return np.asarray(pos, np.int64), np.asarray(dist, np.float32)

  def search_one(self, query, k: int, exclude=None):
    """One query: (ids int32 [k], scores float32 [k]); see `search`."""
    k = self._check_k(k)
    q = self._query(query)
    ex = self._exclude_one(exclude)
    fetch = min(k + len(ex), len(self._ids))
    pos, dist = self._raw_one(q, fetch)
    ids = self._ids[pos]
    if len(ex):
      keep = ~np.isin(ids, ex, assume_unique=True)
      ids, dist = ids[keep], dist[keep]
    return _pad(ids, dist, k)

  def _search(self, queries, k, excludes):
    n_ex = np.array([len(e) for e in excludes])
    fetch = min(k + int(n_ex.max(initial=0)), len(self._ids))
    pre, leaves = self._params(fetch)
    args = (queries, fetch, pre) + ((leaves,) if self._tree else ())
    if len(queries) > 1:
      pos, dist = self._searcher.search_batched_parallel(*args)
    else:
      pos, dist = self._searcher.search_batched(*args)
    pos = np.asarray(pos, np.int64)
    dist = np.asarray(dist, np.float32)
    # Batched results are padded with position 0 and score NaN.
    short = np.isnan(dist)
    dist[short] = _NEG_INF
    ids = np.where(short, -1, self._ids[pos]).astype(np.int32)
    if self._tree:
      # Rows short of `fetch` (uneven leaves): search them again one by one.
      for r in np.flatnonzero(short[:, fetch - 1]):
        p, d = self._raw_one(queries[r], fetch)
        ids[r], dist[r] = _pad(self._ids[p], d, fetch)
    if n_ex.any():
      keep = ids >= 0
      for r in np.flatnonzero(n_ex):
        keep[r] &= ~np.isin(ids[r], excludes[r], assume_unique=True)
      # Stable partition of each row: kept results first, in score order.
      order = np.argsort(~keep, axis=1, kind='stable')
      ids = np.take_along_axis(ids, order, axis=1)
      dist = np.take_along_axis(dist, order, axis=1)
      kept = np.take_along_axis(keep, order, axis=1)
      ids[~kept], dist[~kept] = -1, _NEG_INF
    return _pad(ids, dist, k)


def from_config(items, valid, config: dict) -> _Index:
  """Builds the index `config` (from `to_config()`) describes.

  Args:
    items: float32 [I, d]; valid: optional bool [I].
    config: {'kind': 'exact'} or a ScannIndex's `to_config()`; extra keys are
      ignored.
  """
  kind = config.get('kind')
  if kind == 'exact':
    return ExactIndex(items, valid)
  if kind == 'scann':
    return ScannIndex.from_config(items, valid, config)
  raise ValueError(f'unknown index kind {kind!r} in {config}')


def _sample_queries(items, valid, num_queries, seed, queries):
  """Tuning queries: a sample of `queries`, or noisy in-stock items."""
  rng = np.random.default_rng(seed)
  if queries is not None:
    queries = np.asarray(queries, np.float32)
    if (queries.ndim != 2 or queries.shape[1] != items.shape[1]
        or not len(queries)):
      raise ValueError(f'queries must be [Q>0, {items.shape[1]}], got shape '
                       f'{queries.shape}')
    if len(queries) > num_queries:
      queries = queries[rng.choice(len(queries), num_queries, replace=False)]
    return queries
  rows = rng.choice(np.flatnonzero(valid), num_queries)
  # Noise half the embeddings' spread: near an item but not on it, as a user
  # who liked it would be.
  scale = 0.5 * float(items[rows].std())
  noise = rng.standard_normal((num_queries, items.shape[1]), np.float32)
  return items[rows] + scale * noise


def tune_scann(items, valid=None, target_recall: float = 0.95, k: int = 100,
               num_queries: int = 1000, seed: int = 0, queries=None,
               num_leaves: Optional[int] = None, **build_kwargs):
  """Builds a ScaNN index and tunes its search against exact search.

  Builds once (leaves and re-order size are per-call), then raises the number
  of leaves searched until `target_recall` is reached with a generous
  re-order size (20 k). At that and the next two leaf counts it takes the
  smallest re-order size that still reaches the target, and keeps whichever
  of those settings searches the tuning queries fastest (best of 3 timings;
  more leaves only for a clear gain, timings being noisy). If even every leaf
  misses the target, the index searches every leaf (`reached` is False).

  Args:
    items: float32 [I, d]; valid: optional bool [I].
    target_recall: wanted recall@k against exact search.
    k: results per query the parameters are tuned for.
    num_queries: tuning queries.
    seed: for the query sample.
    queries: optional float32 [N, d] (e.g. user embeddings) to sample the
      tuning queries from; default: in-stock items plus noise.
    num_leaves: tree partitions (default about sqrt(in-stock items)).
    **build_kwargs: passed to `ScannIndex`.

  Returns:
    (index, report) with report {num_leaves, leaves_to_search, reorder_k,
    recall@10, recall@k, build_s, tune_s, reached, ...}.
  """
  _scann_ops()    # Import TensorFlow before the clock starts.
  t0 = time.perf_counter()
  items, valid = _check_items(items, valid)
  index = ScannIndex(items, valid, num_leaves=num_leaves, k=k,
                     **build_kwargs)
  build_s = time.perf_counter() - t0
  k = index.k
  q = _sample_queries(items, valid, num_queries, seed, queries)
  exact, _ = ExactIndex(items, valid).search(q, max(k, 10))
  v, n = index.num_valid, index.num_leaves

  def trial(leaves, reorder):
    """recall@k at these settings."""
    index.leaves_to_search, index.reorder_k = leaves, reorder
    r = recall_at_k(index.search(q, k)[0], exact, k)
    trials.append({'leaves': leaves, 'reorder_k': reorder,
                   'recall': round(r, 4)})
    return r

  def seconds(leaves, reorder):
    """Best of 3 timings of searching all of q (less noise than one)."""
    index.leaves_to_search, index.reorder_k = leaves, reorder
    best = math.inf
    for _ in range(3):
      t = time.perf_counter()
      index.search(q, k)
      best = min(best, time.perf_counter() - t)
    return best

  leaf_steps = sorted({min(n, math.ceil(n * f)) for f in
                       (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.17, 0.2,
                        0.25, 0.3, 0.4, 0.5, 0.75, 1.0)})
  reorder_steps = sorted({min(v, max(k, k * m)) for m in (1, 2, 3, 5, 10, 20)})
  trials, ok = [], []          # ok: (leaves, reorder, recall), leaves rising
  for leaves in leaf_steps:
    r = trial(leaves, reorder_steps[-1])
    if r < target_recall:
      if ok or leaves != leaf_steps[-1]:
        continue
      ok.append((leaves, reorder_steps[-1], r))   # best effort: all leaves
      break
    for reorder in reorder_steps[:-1]:
      rr = trial(leaves, reorder)
      if rr >= target_recall:
        r = rr
        break
    else:
      reorder = reorder_steps[-1]
    ok.append((leaves, reorder, r))
    # A few more leaves may allow a much smaller re-order: time them all.
    if len(ok) == 3:
      break
  leaves, reorder, r = ok[0]
  if len(ok) > 1:
    best_s = seconds(leaves, reorder)
    for cand in ok[1:]:
      s = seconds(*cand[:2])
      if s < 0.95 * best_s:    # More leaves only for a clear gain.
        (leaves, reorder, r), best_s = cand, s
  index.leaves_to_search, index.reorder_k = leaves, reorder
  report = {'num_leaves': n, 'leaves_to_search': leaves,
            'reorder_k': reorder, 'k': k,
            'recall@10': recall_at_k(index.search(q, 10)[0], exact, 10),
            f'recall@{k}': r, 'target_recall': target_recall,
            'reached': bool(r >= target_recall),
            'num_queries': len(q), 'build_s': round(build_s, 3),
            'tune_s': round(time.perf_counter() - t0, 3),
            'trials': trials}
  return index, report


def build_index(items, valid=None, kind: str = 'auto',
                target_recall: float = 0.95, min_scann_items: int = 20000,
                **tune_kwargs) -> tuple[_Index, dict]:
  """The index a serving bundle uses.

  Args:
    items: float32 [I, d]; valid: optional bool [I].
    kind: 'exact', 'scann' (tuned), or 'auto': exact below `min_scann_items`
      in-stock items (brute force is fast there and exact), ScaNN above.
    target_recall: recall@k the ScaNN tuning aims at.
    min_scann_items: the 'auto' threshold.
    **tune_kwargs: passed to `tune_scann` (k, num_queries, seed, queries...).

  Returns:
    (index, report): an ExactIndex or a tuned ScannIndex, and a JSON-able
    report (`tune_scann`'s for ScaNN; kind, num_valid, build_s for exact).
  """
  items, valid = _check_items(items, valid)
  num_valid = int(valid.sum())
  if kind == 'auto':
    kind = 'scann' if num_valid >= min_scann_items else 'exact'
  if kind == 'exact':
    t = time.perf_counter()
    index = ExactIndex(items, valid)
    return index, {'kind': 'exact', 'num_valid': num_valid,
                   'build_s': round(time.perf_counter() - t, 3)}
  if kind == 'scann':
    index, report = tune_scann(items, valid, target_recall, **tune_kwargs)
    return index, dict(report, kind='scann', num_valid=num_valid)
  raise ValueError(f"kind must be 'auto', 'exact' or 'scann', got {kind!r}")
