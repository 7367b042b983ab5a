"""Neighbourhood samplers producing static-shape computation trees (numpy).

Every sampler turns S seed nodes into a `Block`: for L hops with fan-outs
f_1..f_L, level l holds S * f_1 * ... * f_l nodes, the children of node j of
level l-1 at positions [j * f_l, (j + 1) * f_l) of level l. Missing
neighbours are padding (id -1, weight 0). Shapes depend only on S and the
fan-outs, so a training step compiles once.

  NeighborSampler     uniform fan-out over all relations (GraphSAGE, GAT),
                      or draws and weights whose mean estimates LightGCN's
                      symmetric normalisation (weighting='symmetric').
  RandomWalkSampler   top-T most visited nodes of short random walks, with
                      normalised visit counts as weights (PinSAGE); also the
                      walk-rank hard negatives of PinSAGE's curriculum.
  TemporalSampler     only edges strictly before each node's query time,
                      the most recent or uniform (TGAT); a child's query time
                      is its edge's time.

All are vectorised numpy and pure functions of their `rng`, so they can run
inside tf.data (`tf.numpy_function`) or a host thread.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from recjax.graph.nodes import NodeGraph

DAY = 86400.0


@dataclasses.dataclass
class Block:
  """Sampled trees for S seeds over L hops. Lists have L + 1 levels.

  Attributes:
    ids: int32 [n_l] global node ids per level, -1 = padding.
    rel: int32 [n_l] relation id of the edge to the parent (level 0: 0).
    weight: float32 [n_l] neighbour weight (1 for uniform, normalised visit
      counts for random walks), 0 for padding.
    dt: float32 [n_l] days between the parent's query time and the edge's
      time (0 without times and for timeless catalog edges).
  """
  ids: list
  rel: list
  weight: list
  dt: list

  def as_dict(self) -> dict:
    return dict(ids=tuple(self.ids), rel=tuple(self.rel),
                weight=tuple(self.weight), dt=tuple(self.dt))

  @property
  def fanouts(self) -> tuple:
    return tuple(len(b) // len(a) for a, b in zip(self.ids, self.ids[1:]))


class _Sampler:
  """Shared multi-hop loop; subclasses implement `_hop`."""

  uses_time = False   # Query times are ignored unless the sampler uses them.

  def __init__(self, graph: NodeGraph, fanouts: Sequence[int]):
    if not fanouts or min(fanouts) < 1:
      raise ValueError(f'fanouts must be positive, got {list(fanouts)}')
    self.graph = graph
    self.fanouts = tuple(int(f) for f in fanouts)
    self.num_relations = len(graph.relations)

  def _hop(self, nodes, times, fanout, rng):
    """Children of `nodes` [n]: (ids, rel, weight, edge_time), each [n, f]."""
    raise NotImplementedError

  def sample(self, seeds: np.ndarray, rng: np.random.Generator,
             times: Optional[np.ndarray] = None,
             exclude: Optional[np.ndarray] = None) -> Block:
    """Samples L-hop trees for `seeds`.

    Args:
      seeds: int [S] global node ids (-1 = padding seed).
      rng: numpy Generator (the block is a pure function of it).
      times: optional int64 [S] query times (temporal sampling).
      exclude: optional int [S]: a node that must not be a direct neighbour
        of each seed (the training target, so the edge being predicted
        cannot be read from the seed's own neighbourhood); -1 = none.
    """
    seeds = np.asarray(seeds, np.int32)
    ids, rel = [seeds], [np.zeros(len(seeds), np.int32)]
    weight = [(seeds >= 0).astype(np.float32)]
    dt = [np.zeros(len(seeds), np.float32)]
    t = None if times is None or not self.uses_time else np.asarray(
        times, np.int64)
    for hop, f in enumerate(self.fanouts):
      nb, r, w, et = self._hop(ids[-1], t, f, rng)
      if hop == 0 and exclude is not None:
        nb = np.where(nb == np.asarray(exclude)[:, None], -1, nb)
      valid = nb >= 0
      w = np.where(valid, w, 0.0).astype(np.float32)
      if t is not None:
        static = et <= 0
        gap = np.where(static | ~valid, 0.0, (t[:, None] - et) / DAY)
        t = np.where(static, t[:, None], et).reshape(-1)
        dt.append(gap.astype(np.float32).reshape(-1))
      else:
        dt.append(np.zeros(nb.size, np.float32))
      ids.append(np.where(valid, nb, -1).astype(np.int32).reshape(-1))
      rel.append(np.where(valid, r, 0).astype(np.int32).reshape(-1))
      weight.append(w.reshape(-1))
    return Block(ids, rel, weight, dt)


class NeighborSampler(_Sampler):
  """Fan-out sampling with replacement over every relation.

  `weighting` 'uniform': children drawn uniformly, weight 1 (GraphSAGE's
  mean). 'symmetric': LightGCN's normalisation, sum_{j in N(i)} h_j /
  sqrt(d_i d_j) over all d_i neighbours, estimated from f samples: child j
  is drawn with probability proportional to 1 / sqrt(d_j), and every child
  of i gets weight c_i = sum_{j in N(i)} d_j^-1/2 / sqrt(d_i), so the mean
  over the f children of c_i h_j is an unbiased estimate of it. Drawing
  by the weight, rather than uniformly with per-child weights
  sqrt(d_i / d_j) (up to 30x apart on gowalla), keeps the estimate's
  variance near the uniform mean's. Degrees are the training graph's.
  (On gowalla GraphSAGE it trained no better than 'uniform': see README.)
  """

  WEIGHTINGS = ('uniform', 'symmetric')

  def __init__(self, graph: NodeGraph, fanouts: Sequence[int],
               weighting: str = 'uniform'):
    super().__init__(graph, fanouts)
    if weighting not in self.WEIGHTINGS:
      raise ValueError(f'weighting={weighting!r}: want one of '
                       f'{list(self.WEIGHTINGS)}')
    self.weighting = weighting
    if weighting == 'symmetric':
      deg = graph.degrees().astype(np.float64)
      inv = 1.0 / np.sqrt(np.maximum(deg[graph.dst], 1.0))     # per edge
      self._cum = np.concatenate([[0.0], np.cumsum(inv)])       # [E + 1]
      total = self._cum[graph.indptr[1:]] - self._cum[graph.indptr[:-1]]
      self._scale = (total / np.sqrt(np.maximum(deg, 1.0))).astype(
          np.float32)                                           # c_i [N]

  def _hop(self, nodes, times, fanout, rng):
    g = self.graph
    safe = np.maximum(nodes, 0)
    start, deg = g.indptr[safe], g.indptr[safe + 1] - g.indptr[safe]
    deg = np.where(nodes >= 0, deg, 0)
    u = rng.random((len(nodes), fanout))
    ok = deg[:, None] > 0
    if g.num_edges == 0:
      return (np.full(u.shape, -1), np.zeros(u.shape), np.zeros(u.shape),
              np.zeros(u.shape, np.int64))
    if self.weighting == 'symmetric':
      # Inverse-CDF draw inside each parent's slice of the edge list.
      lo, hi = self._cum[start], self._cum[start + deg]
      pick = np.searchsorted(self._cum, lo[:, None] + u * (hi - lo)[:, None],
                             side='right') - 1
      pick = np.clip(pick, start[:, None], start[:, None] + np.maximum(
          deg[:, None] - 1, 0))
      w = np.broadcast_to(self._scale[safe][:, None], u.shape)
    else:
      pick = start[:, None] + (u * deg[:, None]).astype(np.int64)
      w = np.ones(u.shape, np.float32)
    pick = np.where(ok, pick, 0)
    child = np.where(ok, g.dst[pick], -1)
    return child, g.rel[pick], w.astype(np.float32), g.time[pick]


class TemporalSampler(_Sampler):
  """Edges strictly before each node's query time: 'recent' or 'uniform'."""

  uses_time = True

  def __init__(self, graph: NodeGraph, fanouts: Sequence[int],
               strategy: str = 'recent'):
    super().__init__(graph, fanouts)
    if strategy not in ('recent', 'uniform'):
      raise ValueError(f"temporal strategy {strategy!r}: want 'recent' or "
                       "'uniform'")
    self.strategy = strategy
    # Edges are sorted by (source, time): key = source * span + time - t0 is
    # increasing, so "edges of n before t" is one searchsorted per query.
    self._t0 = int(graph.time.min()) if graph.num_edges else 0
    self._span = (int(graph.time.max()) - self._t0 + 2) if graph.num_edges \
        else 2
    src = np.repeat(np.arange(graph.num_nodes, dtype=np.int64),
                    graph.degrees())
    self._key = src * self._span + (graph.time - self._t0)

  def _hop(self, nodes, times, fanout, rng):
    if times is None:
      raise ValueError('TemporalSampler.sample needs query times')
    g = self.graph
    safe = np.maximum(nodes, 0).astype(np.int64)
    rel_t = np.clip(times - self._t0, 0, self._span - 1)
    end = np.searchsorted(self._key, safe * self._span + rel_t, side='left')
    start = g.indptr[safe]
    count = np.where(nodes >= 0, end - start, 0)
    if self.strategy == 'recent':
      pick = end[:, None] - 1 - np.arange(fanout)[None, :]
      ok = pick >= start[:, None]
    else:
      pick = start[:, None] + (rng.random((len(nodes), fanout))
                               * count[:, None]).astype(np.int64)
      ok = count[:, None] > 0
    ok &= (nodes >= 0)[:, None]
    pick = np.where(ok, pick, 0)
    if g.num_edges == 0:
      return (np.full(pick.shape, -1), np.zeros(pick.shape), np.zeros(
          pick.shape), np.zeros(pick.shape, np.int64))
    return (np.where(ok, g.dst[pick], -1), g.rel[pick],
            np.ones(pick.shape, np.float32), g.time[pick])


def random_walks(graph: NodeGraph, starts: np.ndarray, num_walks: int,
                 length: int, rng: np.random.Generator) -> np.ndarray:
  """Visits of `num_walks` uniform walks of `length` steps from each start.

  Returns:
    int32 [len(starts), num_walks * length], -1 after a dead end.
  """
  cur = np.repeat(np.asarray(starts, np.int64), num_walks)
  out = np.empty((length, len(cur)), np.int32)
  for s in range(length):
    safe = np.maximum(cur, 0)
    deg = np.where(cur >= 0, graph.indptr[safe + 1] - graph.indptr[safe], 0)
    pick = graph.indptr[safe] + (rng.random(len(cur)) * deg).astype(np.int64)
    cur = np.where(deg > 0, graph.dst[np.where(deg > 0, pick, 0)], -1)
    out[s] = cur
  return out.T.reshape(len(starts), num_walks, length).reshape(
      len(starts), -1)


def top_visited(starts: np.ndarray, visits: np.ndarray, k: int,
                num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """The k most visited nodes per row (self excluded), most visited first.

  Args:
    starts: int [n]; visits: int [n, V] with -1 for none.

  Returns:
    (ids int32 [n, k] with -1 padding, visit counts int32 [n, k]).
  """
  n, v = visits.shape
  row = np.repeat(np.arange(n, dtype=np.int64), v)
  node = visits.reshape(-1).astype(np.int64)
  ok = (node >= 0) & (node != np.asarray(starts, np.int64)[row])
  key, cnt = np.unique(row[ok] * num_nodes + node[ok], return_counts=True)
  r, nd = key // num_nodes, key % num_nodes
  order = np.lexsort((nd, -cnt, r))
  r, nd, cnt = r[order], nd[order], cnt[order]
  rank = np.arange(len(r)) - np.searchsorted(r, r)
  keep = rank < k
  ids = np.full((n, k), -1, np.int32)
  counts = np.zeros((n, k), np.int32)
  ids[r[keep], rank[keep]] = nd[keep]
  counts[r[keep], rank[keep]] = cnt[keep]
  return ids, counts


class RandomWalkSampler(_Sampler):
  """PinSAGE importance neighbourhoods, precomputed for every node.

  For each node, `num_walks` walks of `walk_length` steps; its neighbours are
  the top-T visited nodes (T = the largest fan-out) with weights = visit
  counts normalised over the kept T. Hop l keeps the top f_l. Neighbours
  carry relation id `num_relations` (a 'walk' relation).
  """

  def __init__(self, graph: NodeGraph, fanouts: Sequence[int],
               num_walks: int = 32, walk_length: int = 3, seed: int = 0,
               chunk: int = 65536):
    super().__init__(graph, fanouts)
    rng = np.random.default_rng([seed, 17])
    k = max(self.fanouts)
    n = graph.num_nodes
    self.table = np.full((n, k), -1, np.int32)
    self.table_w = np.zeros((n, k), np.float32)
    for a in range(0, n, chunk):
      starts = np.arange(a, min(a + chunk, n))
      visits = random_walks(graph, starts, num_walks, walk_length, rng)
      ids, cnt = top_visited(starts, visits, k, n)
      self.table[a:a + len(starts)] = ids
      self.table_w[a:a + len(starts)] = cnt
    self.num_relations = len(graph.relations) + 1

  def _hop(self, nodes, times, fanout, rng):
    safe = np.maximum(nodes, 0)
    ids = np.where((nodes >= 0)[:, None], self.table[safe, :fanout], -1)
    w = np.where(ids >= 0, self.table_w[safe, :fanout], 0.0)
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-9)
    rel = np.full(ids.shape, len(self.graph.relations), np.int32)
    return ids, rel, w, np.zeros(ids.shape, np.int64)


def hard_negative_table(graph: NodeGraph, ranks: tuple[int, int] = (10, 60),
                        num_walks: int = 128, walk_length: int = 4,
                        seed: int = 0, chunk: int = 16384) -> np.ndarray:
  """PinSAGE hard negatives: items ranked in [lo, hi) by walk visits.

  Items visited often from item i (via shared users, sellers, categories)
  but not the most often are related yet not what the user engaged with:
  harder than uniform negatives, easier than near-duplicates.

  Returns:
    int32 [num_items, hi - lo] local item indices, -1 where fewer were seen.
  """
  lo, hi = ranks
  rng = np.random.default_rng([seed, 29])
  off, ni = graph.offsets['item'], graph.counts['item']
  out = np.full((ni, hi - lo), -1, np.int32)
  for a in range(0, ni, chunk):
    starts = np.arange(a, min(a + chunk, ni)) + off
    visits = random_walks(graph, starts, num_walks, walk_length, rng)
    is_item = (visits >= off) & (visits < off + ni)
    ids, _ = top_visited(starts, np.where(is_item, visits, -1), hi,
                         graph.num_nodes)
    part = ids[:, lo:hi]
    out[a:a + len(starts)] = np.where(part >= 0, part - off, -1)
  return out


def tf_dataset(make_batch, num_steps: int, start: int = 0,
               prefetch: int = 2, num_parallel_calls: Optional[int] = None):
  """Streams `make_batch(step)` for steps [start, num_steps) through tf.data.

  `make_batch` is any pure numpy function of the step returning a flat dict
  of arrays of static shape (e.g. a sampler's Block plus the pairs), so
  sampling runs in tf.data's threads, overlapped with the device step, and
  a resumed run restarts the stream at its step. `num_parallel_calls`
  workers sample concurrently (None: tf.data.AUTOTUNE); the order of the
  batches stays the order of the steps.

  Returns:
    A tf.data.Dataset of dicts of tf.Tensors (use `.as_numpy_iterator()`).
  """
  import tensorflow as tf
  first = make_batch(start)
  keys = sorted(first)
  spec = [tf.TensorSpec(np.shape(first[k]), tf.as_dtype(
      np.asarray(first[k]).dtype)) for k in keys]

  def call(step):
    out = make_batch(int(step))
    return [np.asarray(out[k]) for k in keys]

  def fn(step):
    vals = tf.numpy_function(call, [step], [s.dtype for s in spec],
                             stateful=False)
    return {k: tf.ensure_shape(v, s.shape) for k, v, s in zip(keys, vals,
                                                               spec)}

  ds = tf.data.Dataset.range(start, num_steps).map(
      fn, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
      deterministic=True)
  return ds.prefetch(prefetch)
