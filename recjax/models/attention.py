"""Self-attention for sequence encoders; the kernel is a config choice.

Kernels (`attend(..., kind=)`), all on q, k, v [B, T, N, H] with a key mask:
  full    softmax attention over every allowed key through
          jax.nn.dot_product_attention: O(T^2) memory per head; causal
          attention skips the key blocks above the diagonal.
  local   softmax attention over a window of w keys (causal: the w most
          recent positions, self included; bidirectional: |i - j| < w),
          computed on query blocks of w against 2 (3) key blocks, so the
          memory is O(T w) rather than O(T^2).
  linear  kernelised linear attention (Katharopoulos et al., ICML 2020),
          phi(x) = elu(x) + 1. Bidirectional: one [H, H] summary per head.
          Causal: exact within chunks of c positions, prefix sums of the
          chunks' k v^T summaries across them: O(T c + T H^2 / c) memory.

`Encoder` stacks transformer blocks, pre-LN by default or SASRec's own
layout (`Block`'s docstring); parameters name their axes ('embed', 'mlp')
for the config's sharding rules.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ('full', 'local', 'linear')


def _softmax_attention(q, k, v, m, drop):
  """Softmax attention with `drop` applied to the attention weights
  (torch's nn.MultiheadAttention dropout, which SASRec's code uses);
  q [B, S, N, H], k and v [B, T, N, H], m bool [B, 1, S, T]."""
  s = jnp.einsum('bsnh,btnh->bnst', q, k) / math.sqrt(q.shape[-1])
  p = jax.nn.softmax(jnp.where(m, s, -1e30), axis=-1)
  return jnp.einsum('bnst,btnh->bsnh', drop(p), v)


def _full(q, k, v, mask, causal, block=64, drop=None):
  """Exact softmax attention. Causal attention over more than two blocks
  of `block` queries skips the key blocks above the diagonal: query block
  i attends to keys [0, end of block i), which at T = 200 computes 65% of
  the T x T scores (and their gradients) that one masked call would.
  `drop`, if given, is applied to the attention weights (jax.nn's
  dot_product_attention has no dropout, so that path computes them)."""
  t = q.shape[1]
  if drop is None:
    attn = lambda q, k, v, m: jax.nn.dot_product_attention(
        q, k, v, mask=m, implementation='xla')
  else:
    attn = lambda q, k, v, m: _softmax_attention(q, k, v, m, drop)
  if not causal or t <= 2 * block:
    m = mask[:, None, None, :]                      # [B, 1, 1, T] keys
    if causal:
      m = m & jnp.tril(jnp.ones((t, t), bool))[None, None]
    return attn(q, k, v, m)
  outs = []
  for start in range(0, t, block):
    end = min(t, start + block)
    allowed = (jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None])
    m = mask[:, None, None, :end] & allowed[None, None]   # [B, 1, w, end]
    outs.append(attn(q[:, start:end], k[:, :end], v[:, :end], m))
  return jnp.concatenate(outs, axis=1)


def _blocks(x, w, nb):
  """[B, T, ...] -> [B, nb, w, ...], zero-padded at the end."""
  pad = nb * w - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x.reshape(x.shape[0], nb, w, *x.shape[2:])


def _local(q, k, v, mask, causal, window):
  b, t, n, h = q.shape
  w = max(1, min(window, t))
  nb = math.ceil(t / w)
  qb, kb, vb, mb = (_blocks(x, w, nb) for x in (q, k, v, mask))
  shift = lambda x, s: jnp.roll(x, s, axis=1).at[:, 0 if s > 0 else -1].set(
      jnp.zeros_like(x[:, 0]))
  # Keys of query block i: blocks i-1, i (and i+1 when bidirectional); the
  # roll's wrapped block is zeroed and its mask is False.
  parts = [-1, 0] if causal else [-1, 0, 1]
  kk = jnp.concatenate([shift(kb, -s) if s else kb for s in parts], axis=2)
  vv = jnp.concatenate([shift(vb, -s) if s else vb for s in parts], axis=2)
  mk = jnp.concatenate([shift(mb, -s) if s else mb for s in parts], axis=2)
  qpos = jnp.arange(w)[:, None]
  kpos = jnp.arange(len(parts) * w)[None, :] - w   # relative to block start
  rel = qpos - kpos
  band = (rel >= 0) & (rel < w) if causal else jnp.abs(rel) < w
  allowed = band[None, None] & mk[:, :, None, :]    # [B, nb, w, K]
  out = jax.nn.dot_product_attention(
      qb.reshape(b * nb, w, n, h), kk.reshape(b * nb, -1, n, h),
      vv.reshape(b * nb, -1, n, h),
      mask=allowed.reshape(b * nb, 1, w, -1), implementation='xla')
  return out.reshape(b, nb * w, n, h)[:, :t]


def _linear(q, k, v, mask, causal, chunk, eps=1e-6):
  phi = lambda x: jax.nn.elu(x) + 1.0
  qf = phi(q)
  kf = phi(k) * mask[:, :, None, None]
  if not causal:
    kv = jnp.einsum('btnh,btnm->bnhm', kf, v)
    num = jnp.einsum('btnh,bnhm->btnm', qf, kv)
    den = jnp.einsum('btnh,bnh->btn', qf, kf.sum(1))
    return num / (den[..., None] + eps)
  b, t, n, h = q.shape
  c = max(1, min(chunk, t))
  nc = math.ceil(t / c)
  qc, kc, vc = (_blocks(x, c, nc) for x in (qf, kf, v))   # [B, nc, c, N, H]
  tril = jnp.tril(jnp.ones((c, c), bool))
  a = jnp.einsum('bipnh,bisnh->binps', qc, kc) * tril     # within chunks
  num = jnp.einsum('binps,bisnm->bipnm', a, vc)
  den = a.sum(-1).transpose(0, 1, 3, 2)                   # [B, nc, c, N]
  # Exclusive prefix sums of per-chunk k v^T and k: what earlier chunks add.
  kv = jnp.einsum('bisnh,bisnm->binhm', kc, vc)
  kv = jnp.cumsum(kv, axis=1) - kv
  ks = kc.sum(2)
  ks = jnp.cumsum(ks, axis=1) - ks
  num = num + jnp.einsum('bipnh,binhm->bipnm', qc, kv)
  den = den + jnp.einsum('bipnh,binh->bipn', qc, ks)
  out = num / (den[..., None] + eps)
  return out.reshape(b, nc * c, n, h)[:, :t]


def attend(q, k, v, mask, *, kind: str = 'full', causal: bool = True,
           window: int = 64, chunk: int = 64, drop=None) -> jax.Array:
  """Attention of q over (k, v), one function for every kernel.

  Args:
    q, k, v: [B, T, N, H].
    mask: bool [B, T], True for real (non-padding) keys.
    kind: 'full' | 'local' | 'linear'.
    causal: position i sees only j <= i.
    window: the local kernel's window w.
    chunk: the causal linear kernel's chunk c.
    drop: None, or a function applied to the attention weights
      [B, N, T, T] (dropout on them; the 'full' kernel only).

  Returns:
    [B, T, N, H]. Rows of queries with no allowed key are finite garbage;
    callers mask them.
  """
  if kind == 'full':
    return _full(q, k, v, mask, causal, drop=drop)
  if drop is not None:
    raise ValueError(f"model.attention_dropout='weights' needs "
                     f"model.attention='full', not {kind!r}")
  if kind == 'local':
    return _local(q, k, v, mask, causal, window)
  if kind == 'linear':
    return _linear(q, k, v, mask, causal, chunk)
  raise ValueError(f'model.attention={kind!r} is not one of {list(KINDS)}')


class Dropout(nn.Module):
  """Inverted dropout with masks from a cheap integer hash.

  Threefry bits cost about a fifth of a SASRec step on CPU (7 masks of
  B x T x D per step); a murmur-style finaliser of (element index, one
  threefry seed per call) is a handful of fused integer ops, and like
  threefry it depends only on the global index, so masks do not change
  with the sharding.
  """
  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate <= 0.0:
      return x
    seed = jax.random.bits(self.make_rng('dropout'), (), jnp.uint32)
    h = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    h = h * jnp.uint32(0x9E3779B9) + seed
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):
      h = (h ^ (h >> shift)) * jnp.uint32(mult)
    h = h ^ (h >> 16)
    keep = h >= jnp.uint32(min(int(self.rate * 2.0**32), 2**32 - 1))
    return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


def _dense(features, axes, name):
  return nn.Dense(features, name=name, kernel_init=nn.with_logical_partitioning(
      nn.initializers.xavier_uniform(), axes), bias_init=(
          nn.with_logical_partitioning(nn.initializers.zeros, axes[1:])))


LAYOUTS = ('pre_ln', 'sasrec', 'post_ln')
ATTENTION_DROPOUT = ('output', 'weights')


class Block(nn.Module):
  """One transformer block; `layout` says where the norms sit.

  pre_ln  x + Attn(LN x), then x + FFN(LN x) with GELU (BERT4Rec's and most
          current encoders' layout).
  sasrec  Kang & McAuley's TensorFlow code: queries come from LN x, keys
          and values from x itself, and the residual runs from the
          normalised input: y = LN x; x = y + Attn(q=y, kv=x); then
          y = LN x; x = y + FFN(y) with ReLU.
  post_ln the original transformer's, and pmixer/SASRec.pytorch's default
          (norm_first=False): x = LN(x + Attn(x)); x = LN(x + FFN(x)) with
          ReLU.

  `attention_dropout` says what dropout hits in the attention sublayer:
  its 'output' (before the residual sum) or its 'weights' (the softmax
  probabilities, as torch's nn.MultiheadAttention does in SASRec's code;
  the 'full' kernel only).
  """
  num_heads: int
  ff_dim: int
  dropout: float
  kind: str
  causal: bool
  window: int
  chunk: int
  layout: str = 'pre_ln'
  attention_dropout: str = 'output'

  @nn.compact
  def __call__(self, x, mask, train: bool):
    b, t, d = x.shape
    n = self.num_heads
    sasrec, post = self.layout == 'sasrec', self.layout == 'post_ln'
    drop = Dropout(self.dropout, deterministic=not train)
    on_weights = self.attention_dropout == 'weights'
    ln_attn = nn.LayerNorm(name='ln_attn')
    y = x if post else ln_attn(x)
    kv_in = x if sasrec else y
    # Three projections rather than one fused [D, 3D]: slicing the fused
    # output costs XLA:CPU strided copies forward and backward.
    q, k, v = (_dense(d, ('embed', 'mlp'), name)(inp).reshape(b, t, n, d // n)
               for name, inp in (('query', y), ('key', kv_in),
                                 ('value', kv_in)))
    weights_drop = None
    if on_weights and train and self.dropout > 0:
      weights_drop = Dropout(self.dropout, deterministic=False)
    a = attend(q, k, v, mask, kind=self.kind, causal=self.causal,
               window=self.window, chunk=self.chunk, drop=weights_drop)
    a = _dense(d, ('mlp', 'embed'), 'out')(a.reshape(b, t, d))
    a = a if on_weights else drop(a)
    ln_ffn = nn.LayerNorm(name='ln_ffn')
    if post:
      x = ln_attn(x + a)
      y = x
    else:
      x = (y if sasrec else x) + a
      y = ln_ffn(x)
    act = nn.gelu if self.layout == 'pre_ln' else nn.relu
    h = act(_dense(self.ff_dim, ('embed', 'mlp'), 'ffn_in')(y))
    h = drop(_dense(d, ('mlp', 'embed'), 'ffn_out')(drop(h)))
    x = ln_ffn(x + h) if post else (y if sasrec else x) + h
    # Padding rows stay zero (SASRec's timeline mask).
    return x * mask[..., None]


class Encoder(nn.Module):
  """Dropout on the input, `num_blocks` Blocks, a final LayerNorm.

  Attributes: see Block; kind is the attention kernel (KINDS), layout where
  the norms sit (LAYOUTS), attention_dropout what the attention sublayer's
  dropout hits (ATTENTION_DROPOUT).
  """
  num_blocks: int = 2
  num_heads: int = 1
  ff_dim: int = 64
  dropout: float = 0.2
  kind: str = 'full'
  causal: bool = True
  window: int = 64
  chunk: int = 64
  layout: str = 'pre_ln'
  attention_dropout: str = 'output'

  @nn.compact
  def __call__(self, x, mask, train: bool = False):
    """x: [B, T, D] input embeddings; mask: bool [B, T] -> [B, T, D]."""
    if self.kind not in KINDS:
      raise ValueError(f'model.attention={self.kind!r} is not one of '
                       f'{list(KINDS)}')
    if self.layout not in LAYOUTS:
      raise ValueError(f'model.layout={self.layout!r} is not one of '
                       f'{list(LAYOUTS)}')
    if self.attention_dropout not in ATTENTION_DROPOUT:
      raise ValueError(f'model.attention_dropout={self.attention_dropout!r} '
                       f'is not one of {list(ATTENTION_DROPOUT)}')
    if self.attention_dropout == 'weights' and self.kind != 'full':
      raise ValueError("model.attention_dropout='weights' needs "
                       f"model.attention='full', not {self.kind!r}")
    x = Dropout(self.dropout, deterministic=not train)(x)
    x = x * mask[..., None]
    for i in range(self.num_blocks):
      x = Block(self.num_heads, self.ff_dim, self.dropout, self.kind,
                self.causal, self.window, self.chunk, self.layout,
                self.attention_dropout, name=f'block{i}')(x, mask, train)
    return nn.LayerNorm(name='ln_out')(x)
