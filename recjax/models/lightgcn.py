"""LightGCN (He et al., SIGIR 2020): linear propagation over the normalised
user-item graph, no feature transforms, layer combination 1/(K+1).

    E^(k+1) = D^-1/2 A D^-1/2 E^(k),     E = 1/(K+1) * sum_k E^(k)

The only parameters are the layer-0 embeddings of all nodes, one table of
shape [num_nodes, embed_dim] with users first, then items, then padding rows
(logical axes ('node', 'embed'), so the config's rules shard it by rows).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from recjax.ops.spmm import CsrMatrix, spmm


class LightGCN(nn.Module):
  """LightGCN encoder.

  Attributes:
    num_users, num_items: sizes of the two node sets.
    num_nodes: rows of the embedding table (>= users + items; the extra rows
      are isolated padding nodes that make the table split evenly).
    embed_dim: D.
    num_layers: K propagation layers.
    init_std: std of the normal init (LightGCN-PyTorch uses 0.1).
    spmm_backend: 'auto' | 'ffi' | 'xla', see recjax.ops.spmm.
  """
  num_users: int
  num_items: int
  num_nodes: int
  embed_dim: int = 64
  num_layers: int = 3
  init_std: float = 0.1
  spmm_backend: str = 'auto'

  def setup(self):
    self.embedding = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                     ('node', 'embed')),
        (self.num_nodes, self.embed_dim), jnp.float32)

  def propagate(self, adj: CsrMatrix) -> jax.Array:
    """Returns the layer-combined embeddings of every node, [num_nodes, D]."""
    cur = self.embedding
    out = cur
    for _ in range(self.num_layers):
      cur = spmm(adj, cur, backend=self.spmm_backend)   # adj is symmetric.
      out = out + cur
    return out / (self.num_layers + 1)

  def __call__(self, adj: CsrMatrix) -> tuple[jax.Array, jax.Array]:
    """Final user [U, D] and item [I, D] embeddings."""
    z = self.propagate(adj)
    nu = self.num_users
    return z[:nu], z[nu:nu + self.num_items]

  def layer0(self, users: jax.Array, items: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """Layer-0 embeddings of user ids [...] and item ids [...] (for L2)."""
    return self.embedding[users], self.embedding[self.num_users + items]
