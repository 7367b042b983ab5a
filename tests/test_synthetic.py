"""Tests for the synthetic marketplace and its TFDS builder."""

import os
import subprocess
import sys

import numpy as np
import pytest

from recjax.data import synthetic
from recjax.data.schema import DEVICES, EVENT_INDEX, EVENT_TYPES, Interactions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny():
  cfg = synthetic.MarketplaceConfig.tiny()
  events, catalog, truth = synthetic.generate_events(cfg)
  return cfg, events, catalog, truth


@pytest.fixture(scope='module')
def tiny_ds(tiny):
  cfg, events, catalog, _ = tiny
  return synthetic.split_marketplace(events, catalog, cfg)


@pytest.fixture(scope='module')
def default_world():
  """The default config's events (~1 s): statistics tiny is too small for."""
  cfg = synthetic.MarketplaceConfig()
  return (cfg,) + synthetic.generate_events(cfg)


def _same(a: Interactions, b: Interactions) -> bool:
  return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True)
             for f in Interactions.FIELDS)


def test_deterministic_given_seed(tiny):
  cfg, events, catalog, _ = tiny
  again, catalog2, _ = synthetic.generate_events(
      synthetic.MarketplaceConfig.tiny())
  assert _same(events, again)
  for f in ('seller', 'taxonomy', 'price', 'margin', 'created_at', 'text',
            'category_parent', 'image'):
    assert np.array_equal(getattr(catalog, f), getattr(catalog2, f)), f
  other, catalog3, _ = synthetic.generate_events(
      synthetic.MarketplaceConfig.tiny(seed=1))
  assert not _same(events, other)
  assert not np.array_equal(catalog.price, catalog3.price)


def test_world_does_not_depend_on_event_count(tiny):
  _, _, catalog, truth = tiny
  _, catalog2, truth2 = synthetic.generate_events(
      synthetic.MarketplaceConfig.tiny(num_events=500))
  assert np.array_equal(catalog.text, catalog2.text)
  assert np.array_equal(truth['user_factors'], truth2['user_factors'])


def test_rows_exact_sorted_distinct(tiny):
  cfg, events, _, _ = tiny
  assert len(events) == cfg.num_events
  order = np.lexsort((events.item, events.user, events.timestamp))
  assert np.array_equal(order, np.arange(len(events)))
  key = np.stack([events.user, events.item, events.timestamp], 1)
  assert len(np.unique(key, axis=0)) == len(events)


def test_catalog_invariants(tiny):
  cfg, events, catalog, truth = tiny
  I, L = cfg.num_items, len(cfg.taxonomy)
  parent = catalog.category_parent
  assert len(parent) == sum(np.cumprod(cfg.taxonomy))
  assert catalog.seller.shape == (I,) and catalog.taxonomy.shape == (I, L)
  # Every seller lists an item; every item has one leaf and a consistent path.
  assert np.array_equal(np.unique(catalog.seller), np.arange(cfg.num_sellers))
  num_leaves = int(np.prod(cfg.taxonomy))
  assert (catalog.leaf_category >= len(parent) - num_leaves).all()
  assert (parent[catalog.taxonomy[:, 0]] == -1).all()
  for level in range(1, L):
    assert np.array_equal(parent[catalog.taxonomy[:, level]],
                          catalog.taxonomy[:, level - 1])
  assert len(truth['category_names']) == len(parent)
  assert (catalog.price > 0).all()
  assert ((catalog.margin > 0) & (catalog.margin < 0.5)).all()
  assert catalog.text.shape == (I, cfg.text_len)
  assert ((catalog.text >= 0) & (catalog.text < cfg.text_vocab)).all()
  pads = catalog.text == 0                     # padding only at the end
  assert not (pads[:, :-1] & ~pads[:, 1:]).any()
  assert catalog.image.shape == (I, cfg.image_dim)
  assert catalog.image.dtype == np.float32
  new = catalog.created_at >= truth['start_time']
  assert 0.05 < new.mean() < 0.5               # some items are listed late
  # Nobody sees an item before it is listed.
  assert (events.timestamp >= catalog.created_at[events.item]).all()


def test_funnel_context_and_ratings(tiny):
  cfg, events, _, _ = tiny
  counts = np.bincount(events.event, minlength=len(EVENT_TYPES))
  assert (np.diff(counts) < 0).all(), counts
  assert 0.15 < counts[1] / counts[0] < 0.5    # ~30% of views are clicked
  review = events.event == EVENT_INDEX['review']
  assert np.isnan(events.rating[~review]).all()
  assert np.isin(events.rating[review], [1, 2, 3, 4, 5]).all()
  assert ((events.device >= 0) & (events.device < len(DEVICES))).all()
  assert ((events.location >= 1)
          & (events.location <= cfg.num_locations)).all()
  assert ((events.hour >= 0) & (events.hour < 24)).all()


def test_split(tiny, tiny_ds):
  cfg, events, _, _ = tiny
  ds = tiny_ds
  assert (ds.num_users, ds.num_items) == (cfg.num_users, cfg.num_items)
  assert len(ds.cold_users) == round(cfg.num_users * cfg.cold_user_frac)
  assert len(ds.cold_items) == round(cfg.num_items * cfg.cold_item_frac)
  assert not np.isin(ds.train.user, ds.cold_users).any()
  assert not np.isin(ds.train.item, ds.cold_items).any()
  assert np.isin(ds.test.user, ds.cold_users).any()      # cold slice kept
  assert np.isin(ds.test.item, ds.cold_items).any()
  assert len(np.unique(ds.train.event)) == len(EVENT_TYPES)
  assert (ds.test.event >= EVENT_INDEX['click']).all()
  key = lambda x: x.user.astype(np.int64) << 32 | x.item
  assert not np.isin(key(ds.test), key(ds.train)).any()
  assert len(np.unique(key(ds.test))) == len(ds.test)
  warm_test = ~np.isin(ds.test.user, ds.cold_users) & ~np.isin(
      ds.test.item, ds.cold_items)
  assert ds.test.timestamp[warm_test].min() >= ds.train.timestamp.max()
  assert len(ds.vocabs['category']) == len(ds.catalog.category_parent)
  assert ds.vocabs['category'].raw(0) == 'c0'
  assert len(ds.vocabs['seller']) == ds.num_sellers == cfg.num_sellers


def test_item_popularity_is_power_law(default_world):
  cfg, events, _, _ = default_world
  counts = np.sort(np.bincount(events.item, minlength=cfg.num_items))[::-1]
  assert counts[:cfg.num_items // 10].sum() > 0.4 * counts.sum()
  assert counts[:cfg.num_items // 10].sum() < 0.8 * counts.sum()


def _ridge_r2(x, y, train_frac=0.7, lam=1.0):
  """R^2 on held-out rows of a ridge regression from x to y."""
  x = np.c_[x, np.ones(len(x))]
  n = int(len(x) * train_frac)
  w = np.linalg.solve(x[:n].T @ x[:n] + lam * np.eye(x.shape[1]),
                      x[:n].T @ y[:n])
  resid = ((x[n:] @ w - y[n:]) ** 2).sum()
  return 1.0 - resid / ((y[n:] - y[n:].mean(0)) ** 2).sum()


def test_content_predicts_hidden_factors(default_world):
  cfg, _, catalog, truth = default_world
  factors = truth['item_factors']
  assert _ridge_r2(catalog.image, factors) > 0.6
  bow = np.zeros((cfg.num_items, cfg.text_vocab))
  np.add.at(bow, (np.repeat(np.arange(cfg.num_items), cfg.text_len),
                  catalog.text.ravel()), 1.0)
  assert _ridge_r2(bow[:, 1:], factors) > 0.2


def _recall_at_20(ds, scores):
  """Mean recall@20 over warm test users and items, training items masked."""
  seen = np.zeros((ds.num_users, ds.num_items), bool)
  seen[ds.train.user, ds.train.item] = True
  warm = ~np.isin(ds.test.user, ds.cold_users) & ~np.isin(
      ds.test.item, ds.cold_items)
  users = np.unique(ds.test.user[warm])
  truth = np.zeros((len(users), ds.num_items), bool)
  truth[np.searchsorted(users, ds.test.user[warm]), ds.test.item[warm]] = True
  s = np.where(seen[users], -np.inf, scores[users])
  top = np.argsort(-s, axis=1, kind='stable')[:, :20]
  hits = np.take_along_axis(truth, top, axis=1).sum(1)
  return float(np.mean(hits / np.minimum(truth.sum(1), 20)))


def test_collaborative_filtering_beats_popularity(tiny_ds):
  ds = tiny_ds
  x = np.zeros((ds.num_users, ds.num_items))
  np.add.at(x, (ds.train.user, ds.train.item), 1.0)
  x = np.log1p(x)
  pop = np.broadcast_to((x > 0).sum(0, dtype=float), x.shape)
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  svd = (u[:, :8] * s[:8]) @ vt[:8]
  r_pop, r_svd = _recall_at_20(ds, pop), _recall_at_20(ds, svd)
  assert r_pop > 0.05                        # popularity is a real signal,
  assert r_svd > 1.2 * r_pop, (r_svd, r_pop)  # but not the whole story


def test_config_from_dict():
  cfg = synthetic.MarketplaceConfig.from_dict(
      {'num_users': 10, 'taxonomy': [2, 2]})
  assert cfg.num_users == 10 and cfg.taxonomy == (2, 2)
  assert cfg.num_items == synthetic.MarketplaceConfig().num_items
  with pytest.raises(ValueError, match='num_userz'):
    synthetic.MarketplaceConfig.from_dict({'num_userz': 10})
  with pytest.raises(ValueError, match='num_sellers'):
    synthetic.MarketplaceConfig(num_items=5, num_sellers=6)


def test_registry_builds_marketplace():
  import ml_collections
  from recjax.data import registry
  cfg = ml_collections.ConfigDict(dict(
      name='marketplace', marketplace=dict(num_users=200, num_items=100,
                                           num_sellers=10, num_events=5000)))
  ds = registry.load_dataset(cfg)
  assert ds.num_users == 200 and len(ds.train) + len(ds.test) > 0


def test_synthetic_does_not_import_tensorflow():
  code = ('import sys, recjax.data.synthetic; '
          'sys.exit("tensorflow" in sys.modules)')
  subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True)


@pytest.mark.slow
def test_tfds_load_tiny_offline(tmp_path, tiny_ds):
  """tfds.load generates the tiny config locally (~5 s with TF's import)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  import recjax.data.tfds_marketplace  # noqa: F401  (registers the builder)
  splits, info = tfds.load('recjax_marketplace/tiny', data_dir=str(tmp_path),
                           with_info=True, download=True, try_gcs=False)
  ds = tiny_ds
  assert info.splits['train'].num_examples == len(ds.train)
  assert info.splits['test'].num_examples == len(ds.test)
  assert info.splits['catalog'].num_examples == ds.num_items
  assert info.metadata['cold_users'] == ds.cold_users.tolist()
  test = next(iter(tfds.as_numpy(splits['test'].batch(len(ds.test)))))
  assert np.array_equal(test['user'], ds.test.user)
  assert np.array_equal(test['item'], ds.test.item)
  assert np.array_equal(test['timestamp'], ds.test.timestamp)
  cat = next(iter(tfds.as_numpy(splits['catalog'].batch(ds.num_items))))
  assert np.array_equal(cat['item'], np.arange(ds.num_items))
  assert np.array_equal(cat['seller'], ds.catalog.seller)
  assert np.array_equal(cat['taxonomy'], ds.catalog.taxonomy)
  assert np.array_equal(cat['text'], ds.catalog.text)
  assert np.allclose(cat['image'], ds.catalog.image)
  assert (cat['user'] == -1).all()


def test_alias_sampling_matches_weights():
  from recjax.data import synthetic_world
  rng = np.random.default_rng(0)
  w = np.r_[rng.pareto(1.0, 40) + 0.01, 0.0, 3.0, 1.0]
  starts = np.array([0, 40])                 # two segments: [0, 40), [40, 43)
  prob, alias = synthetic_world.alias_tables(w, starts)
  n = 400_000
  for a, b in ((0, 40), (40, 43)):
    draws = synthetic_world.alias_draw(rng, prob, alias, a, b - a, n)
    assert ((draws >= a) & (draws < b)).all()
    freq = np.bincount(draws - a, minlength=b - a) / n
    expect = w[a:b] / w[a:b].sum()
    assert np.abs(freq - expect).max() < 0.005, (freq, expect)


@pytest.mark.parametrize('t_scale', [1, 2**40])
def test_merge_sorts_and_drops_repeats(t_scale):
  # t_scale = 2**40 pushes the packed (time, user, item) key past 63 bits,
  # the lexsort path that large marketplaces take.
  rng = np.random.default_rng(0)
  parts = []
  for _ in range(3):
    n = 500
    parts.append(dict(timestamp=rng.integers(0, 20, n) * t_scale,
                      user=rng.integers(0, 7, n).astype(np.int32),
                      item=rng.integers(0, 9, n).astype(np.int32),
                      event=np.arange(n, dtype=np.int32)))
  want = {}
  for p in parts:
    for t, u, i, e in zip(p['timestamp'], p['user'], p['item'], p['event']):
      want.setdefault((int(t), int(u), int(i)), int(e))
  rows = synthetic._merge(parts)
  got = list(zip(rows['timestamp'].tolist(), rows['user'].tolist(),
                 rows['item'].tolist()))
  assert got == sorted(want)
  assert rows['event'].tolist() == [want[k] for k in got]
