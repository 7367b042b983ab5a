"""Candidate retrieval: exact search against numpy, ScaNN against exact."""

import json
import shutil
import subprocess
import sys

import helpers
import numpy as np
import pytest

from recjax.serve import index as ix


def _clustered(n, d, seed=0, clusters=100):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((clusters, d), np.float32)
  items = centers[rng.integers(0, clusters, n)]
  items = items + 0.5 * rng.standard_normal((n, d), np.float32)
  return items * rng.lognormal(0, 0.3, (n, 1)).astype(np.float32)


def _reference(items, valid, q, k, exclude=()):
  """numpy top-k: (ids [k'], scores [k']) without padding."""
  scores = items @ q
  allowed = valid.copy()
  allowed[list(exclude)] = False
  cand = np.flatnonzero(allowed)
  order = cand[np.argsort(-scores[cand], kind='stable')][:k]
  return order, scores[order]


@pytest.fixture(scope='module')
def tuned():
  items = _clustered(20000, 32)
  valid = np.random.default_rng(1).random(20000) > 0.05
  index, report = ix.tune_scann(items, valid, target_recall=0.95, k=10,
                                num_queries=300, seed=0)
  return items, valid, index, report


def test_exact_matches_numpy_reference():
  rng = np.random.default_rng(0)
  items = rng.standard_normal((500, 8), np.float32)
  valid = rng.random(500) > 0.2
  queries = rng.standard_normal((7, 8), np.float32)
  # A tiny chunk size so the batched path crosses chunk boundaries.
  index = ix.ExactIndex(items, valid, max_chunk_bytes=3 * 4 * 500)
  ids, scores = index.search(queries, 20)
  assert ids.shape == (7, 20) and ids.dtype == np.int32
  assert scores.dtype == np.float32
  for r, q in enumerate(queries):
    ref_ids, ref_scores = _reference(items, valid, q, 20)
    np.testing.assert_array_equal(ids[r], ref_ids)
    np.testing.assert_allclose(scores[r], ref_scores, rtol=1e-5)
    one_ids, one_scores = index.search_one(q, 20)
    np.testing.assert_array_equal(one_ids, ids[r])
    np.testing.assert_allclose(one_scores, scores[r], rtol=1e-6)
  one_ids, _ = index.search(queries[0], 5)     # a [d] query gives [k]
  np.testing.assert_array_equal(one_ids, ids[0, :5])


@pytest.mark.parametrize('kind', ['exact', 'scann_small', 'scann_tree'])
def test_exclusions_invalid_items_and_padding(kind):
  rng = np.random.default_rng(2)
  n = 40 if kind == 'scann_small' else 600
  items = rng.standard_normal((n, 8), np.float32)
  valid = rng.random(n) > 0.3
  queries = rng.standard_normal((4, 8), np.float32)
  if kind == 'exact':
    index = ix.ExactIndex(items, valid)
  else:
    # Every leaf and a full re-order: ScaNN must then equal exact search.
    index = ix.ScannIndex(items, valid, leaves_to_search=n, reorder_k=n, k=5)
  seen = [rng.choice(n, 50), [], np.r_[-1, -1, 3], np.flatnonzero(valid)[2:]]
  ids, scores = index.search(queries, 5, exclude=seen)
  for r, q in enumerate(queries):
    ref_ids, ref_scores = _reference(items, valid, q, 5,
                                     [e for e in seen[r] if e >= 0])
    got = ids[r][ids[r] >= 0]
    np.testing.assert_array_equal(got, ref_ids)
    np.testing.assert_allclose(scores[r][:len(got)], ref_scores, rtol=1e-4)
    assert not valid[got].size or valid[got].all()
    assert not np.isin(got, seen[r]).any()
    one_ids, _ = index.search_one(q, 5, seen[r])
    np.testing.assert_array_equal(one_ids, ids[r])
  # The last query may only return the 2 in-stock items it has not seen.
  np.testing.assert_array_equal(ids[3, 2:], [-1, -1, -1])
  assert np.isneginf(scores[3, 2:]).all()
  # k beyond the in-stock items: every in-stock item once, then padding.
  ids, scores = index.search(queries[:1], n + 3)
  assert ids.shape == (1, n + 3)
  np.testing.assert_array_equal(np.sort(ids[0][ids[0] >= 0]),
                                np.flatnonzero(valid))
  assert (ids[0, valid.sum():] == -1).all()
  assert np.all(np.diff(scores[0, :valid.sum()]) <= 1e-6)


def test_scann_tuned_recall(tuned):
  items, valid, index, report = tuned
  assert report['reached'] and report['recall@10'] >= 0.95
  for key in ('num_leaves', 'leaves_to_search', 'reorder_k', 'recall@10',
              'build_s'):
    assert key in report, key
  assert report['num_leaves'] == round(np.sqrt(valid.sum()))
  # Fresh queries, not the tuning sample.
  rng = np.random.default_rng(5)
  queries = items[rng.integers(0, len(items), 200)]
  queries = queries + 0.3 * rng.standard_normal(queries.shape, np.float32)
  exact, _ = ix.ExactIndex(items, valid).search(queries, 10)
  approx, scores = index.search(queries, 10)
  assert ix.recall_at_k(approx, exact, 10) >= 0.9
  assert valid[approx].all()
  assert np.all(np.diff(scores, axis=1) <= 1e-6)
  one = np.stack([index.search_one(q, 10)[0] for q in queries[:20]])
  np.testing.assert_array_equal(one, approx[:20])


def test_scann_k_up_to_10000():
  items = _clustered(12000, 16, seed=3)
  index = ix.ScannIndex(items, leaves_to_search=3)
  q = items[:3] + 0.1
  seen = [np.arange(100), [], []]
  ids, scores = index.search(q, 10000, exclude=seen)
  assert ids.shape == (3, 10000)
  for r in range(3):
    assert (ids[r] >= 0).all() and len(np.unique(ids[r])) == 10000
    assert not np.isin(ids[r], seen[r]).any()
    assert np.all(np.diff(scores[r]) <= 1e-5)
  one_ids, _ = index.search_one(q[0], 10000, seen[0])
  assert len(np.unique(one_ids)) == 10000 and (one_ids >= 0).all()
  exact, _ = ix.ExactIndex(items).search(q, 10000, exclude=seen)
  assert ix.recall_at_k(ids, exact, 10000) > 0.95


def test_config_round_trip_and_save_load(tuned, tmp_path):
  items, valid, index, _ = tuned
  config = json.loads(json.dumps(index.to_config()))
  assert config['kind'] == 'scann'
  rebuilt = ix.from_config(items, valid, config)
  assert rebuilt.to_config() == index.to_config()
  q = items[:50] + 0.1
  ids, scores = index.search(q, 10)
  # A rebuild retrains k-means, so results may differ slightly.
  assert ix.recall_at_k(rebuilt.search(q, 10)[0], ids, 10) >= 0.9
  index.save(str(tmp_path / 'a'))
  shutil.move(tmp_path / 'a', tmp_path / 'b')       # assets are relative
  loaded = ix.ScannIndex.load(str(tmp_path / 'b'))
  assert loaded.to_config() == index.to_config()
  assert loaded.num_items == index.num_items and loaded.dim == index.dim
  got_ids, got_scores = loaded.search(q, 10, exclude=[[0]] * 50)
  want_ids, want_scores = index.search(q, 10, exclude=[[0]] * 50)
  np.testing.assert_array_equal(got_ids, want_ids)
  np.testing.assert_allclose(got_scores, want_scores)
  exact = ix.from_config(items, valid, {'kind': 'exact'})
  assert isinstance(exact, ix.ExactIndex)


def test_build_index_auto():
  items = _clustered(300, 8)
  index, report = ix.build_index(items)
  assert isinstance(index, ix.ExactIndex) and report['kind'] == 'exact'
  index, report = ix.build_index(items, kind='auto', min_scann_items=100,
                                 k=5, num_queries=50)
  assert isinstance(index, ix.ScannIndex) and report['reached']
  # A bundle stores parameters and report in one JSON object.
  config = json.loads(json.dumps(dict(index.to_config(), report=report)))
  assert ix.from_config(items, None, config).to_config() == index.to_config()
  with pytest.raises(ValueError, match='kind'):
    ix.build_index(items, kind='hnsw')


def test_bad_inputs():
  items = np.ones((10, 4), np.float32)
  index = ix.ExactIndex(items)
  with pytest.raises(ValueError, match=r'\[Q, 4\]'):
    index.search(np.ones((2, 3)), 1)
  with pytest.raises(ValueError, match=r'query must be \[4\]'):
    index.search_one(np.ones(5), 1)
  for k in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match='k must be'):
      index.search(np.ones((1, 4)), k)
  with pytest.raises(ValueError, match='NaN'):
    index.search_one(np.r_[1.0, np.nan, 0, 0], 1)
  with pytest.raises(ValueError, match='out of range'):
    index.search_one(np.ones(4), 1, exclude=[10])
  with pytest.raises(ValueError, match='2 entries for 1'):
    index.search(np.ones((1, 4)), 1, exclude=[[], []])
  with pytest.raises(ValueError, match='integer'):
    index.search_one(np.ones(4), 1, exclude=[1.5])
  with pytest.raises(ValueError, match='num_items, dim'):
    ix.ExactIndex(np.ones(4))
  with pytest.raises(ValueError, match='valid must be'):
    ix.ExactIndex(items, np.ones(9, bool))
  with pytest.raises(ValueError, match='no valid'):
    ix.ExactIndex(items, np.zeros(10, bool))
  with pytest.raises(ValueError, match='NaN'):
    ix.ExactIndex(np.full((3, 2), np.inf))
  with pytest.raises(ValueError, match='unknown index kind'):
    ix.from_config(items, None, {'kind': 'annoy'})
  with pytest.raises(ValueError, match='row counts'):
    ix.recall_at_k(np.zeros((2, 3)), np.zeros((3, 3)), 3)


def test_recall_at_k():
  approx = np.array([[1, 2, 3], [4, 5, -1]])
  exact = np.array([[3, 2, 9], [4, -1, -1]])
  assert ix.recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 1) / 2)
  assert ix.recall_at_k(approx, exact, 1) == pytest.approx(0.5)


def test_bench_retrieval_smoke():
  cmd = [sys.executable, 'tools/bench_retrieval.py', '--items=5000',
         '--queries=50', '--tune_queries=200', '--repeats=1',
         '--clusters=50']
  proc = subprocess.run(cmd, cwd=helpers.REPO, capture_output=True,
                        text=True, timeout=300, env=helpers.env_with())
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ('build_s', 'recall@10', 'recall@100', 'qps_single',
              'qps_batched', 'exact_qps_single', 'exact_qps_batched',
              'faiss_qps_single', 'faiss_qps_batched', 'faiss_recall@10',
              'faiss_build_s', 'peak_rss_mb', 'items', 'dim'):
    assert key in out, key
  assert out['items'] == 5000 and 0 < out['recall@10'] <= 1
  assert out['faiss_recall@10'] > 0.5 and out['qps_single'] > 0
