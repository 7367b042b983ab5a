"""`HeteroGraph`: the typed user-item-seller-category graph as CSR relations.

Node types: user, item, seller, category (each with its own index space).
Relations (src -> dst), each stored as CSR over the source type with its
reverse stored too (name prefixed by 'rev_'):
  user -> item, one relation per event type ('view', 'click', 'cart',
    'purchase', 'review'), deduplicated per (user, item);
  item -> seller ('sold_by'), item -> category ('in_category', the leaf),
  category -> category ('child_of', to the parent).
Built from a Dataset's *training* split only, so evaluation edges never leak
into message passing.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence

import numpy as np

from recjax.data.schema import EVENT_INDEX, EVENT_TYPES, Dataset


@dataclasses.dataclass(frozen=True)
class Relation:
  """A typed edge set in CSR form over its source nodes.

  Attributes:
    src_type, dst_type: node type names.
    indptr: int64 [num_src + 1].
    indices: int32 [E] destination of each edge, grouped by source.
  """
  src_type: str
  dst_type: str
  indptr: np.ndarray
  indices: np.ndarray

  @classmethod
  def from_edges(cls, src: np.ndarray, dst: np.ndarray, num_src: int,
                 src_type: str, dst_type: str) -> 'Relation':
    key = np.unique(src.astype(np.int64) << 32 | dst.astype(np.int64))
    src, dst = key >> 32, key & 0xFFFFFFFF   # Deduplicated, sorted by src.
    indptr = np.zeros(num_src + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=num_src), out=indptr[1:])
    return cls(src_type, dst_type, indptr, dst.astype(np.int32))

  @property
  def num_edges(self) -> int:
    return len(self.indices)

  def degrees(self) -> np.ndarray:
    """int64 [num_src] out-degree of each source node."""
    return np.diff(self.indptr)

  def sources(self) -> np.ndarray:
    """int32 [E] source of each edge (expanded from indptr)."""
    return np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int32),
                     self.degrees())

  def neighbors(self, node: int) -> np.ndarray:
    return self.indices[self.indptr[node]:self.indptr[node + 1]]


@dataclasses.dataclass
class HeteroGraph:
  """Node counts per type and relations by name (each with its reverse)."""
  num_nodes: dict
  relations: dict

  @classmethod
  def from_dataset(cls, ds: Dataset,
                   event_types: Optional[Sequence[str]] = None
                   ) -> 'HeteroGraph':
    """Builds the graph from `ds.train` (and the catalog, when present).

    Args:
      ds: the dataset.
      event_types: which user->item event relations to build (default all).
    """
    nodes = dict(user=ds.num_users, item=ds.num_items,
                 seller=ds.num_sellers, category=ds.num_categories)
    g = cls(num_nodes=nodes, relations={})
    tr = ds.train
    for name in event_types or EVENT_TYPES:
      if name not in EVENT_INDEX:
        raise ValueError(f'unknown event type {name!r}; known: {EVENT_TYPES}')
      m = tr.event == EVENT_INDEX[name]
      if m.any():
        g._add(name, tr.user[m], tr.item[m], 'user', 'item')
    if ds.catalog is not None:
      items = np.arange(ds.num_items)
      g._add('sold_by', items, ds.catalog.seller, 'item', 'seller')
      g._add('in_category', items, ds.catalog.leaf_category, 'item',
             'category')
      parent = ds.catalog.category_parent
      child = np.flatnonzero(parent >= 0)
      g._add('child_of', child, parent[child], 'category', 'category')
    return g

  def _add(self, name, src, dst, src_type, dst_type):
    self.relations[name] = Relation.from_edges(
        src, dst, self.num_nodes[src_type], src_type, dst_type)
    self.relations['rev_' + name] = Relation.from_edges(
        dst, src, self.num_nodes[dst_type], dst_type, src_type)

  def user_item_pairs(self, event_types: Optional[Iterable[str]] = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Deduplicated (user, item) pairs over the given event relations."""
    names = [n for n in (event_types or EVENT_TYPES) if n in self.relations]
    if not names:
      raise ValueError(f'graph has no user-item relations among {event_types}')
    rel = Relation.from_edges(
        np.concatenate([self.relations[n].sources() for n in names]),
        np.concatenate([self.relations[n].indices for n in names]),
        self.num_nodes['user'], 'user', 'item')
    return rel.sources(), rel.indices

  def normalized_bipartite(self, event_types: Optional[Iterable[str]] = None,
                           pad_to: int = 1):
    """The symmetric normalised user-item adjacency D^-1/2 A D^-1/2.

    Nodes are numbered users first (0..U-1), then items (U..U+I-1), then
    isolated padding nodes up to a multiple of `pad_to` (so the node table
    splits evenly over a mesh axis).

    Returns:
      (rows, cols, weights, num_nodes): COO triplets with both directions of
      every edge; weights are 1/sqrt(deg(u) deg(i)).
    """
    users, items = self.user_item_pairs(event_types)
    nu, ni = self.num_nodes['user'], self.num_nodes['item']
    n = -(-(nu + ni) // pad_to) * pad_to
    rows = np.concatenate([users, items + nu]).astype(np.int32)
    cols = np.concatenate([items + nu, users]).astype(np.int32)
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    weights = (1.0 / np.sqrt(deg[rows] * deg[cols])).astype(np.float32)
    return rows, cols, weights, n

  def summary(self) -> dict:
    return dict(nodes=dict(self.num_nodes),
                edges={k: v.num_edges for k, v in self.relations.items()})
