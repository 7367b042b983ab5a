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


def cosine_contrastive(user: jax.Array, pos: jax.Array, neg: jax.Array,
                       margin: float = 0.9, negative_weight: float = 150.0,
                       pos_ids=None, neg_ids=None) -> jax.Array:
  """SimpleX's cosine contrastive loss (CCL), with M shared negatives.

    relu(1 - cos(u, i+)) + w * mean_j relu(cos(u, j) - margin)

  Only negatives more similar than `margin` contribute, so with a high margin
  the many easy negatives cost nothing and the hard ones dominate.

  Args:
    user, pos: [B, D]; neg: [M, D] shared by the batch.
    margin: cosine below which a negative is ignored.
    negative_weight: weight of the negatives' mean hinge.
    pos_ids [B], neg_ids [M]: item ids; a negative equal to the row's positive
      is dropped.

  Returns:
    Scalar mean loss.
  """
  unit = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)
  user, pos, neg = unit(user), unit(pos), unit(neg)
  s_pos = jnp.sum(user * pos, -1)                                   # [B]
  hinge = jax.nn.relu(user @ neg.T - margin)                        # [B, M]
  if pos_ids is not None and neg_ids is not None:
    hinge = jnp.where(pos_ids[:, None] == neg_ids[None, :], 0.0, hinge)
  return jnp.mean(jax.nn.relu(1.0 - s_pos) +
                  negative_weight * jnp.mean(hinge, -1))


def multinomial(user: jax.Array, items: jax.Array, pos: jax.Array,
                pos_mask: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Full-softmax (multinomial) log-likelihood of each user's positives.

  -sum_{u, i in P_u} log softmax_i(s(u, .) / t), divided by the number of
  positives (so users weigh by their pair count, as pair sampling does).

  Args:
    user: [B, D]; items: [I, D], every item (no sampling, no bias).
    pos: [B, L] positive item ids; pos_mask: [B, L], 1 for real positives.
    temperature: t.

  Returns:
    Scalar loss.
  """
  logits = (user @ items.T) / temperature                         # [B, I]
  lse = jax.nn.logsumexp(logits, -1, keepdims=True)                 # [B, 1]
  s_pos = jnp.take_along_axis(logits, pos, axis=-1)                 # [B, L]
  return jnp.sum((lse - s_pos) * pos_mask) / jnp.maximum(jnp.sum(pos_mask), 1)
