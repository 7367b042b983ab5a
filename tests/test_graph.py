"""HeteroGraph: typed CSR relations with reverses, from the training split."""

import numpy as np

from recjax.data.schema import Catalog, Dataset, EVENT_INDEX, Interactions
from recjax.graph import HeteroGraph


def _dataset():
  ev = lambda *names: np.array([EVENT_INDEX[n] for n in names])
  train = Interactions.create(
      user=np.array([0, 0, 1, 2, 2, 2]), item=np.array([0, 1, 1, 2, 0, 0]),
      timestamp=np.arange(6),
      event=ev('click', 'purchase', 'click', 'view', 'click', 'click'))
  test = Interactions.create(user=np.array([1]), item=np.array([3]))
  cat = Catalog(seller=np.array([0, 0, 1, 1]),
                taxonomy=np.array([[0, 1], [0, 1], [0, 2], [0, 2]]),
                price=np.ones(4), margin=np.zeros(4),
                created_at=np.zeros(4, np.int64),
                text=np.zeros((4, 2), np.int32),
                category_parent=np.array([-1, 0, 0]))
  return Dataset('t', 3, 4, train, test, catalog=cat)


def test_relations_and_reverse():
  g = HeteroGraph.from_dataset(_dataset())
  click = g.relations['click']
  assert click.src_type == 'user' and click.dst_type == 'item'
  np.testing.assert_array_equal(click.degrees(), [1, 1, 1])  # deduplicated
  np.testing.assert_array_equal(click.neighbors(2), [0])
  np.testing.assert_array_equal(g.relations['rev_click'].neighbors(1), [1])
  np.testing.assert_array_equal(g.relations['sold_by'].indices, [0, 0, 1, 1])
  np.testing.assert_array_equal(g.relations['child_of'].neighbors(2), [0])
  # Test edges never enter the graph.
  assert 3 not in g.relations['rev_click'].sources()
  assert g.relations['rev_click'].degrees()[3] == 0


def test_symmetric_normalisation():
  g = HeteroGraph.from_dataset(_dataset())
  rows, cols, w, n = g.normalized_bipartite(('click', 'purchase'), pad_to=8)
  assert n == 8
  dense = np.zeros((n, n))
  dense[rows, cols] = w
  np.testing.assert_allclose(dense, dense.T)
  a = (dense > 0).astype(float)
  deg = a.sum(1)
  inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0)
  np.testing.assert_allclose(dense, inv[:, None] * a * inv[None, :])
  # user 0 - item 1 (purchase) and user 0 - item 0 (click): users then items.
  assert dense[0, 3 + 1] > 0 and dense[0, 3 + 0] > 0
