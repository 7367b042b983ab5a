"""Historical embeddings stand in for a halo node's missing subtree, and
incremental recomputation touches exactly the nodes a new edge can move."""

import jax
import numpy as np
import pytest

from recjax.data import synthetic
from recjax.graph import cache as cache_lib
from recjax.graph import samplers
from recjax.graph.nodes import NodeGraph, node_features
from recjax.models.gnn import NodeEncoder, SampledGNN


@pytest.fixture(scope='module')
def world():
  ds = synthetic.generate_marketplace(synthetic.MarketplaceConfig(
      num_users=200, num_items=120, num_sellers=10, num_events=8000))
  g = NodeGraph.from_dataset(ds)
  feats = node_features(g, ds)
  enc = NodeEncoder(num_nodes=g.num_nodes, embed_dim=8,
                    item_offset=g.offsets['item'], num_items=g.counts['item'],
                    text_vocab=int(feats['text'].max()) + 1, price_buckets=16)
  return ds, g, feats, enc


def test_cache_push_pull_and_age():
  c = cache_lib.HistoricalCache(num_nodes=10, layers=1, dim=3)
  vals, ok = c.pull(np.array([2, -1, 5]))
  assert vals.shape == (3, 1, 3) and not ok.any()
  c.push(np.array([2, -1]), np.ones((2, 1, 3)), step=7)
  vals, ok = c.pull(np.array([2, 5]))
  assert ok.tolist() == [True, False] and (vals[0] == 1).all()
  assert c.age(np.array([2]), 10)[0] == 3
  assert c.age(np.array([5]), 10)[0] > 10**9


@pytest.mark.parametrize('kind', ['graphsage', 'gat'])
def test_history_replaces_a_missing_subtree_exactly(world, kind):
  """A seed's embedding from a block whose level-1 node lost its children
  (a halo node) plus that node's cached layer-1 state equals the full
  block's embedding; without the cache it differs."""
  _, g, feats, enc = world
  s = samplers.NeighborSampler(g, (3, 2))
  model = SampledGNN(kind=kind, encoder=enc, num_layers=2,
                     num_relations=s.num_relations, heads=2)
  seeds = g.ids('user', np.arange(4))
  full = s.sample(seeds, np.random.default_rng(0)).as_dict()
  params = model.init(jax.random.key(0), full, feats)['params']
  run = lambda block, **kw: model.apply({'params': params}, block, feats,
                                        **kw)
  want = np.asarray(run(full))
  # Layer-1 states of the level-1 nodes, from their children in `full`.
  n2 = len(full['ids'][2])
  shifted = {k: (v[1], v[2], np.zeros(n2 * 2, v[2].dtype) - (k == 'ids'))
             for k, v in full.items()}
  shifted['weight'] = (full['weight'][1], full['weight'][2],
                       np.zeros(n2 * 2, np.float32))
  _, hidden = run(shifted, return_hidden=True)
  # Node 0 of level 1 becomes a halo node: its children are gone.
  cut = {k: tuple(np.array(x) for x in v) for k, v in full.items()}
  cut['ids'][2][:2] = -1
  cut['weight'][2][:2] = 0.0
  assert not np.allclose(np.asarray(run(cut))[0], want[0], atol=1e-5)
  mask = [np.zeros(len(x), bool) for x in full['ids']]
  mask[1][0] = True
  values = [np.zeros((len(x), 1, 8), np.float32) for x in full['ids']]
  values[1] = np.asarray(hidden)
  got = np.asarray(run(cut, history=dict(values=tuple(values),
                                         mask=tuple(mask))))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_block_history_masks_only_cached_halo_nodes(world):
  _, g, _, _ = world
  s = samplers.NeighborSampler(g, (3, 2))
  block = s.sample(g.ids('user', np.arange(5)),
                   np.random.default_rng(1)).as_dict()
  is_halo = np.zeros(g.num_nodes, bool)
  is_halo[block['ids'][1][:4]] = True
  is_halo[block['ids'][0][0]] = True          # seeds never use history
  c = cache_lib.HistoricalCache(g.num_nodes, 1, 8)
  c.push(block['ids'][1][:2], np.ones((2, 1, 8)), step=0)
  h = cache_lib.block_history(c, block, is_halo)
  assert not h['mask'][0].any()
  cached = np.isin(block['ids'][1], block['ids'][1][:2])
  np.testing.assert_array_equal(h['mask'][1], cached)
  assert h['values'][1].shape == (15, 1, 8)
  # Levels the model never reads carry no values.
  assert h['values'][0].shape[-1] == h['values'][2].shape[-1] == 0


def _two_hop_sum(g, ids):
  """A 2-layer 'model': sum of ids within 2 hops (every path counted)."""
  out = []
  for v in ids:
    total = 0
    for u in g.dst[g.indptr[v]:g.indptr[v + 1]]:
      total += u + g.dst[g.indptr[u]:g.indptr[u + 1]].sum()
    out.append([float(total)])
  return np.array(out)


def test_recompute_touches_exactly_the_nodes_an_edge_can_move(world):
  ds, g, _, _ = world
  before = _two_hop_sum(g, np.arange(g.num_nodes))
  users, items = np.array([3, 7]), np.array([11, 40])
  g2 = g.with_edges(users, items, np.array([3, 3]), np.array([10**9] * 2))
  after = _two_hop_sum(g2, np.arange(g.num_nodes))
  table = before.copy()
  done = cache_lib.recompute(table, g2, g.ids('user', users),
                             g.ids('item', items), hops=2,
                             embed=lambda ids: _two_hop_sum(g2, ids))
  np.testing.assert_allclose(table, after)
  moved = np.flatnonzero(~np.isclose(before, after).all(1))
  assert set(moved) <= set(done)
  assert len(done) < g.num_nodes              # not a full recomputation
  # Brute force: nodes within 2 hops of an endpoint.
  ends = set(g.ids('user', users)) | set(g.ids('item', items))
  near = set()
  for v in range(g.num_nodes):
    one = set(g2.dst[g2.indptr[v]:g2.indptr[v + 1]])
    two = set().union(*[set(g2.dst[g2.indptr[u]:g2.indptr[u + 1]])
                        for u in one]) if one else set()
    if ends & ({v} | one | two):
      near.add(v)
  assert set(done) == near
