"""Re-ranking: the rule layer's guarantees and reasons, the listwise model.

Performance (constrain on 500 -> 50 in a few ms) is a benchmark concern and
is not timed here.
"""

import re

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest

from recjax.serve import rerank

NOW = 1_700_000_000
DAY = 86400
_REASON = re.compile('|'.join([
    r'(freshness|margin) [+-]\d+\.\d\d',
    r'fairness -\d+\.\d\d \(seller \d+\)',
    r'diversity -\d\.\d\d \(category -?\d+ already shown\)',
    r'seller_cap: skipped (1 item|([2-9]|\d\d+) items) of seller \d+',
    r'(up|down) [1-9]\d*',
]))


def _meta(num_items, seed, num_sellers=4, num_cats=3, stock=0.8):
  rng = np.random.default_rng(seed)
  return rerank.ItemMeta(
      seller=rng.integers(0, num_sellers, num_items).astype(np.int32),
      category=rng.integers(0, num_cats, num_items).astype(np.int32),
      created_at=(NOW - rng.integers(-DAY, 60 * DAY, num_items)).astype(
          np.int64),
      price=rng.uniform(1, 100, num_items).astype(np.float32),
      margin=rng.uniform(-0.2, 0.5, num_items).astype(np.float32),
      in_stock=rng.random(num_items) < stock).validate()


def _plain(**kw):
  """No boosts, no penalties, no cap: relevance only."""
  base = dict(mmr_lambda=1.0, freshness_weight=0.0, margin_weight=0.0,
              fairness_weight=0.0, max_per_seller=None)
  return rerank.RerankConfig(**{**base, **kw})


def _eligible_ids(items, meta, exclude):
  """Distinct eligible ids in input order (first occurrences)."""
  out = []
  for i in items:
    i = int(i)
    if meta.in_stock[i] and i not in set(exclude) and i not in out:
      out.append(i)
  return out


@st.composite
def _cases(draw):
  num_items = draw(st.integers(1, 40))
  n = draw(st.integers(0, 60))
  items = draw(hnp.arrays(np.int32, n, elements=st.integers(0,
                                                            num_items - 1)))
  scores = draw(hnp.arrays(np.float32, n, elements=st.floats(
      -5, 5, width=32)))
  exclude = draw(st.lists(st.integers(0, num_items - 1), max_size=5))
  meta = _meta(num_items, draw(st.integers(0, 2**16)),
               num_sellers=draw(st.integers(1, 6)),
               num_cats=draw(st.integers(1, 5)),
               stock=draw(st.sampled_from([0.5, 0.9, 1.0])))
  config = rerank.RerankConfig(
      k=draw(st.integers(1, 25)),
      max_per_seller=draw(st.one_of(st.none(), st.integers(1, 4))),
      mmr_lambda=draw(st.floats(0, 1)),
      freshness_weight=draw(st.floats(0, 1)),
      margin_weight=draw(st.floats(0, 1)),
      margin_by_price=draw(st.booleans()),
      fairness_weight=draw(st.floats(0, 1)))
  exposure = draw(st.one_of(st.none(), hnp.arrays(
      np.float64, draw(st.integers(0, 8)), elements=st.floats(0, 100))))
  return items, scores, meta, config, np.array(exclude, np.int64), exposure


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(case=_cases())
def test_constrain_respects_every_rule(case):
  items, scores, meta, config, exclude, exposure = case
  out = rerank.constrain(items, scores, meta, NOW, config, exclude=exclude,
                         seller_exposure=exposure)
  got = [o['item'] for o in out]
  eligible = _eligible_ids(items, meta, exclude)
  assert set(got) <= set(eligible)          # no excluded / out of stock
  assert len(set(got)) == len(got)          # no duplicates
  sellers = meta.seller[got] if got else np.zeros(0, np.int32)
  cap = config.max_per_seller
  if cap is not None and got:
    assert np.bincount(sellers).max() <= cap
  per_seller = np.bincount(meta.seller[eligible], minlength=1) if eligible \
      else np.zeros(1, np.int64)
  room = per_seller.sum() if cap is None else np.minimum(per_seller,
                                                          cap).sum()
  assert len(out) == min(config.k, room)
  assert [o['rank'] for o in out] == list(range(1, len(out) + 1))
  # The objective at pick time never increases down the list.
  s = [o['score'] for o in out]
  assert all(a >= b - 1e-12 for a, b in zip(s, s[1:]))
  for o in out:
    for r in o['reasons']:
      assert _REASON.fullmatch(r), r


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(case=_cases(), k=st.integers(1, 60))
def test_pure_relevance_keeps_input_order(case, k):
  items, scores, meta, _, exclude, exposure = case
  scores = np.sort(scores)[::-1]            # a ranker's list, ties included
  out = rerank.constrain(items, scores, meta, NOW, _plain(k=k),
                         exclude=exclude, seller_exposure=exposure)
  assert [o['item'] for o in out] == _eligible_ids(items, meta, exclude)[:k]
  first = {}
  for p, i in enumerate(items):
    first.setdefault(int(i), p)
  for r, o in enumerate(out):
    moved = first[o['item']] - r            # only dropped items move others
    assert o['reasons'] == ([f'up {moved}'] if moved else [])


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(n=st.integers(5, 80), data=st.data(),
                  weight=st.floats(0.75, 3.0))
def test_fresh_item_moves_up_and_says_so(n, data, weight):
  j = data.draw(st.integers(1, n - 1))
  meta = rerank.ItemMeta(
      seller=np.arange(n, dtype=np.int32),
      category=np.arange(n, dtype=np.int32),
      created_at=np.full(n, NOW - 1000 * DAY, np.int64),
      price=np.ones(n, np.float32), margin=np.zeros(n, np.float32),
      in_stock=np.ones(n, bool)).validate()
  items = np.arange(n, dtype=np.int32)
  scores = np.linspace(1, 0, n).astype(np.float32)
  config = _plain(k=n, freshness_weight=weight)
  stale = rerank.constrain(items, scores, meta, NOW, config)
  meta.created_at[j] = NOW
  fresh = rerank.constrain(items, scores, meta, NOW, config)
  assert [o['item'] for o in stale] == list(range(n))
  new_pos = [o['item'] for o in fresh].index(j)
  # Neighbours are 1 / ((n - 1) std) z-units apart: <= 0.71 for n >= 5.
  assert new_pos < j
  assert fresh[new_pos]['reasons'] == [f'freshness +{weight:.2f}',
                                       f'up {j - new_pos}']
  # Items it passed each went down one place.
  for o in fresh[new_pos + 1:j + 1]:
    assert o['reasons'] == ['down 1']


def _small_meta(seller, category, **kw):
  n = len(seller)
  fields = dict(seller=np.array(seller, np.int32),
                category=np.array(category, np.int32),
                created_at=np.full(n, NOW - 1000 * DAY, np.int64),
                price=np.ones(n, np.float32), margin=np.zeros(n, np.float32),
                in_stock=np.ones(n, bool))
  fields.update(kw)
  return rerank.ItemMeta(**fields).validate()


def test_seller_cap_reason_names_the_seller_and_count():
  # Seller 7 holds the four best items; the cap lets two through.
  meta = _small_meta([7, 7, 7, 7, 2, 3], [0, 1, 2, 3, 4, 5])
  items = np.arange(6)
  scores = np.array([6, 5, 4, 3, 2, 1], np.float32)
  out = rerank.constrain(items, scores, meta, NOW, _plain(max_per_seller=2))
  assert [o['item'] for o in out] == [0, 1, 4, 5]
  assert out[2]['reasons'] == ['seller_cap: skipped 2 items of seller 7',
                               'up 2']
  assert out[3]['reasons'] == ['up 2']


def test_diversity_penalty_and_reason():
  # Items 0, 1 share category 9; item 2 (category 4) is a little worse
  # than item 1 (0.14 z-units), by less than the penalty (0.5 / lambda).
  meta = _small_meta([0, 1, 2, 3], [9, 9, 4, 5])
  items = np.arange(4)
  scores = np.array([1.0, 0.5, 0.45, 0.0], np.float32)
  out = rerank.constrain(items, scores, meta, NOW, _plain(mmr_lambda=0.5))
  assert [o['item'] for o in out] == [0, 2, 1, 3]
  assert [o['reasons'] for o in out] == [
      [], ['up 1'], ['diversity -0.50 (category 9 already shown)', 'down 1'],
      []]
  # Pure relevance ignores categories.
  out = rerank.constrain(items, scores, meta, NOW, _plain())
  assert [o['item'] for o in out] == [0, 1, 2, 3]


def test_fairness_and_margin_boosts():
  meta = _small_meta([0, 1], [0, 1], price=np.array([10, 10], np.float32),
                     margin=np.array([0.0, 0.3], np.float32))
  items, scores = np.arange(2), np.array([1.0, 1.0], np.float32)
  exposure = np.array([100.0, 10.0])
  out = rerank.constrain(items, scores, meta, NOW,
                         _plain(fairness_weight=0.2), seller_exposure=exposure)
  assert [o['item'] for o in out] == [1, 0]
  assert out[1]['reasons'] == ['fairness -0.20 (seller 0)', 'down 1']
  assert out[0]['reasons'] == ['fairness -0.02 (seller 1)', 'up 1']
  out = rerank.constrain(items, scores, meta, NOW, _plain(margin_weight=0.1))
  assert [o['item'] for o in out] == [1, 0]
  assert out[0]['reasons'] == ['margin +0.10', 'up 1']


def test_constrain_edge_cases_and_errors():
  meta = _small_meta([0, 1], [0, 1])
  assert rerank.constrain(np.zeros(0, np.int32), np.zeros(0, np.float32),
                          meta, NOW) == []
  assert rerank.constrain([0, 1], [1.0, 0.0], meta, NOW,
                          exclude=np.array([0, 1])) == []
  with pytest.raises(ValueError, match='item ids'):
    rerank.constrain([0, 2], [1.0, 0.0], meta, NOW)
  with pytest.raises(ValueError, match='equal-length'):
    rerank.constrain([0, 1], [1.0], meta, NOW)
  with pytest.raises(ValueError, match='finite'):
    rerank.constrain([0, 1], [1.0, np.nan], meta, NOW)
  with pytest.raises(ValueError, match='seller_exposure'):
    rerank.constrain([0, 1], [1.0, 0.0], meta, NOW,
                     seller_exposure=np.array([-1.0]))


def test_listwise_features_columns():
  meta = _small_meta([0, 1, 2], [0, 1, 2],
                     created_at=np.array([NOW, NOW - 7 * DAY, NOW], np.int64),
                     price=np.array([10, 20, 5], np.float32),
                     margin=np.array([0.1, 0.2, -0.4], np.float32))
  f = rerank.listwise_features([2, 1, 0], [3.0, 2.0, 1.0], meta, NOW)
  assert f.shape == (3, 4) and f.dtype == np.float32
  np.testing.assert_allclose(f[:, 0], [1.2247449, 0, -1.2247449], rtol=1e-6)
  np.testing.assert_allclose(f[:, 1], np.log1p([0, 1, 2]), rtol=1e-6)
  np.testing.assert_allclose(f[:, 2], [1, 0.5, 1], rtol=1e-6)
  np.testing.assert_allclose(f[:, 3], [-0.5, 1, 0.25], rtol=1e-6)


def test_override_accepts_good_and_names_bad_keys():
  base = rerank.RerankConfig()
  new = base.override({'k': 10, 'mmr_lambda': 1, 'max_per_seller': None})
  assert (new.k, new.mmr_lambda, new.max_per_seller) == (10, 1, None)
  assert base.k == 50 and base.override({}) is base
  bad = [({'colour': 1}, 'colour'), ({'k': 0}, 'k'), ({'k': 2.5}, 'k'),
         ({'k': True}, 'k'), ({'max_per_seller': -1}, 'max_per_seller'),
         ({'max_per_seller': 0}, 'max_per_seller'),
         ({'mmr_lambda': 1.5}, 'mmr_lambda'),
         ({'mmr_lambda': -0.1}, 'mmr_lambda'),
         ({'freshness_weight': -1}, 'freshness_weight'),
         ({'margin_weight': float('nan')}, 'margin_weight'),
         ({'fairness_weight': '0.1'}, 'fairness_weight'),
         ({'freshness_half_life_days': 0}, 'freshness_half_life_days'),
         ({'margin_by_price': 1}, 'margin_by_price')]
  for mapping, key in bad:
    with pytest.raises(ValueError, match=key):
      base.override(mapping)


def test_item_meta_validate_names_the_field():
  good = _small_meta([0, 1], [0, 1])
  with pytest.raises(ValueError, match='price.*float32'):
    rerank.ItemMeta(**{**vars(good), 'price': good.price.astype(np.float64)
                       }).validate()
  with pytest.raises(ValueError, match='margin has 3 rows'):
    rerank.ItemMeta(**{**vars(good), 'margin': np.zeros(3, np.float32)
                       }).validate()
  with pytest.raises(ValueError, match='in_stock must be a numpy array'):
    rerank.ItemMeta(**{**vars(good), 'in_stock': [True, False]}).validate()


def _ndcg(order_scores, labels, mask):
  """Mean NDCG of ranking each row by order_scores (ties: input order)."""
  out = []
  for s, y, m in zip(order_scores, labels, mask):
    order = np.argsort(-np.where(m, s, -np.inf), kind='stable')[:m.sum()]
    gain = y[order]
    disc = 1.0 / np.log2(np.arange(len(gain)) + 2.0)
    ideal = (np.sort(gain)[::-1] * disc).sum()
    if ideal > 0:
      out.append((gain * disc).sum() / ideal)
  return float(np.mean(out))


@pytest.fixture(scope='module')
def toy_lists():
  """Lists whose relevant items carry a feature flag the ranker ignored."""
  rng = np.random.default_rng(0)
  b, n, d = 32, 20, 8
  flag = (rng.random((b, n)) < 0.25).astype(np.float32)
  ranker = np.sort(rng.normal(size=(b, n)), axis=1)[:, ::-1]
  feats = np.stack([ranker, np.log1p(np.arange(n))[None].repeat(b, 0),
                    rng.random((b, n)), flag], axis=-1).astype(np.float32)
  mask = np.ones((b, n), bool)
  mask[:, 15:] = rng.random((b, 5)) < 0.5
  data = dict(user_emb=rng.normal(size=(b, d)).astype(np.float32),
              item_emb=rng.normal(size=(b, n, d)).astype(np.float32),
              feats=feats, mask=mask)
  labels = flag * mask
  params = rerank.train_listwise(labels=labels, steps=200, lr=3e-3, seed=0,
                                 **data)
  return data, labels, params


def test_listwise_reranker_learns_the_flag(toy_lists):
  data, labels, params = toy_lists
  scores = np.asarray(rerank.listwise_scores(params, **data))
  assert np.all(np.isneginf(scores[~data['mask']]))
  assert np.all(np.isfinite(scores[data['mask']]))
  b, n = labels.shape
  input_order = -np.arange(n, dtype=np.float64)[None].repeat(b, 0)
  before = _ndcg(input_order, labels, data['mask'])
  after = _ndcg(scores, labels, data['mask'])
  assert after > before + 0.2 and after > 0.95, (before, after)


def test_listwise_scores_ignore_padding(toy_lists):
  data, _, params = toy_lists
  want = np.asarray(rerank.listwise_scores(params, **data))
  # Four more padded slots holding garbage must not change any real score.
  pad = lambda a, v: np.concatenate(
      [a, np.full(a.shape[:1] + (4,) + a.shape[2:], v, a.dtype)], axis=1)
  padded = dict(user_emb=data['user_emb'],
                item_emb=pad(data['item_emb'], 7.0),
                feats=pad(data['feats'], -3.0),
                mask=pad(data['mask'], False))
  got = np.asarray(rerank.listwise_scores(params, **padded))
  m = data['mask']
  np.testing.assert_allclose(got[:, :20][m], want[m], rtol=1e-4, atol=1e-4)
  assert np.all(np.isneginf(got[:, 20:]))
