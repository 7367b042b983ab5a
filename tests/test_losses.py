"""Ranking losses against plain numpy formulas."""

import jax.numpy as jnp
import numpy as np

from recjax.train import losses


def _rand(*shape, seed=0):
  return np.random.default_rng(seed + len(shape)).normal(size=shape).astype(
      np.float32)


def test_multinomial_is_full_softmax_nll():
  u, items = _rand(3, 4), _rand(7, 4, seed=1)
  pos = np.array([[1, 2], [0, 0], [6, 3]])
  mask = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
  logits = u @ items.T
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -sum(logp[r, pos[r, c]] for r in range(3) for c in range(2)
              if mask[r, c]) / mask.sum()
  got = losses.multinomial(jnp.asarray(u), jnp.asarray(items), pos, mask)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_cosine_contrastive_matches_formula_and_ignores_easy_negatives():
  u, p, n = _rand(4, 5), _rand(4, 5, seed=2), _rand(6, 5, seed=3)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  cu, cp, cn = unit(u), unit(p), unit(n)
  want = np.mean(np.maximum(0, 1 - (cu * cp).sum(-1)) +
                 10.0 * np.maximum(0, cu @ cn.T - 0.2).mean(-1))
  got = losses.cosine_contrastive(u, p, n, margin=0.2, negative_weight=10.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # With margin 1 no negative is counted: only the positive term remains.
  got = losses.cosine_contrastive(u, p, n, margin=1.0)
  np.testing.assert_allclose(float(got),
                             np.mean(1 - (cu * cp).sum(-1)), rtol=1e-5)


def test_sampled_softmax_masks_collisions():
  u, p = _rand(2, 3), _rand(2, 3, seed=4)
  n = np.concatenate([p[:1], _rand(2, 3, seed=5)])
  full = losses.sampled_softmax(u, p, n, temperature=1.0, normalize=False)
  masked = losses.sampled_softmax(u, p, n, temperature=1.0, normalize=False,
                                  pos_ids=np.array([7, 8]),
                                  neg_ids=np.array([7, 1, 2]))
  assert float(masked) < float(full)
