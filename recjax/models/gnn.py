"""Sampled graph encoders: GraphSAGE, PinSAGE, relational GAT and TGAT.

All four read a sampled `Block` (recjax.graph.samplers: level l holds the
children of level l-1, f_l per parent, -1 = padding) and pass messages up the
tree with segment sums: layer k updates every level l <= L - k from its
children, so after L layers level 0 (the seeds) has seen L hops.

Node inputs (`NodeEncoder`) are a learned id embedding plus, for items with
a catalog, content: the embeddings of the item's seller and leaf category
nodes, a price bucket, the mean of its text token embeddings and a
projection of its image vector. Nodes unseen in training (and, with
probability `id_dropout`, seen ones during training) use their type's
'unknown' row instead of an id row, so the model learns to embed a node from
its content and neighbours: that is the inductive cold-start path.

Shapes: n = nodes at a level, f = fan-out, D = embed_dim, H = heads,
R = relation ids (+1 for PinSAGE's 'walk' relation).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

NUM_NODE_TYPES = 4   # recjax.graph.nodes.NODE_TYPES


def _segments(n_parent: int, n_child: int) -> jax.Array:
  return jnp.arange(n_child) // (n_child // n_parent)


def segment_softmax(logits: jax.Array, mask: jax.Array, seg: jax.Array,
                    n: int) -> jax.Array:
  """Softmax of logits [m, H] within segments, padding (mask False) -> 0."""
  logits = jnp.where(mask[:, None], logits, -jnp.inf)
  mx = jax.ops.segment_max(logits, seg, n)
  mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
  e = jnp.exp(logits - mx[seg]) * mask[:, None]
  den = jax.ops.segment_sum(e, seg, n)
  return e / jnp.maximum(den[seg], 1e-9)


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Inverted dropout of x [...] at `rate` rounded to a multiple of 1/256
  (at most 255/256).

  Each kept value is scaled by 1 / (1 - the rounded rate), so the
  expectation is x. The mask comes from 8-bit uniforms, four per 32-bit
  random word: on CPU nn.Dropout's random bits made a gowalla GraphSAGE
  step 0.31 s against 0.18 s without dropout; with these it is 0.20 s.
  """
  cut = min(round(rate * 256), 255)
  if cut <= 0:
    return x
  n = x.size
  words = jax.random.bits(rng, (-(-n // 4),), jnp.uint32)
  u8 = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[:n]
  keep = u8.reshape(x.shape) >= cut
  return jnp.where(keep, x * (256.0 / (256 - cut)), 0.0).astype(x.dtype)


class NodeEncoder(nn.Module):
  """Input features of nodes: id (or 'unknown') + type + item content.

  Attributes:
    num_nodes: global node count N (the id table has N + 4 rows, one
      'unknown' row per node type after the nodes, then padding rows).
    embed_dim: D.
    item_offset, num_items: where items live in the global id space.
    text_vocab, price_buckets: content vocab sizes (0 = no catalog).
    id_dropout: training-time probability of hiding a node's id.
    pad_to: the table's rows are padded to a multiple of this, so it splits
      evenly over the mesh axis its rows are sharded on.
  """
  num_nodes: int
  embed_dim: int
  item_offset: int
  num_items: int
  text_vocab: int = 0
  price_buckets: int = 0
  id_dropout: float = 0.0
  init_std: float = 0.1
  pad_to: int = 128

  @nn.compact
  def __call__(self, ids: jax.Array, feats: dict, train: bool) -> jax.Array:
    """ids int32 [n] (-1 padding) -> [n, D] (zeros for padding)."""
    d = self.embed_dim
    table = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                     ('node', 'embed')),
        (-(-(self.num_nodes + NUM_NODE_TYPES) // self.pad_to) * self.pad_to,
         d), jnp.float32)
    valid = ids >= 0
    safe = jnp.maximum(ids, 0)
    ntype = feats['node_type'][safe].astype(jnp.int32)
    known = feats['known'][safe]
    if train and self.id_dropout > 0:
      hide = jax.random.bernoulli(self.make_rng('dropout'), self.id_dropout,
                                  ids.shape)
      known = known & ~hide
    x = table[jnp.where(known, safe, self.num_nodes + ntype)]
    x = x + self.param('type_embedding', nn.initializers.normal(
        self.init_std), (NUM_NODE_TYPES, d))[ntype]
    if self.text_vocab:
      item = jnp.clip(safe - self.item_offset, 0, self.num_items - 1)
      c = table[feats['item_seller'][item]] + table[
          feats['item_category'][item]]
      c = c + nn.Embed(self.price_buckets, d, name='price')(
          feats['price_bucket'][item])
      tokens = feats['text'][item]                               # [n, T]
      tok = nn.Embed(self.text_vocab, d, name='text')(tokens)
      tmask = (tokens > 0)[..., None]
      c = c + jnp.sum(tok * tmask, 1) / jnp.maximum(jnp.sum(tmask, 1), 1)
      if 'image' in feats:
        c = c + nn.Dense(d, name='image')(feats['image'][item])
      x = x + jnp.where((ntype == 1)[:, None], c, 0.0)
    x = nn.Dense(d, name='input')(x)
    return x * valid[:, None]


def _activation(name: str):
  """'relu' or 'linear' (identity: LightGCN's finding that, on id-only
  collaborative data, dropping the nonlinearity between layers helps)."""
  if name == 'relu':
    return nn.relu
  if name == 'linear':
    return lambda x: x
  raise ValueError(f"model.activation={name!r}: 'relu' or 'linear'")


class SAGELayer(nn.Module):
  """GraphSAGE: h' = act(W [h || agg(children)]) ('concat') or
  act(W1 h + W2 agg) ('skip'); agg = 'mean' (sum_j w_j h_j over the valid
  children / their count, w = the sampler's weights: 1, or the scale of
  LightGCN's symmetric normalisation) or 'pool' (max of a ReLU MLP);
  act = ReLU, or the identity with activation 'linear' (the 'pool'
  aggregator's MLP keeps its ReLU)."""
  dim: int
  aggregator: str = 'mean'
  combine: str = 'concat'
  last: bool = False
  activation: str = 'relu'

  @nn.compact
  def __call__(self, h, h_nb, rel, weight, dt):
    n = h.shape[0]
    seg = _segments(n, h_nb.shape[0])
    mask = (weight > 0).astype(h.dtype)
    if self.aggregator == 'pool':
      p = nn.relu(nn.Dense(self.dim, name='pool')(h_nb))
      m = jax.ops.segment_max(jnp.where(mask[:, None] > 0, p, -jnp.inf),
                              seg, n)
      m = jnp.where(jnp.isfinite(m), m, 0.0)
    elif self.aggregator == 'mean':
      s = jax.ops.segment_sum(h_nb * weight[:, None], seg, n)
      m = s / jnp.maximum(jax.ops.segment_sum(mask, seg, n), 1.0)[:, None]
    else:
      raise ValueError(f"aggregator {self.aggregator!r}: 'mean' or 'pool'")
    if self.combine == 'concat':
      out = nn.Dense(self.dim, name='combine')(jnp.concatenate([h, m], -1))
    elif self.combine == 'skip':
      out = nn.Dense(self.dim, name='self')(h) + nn.Dense(
          self.dim, use_bias=False, name='neighbors')(m)
    else:
      raise ValueError(f"combine {self.combine!r}: 'concat' or 'skip'")
    return out if self.last else _activation(self.activation)(out)


class PinSAGELayer(nn.Module):
  """PinSAGE importance pooling: m = sum_j w_j act(Q h_j) / sum_j w_j with w
  the normalised random-walk visit counts; h' = act(W [h || m]); act = ReLU,
  or the identity with activation 'linear'."""
  dim: int
  last: bool = False
  activation: str = 'relu'

  @nn.compact
  def __call__(self, h, h_nb, rel, weight, dt):
    n = h.shape[0]
    seg = _segments(n, h_nb.shape[0])
    act = _activation(self.activation)
    q = act(nn.Dense(self.dim, name='transform')(h_nb))
    m = jax.ops.segment_sum(q * weight[:, None], seg, n)
    m = m / jnp.maximum(jax.ops.segment_sum(weight, seg, n), 1e-9)[:, None]
    out = nn.Dense(self.dim, name='combine')(jnp.concatenate([h, m], -1))
    return out if self.last else act(out)


class RelGATLayer(nn.Module):
  """GAT with per-relation parameters: each neighbour's message is gated by
  its relation (W h_j * g_r), and its attention logit gets a per-relation
  term, so a purchase neighbour can outweigh a click neighbour:

    e_ij = LeakyReLU(a_dst . W h_i + a_src . (W h_j * g_r) + b_r)  per head
    h_i' = act(W_o [h_i || sum_j softmax_j(e_ij) W h_j * g_r])
  """
  dim: int
  num_relations: int
  heads: int = 4
  last: bool = False

  @nn.compact
  def __call__(self, h, h_nb, rel, weight, dt):
    n, hd = h.shape[0], self.dim // self.heads
    seg = _segments(n, h_nb.shape[0])
    w = nn.Dense(self.dim, use_bias=False, name='W')
    z_self = w(h).reshape(n, self.heads, hd)
    gate = self.param('relation_gate', nn.initializers.ones,
                      (self.num_relations, self.dim))
    z_nb = (w(h_nb) * gate[rel]).reshape(-1, self.heads, hd)
    a_dst = self.param('a_dst', nn.initializers.lecun_normal(),
                       (self.heads, hd))
    a_src = self.param('a_src', nn.initializers.lecun_normal(),
                       (self.heads, hd))
    b_rel = self.param('relation_bias', nn.initializers.zeros,
                       (self.num_relations, self.heads))
    logits = nn.leaky_relu(jnp.sum(z_self * a_dst, -1)[seg]
                           + jnp.sum(z_nb * a_src, -1) + b_rel[rel], 0.2)
    alpha = segment_softmax(logits, weight > 0, seg, n)           # [m, H]
    self.sow('intermediates', 'attention', alpha)
    m = jax.ops.segment_sum(alpha[..., None] * z_nb, seg, n).reshape(n, -1)
    out = nn.Dense(self.dim, name='combine')(jnp.concatenate([h, m], -1))
    return out if self.last else nn.elu(out)


class TimeEncoder(nn.Module):
  """TGAT's functional time encoding: phi(dt) = cos(dt * omega + phase),
  dt in days, omega initialised geometrically from 1 to 1e-4 per day (so
  the dimensions resolve gaps from hours to decades) and learned."""
  dim: int

  @nn.compact
  def __call__(self, dt: jax.Array) -> jax.Array:
    omega = self.param('omega', lambda k, s: 1.0 / 10 ** jnp.linspace(
        0, 4, s[0]), (self.dim,))
    phase = self.param('phase', nn.initializers.zeros, (self.dim,))
    return jnp.cos(dt[..., None] * omega + phase)


class TGATLayer(nn.Module):
  """TGAT temporal attention: the query is [h_i || phi(0)], keys and values
  are [h_j || phi(t_i - t_j) || relation]; out = FFN([h_i || attention])."""
  dim: int
  num_relations: int
  heads: int = 4
  time_dim: int = 16
  last: bool = False

  @nn.compact
  def __call__(self, h, h_nb, rel, weight, dt):
    n, hd = h.shape[0], self.dim // self.heads
    seg = _segments(n, h_nb.shape[0])
    phi = TimeEncoder(self.time_dim, name='time')
    rel_emb = nn.Embed(self.num_relations, self.time_dim, name='relation')
    q_in = jnp.concatenate([h, phi(jnp.zeros(n))], -1)
    kv_in = jnp.concatenate([h_nb, phi(dt), rel_emb(rel)], -1)
    q = nn.Dense(self.dim, name='query')(q_in).reshape(n, self.heads, hd)
    k = nn.Dense(self.dim, name='key')(kv_in).reshape(-1, self.heads, hd)
    v = nn.Dense(self.dim, name='value')(kv_in).reshape(-1, self.heads, hd)
    logits = jnp.sum(q[seg] * k, -1) / jnp.sqrt(hd)
    alpha = segment_softmax(logits, weight > 0, seg, n)
    m = jax.ops.segment_sum(alpha[..., None] * v, seg, n).reshape(n, -1)
    x = nn.relu(nn.Dense(self.dim, name='ffn1')(jnp.concatenate([h, m], -1)))
    out = nn.Dense(self.dim, name='ffn2')(x)
    return out if self.last else nn.relu(out)


class SampledGNN(nn.Module):
  """One of the four encoders over a sampled Block; outputs unit vectors
  (cosine scores) or, with normalize=False, raw vectors (dot products,
  whose norms can carry popularity as LightGCN's do).

  Attributes:
    kind: 'graphsage' | 'pinsage' | 'gat' | 'tgat'.
    encoder: NodeEncoder.
    num_layers: L (must equal the sampler's number of hops).
    num_relations: R for gat/tgat.
    aggregator, combine: GraphSAGE options.
    heads: attention heads (gat, tgat).
    normalize: L2-normalise the outputs.
    residual: add each seed's input embedding (NodeEncoder) to the last
      layer's output, so its id row reaches the score directly, as in
      LightGCN's sum over layers.
    activation: 'relu' or 'linear' between layers (graphsage, pinsage).
    dropout: training-time dropout on every layer's inputs (the node's own
      representation and its children's), as in GraphSAGE's reference
      code; NGCF's message dropout regularises the same way.
  """
  kind: str
  encoder: NodeEncoder
  num_layers: int = 2
  num_relations: int = 1
  aggregator: str = 'mean'
  combine: str = 'concat'
  heads: int = 4
  normalize: bool = True
  residual: bool = False
  activation: str = 'relu'
  dropout: float = 0.0

  def _layer(self, k: int) -> nn.Module:
    d, last = self.encoder.embed_dim, k == self.num_layers - 1
    name = f'layer{k}'
    if self.kind == 'graphsage':
      return SAGELayer(d, self.aggregator, self.combine, last,
                       self.activation, name=name)
    if self.kind == 'pinsage':
      return PinSAGELayer(d, last, self.activation, name=name)
    if self.activation != 'relu':
      raise ValueError(f'model.activation={self.activation!r}: only '
                       'graphsage and pinsage take another activation')
    if self.kind == 'gat':
      return RelGATLayer(d, self.num_relations, self.heads, last=last,
                         name=name)
    if self.kind == 'tgat':
      return TGATLayer(d, self.num_relations, self.heads, last=last,
                       name=name)
    raise ValueError(f"model kind {self.kind!r}: want graphsage, pinsage, "
                     "gat or tgat")

  @nn.compact
  def __call__(self, block: dict, feats: dict, train: bool = False,
               history: dict | None = None, return_hidden: bool = False):
    """Seed embeddings [S, D] (L2-normalised unless not normalize) from a
    Block's arrays.

    Args:
      block: a Block's arrays (`Block.as_dict`), L + 1 levels.
      feats: node features (NodeEncoder).
      train: dropout and id dropout on (the 'dropout' rng).
      history: optional historical embeddings (recjax.graph.cache) for
        nodes whose own neighbourhood is not in the block (halo nodes of
        another partition): 'values' per level l >= 1 a [L - 1, n_l, D]
        array of the node's representation after each layer k < L - 1,
        'mask' per level a bool [n_l]; after layer k a masked node takes
        its cached value instead of what its (empty) subtree gives.
      return_hidden: also return the seeds' representations after each
        layer k < L - 1, [S, L - 1, D] (what the cache stores).
    """
    levels = len(block['ids'])
    if levels != self.num_layers + 1:
      raise ValueError(f'block has {levels - 1} hops but the model has '
                       f'{self.num_layers} layers; set graph.fanouts to '
                       f'{self.num_layers} values')
    h = [self.encoder(ids, feats, train) for ids in block['ids']]
    seed_input = h[0]
    hidden = []
    for k in range(self.num_layers):
      layer = self._layer(k)
      if train and self.dropout > 0:
        h = [dropout(x, self.dropout, self.make_rng('dropout')) for x in h]
      h = [layer(h[l], h[l + 1], block['rel'][l + 1],
                 block['weight'][l + 1], block['dt'][l + 1])
           for l in range(len(h) - 1)]
      if k < self.num_layers - 1:
        hidden.append(h[0])
        if history is not None:
          h = [h[0]] + [jnp.where(history['mask'][l][:, None],
                                  history['values'][l][:, k], h[l])
                        for l in range(1, len(h))]
    out = h[0] + seed_input if self.residual else h[0]
    if self.normalize:
      out = out * jax.lax.rsqrt(jnp.sum(out * out, -1, keepdims=True) + 1e-12)
    if return_hidden:
      return out, (jnp.stack(hidden, 1) if hidden else
                   jnp.zeros((out.shape[0], 0, out.shape[1]), out.dtype))
    return out
