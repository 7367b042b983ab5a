"""Historical embeddings (GNNAutoScale, Fey et al., ICML 2021) and
incremental recomputation when the graph changes.

A process training on its partitions samples neighbourhoods that stop at
halo nodes: their rows live with another process. Rather than fetching
their subtrees every step, the model reads their intermediate
representations from the last time their owner computed them:

  HistoricalCache   [N, L - 1, D] float32 on the host: node v's
                    representation after each layer k < L - 1, and the step
                    it was written (-1: never). `block_history` turns a
                    sampled Block into the model's `history` input: halo
                    nodes with a cached row are masked in.
  refresh           on a schedule (train.history_every steps), each process
                    recomputes its boundary nodes (own nodes that are halo
                    elsewhere) with the current parameters and every
                    process receives them (an all-gather across processes).

When new edges arrive, only nodes within L hops of a changed endpoint can
have a different L-layer embedding (`affected_nodes`); `recompute` embeds
just those and leaves every other row as it was.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from recjax.graph.nodes import NodeGraph


class HistoricalCache:
  """Per-layer embeddings of every node from an earlier pass.

  Attributes:
    values: float32 [N, layers, D] (layers = L - 1).
    step: int64 [N], the step each row was written, -1 = never.
  """

  def __init__(self, num_nodes: int, layers: int, dim: int):
    self.values = np.zeros((num_nodes, layers, dim), np.float32)
    self.step = np.full(num_nodes, -1, np.int64)

  def push(self, ids: np.ndarray, values: np.ndarray, step: int) -> None:
    """Writes rows `ids` [n] (-1 skipped) from values [n, layers, D]."""
    ids = np.asarray(ids)
    ok = ids >= 0
    self.values[ids[ok]] = np.asarray(values, np.float32)[ok]
    self.step[ids[ok]] = step

  def pull(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values [n, layers, D], valid bool [n]) of `ids` (-1: invalid)."""
    ids = np.asarray(ids)
    safe = np.where(ids >= 0, ids, 0)
    return self.values[safe], (ids >= 0) & (self.step[safe] >= 0)

  def age(self, ids: np.ndarray, step: int) -> np.ndarray:
    """Steps since each row was written (a large number if never)."""
    s = self.step[np.asarray(ids)]
    return np.where(s >= 0, step - s, np.iinfo(np.int64).max)


def block_history(cache: HistoricalCache, block: dict,
                  is_halo: np.ndarray) -> dict:
  """The model's `history` input for a sampled block: every level's halo
  nodes that have a cached row are masked in (level 0, the seeds, never).

  Args:
    cache: the process's cache.
    block: Block arrays (ids per level).
    is_halo: bool [N], True for nodes whose rows this process lacks.
  """
  values, mask = [], []
  last = len(block['ids']) - 1
  layers, dim = cache.values.shape[1:]
  for level, ids in enumerate(block['ids']):
    if level == 0 or level == last:
      # The model reads levels 1 .. L-1 only: the seeds are never replaced
      # and the leaves have no layer state; keep their rows, drop the width.
      values.append(np.zeros((len(ids), layers, 0), np.float32))
      mask.append(np.zeros(len(ids), bool))
      continue
    v, valid = cache.pull(ids)
    halo = is_halo[np.where(ids >= 0, ids, 0)] & (ids >= 0)
    values.append(v)
    mask.append(valid & halo)
  return dict(values=tuple(values), mask=tuple(mask))


def affected_nodes(graph: NodeGraph, changed: np.ndarray, hops: int
                   ) -> np.ndarray:
  """Nodes within `hops` edges of a changed node (itself included): the
  only ones whose `hops`-layer embedding a change at `changed` can move.
  The graph stores both directions of every edge, so out-neighbours are
  also in-neighbours."""
  seen = np.zeros(graph.num_nodes, bool)
  frontier = np.unique(np.asarray(changed, np.int64))
  seen[frontier] = True
  for _ in range(hops):
    if not len(frontier):
      break
    starts, ends = graph.indptr[frontier], graph.indptr[frontier + 1]
    lens = ends - starts
    idx = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(
        lens.sum())
    nbrs = np.unique(graph.dst[idx])
    frontier = nbrs[~seen[nbrs]]
    seen[frontier] = True
  return np.flatnonzero(seen).astype(np.int32)


def recompute(embeddings: np.ndarray, graph: NodeGraph,
              new_src: np.ndarray, new_dst: np.ndarray, hops: int,
              embed: Callable[[np.ndarray], np.ndarray],
              only: Optional[np.ndarray] = None) -> np.ndarray:
  """Updates `embeddings` [N, D] in place after edges were added.

  Args:
    embeddings: the current table (rows are global node ids).
    graph: the graph *with* the new edges (what `embed` samples from).
    new_src, new_dst: the added edges' endpoints.
    hops: the model's number of layers L.
    embed: ids [n] -> embeddings [n, D] under the current parameters.
    only: optional bool [N]: restrict the update to these rows (e.g. the
      rows this process serves).

  Returns:
    The ids that were recomputed.
  """
  ids = affected_nodes(graph, np.concatenate([new_src, new_dst]), hops)
  if only is not None:
    ids = ids[only[ids]]
  if len(ids):
    embeddings[ids] = embed(ids)
  return ids
