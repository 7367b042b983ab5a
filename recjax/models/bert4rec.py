"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional encoder trained by
Cloze masking; at inference a mask token appended to the history is
predicted as the next item.

Differences from SASRec beyond `causal=False`: the mask token (id I + 1),
and BERT's output head, a Dense + GELU + LayerNorm projection scored against
the shared item table plus a per-item bias. The bias rides along as an
extra dimension, query = [head(h), 1] and key = [e_item, b_item], so the
trainer and the evaluators score with one dot product for every model.
The masking itself (which positions, how many) is training, in
recjax.train.seq_trainer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recjax.models.sasrec import SASRec


class BERT4Rec(SASRec):
  """SASRec's encoder made bidirectional, with BERT's output head.

  Attributes: those of SASRec (vocab_size must be >= I + 2); causal is
  ignored (always False).
  """
  causal: bool = False

  @property
  def mask_id(self) -> int:
    return self.num_items + 1

  def setup(self):
    if self.vocab_size < self.num_items + 2:
      raise ValueError(f'BERT4Rec needs vocab_size >= num_items + 2 for the '
                       f'mask token, got {self.vocab_size}')
    super().setup()
    self.head = nn.Dense(self.embed_dim, kernel_init=(
        nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                     ('embed', 'mlp'))), name='head')
    self.head_norm = nn.LayerNorm(name='head_norm')
    self.item_bias = self.param('item_bias', nn.with_logical_partitioning(
        nn.initializers.zeros, ('item',)), (self.vocab_size,), jnp.float32)

  def query(self, hidden: jax.Array) -> jax.Array:
    h = self.head_norm(nn.gelu(self.head(hidden)))
    return jnp.concatenate([h, jnp.ones_like(h[..., :1])], axis=-1)

  def keys(self, ids: jax.Array) -> jax.Array:
    return jnp.concatenate([self.item_embedding[ids],
                            self.item_bias[ids][..., None]], axis=-1)
