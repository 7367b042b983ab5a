"""Hybrid graph + transformer recommender: a sequence encoder's states fused
with a graph encoder's embeddings.

The graph side is a trained graph model's item embeddings G [I + 1, Dg]
(LightGCN by default, `recjax.train.hybrid.graph_embeddings`), frozen
(constants of the module) or fine-tuned end to end (`graph_trainable`: a
parameter initialised from them). A user's graph neighbourhood is the items
of their history, so position t of a window sees
  memory m_1..m_t = P_in(G[item_1..t])    the neighbourhood, in time order
  user node    u_t = mean(m_1..m_t)       LightGCN's one-hop user vector
Both are causal: nothing after position t leaks into position t's query,
and a user never seen by the graph model still gets u_t (inductive).

Fusion (`fusion`):
  'cross'   both directions of cross-attention, then a projection:
              a_t = Attn(q = h_t, kv = m_1..t)      sequence -> graph
              b_t = Attn(q = u_t, kv = h_1..t)      graph -> sequence
              query_t = Dense([h_t + a_t, u_t + b_t])
  'concat'  late fusion: query_t = [h_t, u_t], key = [E_item, P_key(G)]
  'gated'   late fusion: query_t = h_t + sigmoid(W[h_t, u_t]) * u_t
  'score'   late fusion of scores: logit = <h_t, key_i> + a <g_u, G_i>,
            the base model's logit plus the graph model's own logit
            (g_u: the graph user vector, unprojected), weighted by a
            learned scalar a that starts at the graph model's own scale
            (query [h_t, a g_u], key [key_i, G_i]). With
            `graph_weight='valid'` the graph logit stays out of the
            training loss and a is fitted on the validation split
            afterwards (recjax.train.hybrid.fit_score_weight); 'balanced'
            sets it so both halves' logits have the same spread over the
            catalogue (balanced_score_weight; no validation split needed).
            Why the graph logit stays out of the loss: graph user
            vectors have seen every training target, so a graph logit in
            the loss explains the training positions too well, and the
            sequence half learns little ('learned': trained end to end).
            Validations during training (best-checkpoint selection) score
            with a at its initial value, the graph model's own scale.
Item keys are the base's keys plus P_key(G[item]) (concatenated for
'concat', G[item] itself for 'score'), so every fusion can score by the
graph alone, the sequence alone or both.

The user node (`graph_user`): 'history' builds u_t from the window as
above; 'node' takes the graph model's own user vector (graph_user_table,
by the 'user' input), which has seen every training event of the user and
all their neighbours' (LightGCN's propagation) and ranks better than any
mean of item rows; users the graph model lacks (zero rows) fall back to
'history'.

The base is SASRec (`base='sasrec'`: item ids only) or the feature-rich
session encoder (`base='session'`); with `item_encoder` set (a
`recjax.models.item_encoder.ItemEncoder`) item keys add the multimodal
content vector.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recjax.models.sasrec import SASRec
from recjax.models.session import SessionEncoder

FUSIONS = ('cross', 'concat', 'gated', 'score')
USER_SOURCES = ('history', 'node')


def _dense(name: str, d: int) -> nn.Dense:
  return nn.Dense(d, name=name, kernel_init=nn.with_logical_partitioning(
      nn.initializers.xavier_uniform(), ('mlp', 'embed')))


class Hybrid(SessionEncoder):
  """SASRec / session encoder fused with graph item embeddings.

  Attributes: those of SessionEncoder, plus
    graph_item: float32 [I + 1, Dg] graph embeddings by item id (row 0 =
      padding, zeros).
    base: 'sasrec' (ids only) or 'session' (event, time and catalog
      features).
    fusion: one of FUSIONS.
    graph_trainable: fine-tune the graph embeddings (else frozen).
    graph_user: the user node's source, one of USER_SOURCES.
    graph_user_table: float32 [U, Dg] graph user vectors by user index
      (zeros: unknown to the graph model), for graph_user='node'.
    graph_scale: the initial weight of the graph logit ('score' fusion).
    graph_weight: 'learned', 'valid' or 'balanced' ('score' fusion, see
      above).
  """
  graph_item: np.ndarray | None = None
  base: str = 'sasrec'
  fusion: str = 'cross'
  graph_trainable: bool = False
  graph_user: str = 'history'
  graph_user_table: np.ndarray | None = None
  graph_scale: float = 1.0
  graph_weight: str = 'learned'

  def setup(self):
    if self.base not in ('sasrec', 'session'):
      raise ValueError(f"model.base={self.base!r} is not one of "
                       "['sasrec', 'session']")
    if self.fusion not in FUSIONS:
      raise ValueError(f'model.fusion={self.fusion!r} is not one of '
                       f'{list(FUSIONS)}')
    if self.graph_item is None:
      raise ValueError('Hybrid needs graph_item embeddings')
    if self.graph_user not in USER_SOURCES:
      raise ValueError(f'model.graph_user={self.graph_user!r} is not one of '
                       f'{list(USER_SOURCES)}')
    if self.graph_weight not in ('learned', 'valid', 'balanced'):
      raise ValueError(f'model.graph_weight={self.graph_weight!r} is not one '
                       "of ['learned', 'valid', 'balanced']")
    if self.graph_user == 'node' and self.graph_user_table is None:
      raise ValueError("model.graph_user='node' needs the graph model's user "
                       'vectors (graph_user_table)')
    if self.base == 'sasrec':
      if self.item_encoder != 'none':
        raise ValueError("model.item_encoder needs model.base='session'")
      SASRec.setup(self)     # no catalog or context tables
    else:
      super().setup()
    g = np.asarray(self.graph_item, np.float32)
    g = np.pad(g, ((0, self.vocab_size - len(g)), (0, 0)))
    if self.graph_trainable:
      self.graph_table = self.param('graph_item_embedding',
                                    nn.with_logical_partitioning(
                                        lambda *_: jnp.asarray(g),
                                        ('item', 'embed')), g.shape)
    else:
      self.graph_table = jnp.asarray(g)
    d = self.embed_dim
    self.graph_in = _dense('graph_in', d)
    # Zero at init: the graph's part of the item keys grows from nothing,
    # so the first steps' logits are the base model's, not the graph
    # table's (unit-scale rows through a fresh projection swamp them).
    self.graph_key = nn.Dense(d, name='graph_key', kernel_init=(
        nn.with_logical_partitioning(nn.initializers.zeros,
                                     ('mlp', 'embed'))))
    if self.fusion == 'cross':
      attn = lambda name: nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads, dropout_rate=self.dropout, name=name)
      self.seq_to_graph = attn('seq_to_graph')
      self.graph_to_seq = attn('graph_to_seq')
      self.norms = [nn.LayerNorm(name=f'fusion_norm{i}') for i in range(3)]
      self.fuse = _dense('fuse', d)
    elif self.fusion == 'gated':
      self.gate = _dense('gate', d)
    elif self.fusion == 'score':
      self.score_weight = self.param(
          'graph_score_weight', nn.with_logical_partitioning(
              lambda *_: jnp.asarray(self.graph_scale, jnp.float32), ()), ())
    if self.graph_user == 'node':
      self.user_table = jnp.asarray(self.graph_user_table, jnp.float32)

  def embed_inputs(self, inputs: dict) -> jax.Array:
    if self.base == 'sasrec':
      return SASRec.embed_inputs(self, inputs)
    return super().embed_inputs(inputs)

  def __call__(self, inputs: dict, train: bool = False) -> jax.Array:
    """Fused states [B, T, D] ([B, T, 2D] for 'concat')."""
    items = inputs['item']
    h = super().__call__(inputs, train)                       # [B, T, D]
    valid = (items > 0)[..., None].astype(h.dtype)
    raw = self.graph_table[items] * valid                     # [B, T, Dg]
    count = jnp.maximum(jnp.cumsum(valid, axis=1), 1.0)
    g_u = jnp.cumsum(raw, axis=1) / count                     # [B, T, Dg]
    if self.graph_user == 'node':
      node = self.user_table[inputs['user']]                  # [B, T, Dg]
      has = jnp.any(node != 0, axis=-1, keepdims=True)
      g_u = jnp.where(has, node, g_u)
    if self.fusion == 'score':
      weight = self.score_weight
      if train and self.graph_weight != 'learned':
        weight = 0.0 * weight       # the base model's logits only
      return jnp.concatenate([h, weight * g_u], axis=-1)
    m = self.graph_in(raw) * valid                            # [B, T, D]
    u = (self.graph_in(g_u) if self.graph_user == 'node'
         else jnp.cumsum(m, axis=1) / count)
    if self.fusion == 'concat':
      return jnp.concatenate([h, u], axis=-1)
    if self.fusion == 'gated':
      return h + jax.nn.sigmoid(self.gate(jnp.concatenate([h, u], -1))) * u
    t = items.shape[1]
    # Query t sees keys 1..t that are real items, and always itself (a
    # padding query would otherwise spread over every key, future ones too).
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None] & (
        (items > 0)[:, None, None, :] | jnp.eye(t, dtype=bool)[None, None])
    a = self.seq_to_graph(self.norms[0](h), m, mask=causal,
                          deterministic=not train)
    b = self.graph_to_seq(self.norms[1](u), h, mask=causal,
                          deterministic=not train)
    out = self.fuse(jnp.concatenate([h + a, u + b], axis=-1))
    return self.norms[2](out + h)

  def keys(self, ids: jax.Array) -> jax.Array:
    base = (self.item_embedding[ids] if self.base == 'sasrec'
            else self.item_vector(ids))
    if self.fusion == 'score':
      return jnp.concatenate([base, self.graph_table[ids]], axis=-1)
    g = self.graph_key(self.graph_table[ids])
    if self.fusion == 'concat':
      return jnp.concatenate([base, g], axis=-1)
    return base + g
