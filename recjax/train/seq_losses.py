"""Losses of sequence models over the logits they actually need.

Each loss takes the positive logit of every scored position, the logits of
its sampled negatives and masks, and returns the mean over valid positions:
  pos: [B, T] logit of the true next (or masked) item;
  neg: [B, T, N] logits of N sampled negatives;
  mask: [B, T] 1 for positions that count;
  neg_mask: [B, T, N] (optional) 0 for negatives that must not count
    (a negative that happens to be the position's own target).

  bce              SASRec's: -log s(pos) - sum_n log(1 - s(neg_n)).
  sampled_softmax  cross-entropy of the positive against [pos, negatives].
  gbce             gSASRec's generalised BCE (Petrov & Macdonald, RecSys
                   2023): the positive's probability is raised to beta,
                     alpha = N / (I - 1),
                     beta = alpha (t (1 - 1/alpha) + 1/alpha),
                   -beta log s(pos) - sum_n log(1 - s(neg_n)); t = 0 gives
                   BCE (beta = 1), t = 1 calibrates the sampled model's
                   probabilities to full-softmax ones (beta = alpha).
`full_softmax` scores against every item instead (BERT4Rec's loss).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

LOSSES = ('bce', 'sampled_softmax', 'gbce', 'full_softmax')


def _mean(per_position, mask):
  return jnp.sum(per_position * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _neg_mask(neg, neg_mask):
  return jnp.ones_like(neg) if neg_mask is None else neg_mask


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
  """gSASRec's beta for N sampled negatives out of I items and calibration t."""
  alpha = num_negatives / max(num_items - 1, 1)
  return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def bce(pos, neg, mask, neg_mask=None, beta: float = 1.0):
  """(Generalised) binary cross-entropy; beta = 1 is SASRec's loss."""
  nm = _neg_mask(neg, neg_mask)
  per = (-beta * jax.nn.log_sigmoid(pos)
         - jnp.sum(jax.nn.log_sigmoid(-neg) * nm, axis=-1))
  return _mean(per, mask)


def gbce(pos, neg, mask, num_items: int, t: float, neg_mask=None):
  """gSASRec's gBCE with calibration t (see module docstring)."""
  return bce(pos, neg, mask, neg_mask, beta=gbce_beta(neg.shape[-1],
                                                      num_items, t))


def sampled_softmax(pos, neg, mask, neg_mask=None):
  """Softmax cross-entropy of the positive among itself and N negatives."""
  nm = _neg_mask(neg, neg_mask)
  neg = jnp.where(nm > 0, neg, -jnp.inf)
  logits = jnp.concatenate([pos[..., None], neg], axis=-1)
  per = jax.nn.logsumexp(logits, axis=-1) - pos
  return _mean(per, mask)


def full_softmax(logits, targets, mask):
  """Softmax cross-entropy over all items.

  Args:
    logits: [B, T, I] scores of every item (column i = item i).
    targets: int [B, T] 0-based item of each position (ignored where masked).
    mask: [B, T].
  """
  pos = jnp.take_along_axis(logits, jnp.maximum(targets, 0)[..., None],
                            axis=-1)[..., 0]
  return _mean(jax.nn.logsumexp(logits, axis=-1) - pos, mask)


def sampled(name: str, pos, neg, mask, *, num_items: int, t: float = 0.75,
            neg_mask: Optional[jax.Array] = None):
  """The sampled loss `name` ('bce' | 'sampled_softmax' | 'gbce')."""
  if name == 'bce':
    return bce(pos, neg, mask, neg_mask)
  if name == 'gbce':
    return gbce(pos, neg, mask, num_items, t, neg_mask)
  if name == 'sampled_softmax':
    return sampled_softmax(pos, neg, mask, neg_mask)
  raise ValueError(f'loss.name={name!r} is not one of {list(LOSSES)}')
