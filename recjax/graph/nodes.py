"""`NodeGraph`: the marketplace graph in one global node space, for samplers.

`HeteroGraph` keeps one CSR per relation and per node type; sampled GNNs want
one adjacency they can walk, with each edge's relation and time attached:

  global node id = offset[type] + local index, types in NODE_TYPES order
  (users, then items, then sellers, then categories);
  edges grouped by source (CSR) and, within a source, sorted by time, so the
  edges before a query time are a prefix (temporal sampling is a search).

Relations: one per user->item event type and its reverse ('rev_click' is
item->user), plus item->seller, item->category and their reverses. A
(src, dst, relation) triple appears once, at its first time. Static edges
(catalog) have time 0, so they precede every query.

Built from `Dataset.train` only; `with_edges` adds edges (cold-start
fold-in: a new user's first few interactions) without touching training.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from recjax.data.schema import EVENT_INDEX, EVENT_TYPES, Dataset

NODE_TYPES = ('user', 'item', 'seller', 'category')
CATALOG_RELATIONS = ('sold_by', 'rev_sold_by', 'in_category',
                     'rev_in_category')


def relation_names(event_types: Sequence[str]) -> tuple[str, ...]:
  """Relation ids in order: events, their reverses, then catalog relations."""
  return (tuple(event_types) + tuple('rev_' + e for e in event_types)
          + CATALOG_RELATIONS)


@dataclasses.dataclass
class NodeGraph:
  """A typed, timed adjacency over all node types (CSR by source).

  Attributes:
    offsets: dict type -> first global id; counts: dict type -> count.
    indptr: int64 [N + 1]; dst: int32 [E]; rel: int8 [E] relation id;
    time: int64 [E] first time of the edge (0 for catalog edges).
    relations: relation names indexed by `rel`.
    event_types: the user-item event types the graph was built with.
  """
  offsets: dict
  counts: dict
  indptr: np.ndarray
  dst: np.ndarray
  rel: np.ndarray
  time: np.ndarray
  relations: tuple
  event_types: tuple

  @property
  def num_nodes(self) -> int:
    return len(self.indptr) - 1

  @property
  def num_edges(self) -> int:
    return len(self.dst)

  def degrees(self) -> np.ndarray:
    return np.diff(self.indptr)

  def node_type(self) -> np.ndarray:
    """int8 [N] index into NODE_TYPES of every node."""
    return np.repeat(np.arange(len(NODE_TYPES), dtype=np.int8),
                     [self.counts[t] for t in NODE_TYPES])

  def ids(self, node_type: str, local) -> np.ndarray:
    """Global ids of local indices of one type."""
    return np.asarray(local, np.int64).astype(np.int32) + self.offsets[
        node_type]

  @classmethod
  def from_dataset(cls, ds: Dataset,
                   event_types: Optional[Sequence[str]] = None
                   ) -> 'NodeGraph':
    """Builds the graph from ds.train (and ds.catalog when present)."""
    event_types = tuple(event_types or EVENT_TYPES)
    for e in event_types:
      if e not in EVENT_INDEX:
        raise ValueError(f'unknown event type {e!r}; known: {EVENT_TYPES}')
    counts = dict(user=ds.num_users, item=ds.num_items,
                  seller=ds.num_sellers, category=ds.num_categories)
    offsets, acc = {}, 0
    for t in NODE_TYPES:
      offsets[t], acc = acc, acc + counts[t]
    g = cls(offsets, counts, np.zeros(acc + 1, np.int64),
            np.zeros(0, np.int32), np.zeros(0, np.int8),
            np.zeros(0, np.int64), relation_names(event_types), event_types)
    src, dst, rel, time = [], [], [], []
    if ds.catalog is not None:
      items = g.ids('item', np.arange(ds.num_items))
      for name, other in (('sold_by', g.ids('seller', ds.catalog.seller)),
                          ('in_category',
                           g.ids('category', ds.catalog.leaf_category))):
        r = g.relations.index(name)
        src += [items, other]
        dst += [other, items]
        rel += [np.full(len(items), r), np.full(len(items), r + 1)]
        time += [np.zeros(len(items), np.int64)] * 2
    edges = _event_edges(g, ds.train.user, ds.train.item, ds.train.event,
                         ds.train.timestamp)
    return g._with(*[np.concatenate([a] + b)
                     for a, b in zip(edges, (src, dst, rel, time))])

  def with_edges(self, users, items, events, times) -> 'NodeGraph':
    """A copy with extra user-item events (both directions) added."""
    edges = _event_edges(self, users, items, events, times)
    old_src = np.repeat(np.arange(self.num_nodes, dtype=np.int32),
                        self.degrees())
    return self._with(*[np.concatenate([a, b]) for a, b in zip(
        (old_src, self.dst, self.rel, self.time), edges)])

  def _with(self, src, dst, rel, time) -> 'NodeGraph':
    """CSR from edge lists: deduplicated on (src, dst, rel), first time kept,
    grouped by source and sorted by time within a source."""
    n = self.num_nodes
    src, dst = np.asarray(src), np.asarray(dst)
    rel, time = np.asarray(rel), np.asarray(time, np.int64)
    # One packed (src, dst, rel) key: a 2-key sort instead of a 4-key one
    # and ~half the memory (this runs on 100M+ edges in tools/bench_scale).
    b_node = max(int(n - 1).bit_length(), 1)
    b_rel = max(int(len(self.relations) - 1).bit_length(), 1)
    if 2 * b_node + b_rel <= 63:
      key = (src.astype(np.int64) << (b_node + b_rel)) | (
          dst.astype(np.int64) << b_rel) | rel.astype(np.int64)
      order = np.lexsort((time, key))
      key = key[order]
      first = np.ones(len(key), bool)
      first[1:] = key[1:] != key[:-1]
      del key
    else:
      src, dst, rel = (a.astype(np.int64) for a in (src, dst, rel))
      order = np.lexsort((time, rel, dst, src))
      s, d, r = src[order], dst[order], rel[order]
      first = np.ones(len(s), bool)
      first[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1]) | (r[1:] != r[:-1])
      del s, d, r
    order = order[first]       # first (earliest) copy of every edge
    del first
    src, dst = src[order].astype(np.int32), dst[order].astype(np.int32)
    rel, time = rel[order].astype(np.int8), time[order]
    del order
    # Rows by source, each sorted by time (ties: by (dst, rel), the order
    # the stable sort keeps from the dedupe above).
    order = np.lexsort((time, src))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return dataclasses.replace(
        self, indptr=indptr, dst=dst[order], rel=rel[order],
        time=time[order])

  def summary(self) -> dict:
    per_rel = np.bincount(self.rel, minlength=len(self.relations))
    return dict(nodes=dict(self.counts), edges=int(self.num_edges),
                relations=dict(zip(self.relations, per_rel.tolist())))


def _event_edges(g: NodeGraph, users, items, events, times):
  """(src, dst, rel, time) of user->item events and their reverses."""
  events = np.asarray(events)
  keep = np.isin(events, [EVENT_INDEX[e] for e in g.event_types])
  u = g.ids('user', np.asarray(users)[keep])
  i = g.ids('item', np.asarray(items)[keep])
  lookup = np.full(len(EVENT_TYPES), -1, np.int64)
  lookup[[EVENT_INDEX[e] for e in g.event_types]] = np.arange(
      len(g.event_types))
  r = lookup[events[keep]]
  t = np.asarray(times, np.int64)[keep]
  nr = len(g.event_types)
  return (np.concatenate([u, i]), np.concatenate([i, u]),
          np.concatenate([r, r + nr]), np.concatenate([t, t]))


def node_features(graph: NodeGraph, ds: Dataset, price_buckets: int = 16
                  ) -> dict:
  """Per-node inputs for `recjax.models.gnn.NodeEncoder` (numpy).

  Returns a dict with node_type int8 [N] and known bool [N] (a user or item
  with at least one training interaction; sellers and categories are always
  known), and with a catalog also item_seller / item_category int32 [I]
  (global ids of each item's seller and leaf category nodes), price_bucket
  int32 [I] (quantile buckets of log price), text int32 [I, T] and, when
  present, image float32 [I, Dimg].
  """
  ntype = graph.node_type()
  event_rel = np.zeros(len(graph.relations) + 1, bool)
  event_rel[:2 * len(graph.event_types)] = True
  src = np.repeat(np.arange(graph.num_nodes), graph.degrees())
  known = np.bincount(src[event_rel[graph.rel]],
                      minlength=graph.num_nodes) > 0
  known |= ntype >= NODE_TYPES.index('seller')
  out = dict(node_type=ntype, known=known)
  if ds.catalog is not None:
    cat = ds.catalog
    edges = np.quantile(np.log1p(cat.price),
                        np.linspace(0, 1, price_buckets + 1)[1:-1])
    out.update(
        item_seller=graph.ids('seller', cat.seller),
        item_category=graph.ids('category', cat.leaf_category),
        price_bucket=np.searchsorted(edges, np.log1p(cat.price)).astype(
            np.int32),
        text=np.asarray(cat.text, np.int32))
    if cat.image is not None:
      out['image'] = np.asarray(cat.image, np.float32)
  return out


def training_pairs(ds: Dataset, event_types: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Distinct (user, item) training pairs of `event_types` with the time of
  their first event, sorted by user then item: (user, item, time) [P]."""
  tr = ds.train
  keep = np.isin(tr.event, [EVENT_INDEX[e] for e in event_types])
  u, i, t = tr.user[keep], tr.item[keep], tr.timestamp[keep]
  order = np.lexsort((t, i, u))
  u, i, t = u[order], i[order], t[order]
  first = np.r_[True, (u[1:] != u[:-1]) | (i[1:] != i[:-1])]
  return u[first], i[first], t[first]
