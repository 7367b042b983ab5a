"""NodeGraph and the neighbourhood samplers (numpy only, fast)."""

import numpy as np
import pytest

from recjax.data import synthetic
from recjax.data.schema import EVENT_INDEX, Dataset, Interactions
from recjax.graph import samplers
from recjax.graph.nodes import NodeGraph, node_features


@pytest.fixture(scope='module')
def market():
  cfg = synthetic.MarketplaceConfig(num_users=300, num_items=200,
                                    num_sellers=15, num_events=20000)
  return synthetic.generate_marketplace(cfg)


def _toy():
  # users 0,1,2; items 0,1,2; times increase with the row.
  inter = Interactions.create(
      user=np.array([0, 0, 0, 1, 1, 2, 0]),
      item=np.array([0, 1, 2, 0, 1, 2, 0]),
      timestamp=np.array([10, 20, 30, 40, 50, 60, 70]),
      event=np.array([EVENT_INDEX['click']] * 6 + [EVENT_INDEX['purchase']]))
  ds = Dataset('toy', 3, 3, train=inter, test=inter.take(np.arange(1)))
  return NodeGraph.from_dataset(ds, ('click', 'purchase'))


def test_node_graph_layout():
  g = _toy()
  assert g.offsets == dict(user=0, item=3, seller=6, category=6)
  # user 0: click 0@10, click 1@20, click 2@30, purchase 0@70: time-sorted.
  nb = slice(g.indptr[0], g.indptr[1])
  assert g.dst[nb].tolist() == [3, 4, 5, 3]
  assert g.time[nb].tolist() == [10, 20, 30, 70]
  assert [g.relations[r] for r in g.rel[nb]] == ['click'] * 3 + ['purchase']
  # Reverse edges: item 0 <- users 0 (click, purchase) and 1.
  item0 = slice(g.indptr[3], g.indptr[4])
  assert sorted(g.dst[item0].tolist()) == [0, 0, 1]
  assert g.num_edges == 14
  g2 = g.with_edges([2], [0], [EVENT_INDEX['click']], [80])
  assert g2.num_edges == 16 and g.num_edges == 14   # the original is intact
  # A duplicate (src, dst, relation) keeps one edge, at the earliest time.
  g3 = g.with_edges([0], [0], [EVENT_INDEX['click']], [5])
  nb = slice(g3.indptr[0], g3.indptr[1])
  assert g3.num_edges == 14 and g3.time[nb].tolist() == [5, 20, 30, 70]


def test_node_graph_catalog_relations(market):
  g = NodeGraph.from_dataset(market)
  s = g.summary()['relations']
  assert s['sold_by'] == s['rev_sold_by'] == market.num_items
  assert s['in_category'] == market.num_items
  f = node_features(g, market)
  assert f['known'][g.ids('user', market.cold_users)].sum() == 0
  assert f['known'][g.ids('item', market.cold_items)].sum() == 0
  assert f['known'][g.offsets['seller']:].all()
  assert f['text'].shape[0] == market.num_items
  assert f['price_bucket'].max() < 16


@pytest.mark.parametrize('kind', ['uniform', 'walk', 'temporal'])
def test_blocks_have_static_shapes(market, kind):
  g = NodeGraph.from_dataset(market)
  fan = (4, 3)
  s = {'uniform': lambda: samplers.NeighborSampler(g, fan),
       'walk': lambda: samplers.RandomWalkSampler(g, fan, num_walks=8),
       'temporal': lambda: samplers.TemporalSampler(g, fan)}[kind]()
  rng = np.random.default_rng(0)
  shapes = set()
  for _ in range(5):
    seeds = rng.integers(-1, g.num_nodes, 32).astype(np.int32)
    times = rng.integers(market.train.timestamp.min(),
                         market.train.timestamp.max(), 32)
    b = s.sample(seeds, rng, times=times)
    shapes.add(tuple(len(x) for x in b.ids))
    assert b.fanouts == fan
    for l in range(1, 3):
      parent = np.repeat(b.ids[l - 1], fan[l - 1])
      assert (b.ids[l][parent < 0] == -1).all()        # padding propagates
      assert (b.weight[l][b.ids[l] < 0] == 0).all()
      assert (b.ids[l] < g.num_nodes).all()
  assert shapes == {(32, 128, 384)}


def test_uniform_neighbors_are_real_edges_and_exclude_target():
  g = _toy()
  s = samplers.NeighborSampler(g, (6,))
  b = s.sample(np.array([0, 3]), np.random.default_rng(1),
               exclude=np.array([3, -1]))
  kids = b.ids[1].reshape(2, 6)
  assert set(kids[0][kids[0] >= 0]) <= {4, 5}           # 3 is excluded
  assert (kids[0] >= 0).any()
  assert set(kids[1][kids[1] >= 0]) <= {0, 1}


def test_symmetric_sampling_estimates_lightgcn_normalisation(market):
  g = NodeGraph.from_dataset(market)
  d = g.degrees().astype(np.float64)
  seeds = np.r_[np.flatnonzero(d > 0)[:40], -1]
  s = samplers.NeighborSampler(g, (64,), weighting='symmetric')
  b = s.sample(seeds, np.random.default_rng(0))
  kids, w = b.ids[1].reshape(len(seeds), 64), b.weight[1].reshape(-1, 64)
  ok = kids >= 0
  assert not ok[-1].any() and (w[~ok] == 0).all() and ok[:-1].all()
  # Children are real edges of their parent.
  for i, row in zip(seeds[:-1], kids[:-1]):
    assert set(row) <= set(g.dst[g.indptr[i]:g.indptr[i + 1]])
  # The mean over sampled children of w_j x_j estimates LightGCN's
  # sum_{j in N(i)} x_j / sqrt(d_i d_j) (x: any per-node value).
  x = np.random.default_rng(1).random(g.num_nodes)
  est, draws = np.zeros(len(seeds) - 1), 200
  for r in range(draws):
    b = s.sample(seeds, np.random.default_rng(r))
    k = b.ids[1].reshape(len(seeds), 64)[:-1]
    est += (b.weight[1].reshape(-1, 64)[:-1] * x[k]).mean(1)
  exact = np.array([
      sum(x[j] / np.sqrt(d[i] * d[j])
          for j in g.dst[g.indptr[i]:g.indptr[i + 1]]) for i in seeds[:-1]])
  np.testing.assert_allclose(est / draws, exact, rtol=0.02)
  # Popular children are drawn less often than uniform draws would.
  deg_sym = d[kids[:-1]].mean()
  deg_uni = d[samplers.NeighborSampler(g, (64,)).sample(
      seeds, np.random.default_rng(0)).ids[1].reshape(-1, 64)[:-1]].mean()
  assert deg_sym < 0.9 * deg_uni
  # Uniform weights are 1 on real children; a bad name is refused.
  u = samplers.NeighborSampler(g, (8,)).sample(seeds, np.random.default_rng(0))
  assert set(np.unique(u.weight[1])) <= {0.0, 1.0}
  with pytest.raises(ValueError, match="weighting='degree'"):
    samplers.NeighborSampler(g, (8,), weighting='degree')


def test_temporal_sampler_never_sees_the_future(market):
  g = NodeGraph.from_dataset(market)
  rng = np.random.default_rng(3)
  for strategy in ('recent', 'uniform'):
    s = samplers.TemporalSampler(g, (5, 2), strategy=strategy)
    seeds = g.ids('user', rng.integers(0, market.num_users, 64))
    t = rng.integers(market.train.timestamp.min(),
                     market.train.timestamp.max(), 64)
    b = s.sample(seeds, rng, times=t)
    kids = b.ids[1].reshape(64, 5)
    for j in range(64):
      n = seeds[j]
      edges = slice(g.indptr[n], g.indptr[n + 1])
      before = g.time[edges] < t[j]
      allowed = set(g.dst[edges][before].tolist())
      got = kids[j][kids[j] >= 0]
      assert set(got.tolist()) <= allowed
      if strategy == 'recent' and before.any():
        # The most recent edge before t comes first.
        assert got[0] == g.dst[edges][before][-1]
    assert (b.dt[1][b.ids[1] >= 0] >= 0).all()


def test_top_visited_counts():
  starts = np.array([0, 1])
  visits = np.array([[2, 2, 3, 0, 3, 2, -1], [1, 1, 1, -1, -1, -1, 4]])
  ids, cnt = samplers.top_visited(starts, visits, 2, 5)
  assert ids.tolist() == [[2, 3], [4, -1]]             # self excluded
  assert cnt.tolist() == [[3, 2], [1, 0]]


def test_random_walk_weights_and_hard_negatives(market):
  g = NodeGraph.from_dataset(market)
  s = samplers.RandomWalkSampler(g, (5, 3), num_walks=16)
  b = s.sample(g.ids('user', np.arange(8)), np.random.default_rng(0))
  w = b.weight[1].reshape(8, 5)
  assert np.allclose(w.sum(1)[w.sum(1) > 0], 1.0)
  assert (np.diff(s.table_w[:, :5], axis=1) <= 0).all()   # most visited first
  hard = samplers.hard_negative_table(g, (2, 6), num_walks=16)
  assert hard.shape == (market.num_items, 4)
  assert hard.max() < market.num_items and (hard >= -1).all()
  assert (hard >= 0).mean() > 0.5


def test_tf_dataset_streams_the_same_blocks(market):
  g = NodeGraph.from_dataset(market)
  s = samplers.NeighborSampler(g, (3, 2))

  def make(step):
    rng = np.random.default_rng([0, step])
    b = s.sample(rng.integers(0, g.num_nodes, 16), rng)
    return {f'ids{l}': x for l, x in enumerate(b.ids)}

  got = list(samplers.tf_dataset(make, 5, start=2).as_numpy_iterator())
  assert len(got) == 3
  for step, batch in zip(range(2, 5), got):
    want = make(step)
    for k in want:
      np.testing.assert_array_equal(batch[k], want[k])
