"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over a user's
item history, learned positions, the item table shared with the output.

Every sequence model here has one interface the trainer relies on:
  __call__(inputs, train) -> hidden [B, T, D]   (inputs: dict of [B, T]
                                                 feature arrays, 'item' ids)
  init_all(inputs)                               (init: every parameter)
  query(hidden)   -> [..., D']   the vector that scores items
  keys(ids)       -> [..., D']   the vectors of item ids (0 = padding)
  all_keys()      -> [I, D']     keys of every real item, row i = item i
so that score(position, item) = query(hidden) . keys(item).

Item ids are index + 1 (0 pads); the table has `vocab_size` rows (>= I + 1,
padded so it splits evenly over the mesh) with logical axes ('item',
'embed'), so the config's rules shard it by rows like LightGCN's. Positions
count from the end of the window (model.positions = 'from_end', the latest
event has the last position embedding; pmixer's SASRec) or from the first
event in the window ('from_start', the first event has position 0; HF-style
SASRec/BERT4Rec implementations that pad on the right). Either way a batch
cut to a shorter width computes exactly what the full width would.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recjax.models.attention import Encoder


def embedding(module: nn.Module, name: str, rows: int, dim: int, std: float,
              axes=('item', 'embed')) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(
      nn.initializers.normal(std), axes), (rows, dim), jnp.float32)


class SASRec(nn.Module):
  """Causal (or, for BERT4Rec, bidirectional) item-sequence encoder.

  Attributes:
    num_items: I; ids 1..I are items.
    vocab_size: rows of the item table (>= I + 1).
    max_len: L, the longest window (number of position embeddings).
    embed_dim: D.
    num_blocks, num_heads, ff_dim, dropout: the Encoder's.
    attention: 'full' | 'local' | 'linear' (models.attention.KINDS).
    window, chunk: the local / linear kernels' sizes.
    causal: False gives a bidirectional encoder.
    init_std: std of the embedding tables' normal init.
    positions: 'from_end' | 'from_start' (see the module docstring).
    layout: 'pre_ln' | 'sasrec' | 'post_ln', where the blocks' norms sit
      (models.attention.Block).
    attention_dropout: 'output' | 'weights', what the attention sublayer's
      dropout hits (models.attention.Block).
    pos_init_std: std of the position table's init (None: init_std).
      SASRec's code initialises it xavier-normal: sqrt(2 / (L + 1 + D)).
  """
  num_items: int
  vocab_size: int
  max_len: int
  embed_dim: int = 50
  num_blocks: int = 2
  num_heads: int = 1
  ff_dim: int = 50
  dropout: float = 0.2
  attention: str = 'full'
  window: int = 64
  chunk: int = 64
  causal: bool = True
  init_std: float = 0.02
  positions: str = 'from_end'
  layout: str = 'pre_ln'
  attention_dropout: str = 'output'
  pos_init_std: float | None = None

  def setup(self):
    d = self.embed_dim
    self.item_embedding = embedding(self, 'item_embedding', self.vocab_size,
                                    d, self.init_std)
    pos_std = self.init_std if self.pos_init_std is None else self.pos_init_std
    self.pos_embedding = embedding(self, 'pos_embedding', self.max_len, d,
                                   pos_std, ('seq', 'embed'))
    self.encoder = Encoder(self.num_blocks, self.num_heads, self.ff_dim,
                           self.dropout, self.attention, self.causal,
                           self.window, self.chunk, self.layout,
                           self.attention_dropout)

  def embed_inputs(self, inputs: dict) -> jax.Array:
    """Per-position input vectors [B, T, D] before position embeddings."""
    return self.item_embedding[inputs['item']] * (self.embed_dim ** 0.5)

  def __call__(self, inputs: dict, train: bool = False) -> jax.Array:
    """Hidden states [B, T, D] of windows right-aligned in T <= max_len."""
    items = inputs['item']
    mask = items > 0
    x = self.embed_inputs(inputs) + self.position_vectors(mask)
    return self.encoder(x, mask, train)

  def position_vectors(self, mask: jax.Array) -> jax.Array:
    """Position embeddings [B or 1, T, D] for left-padded windows."""
    t = mask.shape[1]
    if self.positions == 'from_end':
      return self.pos_embedding[None, self.max_len - t:]
    if self.positions == 'from_start':
      # Padding is on the left: position = rank among the real events.
      pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
      return self.pos_embedding[pos]
    raise ValueError(f'model.positions={self.positions!r} is not one of '
                     "['from_end', 'from_start']")

  def init_all(self, inputs: dict) -> jax.Array:
    """Touches every parameter (for `init`: heads are only used by query)."""
    return self.query(self(inputs)) @ self.keys(inputs['item'][0]).T

  def query(self, hidden: jax.Array) -> jax.Array:
    return hidden

  def keys(self, ids: jax.Array) -> jax.Array:
    return self.item_embedding[ids]

  def all_keys(self) -> jax.Array:
    return self.keys(jnp.arange(1, self.num_items + 1))
