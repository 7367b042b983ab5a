"""Feature-rich session encoder (Transformers4Rec-style, Moreira et al.,
RecSys 2021): every position combines the item with what happened and when.

Per position t:
  item vector  e_item + e_seller + e_category + e_price_bucket   (catalog)
  event vector Dense([e_event, e_gap, e_device, e_hour, e_location])
  input        sqrt(D) * item vector + event vector + position
then SASRec's causal encoder. Items are scored with the same catalog-aware
item vector (shared input/output tables), so an item never seen in training
still gets a meaningful key from its seller, category and price: this is
what lets the model rank cold items at all.

The catalog lookups (`item_side`: seller, category, price bucket per item
id, from recjax.data.sequences.item_side_features) are constants of the
module, not parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recjax.data.schema import DEVICES, EVENT_TYPES
from recjax.data.sequences import NUM_GAP_BUCKETS
from recjax.models.item_encoder import ItemEncoder
from recjax.models.sasrec import SASRec, embedding


class SessionEncoder(SASRec):
  """SASRec with event, time-gap, context and catalog features.

  Attributes: those of SASRec, plus
    item_side: dict of int32 [I + 1] arrays 'seller', 'category', 'price'
      (0 = none), or None (then only the context features are added).
    num_locations: size of the location index space.
    feature_dim: width of each context feature embedding.
    item_encoder: 'multimodal' adds `ItemEncoder` content vectors (text,
      image, attributes) to every item vector; 'none' does not.
    item_content: `recjax.models.item_encoder.content_tables` output.
    id_dropout: in training, the share of item occurrences (inputs,
      targets and negatives) whose id embedding is dropped, so the item
      vector must be made from catalog features and content alone
      (DropoutNet, Volkovs et al., NeurIPS 2017): an item never seen in
      training has only those, and with every warm item's id embedding
      always present the model learns to lean on ids.
    item_bias: adds a learned per-item logit bias b_i, as one more key
      dimension against a constant 1 in the query (so retrieval stays a
      dot product). Popularity then has its own channel instead of being
      folded into the id and content vectors.
    item_seen: bool [vocab_size], the ids trained on (None: all). With
      item_bias, the others (cold items, never seen in training) get the
      expected bias of an item whose popularity is unknown,
      log mean_seen exp(b_i): their expected share of the softmax, which
      content cannot predict. Their own zero bias would rank every new
      item as a typical (median, under a power law) one, below the warm
      head it competes with.
  """
  item_side: dict | None = None
  num_locations: int = 1
  feature_dim: int = 16
  item_encoder: str = 'none'
  item_content: dict | None = None
  id_dropout: float = 0.0
  item_bias: bool = False
  item_seen: np.ndarray | None = None

  def setup(self):
    super().setup()
    if self.item_bias:
      self.bias = self.param('item_bias', nn.with_logical_partitioning(
          nn.initializers.zeros, ('vocab',)), (self.vocab_size,), jnp.float32)
    d, std = self.embed_dim, self.init_std
    side = {}
    for name, ids in sorted((self.item_side or {}).items()):
      ids = np.asarray(ids, np.int32)
      # Padded to the table's rows: mask and padding ids map to 0 (none).
      side[name] = (jnp.asarray(np.pad(ids, (0, self.vocab_size - len(ids)))),
                    embedding(self, f'{name}_embedding', int(ids.max()) + 1,
                              d, std, ('vocab', 'embed')))
    self.side = side
    f = self.feature_dim
    sizes = dict(event=len(EVENT_TYPES), gap=NUM_GAP_BUCKETS,
                 device=len(DEVICES), hour=25, location=self.num_locations)
    self.context = {name: embedding(self, f'{name}_embedding', n, f, std,
                                    ('vocab', 'embed'))
                    for name, n in sizes.items()}
    if self.item_encoder not in ('none', 'multimodal'):
      raise ValueError(f'model.item_encoder={self.item_encoder!r} is not one '
                       "of ['none', 'multimodal']")
    self.content_encoder = None
    if self.item_encoder == 'multimodal':
      if self.item_content is None:
        raise ValueError("model.item_encoder='multimodal' needs a catalog "
                         '(data without one has no item content)')
      self.content_encoder = ItemEncoder(self.item_content, self.vocab_size,
                                         d, init_std=std,
                                         name='item_encoder')
    self.context_proj = nn.Dense(d, name='context_proj', kernel_init=(
        nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                     ('mlp', 'embed'))))

  def query(self, hidden: jax.Array) -> jax.Array:
    if not self.item_bias:
      return hidden
    return jnp.concatenate([hidden, jnp.ones_like(hidden[..., :1])], -1)

  def keys(self, ids: jax.Array) -> jax.Array:
    if not self.item_bias:
      return self.item_vector(ids)
    bias = self.bias[ids]
    if self.item_seen is not None:
      seen = jnp.asarray(self.item_seen)
      prior = jax.lax.stop_gradient(
          jax.nn.logsumexp(jnp.where(seen, self.bias, -jnp.inf))
          - jnp.log(jnp.maximum(seen.sum(), 1)))
      bias = jnp.where(seen[ids], bias, prior)
    return jnp.concatenate([self.item_vector(ids), bias[..., None]], -1)

  def item_vector(self, ids: jax.Array) -> jax.Array:
    """Id + seller + category + price vectors [..., D] of item ids: the
    input at a position (subclasses may add to the output keys)."""
    out = self.item_embedding[ids]
    if self.id_dropout > 0 and self.has_rng('dropout'):   # training only
      keep = jax.random.bernoulli(self.make_rng('dropout'),
                                  1.0 - self.id_dropout, ids.shape)
      out = out * keep[..., None].astype(out.dtype)
    for lookup, table in self.side.values():
      out = out + table[lookup[ids]]
    if self.content_encoder is not None:
      # Every item's content vector at once, then a gather: the text
      # transformer runs over I descriptions per call instead of one per
      # position and negative (B x T + N of them). For catalogues too big
      # for that, precompute the vectors instead.
      every = self.content_encoder(jnp.arange(self.vocab_size))
      out = out + every[ids]
    return out

  def embed_inputs(self, inputs: dict) -> jax.Array:
    ctx = [table[inputs[name].astype(jnp.int32)]
           for name, table in self.context.items()]
    ctx = self.context_proj(jnp.concatenate(ctx, axis=-1))
    return self.item_vector(inputs['item']) * (self.embed_dim ** 0.5) + ctx
