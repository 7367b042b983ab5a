"""Hybrid graph + transformer model, multimodal item encoder, sellers and
the results-table metrics (tools/report.py end to end on a tiny
marketplace)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, env_with
from recjax.data import sequences
from recjax.models.hybrid import FUSIONS, Hybrid
from recjax.models.item_encoder import ItemEncoder
from recjax.report import metrics
from recjax.train import sellers

I, L, D = 30, 8, 16


def _hybrid(fusion, **kw):
  g = np.random.default_rng(0).normal(size=(I + 1, 12)).astype(np.float32)
  g[0] = 0
  return Hybrid(num_items=I, vocab_size=32, max_len=L, embed_dim=D,
                num_blocks=1, num_heads=2, ff_dim=D, dropout=0.0,
                graph_item=g, fusion=fusion, **kw)


def _items():
  rng = np.random.default_rng(1)
  x = rng.integers(1, I + 1, (3, L)).astype(np.int32)
  x[0, :3] = 0                       # left padding
  return jnp.asarray(x)


@pytest.mark.parametrize('fusion', FUSIONS)
def test_hybrid_is_causal_and_scores_with_both_parts(fusion):
  model = _hybrid(fusion)
  items = _items()
  params = model.init(jax.random.key(0), {'item': items},
                      method='init_all')['params']
  assert 'graph_item_embedding' not in params      # frozen by default
  h = model.apply({'params': params}, {'item': items})
  later = items.at[:, -1].set(items[:, -1] % I + 1)
  h2 = model.apply({'params': params}, {'item': later})
  # Nothing after position t reaches position t; the last position moves.
  np.testing.assert_allclose(h[:, :-1], h2[:, :-1], atol=1e-5)
  assert not np.allclose(h[:, -1], h2[:, -1])
  keys = model.apply({'params': params}, method='all_keys')
  assert keys.shape == (I, h.shape[-1])
  other = _hybrid(fusion)
  other = other.clone(graph_item=other.graph_item[::-1].copy())
  if fusion == 'score':     # the graph rows themselves are the key's tail
    k2 = other.apply({'params': params}, method='all_keys')
    np.testing.assert_allclose(keys[:, :D], k2[:, :D])
    assert not np.allclose(keys, k2)
    return
  # The graph embeddings enter the keys (once graph_key, zero at init, has
  # learned anything): other graph rows, other keys.
  gk = params['graph_key']['kernel']
  gk = getattr(gk, 'value', gk)
  assert not np.any(gk)
  params = jax.tree.map(lambda x: x, params)
  params['graph_key'] = dict(params['graph_key'], kernel=jax.random.normal(
      jax.random.key(1), gk.shape))
  keys = model.apply({'params': params}, method='all_keys')
  k2 = other.apply({'params': params}, method='all_keys')
  assert not np.allclose(keys, k2)


def test_hybrid_fine_tunes_graph_embeddings_when_asked():
  model = _hybrid('cross', graph_trainable=True)
  params = model.init(jax.random.key(0), {'item': _items()},
                      method='init_all')['params']
  table = params['graph_item_embedding']
  table = getattr(table, 'value', table)
  np.testing.assert_allclose(table[:I + 1], model.graph_item)
  with pytest.raises(ValueError, match='fusion'):
    _hybrid('sum').init(jax.random.key(0), {'item': _items()},
                        method='init_all')


@pytest.mark.parametrize('weight', ['learned', 'balanced'])
def test_score_fusion_adds_the_graph_models_own_logit(weight):
  """'score' fusion: logit = base logit + a <graph user, graph item>, the
  user node from the graph model's table (users it lacks: the mean of
  their history's graph rows); out of the training loss unless learned."""
  rng = np.random.default_rng(2)
  users = rng.normal(size=(3, 12)).astype(np.float32)
  users[2] = 0                              # unknown to the graph model
  model = _hybrid('score', graph_user='node', graph_user_table=users,
                  graph_scale=0.5, graph_weight=weight)
  items = _items()
  inputs = {'item': items,
            'user': jnp.broadcast_to(jnp.arange(3)[:, None], items.shape)}
  params = model.init(jax.random.key(0), inputs, method='init_all')['params']
  w = params['graph_score_weight']
  assert float(getattr(w, 'value', w)) == 0.5
  q = model.apply({'params': params}, inputs)[:, -1]
  keys = model.apply({'params': params}, method='all_keys')
  g = model.graph_item[1:I + 1]
  hist = model.graph_item[np.asarray(items[2])]
  fold_in = hist.sum(0) / (np.asarray(items[2]) > 0).sum()
  node = np.stack([users[0], users[1], fold_in])
  np.testing.assert_allclose(q @ keys.T - q[:, :D] @ keys[:, :D].T,
                             0.5 * node @ g.T, rtol=1e-4, atol=1e-4)
  qt = model.apply({'params': params}, inputs, train=True)[:, -1]
  assert np.any(qt[:, D:]) == (weight == 'learned')
  with pytest.raises(ValueError, match='graph_user_table'):
    _hybrid('score', graph_user='node').init(jax.random.key(0), inputs,
                                             method='init_all')


def test_graph_weight_fits():
  from recjax.train import hybrid
  rng = np.random.default_rng(0)
  keys = rng.normal(size=(40, 6)).astype(np.float32)
  q = rng.normal(size=(10, 6)).astype(np.float32)
  q[:, 3:] *= 4.0                           # graph logits 4x as spread
  c = hybrid.balanced_score_weight(q, keys, 3)
  q2 = q.copy()
  q2[:, 3:] *= c
  base, graph = q2[:, :3] @ keys[:, :3].T, q2[:, 3:] @ keys[:, 3:].T
  spread = lambda x: (x - x.mean(1, keepdims=True)).std()
  np.testing.assert_allclose(spread(base), spread(graph), rtol=1e-5)
  # The validation fit returns the multiple its metric likes best.
  target = 0.3
  evaluate = lambda qq, k: {'ndcg@10': -abs(
      float(np.abs(qq[:, 3:]).sum() / np.abs(q[:, 3:]).sum()) - target)}
  best, table = hybrid.fit_score_weight(q, keys, evaluate, 3, 'ndcg@10')
  assert best == 0.3 and len(table) == len(hybrid.WEIGHT_GRID)


def _content(n=6, t=5):
  rng = np.random.default_rng(0)
  text = rng.integers(1, 20, (n + 1, t)).astype(np.int32)
  text[0] = 0
  text[2, 3:] = 0                    # a shorter description
  z = lambda hi: np.r_[0, rng.integers(1, hi, n)].astype(np.int32)
  return dict(text=text, seller=z(4), category=z(5), price=z(3),
              numeric=rng.normal(size=(n + 1, 3)).astype(np.float32),
              image=rng.normal(size=(n + 1, 8)).astype(np.float32))


def test_item_encoder_embeds_from_content_only():
  content = _content()
  content['text'][4] = content['text'][3]
  for k in ('seller', 'category', 'price', 'numeric', 'image'):
    content[k][4] = content[k][3]      # item 4 = item 3's content
  enc = ItemEncoder(content, rows=8, embed_dim=D)
  ids = jnp.asarray([[0, 1, 2], [3, 4, 5]])
  params = enc.init(jax.random.key(0), ids)['params']
  out = np.asarray(enc.apply({'params': params}, ids))
  assert out.shape == (2, 3, D)
  np.testing.assert_allclose(out[0, 0], 0)            # padding
  np.testing.assert_allclose(out[1, 0], out[1, 1], atol=1e-6)
  assert not np.allclose(out[0, 1], out[0, 2])
  # Text matters: another description, another vector.
  content['text'][4] = np.r_[content['text'][4][::-1]]
  out2 = ItemEncoder(content, rows=8, embed_dim=D).apply({'params': params},
                                                         ids)
  assert not np.allclose(out2[1, 1], out[1, 1])
  # A subset of the content (model.content_parts): no text, no text params.
  image_only = {k: content[k] for k in ('image',)}
  enc = ItemEncoder(image_only, rows=8, embed_dim=D)
  params = enc.init(jax.random.key(0), ids)['params']
  assert 'token_embedding' not in params and 'numeric_proj' not in params
  assert enc.apply({'params': params}, ids).shape == (2, 3, D)


def test_content_parts_pick_tables_and_reject_unknown_parts():
  from recjax.data import synthetic
  from recjax.models import item_encoder
  ds = synthetic.generate_marketplace(synthetic.MarketplaceConfig.tiny())
  full = item_encoder.content_tables(ds)
  assert {'text', 'image', 'seller', 'numeric'} <= set(full)
  some = item_encoder.content_tables(ds, parts=('image', 'attributes'))
  assert 'text' not in some and {'image', 'seller', 'price'} <= set(some)
  with pytest.raises(ValueError, match='content_parts'):
    item_encoder.content_tables(ds, parts=('video',))


def test_seller_embeddings_and_next_seller_recall():
  rng = np.random.default_rng(0)
  n_sellers, per = 5, 8
  centres = rng.normal(size=(n_sellers, 6))
  item_seller = np.repeat(np.arange(n_sellers), per)
  items = centres[item_seller] + 0.1 * rng.normal(size=(len(item_seller), 6))
  users = centres[[0, 1, 2, 3, 4, 0]] + 0.05 * rng.normal(size=(6, 6))
  emb = sellers.seller_embeddings(items, item_seller, n_sellers, users,
                                  np.array([0, 1, 5]), np.array([1, 9, 2]))
  assert emb.shape == (n_sellers, 6)
  assert (np.argmax(users @ emb.T, axis=1) == [0, 1, 2, 3, 4, 0]).all()

  class Inter:
    def __init__(self, user, item, event, timestamp):
      self.user, self.item = np.asarray(user), np.asarray(item)
      self.event, self.timestamp = np.asarray(event), np.asarray(timestamp)
  buy = 3                                            # EVENT_INDEX['purchase']
  train = Inter(np.arange(6), [1, 9, 17, 25, 33, 2], [buy] * 6, np.arange(6))
  # Each user's first test purchase is from the seller nearest to them;
  # user 5's later purchase (seller 4) is not its target.
  test = Inter([0, 1, 2, 3, 4, 5, 5], [3, 10, 18, 26, 34, 4, 35],
               [buy] * 7, [10, 10, 10, 10, 10, 10, 11])
  out = sellers.evaluate_next_seller(users, emb, train, test, item_seller,
                                     n_sellers, ks=(1,))
  assert out['seller_eval_users'] == 6
  assert out['seller_recall@1'] == 1.0
  # Popularity: seller 0 has the most training purchases (users 0 and 5).
  assert out['seller_popularity_recall@1'] == pytest.approx(2 / 6)
  assert out['seller_own_history_recall@1'] == 1.0
  assert out['seller_affinity_recall@1'] == 1.0


def test_seller_scores_add_loyalty_taste_and_popularity():
  affinity = np.array([[0.0, 1.0, 0.0, 0.0]])
  pop = np.array([1.0, 1.0, 1.0, 50.0])
  none = np.zeros((1, 4))
  # No history: taste (seller 1) and popularity (seller 3) both count.
  s = sellers.seller_scores(affinity, none, pop)[0]
  assert set(np.argsort(-s)[:2]) == {1, 3} and s[0] == s[2]
  # Many events with seller 2 outweigh both.
  s = sellers.seller_scores(affinity, np.array([[0, 0, 20.0, 0]]), pop)[0]
  assert np.argmax(s) == 2
  counts = sellers.user_seller_counts(np.array([3, 3, 1]), np.array([0, 1, 1]),
                                      np.array([0, 1]), np.array([3, 1]), 5, 2)
  np.testing.assert_array_equal(counts, [[1, 1], [0, 1]])


def test_report_metrics_match_hand_computed():
  top = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  targets = np.array([[2, 9, -1], [-1, -1, -1]])
  m = metrics.ranking_metrics(top, targets, ks=(2, 4))
  assert m['users'] == 1
  assert m['precision@2'] == pytest.approx(0.5)
  assert m['recall@2'] == pytest.approx(0.5)
  assert m['ndcg@2'] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
  assert metrics.coverage(top, 10, k=2) == pytest.approx(0.4)
  cat = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 2])
  # [1, 2, 3, 4] -> categories 0 0 1 1: 8 of 12 ordered pairs differ.
  assert metrics.intra_list_diversity(top[:1], cat, k=4) == pytest.approx(
      8 / 12)
  seen = [np.array([3]), np.array([], np.int64)]
  scores = np.tile(np.arange(10, 0, -1, dtype=np.float32), (2, 1))
  got = metrics.top_lists(lambda r: scores[r], 2, seen, 3)
  assert got.tolist() == [[0, 1, 2], [0, 1, 2]]
  seen = [np.array([0, 2]), np.array([1], np.int64)]
  got = metrics.top_lists(lambda r: scores[r], 2, seen, 3)
  assert got.tolist() == [[1, 3, 4], [0, 2, 3]]
  # Among cold items 6, 8, 9 only: by score 6 > 8 > 9, warm ones out.
  top_cold = metrics.cold_top(lambda r: scores[r], 2, np.array([9, 6, 8]), 2)
  assert top_cold.tolist() == [[6, 8], [6, 8]]
  # 40 items, 12 of them cold (28..39); user 0's targets: warm 2, cold 35.
  cold = np.arange(28, 40)
  scores = np.tile(np.arange(40, 0, -1, dtype=np.float32), (2, 1))
  scores[:, 35] = 100.0 - 72.0                  # first among the cold
  top = metrics.top_lists(lambda r: scores[r], 2, [np.zeros(0, int)] * 2, 20)
  top_cold = metrics.cold_top(lambda r: scores[r], 2, cold, 10)
  assert top_cold[0, 0] == 35 and set(top_cold[0]) <= set(cold)
  row = metrics.table_row(top, np.array([[2, 35], [-1, -1]]), cold, 40,
                          np.arange(40) % 3, top_cold=top_cold)
  assert row['cold_item_recall@10'] == 0.0        # 35 ranks 13th of all
  assert row['cold_item_within_cold_recall@10'] == 1.0


def test_restrict_targets_keeps_only_the_slice():
  seqs = sequences.Sequences(
      users=np.array([0, 1, 2], np.int32), item=np.ones((3, 2), np.int32),
      event=np.zeros((3, 2), np.int8), gap=np.zeros((3, 2), np.int8),
      device=np.zeros((3, 2), np.int8), hour=np.zeros((3, 2), np.int8),
      location=np.zeros((3, 2), np.int32),
      length=np.array([1, 2, 2], np.int32), seen=[[0], [1], [2]])
  es = sequences.EvalSet('test', seqs, np.array([[4, 7, -1], [5, -1, -1],
                                                  [6, 4, 8]]))
  cut = sequences.restrict_targets(es, np.array([7, 8]))
  assert cut.history.users.tolist() == [0, 2]
  assert cut.targets.tolist() == [[7, -1, -1], [8, -1, -1]]
  assert sequences.restrict_targets(es, np.array([99])) is None
  # Ranked among items 4, 7 and 8 only: targets and the masked history
  # become positions in that list, other items drop out.
  es.history.seen[2] = np.array([2, 7])
  within = sequences.among(es, np.array([4, 7, 8]))
  assert within.history.users.tolist() == [0, 2]
  assert within.targets.tolist() == [[0, 1, -1], [0, 2, -1]]
  assert [x.tolist() for x in within.history.seen] == [[], [1]]
  np.testing.assert_array_equal(within.history.item, es.history.item[[0, 2]])


def test_item_bias_is_a_key_dimension_and_cold_items_get_the_expected_one():
  from recjax.models.session import SessionEncoder
  seen = np.array([0, 1, 1, 1, 0, 0, 0, 0], bool)   # ids 1-3 seen, 4-5 cold
  model = SessionEncoder(num_items=5, vocab_size=8, max_len=4, embed_dim=D,
                         item_bias=True, item_seen=seen)
  x = {f: jnp.ones((2, 4), jnp.int32) for f in (
      'item', 'event', 'gap', 'device', 'hour', 'location')}
  params = model.init(jax.random.key(0), x, method='init_all')['params']
  bias = np.zeros(8, np.float32)
  bias[1:4] = np.log([1.0, 2.0, 6.0])
  bias[4] = 5.0                          # an untrained row: ignored
  params = dict(params, item_bias=jnp.asarray(bias))
  h = model.apply({'params': params}, x)
  q = model.apply({'params': params}, h, method='query')
  k = np.asarray(model.apply({'params': params}, method='all_keys'))
  assert q.shape[-1] == k.shape[-1] == D + 1
  np.testing.assert_allclose(q[..., -1], 1.0)
  np.testing.assert_allclose(k[:3, -1], bias[1:4], rtol=1e-6)
  # Cold items: log of the mean of exp(b) over seen items = log 3.
  np.testing.assert_allclose(k[3:, -1], np.log(3.0), rtol=1e-5)
  # Scores are q . k: the bias adds to every item's logit.
  plain = SessionEncoder(num_items=5, vocab_size=8, max_len=4, embed_dim=D)
  hp = {k2: v for k2, v in params.items() if k2 != 'item_bias'}
  kp = np.asarray(plain.apply({'params': hp}, method='all_keys'))
  np.testing.assert_allclose(k[:, :D], kp, rtol=1e-6)


@pytest.mark.slow
def test_report_tool_end_to_end(tmp_path):
  out = tmp_path / 'report'
  proc = subprocess.run(
      [sys.executable, 'tools/report.py', f'--out={out}', '--quick',
       '--latency_requests=20'], cwd=REPO, env=env_with(1),
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  names = ['popularity', 'item-kNN', 'graph (LightGCN)',
           'SASRec (item ids only)', 'transformer (session)', 'hybrid',
           'hybrid (cross-attention)', 'hybrid + content']
  assert list(last['rows']) == names
  for row in last['rows'].values():
    for m in ('precision@10', 'recall@20', 'ndcg@20', 'coverage@10',
              'cold_item_recall@10', 'ild@10', 'latency_p99_ms'):
      assert np.isfinite(row[m]) and row[m] >= 0, (m, row)
  # Popularity ranks no cold item: it has no count for them.
  assert last['rows']['popularity']['cold_item_recall@10'] == 0.0
  assert 0 <= last['seller_recall@10'] <= 1
  page = (out / 'report.html').read_text()
  assert '<table id="results">' in page and page.count('<tr>') >= 7
  for png in ('training_curves.png', 'metrics.png'):
    assert (out / png).read_bytes()[:4] == b'\x89PNG'
    assert f'src="{png}"' in page
  saved = json.loads((out / 'report.json').read_text())
  assert saved['rows'] == last['rows']


def test_impute_cold_items_from_their_catalogue_groups():
  from recjax.train import hybrid
  items = np.array([[2., 0.], [0., 2.], [4., 0.], [9., 9.], [7., 7.]])
  seen = np.array([True, True, True, False, False])
  seller = np.array([0, 1, 0, 0, 2])          # item 4's seller has none seen
  category = np.array([0, 0, 1, 1, 3])        # nor its category
  out = hybrid.impute_cold(items, seen, [seller, category])
  np.testing.assert_allclose(out[:3], items[:3])
  # Item 3: seller 0 -> mean(items 0, 2) = (3, 0); category 1 -> (4, 0);
  # averaged (3.5, 0), scaled to the seen rows' median norm (2).
  np.testing.assert_allclose(out[3], [2.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(out[4], [0.0, 0.0])
  table = hybrid.item_table(out)
  assert table.shape == (6, 2) and not table[0].any()
