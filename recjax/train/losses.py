"""Ranking losses for implicit feedback. Shapes: B = batch, M = negatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bpr(user: jax.Array, pos: jax.Array, neg: jax.Array) -> jax.Array:
  """BPR: -log sigmoid(s(u, i+) - s(u, i-)), mean over the batch.

  Args:
    user, pos: [B, D]; neg: [B, D] (one negative each) or [B, M, D].
  """
  s_pos = jnp.sum(user * pos, -1)
  if neg.ndim == 2:
    s_neg = jnp.sum(user * neg, -1)
  else:
    s_neg = jnp.einsum('bd,bmd->bm', user, neg)
    s_pos = s_pos[:, None]
  return jnp.mean(jax.nn.softplus(s_neg - s_pos))


def sampled_softmax(user: jax.Array, pos: jax.Array, neg: jax.Array,
                    temperature: float = 0.1, normalize: bool = True,
                    mask_collisions: bool = True,
                    pos_ids=None, neg_ids=None) -> jax.Array:
  """Softmax cross-entropy of the positive against M shared negatives.

  With `normalize`, scores are cosine similarities divided by `temperature`
  (the SSM / SimpleX recipe, which converges far faster than BPR).

  Args:
    user, pos: [B, D]; neg: [M, D] shared by the batch (uniform samples, so
      no logQ correction is needed).
    pos_ids [B], neg_ids [M]: item ids, used to drop a negative that equals
      the row's positive when `mask_collisions`.

  Returns:
    Scalar mean loss.
  """
  if normalize:
    unit = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)
    user, pos, neg = unit(user), unit(pos), unit(neg)
  s_pos = jnp.sum(user * pos, -1, keepdims=True) / temperature     # [B, 1]
  s_neg = user @ neg.T / temperature                                # [B, M]
  if mask_collisions and pos_ids is not None and neg_ids is not None:
    s_neg = jnp.where(pos_ids[:, None] == neg_ids[None, :], -1e9, s_neg)
  logits = jnp.concatenate([s_pos, s_neg], axis=-1)
  return jnp.mean(jax.nn.logsumexp(logits, -1) - s_pos[:, 0])
