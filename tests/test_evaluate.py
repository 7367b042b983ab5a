"""Full-ranking metrics against a plain numpy reference."""

import numpy as np

from recjax.train.evaluate import RankingEvaluator


def _reference(user_emb, item_emb, train, test, users, ks):
  out = {f'{m}@{k}': 0.0 for k in ks
         for m in ('recall', 'precision', 'hr', 'ndcg', 'mrr')}
  covered = {k: set() for k in ks}
  for u in users:
    scores = item_emb @ user_emb[u]
    scores[list(train.get(u, ()))] = -np.inf
    order = np.argsort(-scores, kind='stable')
    rel = test[u]
    for k in ks:
      top = order[:k]
      covered[k].update(top.tolist())
      hits = np.array([i in rel for i in top], float)
      out[f'recall@{k}'] += hits.sum() / len(rel)
      out[f'precision@{k}'] += hits.sum() / k
      out[f'hr@{k}'] += float(hits.any())
      dcg = (hits / np.log2(np.arange(2, k + 2))).sum()
      idcg = (1 / np.log2(np.arange(2, min(len(rel), k) + 2))).sum()
      out[f'ndcg@{k}'] += dcg / idcg
      out[f'mrr@{k}'] += 1 / (np.argmax(hits) + 1) if hits.any() else 0.0
  out = {k: v / len(users) for k, v in out.items()}
  for k in ks:
    out[f'coverage@{k}'] = len(covered[k]) / item_emb.shape[0]
  return out


def test_matches_numpy_reference():
  rng = np.random.default_rng(0)
  nu, ni, d = 57, 83, 8
  user_emb = rng.normal(size=(nu, d)).astype(np.float32)
  item_emb = rng.normal(size=(ni, d)).astype(np.float32)
  pairs = np.unique(rng.integers(0, nu * ni, size=1500))
  u, i = pairs // ni, pairs % ni
  is_test = rng.random(len(u)) < 0.25
  train, test = {}, {}
  for a, b, t in zip(u, i, is_test):
    (test if t else train).setdefault(a, set()).add(b)
  cold = np.array([3, 5])
  ev = RankingEvaluator(u[~is_test], i[~is_test], u[is_test], i[is_test],
                        nu, ni, ks=(5, 20), batch_size=16,
                        exclude_users=cold)
  got = ev.evaluate(user_emb, item_emb)
  users = sorted(set(test) - set(cold.tolist()))
  want = _reference(user_emb, item_emb, train, test, users, (5, 20))
  assert got['eval_users'] == len(users)
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_perfect_model_scores_one():
  # Item embeddings one-hot, user embedding = indicator of its test items.
  ni = 10
  item_emb = np.eye(ni, dtype=np.float32)
  user_emb = np.zeros((2, ni), np.float32)
  user_emb[0, [1, 2]] = 1
  user_emb[1, [7]] = 1
  ev = RankingEvaluator([0, 1], [5, 6], [0, 0, 1], [1, 2, 7], 2, ni, ks=(2,))
  got = ev.evaluate(user_emb, item_emb)
  for m in ('recall', 'hr', 'ndcg', 'mrr'):
    assert abs(got[f'{m}@2'] - 1.0) < 1e-6, m
  assert abs(got['precision@2'] - 0.75) < 1e-6
