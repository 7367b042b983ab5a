"""Sampled GNN encoders, cold-start slices and the graph trainer."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.data import synthetic
from recjax.graph import samplers
from recjax.graph.nodes import NodeGraph, node_features
from recjax.models.gnn import NodeEncoder, SampledGNN
from recjax.train import cold_start
import helpers


@pytest.fixture(scope='module')
def market():
  cfg = synthetic.MarketplaceConfig(num_users=300, num_items=200,
                                    num_sellers=15, num_events=20000,
                                    cold_item_frac=0.15)
  return synthetic.generate_marketplace(cfg)


def _model(kind, g, feats, num_relations, normalize=True, activation='relu'):
  enc = NodeEncoder(num_nodes=g.num_nodes, embed_dim=16,
                    item_offset=g.offsets['item'], num_items=g.counts['item'],
                    text_vocab=int(feats['text'].max()) + 1,
                    price_buckets=16)
  return SampledGNN(kind=kind, encoder=enc, num_layers=2,
                    num_relations=num_relations, heads=2, normalize=normalize,
                    activation=activation)


@pytest.mark.parametrize('kind', ['graphsage', 'pinsage', 'gat', 'tgat'])
def test_encoders_embed_seeds(market, kind):
  g = NodeGraph.from_dataset(market)
  feats = node_features(g, market)
  s = (samplers.RandomWalkSampler(g, (4, 3), num_walks=8)
       if kind == 'pinsage' else samplers.NeighborSampler(g, (4, 3)))
  seeds = np.r_[g.ids('user', np.arange(6)), g.ids('item', np.arange(5)), -1]
  times = np.full(len(seeds), market.train.timestamp.max() + 1)
  block = s.sample(seeds, np.random.default_rng(0), times=times).as_dict()
  model = _model(kind, g, feats, s.num_relations)
  params = model.init(jax.random.key(0), block, feats)['params']
  out = model.apply({'params': params}, block, feats)
  assert out.shape == (12, 16)
  norms = np.linalg.norm(np.asarray(out), axis=-1)
  assert np.allclose(norms[:-1], 1.0, atol=1e-4) and norms[-1] < 1e-3
  assert np.isfinite(np.asarray(out)).all()
  # normalize=False: the same vectors before the L2 normalisation.
  raw = _model(kind, g, feats, s.num_relations, normalize=False).apply(
      {'params': params}, block, feats)
  raw_norms = np.linalg.norm(np.asarray(raw), axis=-1)
  assert not np.allclose(raw_norms[:-1], 1.0, atol=1e-2)
  np.testing.assert_allclose(np.asarray(raw)[:-1] / raw_norms[:-1, None],
                             np.asarray(out)[:-1], atol=1e-4)


def test_residual_adds_each_seeds_input_embedding(market):
  g = NodeGraph.from_dataset(market)
  feats = node_features(g, market)
  s = samplers.NeighborSampler(g, (4, 3))
  seeds = np.r_[g.ids('user', np.arange(4)), g.ids('item', np.arange(3))]
  block = s.sample(seeds, np.random.default_rng(0)).as_dict()
  plain = _model('graphsage', g, feats, s.num_relations, normalize=False)
  params = plain.init(jax.random.key(0), block, feats)['params']
  res = plain.clone(residual=True)          # no parameters of its own
  x0 = plain.encoder.apply({'params': params['encoder']}, block['ids'][0],
                           feats, False)
  np.testing.assert_allclose(
      np.asarray(res.apply({'params': params}, block, feats)),
      np.asarray(plain.apply({'params': params}, block, feats) + x0),
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind', ['graphsage', 'gat'])
def test_dropout_acts_in_training_only(market, kind):
  g = NodeGraph.from_dataset(market)
  feats = node_features(g, market)
  s = samplers.NeighborSampler(g, (4, 3))
  seeds = np.r_[g.ids('user', np.arange(4)), g.ids('item', np.arange(3))]
  block = s.sample(seeds, np.random.default_rng(0)).as_dict()
  plain = _model(kind, g, feats, s.num_relations, normalize=False)
  params = {'params': plain.init(jax.random.key(0), block, feats)['params']}
  drop = plain.clone(dropout=0.5)            # no parameters of its own

  def run(model, train, key):
    return np.asarray(model.apply(params, block, feats, train=train,
                                  rngs={'dropout': jax.random.key(key)}))
  # Evaluation ignores it; without it training is deterministic.
  np.testing.assert_allclose(run(drop, False, 1), run(plain, False, 1),
                             rtol=1e-6)
  np.testing.assert_allclose(run(plain, True, 1), run(plain, True, 2),
                             rtol=1e-6)
  # In training each rng drops different inputs.
  a, b = run(drop, True, 1), run(drop, True, 2)
  assert np.abs(a - b).max() > 1e-3
  assert np.abs(a - run(plain, True, 1)).max() > 1e-3
  np.testing.assert_allclose(a, run(drop, True, 1), rtol=1e-6)


def test_dropout_keeps_the_expectation():
  from recjax.models.gnn import dropout
  x = jnp.ones((1000, 63))                   # not a multiple of 4 values
  for rate in (0.1, 0.5, 0.9):
    y = np.asarray(dropout(x, rate, jax.random.key(0)))
    assert y.shape == x.shape and np.isfinite(y).all()
    assert abs((y == 0).mean() - rate) < 0.01
    assert abs(y.mean() - 1.0) < 0.03
    assert np.unique(y[y != 0]).size == 1
  np.testing.assert_array_equal(np.asarray(dropout(x, 0.001, jax.random.key(
      0))), np.asarray(x))                   # rounds to no dropout
  y = np.asarray(dropout(x, 0.9999, jax.random.key(0)))
  assert np.isfinite(y).all() and (y == 0).mean() > 0.99


def test_in_batch_negatives_add_the_other_pairs_items():
  import ml_collections
  from recjax.train import gnn_trainer
  b, m, d, n_items = 4, 3, 5, 16
  emb = jax.random.normal(jax.random.key(1), (2 * b + m, d))
  counts = np.arange(1, n_items + 1)          # item i has i + 1 pairs

  class Fixed:                     # a model that returns `emb` as the seeds
    def apply(self, *args, **kwargs):
      return emb

  def loss(in_batch, pos, counts=counts):
    cfg = ml_collections.ConfigDict(dict(loss=dict(
        temperature=0.5, in_batch_negatives=in_batch)))
    batch = dict(block=None, pos=jnp.asarray(pos), neg=jnp.arange(10, 13))
    return float(gnn_trainer._loss_fn(Fixed(), cfg, b, m, item_counts=counts)(
        None, batch, None, None)[0])

  # By hand: logQ = log(expected count among the candidates) of each item.
  pos, neg = np.array([0, 1, 2, 3]), np.arange(10, 13)
  log_q = np.log(m / n_items + b * counts / counts.sum())
  u, p, n = emb[:b], emb[b:2 * b], emb[2 * b:]
  s_pos = jnp.sum(u * p, -1) / 0.5 - log_q[pos]
  others = u @ p.T / 0.5 - log_q[pos][None, :]
  others = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, others)
  want = jnp.mean(jax.nn.logsumexp(jnp.concatenate(
      [s_pos[:, None], u @ n.T / 0.5 - log_q[neg][None, :], others], -1),
      -1) - s_pos)
  assert loss(True, pos) == pytest.approx(float(want), rel=1e-5)
  # Uniform counts: the correction is one constant, so adding the other
  # pairs' items only adds negatives (a larger loss).
  flat = np.ones(n_items)
  assert loss(True, pos, flat) > loss(False, pos, flat)
  # A pair sharing the user's item is that user's positive, not a negative;
  # what is left is the constant correction, which cancels.
  assert loss(True, [7] * 4, flat) == pytest.approx(loss(False, [7] * 4),
                                                    rel=1e-5)
  with pytest.raises(ValueError, match='in_batch_negatives'):
    gnn_trainer._loss_fn(Fixed(), ml_collections.ConfigDict(dict(loss=dict(
        temperature=0.5, in_batch_negatives=True))), b, m)


def test_logq_weight_and_output_l2():
  import ml_collections
  from recjax.train import gnn_trainer
  b, m, d, n_items = 4, 3, 5, 16
  emb = jax.random.normal(jax.random.key(2), (2 * b + m, d))
  counts = np.arange(1, n_items + 1)
  pos, neg = np.array([0, 5, 9, 15]), np.arange(10, 13)

  class Fixed:
    def apply(self, *args, **kwargs):
      return emb

  def loss(**kw):
    cfg = ml_collections.ConfigDict(dict(loss=dict(
        temperature=0.5, in_batch_negatives=True, **kw)))
    batch = dict(block=None, pos=jnp.asarray(pos), neg=jnp.asarray(neg))
    return float(gnn_trainer._loss_fn(Fixed(), cfg, b, m, item_counts=counts)(
        None, batch, None, None)[0])

  def by_hand(alpha):
    log_q = alpha * np.log(m / n_items + b * counts / counts.sum())
    u, p, n = emb[:b], emb[b:2 * b], emb[2 * b:]
    s_pos = jnp.sum(u * p, -1) / 0.5 - log_q[pos]
    others = u @ p.T / 0.5 - log_q[pos][None, :]
    others = jnp.where(jnp.eye(b, dtype=bool), -jnp.inf, others)
    return float(jnp.mean(jax.nn.logsumexp(jnp.concatenate(
        [s_pos[:, None], u @ n.T / 0.5 - log_q[neg][None, :], others], -1),
        -1) - s_pos))

  # The weight scales the correction: 0 is none, 1 (the default) all of it.
  assert loss() == pytest.approx(by_hand(1.0), rel=1e-5)
  assert loss(logq_weight=0.5) == pytest.approx(by_hand(0.5), rel=1e-5)
  assert loss(logq_weight=2.0) == pytest.approx(by_hand(2.0), rel=1e-5)
  assert loss(logq_weight=0.0) == pytest.approx(by_hand(0.0), rel=1e-5)
  assert by_hand(0.5) != pytest.approx(by_hand(1.0), rel=1e-3)
  # output_l2 adds 0.5 * the squared norms of the step's embeddings / b.
  reg = 0.5 * float(jnp.sum(emb ** 2)) / b
  assert loss(output_l2=0.1) == pytest.approx(by_hand(1.0) + 0.1 * reg,
                                              rel=1e-5)
  for key, bad in (('logq_weight', -0.1), ('logq_weight', float('inf')),
                   ('output_l2', -1.0), ('output_l2', float('nan'))):
    with pytest.raises(ValueError, match=rf'loss.{key}={bad}'):
      loss(**{key: bad})
  # The weight only scales the in-batch correction: refused without it.
  with pytest.raises(ValueError, match='in_batch_negatives'):
    gnn_trainer.check_loss(ml_collections.ConfigDict(dict(loss=dict(
        logq_weight=0.5))))


def test_ccl_loss_matches_hand_computation():
  import ml_collections
  from recjax.train import gnn_trainer
  b, m, h, d = 4, 3, 2, 5
  raw = jax.random.normal(jax.random.key(3), (2 * b + m + b * h, d))
  emb = raw / jnp.linalg.norm(raw, axis=-1, keepdims=True)   # unit vectors
  pos, neg = np.array([0, 5, 9, 11]), np.array([5, 10, 12])
  hard = np.array([[1, 0], [2, 3], [4, 6], [7, 8]])          # row 0: 0 = pos
  hard_mask = np.array([[True, True]] * 3 + [[True, False]])

  class Fixed:
    pass

  def loss(with_hard, **kw):
    cfg = ml_collections.ConfigDict(dict(loss=dict(dict(
        name='ccl', temperature=0.5, margin=0.1, negative_weight=3.0), **kw)))
    batch = dict(block=None, pos=jnp.asarray(pos), neg=jnp.asarray(neg))
    if with_hard:
      batch.update(hard=jnp.asarray(hard), hard_mask=jnp.asarray(hard_mask))
    e = emb if with_hard else emb[:2 * b + m]
    Fixed.apply = lambda self, *a, **k: e
    return float(gnn_trainer._loss_fn(Fixed(), cfg, b, m)(
        None, batch, None, None)[0])

  u, p, n = np.asarray(emb[:b]), np.asarray(emb[b:2 * b]), np.asarray(
      emb[2 * b:2 * b + m])
  hv = np.asarray(emb[2 * b + m:]).reshape(b, h, d)

  def by_hand(with_hard):
    total = 0.0
    for r in range(b):
      cos = [u[r] @ n[j] for j in range(m) if neg[j] != pos[r]]
      if with_hard:
        cos += [u[r] @ hv[r, j] for j in range(h)
                if hard_mask[r, j] and hard[r, j] != pos[r]]
      hinge = np.mean([max(c - 0.1, 0.0) for c in cos])
      total += max(1 - u[r] @ p[r], 0.0) + 3.0 * hinge
    return total / b

  assert loss(False) == pytest.approx(by_hand(False), rel=1e-5)
  assert loss(True) == pytest.approx(by_hand(True), rel=1e-5)
  assert by_hand(True) != pytest.approx(by_hand(False), rel=1e-3)
  # CCL scores cosines with its own negatives: softmax-only options refused.
  for kw, match in ((dict(in_batch_negatives=True),
                     'loss.in_batch_negatives is a softmax'),
                    (dict(output_l2=0.1), 'loss.output_l2 is a softmax'),
                    (dict(normalize=False), 'normalize'),
                    (dict(margin=1.5), 'loss.margin'),
                    (dict(negative_weight=-1.0), 'negative_weight')):
    with pytest.raises(ValueError, match=match):
      loss(False, **kw)
  with pytest.raises(ValueError, match="loss.name='bpr'"):
    gnn_trainer.check_loss(ml_collections.ConfigDict(dict(loss=dict(
        name='bpr'))))


def test_id_l2_adds_lightgcns_l2_on_the_seeds_id_rows():
  # loss.id_l2 adds id_l2 * 0.5 * sum of the squared id-table rows of the
  # users, items and shared negatives / (G * b): not hard negatives, not
  # padding; per process run when G > 1.
  import ml_collections
  from recjax.train import gnn_trainer
  b, m, h, d, groups = 3, 2, 2, 4, 2
  run = 2 * b + m + b * h
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.normal(size=(40, d)), jnp.float32)
  ids = rng.integers(0, 38, groups * run).astype(np.int32)
  ids[b] = -1                                   # a padded seed: no term
  emb = jnp.asarray(rng.normal(size=(groups * run, d)), jnp.float32)
  emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
  batch = dict(block=dict(ids=[jnp.asarray(ids)]),
               pos=jnp.asarray(rng.integers(0, 9, groups * b)),
               neg=jnp.asarray(rng.integers(0, 9, groups * m)),
               hard=jnp.asarray(rng.integers(0, 9, (groups * b, h))),
               hard_mask=jnp.ones((groups * b, h), bool))

  class Fixed:
    apply = lambda self, *a, **k: emb

  def loss(**kw):
    cfg = ml_collections.ConfigDict(dict(loss=dict(dict(
        name='softmax', temperature=0.5), **kw)))
    out, aux = gnn_trainer._loss_fn(Fixed(), cfg, b, m, groups=groups)(
        {'encoder': {'embedding': table}}, batch, None, None)
    return float(out), aux

  keep = [g * run + j for g in range(groups) for j in range(2 * b + m)
          if ids[g * run + j] >= 0]
  by_hand = 0.5 * float(np.sum(np.asarray(table)[ids[keep]]**2)) / (
      groups * b)
  base, aux0 = loss()
  with_l2, aux = loss(id_l2=0.3)
  assert 'id_reg' not in aux0
  assert float(aux['id_reg']) == pytest.approx(by_hand, rel=1e-5)
  assert with_l2 - base == pytest.approx(0.3 * by_hand, rel=1e-4)
  ccl, ccl_l2 = loss(name='ccl')[0], loss(name='ccl', id_l2=0.3)[0]
  assert ccl_l2 - ccl == pytest.approx(0.3 * by_hand, rel=1e-4)
  for bad in (-1.0, float('nan')):
    with pytest.raises(ValueError, match='loss.id_l2'):
      loss(id_l2=bad)


def test_linear_activation_makes_sage_affine_in_its_inputs(market):
  # activation='linear' drops the ReLU between layers (LightGCN's finding
  # for id-only data): the output is then affine in the id table, so
  # f(T1) + f(T2) == f(T1 + T2) + f(0); with ReLU it is not.
  g = NodeGraph.from_dataset(market)
  feats = node_features(g, market)
  s = samplers.NeighborSampler(g, (4, 3))
  block = s.sample(g.ids('user', np.arange(8)),
                   np.random.default_rng(0)).as_dict()
  gaps = {}
  for act in ('linear', 'relu'):
    for kind in ('graphsage', 'pinsage'):
      model = _model(kind, g, feats, s.num_relations, normalize=False,
                     activation=act)
      params = nn.meta.unbox(model.init(jax.random.key(0), block,
                                        feats)['params'])
      table = params['encoder']['embedding']
      t1 = jax.random.normal(jax.random.key(1), table.shape)
      t2 = jax.random.normal(jax.random.key(2), table.shape)

      def out(t):
        p = jax.tree.map(lambda x: x, params)
        p['encoder']['embedding'] = t
        return np.asarray(model.apply({'params': p}, block, feats))

      gap = out(t1) + out(t2) - out(t1 + t2) - out(jnp.zeros_like(t1))
      gaps[act, kind] = float(np.abs(gap).max()) / float(
          np.abs(out(t1)).max())
  assert gaps['linear', 'graphsage'] < 1e-4, gaps
  assert gaps['linear', 'pinsage'] < 1e-4, gaps
  assert gaps['relu', 'graphsage'] > 1e-2, gaps
  assert gaps['relu', 'pinsage'] > 1e-2, gaps
  with pytest.raises(ValueError, match='only graphsage and pinsage'):
    _model('gat', g, feats, s.num_relations, activation='linear').init(
        jax.random.key(0), block, feats)


def test_unseen_item_is_embedded_from_content(market):
  g = NodeGraph.from_dataset(market)
  feats = node_features(g, market)
  s = samplers.NeighborSampler(g, (4, 3))
  cold = g.ids('item', market.cold_items[:2])
  assert not feats['known'][cold].any()
  block = s.sample(cold, np.random.default_rng(0)).as_dict()
  model = _model('graphsage', g, feats, s.num_relations)
  params = model.init(jax.random.key(0), block, feats)['params']
  a = np.asarray(model.apply({'params': params}, block, feats))
  other = dict(feats, text=feats['text'].copy())
  other['text'][market.cold_items[0]] = other['text'][market.cold_items[1]]
  b = np.asarray(model.apply({'params': params}, block, other))
  assert not np.allclose(a[0], b[0])        # its own text moved it
  assert np.allclose(a[1], b[1])            # nothing else changed


def test_gat_relation_parameters_steer_attention(market):
  g = NodeGraph.from_dataset(market)
  feats = node_features(g, market)
  s = samplers.NeighborSampler(g, (8, 2))
  users = g.ids('user', np.arange(100))
  block = s.sample(users, np.random.default_rng(0)).as_dict()
  model = _model('gat', g, feats, s.num_relations)
  params = model.init(jax.random.key(0), block, feats)['params']
  purchase = g.relations.index('purchase')

  def purchase_share(p):
    _, inter = model.apply({'params': p}, block, feats,
                           mutable=['intermediates'])
    alpha = np.asarray(inter['intermediates']['layer0']['attention'][0])
    alpha = alpha[:len(block['ids'][1])].mean(-1)     # seed level, mean head
    rel = np.asarray(block['rel'][1])
    return alpha[rel == purchase].sum() / alpha.sum()

  base = purchase_share(params)
  boosted = jax.tree.map(lambda x: x, params)
  bias = boosted['layer0']['relation_bias']
  boosted['layer0']['relation_bias'] = bias.at[purchase].add(5.0)
  assert (np.asarray(block['rel'][1]) == purchase).any()
  # Only seeds with a purchase neighbour can shift: a few in 100.
  assert purchase_share(boosted) > 3 * base


def test_tgat_depends_on_time_gaps(market):
  g = NodeGraph.from_dataset(market)
  feats = node_features(g, market)
  s = samplers.TemporalSampler(g, (4, 2))
  seeds = g.ids('user', np.arange(8))
  block = s.sample(seeds, np.random.default_rng(0),
                   times=np.full(8, market.train.timestamp.max() + 1))
  model = _model('tgat', g, feats, s.num_relations)
  d = block.as_dict()
  params = model.init(jax.random.key(0), d, feats)['params']
  a = model.apply({'params': params}, d, feats)
  d2 = dict(d, dt=tuple(x * 30 + 1 for x in d['dt']))
  b = model.apply({'params': params}, d2, feats)
  assert not np.allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_cold_start_slices(market):
  cs = cold_start.make_cold_start(market, reveal=2, ks=(10,))
  r = cs.revealed
  assert set(np.unique(r.user)) <= set(market.cold_users)
  assert np.bincount(r.user).max() <= 2
  t = market.test
  for u in np.unique(r.user)[:20]:
    rows = np.sort(t.timestamp[t.user == u])
    assert (np.sort(r.timestamp[r.user == u]) == rows[:2]).all()
  # Revealed items are masked, never graded.
  ev = cs.user_eval
  for row, u in enumerate(ev.users):
    shown = set(r.item[r.user == u])
    assert not shown & set(ev.test_pad[row][ev.test_pad[row] >= 0])
  assert cs.item_eval.num_items == len(market.cold_items)
  assert not np.isin(cs.item_eval.users, market.cold_users).any()


def test_graph_trainer_learns_compiles_once_and_reports(tmp_path):
  r, _ = helpers.run_main(str(tmp_path / 'sage'), 'configs/gnn_tiny.py:pinsage',
                          ['--config.train.num_steps=40'])
  assert r['compilations'] == 1
  assert r['loss_curve'][-1] < r['loss_curve'][0]
  for k in ('recall@20', 'popularity_recall@20', 'cold_user_recall@20',
            'cold_item_recall@20', 'popularity_cold_item_recall@20',
            'seeds_per_s'):
    assert k in r, k
  # Curriculum: epoch 0 has no hard negatives; the run still learns.
  assert r['recall@20'] > 0


def test_training_positives_can_be_a_subset_of_the_graph_events(market):
  import ml_collections
  from recjax.data.schema import EVENT_INDEX
  from recjax.train import gnn_trainer, trainer
  deep = ('click', 'cart', 'purchase', 'review')
  data = ml_collections.ConfigDict(dict(
      event_types=('view',) + deep, target_events=deep))
  assert trainer.target_events(data) == deep
  stream = gnn_trainer.PairStream(market, trainer.target_events(data), 32,
                                  8, seed=0)
  tr = market.train
  clicked = set(zip(tr.user[tr.event >= EVENT_INDEX['click']].tolist(),
                    tr.item[tr.event >= EVENT_INDEX['click']].tolist()))
  pairs = set(zip(stream.users.tolist(), stream.items.tolist()))
  assert pairs == clicked
  # Unset: the graph's own event types (views included: more pairs).
  data.target_events = ()
  every = gnn_trainer.PairStream(market, trainer.target_events(data), 32, 8,
                                 seed=0)
  assert len(every.users) > len(stream.users)
  data.target_events = ('click', 'like')
  with pytest.raises(ValueError, match=r"data.target_events.*'like'"):
    trainer.target_events(data)


def test_graph_loss_same_on_1_and_8_devices(tmp_path):
  over = ['--config.train.num_steps=6', '--config.train.log_every=2']
  one, _ = helpers.run_main(str(tmp_path / 'one'), 'configs/gnn_tiny.py:gat',
                            over)
  eight, _ = helpers.run_main(str(tmp_path / 'eight'),
                              'configs/gnn_tiny.py:gat',
                              over + ['--config.mesh.shape=(4,2)'],
                              devices=8)
  assert eight['devices'] == 8 and eight['mesh'] == {'data': 4, 'model': 2}
  np.testing.assert_allclose(one['loss_curve'], eight['loss_curve'],
                             rtol=2e-4)
  np.testing.assert_allclose(one['recall@20'], eight['recall@20'], atol=2e-3)


def test_bench_gnn_prints_the_figures():
  cmd = [sys.executable, 'tools/bench_gnn.py', '--model=tgat', '--steps=8',
         '--users=400', '--items=400', '--sellers=20', '--events=30000',
         '--batch_size=64', '--fanouts=4,2', '--embed_dim=16',
         '--target_events=click,cart,purchase,review', '--eval_fanouts=8,4']
  proc = subprocess.run(cmd, cwd=helpers.REPO, capture_output=True,
                        text=True, timeout=600, env=helpers.env_with())
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for k in ('recall@20', 'ndcg@20', 'popularity_recall@20', 'train_s',
            'seeds_per_s', 'peak_rss_mb', 'cold_user_recall@20',
            'cold_item_recall@20', 'popularity_cold_user_recall@20',
            'popularity_cold_item_recall@20'):
    assert k in out, k
  assert out['settings']['target_events'] == ['click', 'cart', 'purchase',
                                              'review']
  assert out['settings']['eval_fanouts'] == [8, 4]


def test_eval_fanouts_are_checked():
  import ml_collections
  from recjax.train import gnn_trainer
  c = ml_collections.ConfigDict(dict(graph=dict(fanouts=(10, 5),
                                                eval_fanouts=())))
  assert gnn_trainer.eval_fanouts(c) == ()
  c.graph.eval_fanouts = (30, 10)
  assert gnn_trainer.eval_fanouts(c) == (30, 10)
  for bad in ((30,), (30, 0)):
    c.graph.eval_fanouts = bad
    with pytest.raises(ValueError, match='graph.eval_fanouts'):
      gnn_trainer.eval_fanouts(c)


def test_id_dropout_is_checked():
  import ml_collections
  from recjax.train import gnn_trainer
  for bad in (1.0, -0.1):
    c = ml_collections.ConfigDict(dict(model=dict(id_dropout=bad)))
    with pytest.raises(ValueError, match=rf'model.id_dropout={bad}'):
      gnn_trainer.build_model(c, None, {}, None)
  for bad in (1.0, -0.1, 'x'):
    c = ml_collections.ConfigDict(dict(model=dict(id_dropout=0.0,
                                                  dropout=bad)))
    with pytest.raises(ValueError, match=rf"model.dropout={bad!r}"):
      gnn_trainer.build_model(c, None, {}, None)
  # So is the activation, before any data or model is built.
  for name, act in (('graphsage', 'Relu'), ('gat', 'linear')):
    c = ml_collections.ConfigDict(dict(model=dict(
        name=name, id_dropout=0.0, activation=act)))
    with pytest.raises(ValueError, match=f"model.activation='{act}'"):
      gnn_trainer.build_model(c, None, {}, None)


def test_bench_gnn_reads_lightgcn_txt(tmp_path):
  rng = np.random.default_rng(0)
  with open(tmp_path / 'train.txt', 'w') as tr, \
       open(tmp_path / 'test.txt', 'w') as te:
    for u in range(120):
      items = rng.choice(80, 12, replace=False)
      tr.write(' '.join(map(str, [u, *items[:9]])) + '\n')
      te.write(' '.join(map(str, [u, *items[9:]])) + '\n')
  cmd = [sys.executable, 'tools/bench_gnn.py', '--model=graphsage',
         f'--data={tmp_path}', '--steps=17', '--batch_size=64',
         '--fanouts=3,2', '--embed_dim=8', '--nonormalize',
         '--temperature=1', '--id_dropout=0', '--in_batch_negatives',
         '--residual', '--neighbor_weight=symmetric', '--weight_decay=0.01',
         '--logq_weight=0.5',
         '--output_l2=0.01', '--id_l2=0.02', '--eval_every_epochs=1',
         f'--workdir={tmp_path / "run"}']
  proc = subprocess.run(cmd, cwd=helpers.REPO, capture_output=True,
                        text=True, timeout=600, env=helpers.env_with())
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['steps'] == 17 and 0 <= out['recall@20'] <= 1
  # 1080 pairs / 64 = 16 steps an epoch: evaluated once, after epoch 1.
  assert [(h['step'], h['epoch']) for h in out['history']] == [(16, 1.0)]
  assert 0 <= out['history'][0]['recall@20'] <= 1
  assert 'ndcg@20' in out['history'][0]
  assert out['settings']['id_l2'] == 0.02
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    logged = [json.loads(l) for l in f if l.strip()]
  assert any(r.get('train/id_reg', 0) > 0 for r in logged)
  # Evaluating during training leaves training as it was: the same run
  # without it ends on the same figures.
  quiet = subprocess.run(
      [a for a in cmd[:-1] if a != '--eval_every_epochs=1'] +
      [f'--workdir={tmp_path / "quiet"}'], cwd=helpers.REPO,
      capture_output=True, text=True, timeout=600, env=helpers.env_with())
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  q = json.loads(quiet.stdout.strip().splitlines()[-1])
  assert 'history' not in q
  assert (q['recall@20'], q['ndcg@20']) == pytest.approx(
      (out['recall@20'], out['ndcg@20']), abs=1e-6)
  assert out['settings']['normalize'] is False
  assert out['settings']['id_dropout'] == 0
  assert out['settings']['in_batch_negatives'] is True
  assert out['settings']['residual'] is True
  assert out['settings']['neighbor_weight'] == 'symmetric'
  assert out['settings']['optimizer'] == 'adamw'
  assert out['settings']['weight_decay'] == 0.01
  assert out['settings']['logq_weight'] == 0.5
  assert out['settings']['output_l2'] == 0.01
  assert 'cold_user_recall@20' not in out       # no cold slices in txt data
  # tools/eval_gnn.py re-evaluates that checkpoint at other fan-outs, one
  # JSON line each, and leaves the training config as it was.
  saved = (tmp_path / 'run' / 'config.json').read_text()
  ev = subprocess.run(
      [sys.executable, 'tools/eval_gnn.py', f'--workdir={tmp_path / "run"}',
       '--eval_fanouts=3,2', '--eval_fanouts=6,4'], cwd=helpers.REPO,
      capture_output=True, text=True, timeout=600, env=helpers.env_with())
  assert ev.returncode == 0, ev.stderr[-3000:]
  lines = [json.loads(x) for x in ev.stdout.strip().splitlines()[-2:]]
  assert [x['eval_fanouts'] for x in lines] == [[3, 2], [6, 4]]
  assert all(x['steps'] == 17 and 0 <= x['recall@20'] <= 1 for x in lines)
  # At the training fan-outs (and the same evaluation seed) it is the run's.
  assert lines[0]['recall@20'] == pytest.approx(out['recall@20'], abs=1e-6)
  assert (tmp_path / 'run' / 'config.json').read_text() == saved
  for args, msg in (([f'--workdir={tmp_path}'], 'no config.json'),
                    ([f'--workdir={tmp_path / "run"}', '--eval_fanouts=3'],
                     '--eval_fanouts=3: want 2 positive'),
                    ([f'--workdir={tmp_path / "run"}',
                      '--eval_fanouts=3,x'], '--eval_fanouts=3,x')):
    bad = subprocess.run([sys.executable, 'tools/eval_gnn.py', *args],
                         cwd=helpers.REPO, capture_output=True, text=True,
                         timeout=600, env=helpers.env_with())
    assert bad.returncode != 0 and msg in bad.stderr, bad.stderr[-2000:]
  # A workdir with checkpoints would resume instead of measuring: refused.
  again = subprocess.run(cmd, cwd=helpers.REPO, capture_output=True,
                         text=True, timeout=600, env=helpers.env_with())
  assert again.returncode != 0
  assert 'holds checkpoints of an earlier run' in again.stderr
  # A value out of range (e.g. a probability outside [0, 1)) is named
  # before any data is read.
  for flag in ('--id_dropout=1.5', '--dropout=1.0', '--dropout=-0.1',
               '--weight_decay=-1', '--logq_weight=-1', '--output_l2=nan',
               '--output_l2=-1', '--id_l2=-1', '--eval_every_epochs=-1'):
    bad = subprocess.run(cmd[:-1] + [flag], cwd=helpers.REPO,
                         capture_output=True, text=True, timeout=600,
                         env=helpers.env_with())
    assert bad.returncode != 0 and flag in bad.stderr
  # Hard negatives come from PinSAGE's random-walk ranks: another model
  # refuses them rather than ignoring them, and a count below 0 is named.
  for args, msg in ((['--num_hard_negatives=1'],
                     '--num_hard_negatives: a pinsage option'),
                    (['--model=pinsage', '--num_hard_negatives=-1'],
                     '--num_hard_negatives=-1: want >= 0'),
                    # and only GraphSAGE's mean reads neighbour weights.
                    (['--model=gat'], '--neighbor_weight=symmetric: only '
                     'graphsage')):
    bad = subprocess.run(cmd[:-1] + args, cwd=helpers.REPO,
                         capture_output=True, text=True, timeout=600,
                         env=helpers.env_with())
    assert bad.returncode != 0 and msg in bad.stderr, bad.stderr[-2000:]
  # CCL with the softmax-only options of cmd: refused, naming them; alone it
  # trains and the settings say so.
  bad = subprocess.run(cmd[:-1] + ['--loss=ccl'], cwd=helpers.REPO,
                       capture_output=True, text=True, timeout=600,
                       env=helpers.env_with())
  assert bad.returncode != 0 and 'loss.in_batch_negatives' in bad.stderr
  bad = subprocess.run(cmd[:-1] + ['--margin=0.5'], cwd=helpers.REPO,
                       capture_output=True, text=True, timeout=600,
                       env=helpers.env_with())
  assert bad.returncode != 0 and '--margin: a ccl option' in bad.stderr
  ccl = subprocess.run(
      cmd[:8] + ['--id_dropout=0', '--loss=ccl', '--margin=0.5',
                 '--negative_weight=10', f'--workdir={tmp_path / "ccl"}'],
      cwd=helpers.REPO, capture_output=True, text=True, timeout=600,
      env=helpers.env_with())
  assert ccl.returncode == 0, ccl.stderr[-3000:]
  got = json.loads(ccl.stdout.strip().splitlines()[-1])['settings']
  assert (got['loss'], got['margin'], got['negative_weight']) == (
      'ccl', 0.5, 10.0)
  # LightGCN reads neither sampled-model option: refused, not ignored.
  for flag in ('--residual', '--output_l2=0.1', '--dropout=0.1'):
    bad = subprocess.run(
        [sys.executable, 'tools/bench_gnn.py', '--model=lightgcn',
         f'--data={tmp_path}', flag], cwd=helpers.REPO,
        capture_output=True, text=True, timeout=600, env=helpers.env_with())
    assert bad.returncode != 0 and flag.split('=')[0] in bad.stderr
  # --logq_weight without the in-batch negatives it scales: refused.
  bad = subprocess.run([a for a in cmd[:-1] if a != '--in_batch_negatives']
                       + ['--logq_weight=0.5'], cwd=helpers.REPO,
                       capture_output=True, text=True, timeout=600,
                       env=helpers.env_with())
  assert bad.returncode != 0 and 'logq_weight' in bad.stderr
