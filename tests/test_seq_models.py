"""Sequence models: attention kernels, SASRec / BERT4Rec / session encoder
properties, the losses, and evaluation against plain numpy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recjax.data.sequences import EvalSet, Sequences
from recjax.models import attention
from recjax.models.bert4rec import BERT4Rec
from recjax.models.sasrec import SASRec
from recjax.models.session import SessionEncoder
from recjax.train import seq_losses
from recjax.train.seq_eval import SeqEvaluator, sample_negatives

B, T, N, H = 2, 13, 2, 4


def _qkv_mask():
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(size=(B, T, N, H)).astype(np.float32)
             for _ in range(3))
  mask = np.ones((B, T), bool)
  mask[0, :4] = False                       # left padding
  return q, k, v, mask


def _softmax_ref(q, k, v, allowed):
  s = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(H)
  s = np.where(allowed[:, None], s, -1e30)
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum('bnts,bsnh->btnh', p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('kind,size', [('full', 0), ('local', 3), ('local', 5),
                                       ('local', 40)])
def test_softmax_kernels_match_reference(kind, size, causal):
  q, k, v, mask = _qkv_mask()
  i, j = np.arange(T)[:, None], np.arange(T)[None]
  band = np.ones((T, T), bool) if kind == 'full' else (
      (i - j >= 0) & (i - j < size) if causal else np.abs(i - j) < size)
  if causal:
    band &= i >= j
  allowed = band[None] & mask[:, None, :]
  got = np.asarray(jax.jit(functools.partial(
      attention.attend, kind=kind, causal=causal, window=size))(q, k, v, mask))
  live = allowed.any(-1)                    # queries with a key to attend
  np.testing.assert_allclose(got[live], _softmax_ref(q, k, v, allowed)[live],
                             atol=1e-5)


@pytest.mark.parametrize('block', [2, 4, 5])
def test_blocked_causal_full_attention_is_exact(block):
  """The causal full kernel's block-skipping path (used above 2 blocks)
  gives the masked single call's outputs and gradients."""
  q, k, v, mask = _qkv_mask()
  # jit: eagerly, every small op of the blocked path compiles on its own.
  blocked = jax.jit(functools.partial(attention._full, causal=True,
                                      block=block))
  single = jax.jit(functools.partial(attention._full, causal=True, block=T))
  live = mask.copy()                        # queries with a key to attend
  np.testing.assert_allclose(np.asarray(blocked(q, k, v, mask))[live],
                             np.asarray(single(q, k, v, mask))[live],
                             atol=1e-5)
  loss = lambda f: lambda q, k, v: jnp.sum(
      jnp.where(live[..., None, None], f(q, k, v, mask), 0.0) ** 2)
  g_blocked = jax.grad(loss(blocked), argnums=(0, 1, 2))(q, k, v)
  g_single = jax.grad(loss(single), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_blocked, g_single):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.parametrize('block', [4, T])
def test_dropout_on_attention_weights(block):
  """`drop` acts on the softmax weights: the identity gives plain softmax
  attention (both causal paths), zeroing one key's weight removes exactly
  that key's value from the sum, and other kernels refuse it."""
  q, k, v, mask = _qkv_mask()
  allowed = np.tril(np.ones((T, T), bool))[None] & mask[:, None, :]
  live = mask.copy()
  ref = _softmax_ref(q, k, v, allowed)
  got = attention._full(q, k, v, mask, causal=True, block=block,
                        drop=lambda p: p)
  np.testing.assert_allclose(np.asarray(got)[live], ref[live], atol=1e-5)
  # Drop key 6 (weights kept un-renormalised, as dropout does).
  keep = (np.arange(T) != 6).astype(np.float32)
  got = attention._full(q, k, v, mask, causal=True, block=block,
                        drop=lambda p: p * keep[:p.shape[-1]])
  s = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(H)
  p = np.exp(np.where(allowed[:, None], s, -1e30) - s.max(-1, keepdims=True))
  p = np.where(allowed[:, None], p, 0)
  p = p / np.maximum(p.sum(-1, keepdims=True), 1e-30)
  want = np.einsum('bnts,bsnh->btnh', p * keep, v)
  np.testing.assert_allclose(np.asarray(got)[live], want[live], atol=1e-5)
  with pytest.raises(ValueError, match='attention_dropout'):
    attention.attend(q, k, v, mask, kind='local', drop=lambda p: p)


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('chunk', [1, 4, 13, 64])
def test_linear_kernel_matches_reference(causal, chunk):
  q, k, v, mask = _qkv_mask()
  phi = lambda x: np.where(x > 0, x + 1, np.exp(x))
  a = np.einsum('btnh,bsnh->bnts', phi(q), phi(k) * mask[:, :, None, None])
  if causal:
    a = a * np.tril(np.ones((T, T)))
  ref = np.einsum('bnts,bsnh->btnh', a, v) / (
      a.sum(-1).transpose(0, 2, 1)[..., None] + 1e-6)
  got = jax.jit(functools.partial(attention.attend, kind='linear',
                                  causal=causal, chunk=chunk))(q, k, v, mask)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def _init(model, inputs):
  params = jax.jit(functools.partial(model.init, method='init_all'))(
      jax.random.key(0), inputs)['params']
  return jax.tree.map(lambda x: getattr(x, 'value', x), params,
                      is_leaf=lambda x: hasattr(x, 'value'))


def _items(width=8):
  return jnp.array([[0, 0, 0, 3, 1, 4, 1, 5], [2, 7, 1, 8, 2, 8, 1, 8]],
                   jnp.int32)[:, -width:]


@pytest.mark.parametrize('kind', attention.KINDS)
def test_sasrec_is_causal_and_width_invariant(kind):
  model = SASRec(num_items=9, vocab_size=16, max_len=8, embed_dim=8,
                 num_blocks=1, ff_dim=8, num_heads=2, attention=kind, window=3,
                 chunk=3)
  items = _items()
  params = _init(model, {'item': items})
  apply = jax.jit(model.apply)
  h = apply({'params': params}, {'item': items})
  changed = apply({'params': params}, {'item': items.at[:, -1].set(6)})
  np.testing.assert_allclose(h[:, :-1], changed[:, :-1], atol=1e-6)
  assert not np.allclose(h[:, -1], changed[:, -1])
  # A narrower batch of the same (shorter) history computes the same thing.
  narrow = apply({'params': params}, {'item': items[:1, -5:]})
  np.testing.assert_allclose(narrow[0], h[0, -5:], atol=1e-5)


def test_positions_from_start_count_real_events():
  model = SASRec(num_items=9, vocab_size=16, max_len=8, embed_dim=8,
                 num_blocks=1, ff_dim=8, positions='from_start')
  items = _items()
  params = _init(model, {'item': items})
  pos = model.apply({'params': params}, items > 0,
                    method=SASRec.position_vectors)
  table = np.asarray(params['pos_embedding'])
  # Row 0 has 3 padding columns: its first event (column 3) is position 0.
  np.testing.assert_allclose(pos[0, 3:], table[:5])
  np.testing.assert_allclose(pos[1], table[:8])
  apply = jax.jit(model.apply)
  h = apply({'params': params}, {'item': items})
  narrow = apply({'params': params}, {'item': items[:1, -5:]})
  np.testing.assert_allclose(narrow[0], h[0, -5:], atol=1e-5)
  # Counting from the end gives the same row 1 (full) but not row 0.
  end = SASRec(num_items=9, vocab_size=16, max_len=8, embed_dim=8,
               num_blocks=1, ff_dim=8)
  h_end = jax.jit(end.apply)({'params': params}, {'item': items})
  np.testing.assert_allclose(h_end[1], h[1], atol=1e-5)
  assert not np.allclose(h_end[0, 3:], h[0, 3:])
  with pytest.raises(ValueError, match='model.positions'):
    SASRec(num_items=9, vocab_size=16, max_len=8, positions='middle').init(
        jax.random.key(0), {'item': items})


def _ln(x, eps=1e-6):
  """Flax LayerNorm at its initial scale 1, bias 0."""
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _one_block_reference(model, items, d):
  """A one-block, one-head model's parameters, its output h [B, T, D], and
  numpy pieces to recompute it: dense(x, layer name), the mask, the
  embedded input x [B, T, D] and causal attention attn(q, k, v)."""
  params = _init(model, {'item': items})
  h = np.asarray(jax.jit(model.apply)({'params': params}, {'item': items}))
  p = jax.tree.map(np.asarray, params)
  blk = p['encoder']['block0']
  dense = lambda x, name: x @ blk[name]['kernel'] + blk[name]['bias']
  mask = np.asarray(items > 0)
  x = (p['item_embedding'][np.asarray(items)] * np.sqrt(d)
       + p['pos_embedding'][None]) * mask[..., None]
  t = items.shape[1]
  allowed = np.tril(np.ones((t, t), bool))[None] & mask[:, None, :]

  def attn(q, k, v):
    s = np.where(allowed, np.einsum('btd,bsd->bts', q, k) / np.sqrt(d),
                 -1e30)
    a = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum('bts,bsd->btd', a / a.sum(-1, keepdims=True), v)
  return params, h, dense, mask, x, attn


def test_sasrec_layout_matches_the_papers_block():
  """layout='sasrec': q from LN x, k/v from x, residual from LN x, ReLU."""
  d = 8
  model = SASRec(num_items=9, vocab_size=16, max_len=8, embed_dim=d,
                 num_blocks=1, ff_dim=8, dropout=0.0, layout='sasrec')
  items = _items()
  params, h, dense, mask, x, attn = _one_block_reference(model, items, d)
  y = _ln(x)
  x = y + dense(attn(dense(y, 'query'), dense(x, 'key'), dense(x, 'value')),
                'out')
  y = _ln(x)
  x = y + dense(np.maximum(dense(y, 'ffn_in'), 0), 'ffn_out')
  x = x * mask[..., None]
  want = _ln(x)
  np.testing.assert_allclose(h[mask], want[mask], atol=1e-4)
  # The same parameters under the pre-LN layout compute something else.
  pre = SASRec(num_items=9, vocab_size=16, max_len=8, embed_dim=d,
               num_blocks=1, ff_dim=8, dropout=0.0)
  assert not np.allclose(pre.apply({'params': params}, {'item': items})[mask],
                         want[mask], atol=1e-2)
  with pytest.raises(ValueError, match='model.layout'):
    SASRec(num_items=9, vocab_size=16, max_len=8, layout='post').init(
        jax.random.key(0), {'item': items})


def test_post_ln_layout_matches_the_transformer_block():
  """layout='post_ln' (pmixer's default): x = LN(x + Attn(x)), then
  x = LN(x + FFN(x)) with ReLU; dropout on attention weights is active in
  training only, and the position table takes its own init std."""
  d = 8
  model = SASRec(num_items=9, vocab_size=16, max_len=8, embed_dim=d,
                 num_blocks=1, ff_dim=8, dropout=0.0, layout='post_ln',
                 pos_init_std=0.5)
  items = _items()
  params, h, dense, mask, x, attn = _one_block_reference(model, items, d)
  assert 0.3 < np.std(params['pos_embedding']) < 0.8
  assert np.std(params['item_embedding']) < 0.05
  x = _ln(x + dense(attn(dense(x, 'query'), dense(x, 'key'),
                         dense(x, 'value')), 'out'))
  x = _ln(x + dense(np.maximum(dense(x, 'ffn_in'), 0), 'ffn_out'))
  want = _ln(x * mask[..., None])
  np.testing.assert_allclose(h[mask], want[mask], atol=1e-4)

  drop = SASRec(num_items=9, vocab_size=16, max_len=8, embed_dim=d,
                num_blocks=1, ff_dim=8, dropout=0.5, layout='post_ln',
                attention_dropout='weights')
  run = lambda seed, train: np.asarray(drop.apply(
      {'params': params}, {'item': items}, train=train,
      rngs={'dropout': jax.random.key(seed)}))
  np.testing.assert_allclose(run(0, False), h, atol=1e-5)
  assert not np.allclose(run(0, True)[mask], run(1, True)[mask], atol=1e-3)
  with pytest.raises(ValueError, match='attention_dropout'):
    SASRec(num_items=9, vocab_size=16, max_len=8, attention='linear',
           attention_dropout='weights').init(jax.random.key(0),
                                             {'item': items})
  with pytest.raises(ValueError, match='attention_dropout'):
    SASRec(num_items=9, vocab_size=16, max_len=8,
           attention_dropout='keys').init(jax.random.key(0), {'item': items})


def test_bert4rec_is_bidirectional_with_bias_dimension():
  model = BERT4Rec(num_items=9, vocab_size=16, max_len=8, embed_dim=8,
                   num_blocks=1, ff_dim=8)
  items = _items()
  params = _init(model, {'item': items})
  apply = jax.jit(model.apply)
  h = apply({'params': params}, {'item': items})
  changed = apply({'params': params}, {'item': items.at[:, -1].set(6)})
  assert not np.allclose(h[1, 0], changed[1, 0])   # the past sees the future
  q = model.apply({'params': params}, h[:, -1], method='query')
  keys = model.apply({'params': params}, method='all_keys')
  assert q.shape == (2, 9) and keys.shape == (9, 9)
  np.testing.assert_allclose(q[:, -1], 1.0)
  assert model.bind({'params': params}).mask_id == 10


def test_session_encoder_uses_catalog_and_context():
  side = dict(seller=np.array([0, 1, 1, 2, 2, 1, 3, 3, 1, 2], np.int32),
              category=np.array([0, 1, 2, 1, 2, 1, 2, 1, 2, 1], np.int32),
              price=np.array([0, 1, 2, 3, 1, 2, 3, 1, 2, 3], np.int32))
  model = SessionEncoder(num_items=9, vocab_size=16, max_len=8, embed_dim=8,
                         num_blocks=1, ff_dim=8, item_side=side,
                         num_locations=3)
  items = _items()
  inputs = {f: jnp.zeros_like(items) for f in
            ('event', 'gap', 'device', 'hour', 'location')}
  inputs['item'] = items
  params = _init(model, inputs)
  apply = jax.jit(model.apply)
  h = apply({'params': params}, inputs)
  other = apply({'params': params}, dict(inputs, event=inputs[
      'event'].at[:, 3].set(3)))
  assert not np.allclose(h[:, 3], other[:, 3])
  np.testing.assert_allclose(h[:, :3], other[:, :3], atol=1e-6)
  bound = model.bind({'params': params})
  k = bound.keys(jnp.array([1, 2]))
  expect = (params['item_embedding'][1:3] + params['seller_embedding'][1]
            + params['category_embedding'][1:3]
            + params['price_embedding'][1:3])
  np.testing.assert_allclose(k, expect, atol=1e-6)


# ------------------------------------------------------------------ losses

def test_losses_match_numpy():
  rng = np.random.default_rng(1)
  pos = rng.normal(size=(2, 3)).astype(np.float32)
  neg = rng.normal(size=(2, 3, 5)).astype(np.float32)
  mask = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
  nm = (rng.random((2, 3, 5)) > 0.2).astype(np.float32)
  ls = lambda x: -np.log1p(np.exp(-x))
  mean = lambda per: (per * mask).sum() / mask.sum()
  ref_bce = mean(-ls(pos) - (ls(-neg) * nm).sum(-1))
  np.testing.assert_allclose(seq_losses.bce(pos, neg, mask, nm), ref_bce,
                             rtol=1e-5)
  beta = seq_losses.gbce_beta(5, 101, 0.75)
  alpha = 5 / 100
  assert beta == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))
  np.testing.assert_allclose(
      seq_losses.gbce(pos, neg, mask, 101, 0.75, nm),
      mean(-beta * ls(pos) - (ls(-neg) * nm).sum(-1)), rtol=1e-5)
  np.testing.assert_allclose(seq_losses.gbce(pos, neg, mask, 101, 0.0),
                             seq_losses.bce(pos, neg, mask), rtol=1e-6)
  logits = np.concatenate([pos[..., None], np.where(nm > 0, neg, -np.inf)], -1)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(seq_losses.sampled_softmax(pos, neg, mask, nm),
                             mean(lse - pos), rtol=1e-5)
  full = rng.normal(size=(2, 3, 7)).astype(np.float32)
  tgt = rng.integers(0, 7, (2, 3))
  ref = np.log(np.exp(full).sum(-1)) - np.take_along_axis(
      full, tgt[..., None], -1)[..., 0]
  np.testing.assert_allclose(seq_losses.full_softmax(full, tgt, mask),
                             mean(ref), rtol=1e-5)


# -------------------------------------------------------------- evaluation

def test_sample_negatives_excludes_and_is_distinct():
  rng = np.random.default_rng(0)
  exclude = [np.arange(0, 30), np.array([5]), np.arange(10, 45)]
  neg = sample_negatives(rng, exclude, 15, 50)
  for row, ex in zip(neg, exclude):
    assert len(set(row)) == 15 and not np.isin(row, ex).any()
  p = np.zeros(50)
  p[40:] = 1.0
  neg = sample_negatives(rng, [np.array([41])], 9, 50, p / p.sum())
  assert set(neg[0]) == set(range(40, 50)) - {41}
  with pytest.raises(ValueError, match='sampled_negatives'):
    sample_negatives(rng, [np.arange(45)], 10, 50)


def _eval_reference(queries, keys, seen, targets, cand, ks):
  out = {}
  full = {f'{m}@{k}': [] for k in ks for m in ('recall', 'hr', 'ndcg', 'mrr')}
  samp = {f'hr@{k}': [] for k in ks}
  samp.update({f'ndcg@{k}': [] for k in ks}, mrr=[])
  for q, s, t, c in zip(queries, seen, targets, cand):
    scores = keys @ q
    scores[s] = -np.inf
    order = np.argsort(-scores, kind='stable')
    t = t[t >= 0]
    for k in ks:
      hits = np.isin(order[:k], t).astype(float)
      full[f'recall@{k}'].append(hits.sum() / len(t))
      full[f'hr@{k}'].append(float(hits.any()))
      idcg = (1 / np.log2(np.arange(2, min(len(t), k) + 2))).sum()
      full[f'ndcg@{k}'].append((hits / np.log2(np.arange(2, k + 2))).sum()
                               / idcg)
      full[f'mrr@{k}'].append(1 / (hits.argmax() + 1) if hits.any() else 0)
    cs = keys[c] @ q
    rank = int((cs[1:] > cs[0]).sum())
    for k in ks:
      samp[f'hr@{k}'].append(float(rank < k))
      samp[f'ndcg@{k}'].append(1 / np.log2(rank + 2) if rank < k else 0.0)
    samp['mrr'].append(1 / (rank + 1))
  out.update({k: np.mean(v) for k, v in full.items()})
  out.update({f'uniform30_{k}': np.mean(v) for k, v in samp.items()})
  return out


def test_evaluator_matches_numpy_reference():
  rng = np.random.default_rng(2)
  num_users, num_items, s, d = 40, 60, 25, 6
  users = np.sort(rng.choice(num_users, s, replace=False)).astype(np.int32)
  seen = [rng.choice(num_items, rng.integers(1, 10), replace=False)
          for _ in range(s)]
  targets = np.full((s, 3), -1, np.int32)
  for r in range(s):
    pool = np.setdiff1d(np.arange(num_items), seen[r])
    targets[r, :1 + r % 3] = rng.choice(pool, 1 + r % 3, replace=False)
  zeros = np.zeros((s, 4), np.int32)
  hist = Sequences(users=users, item=zeros, event=zeros, gap=zeros,
                   device=zeros, hour=zeros, location=zeros,
                   length=np.ones(s, np.int32), seen=seen)
  ev = SeqEvaluator(EvalSet('test', hist, targets), num_items, num_users,
                    ks=(5, 10), protocols=('uniform',), num_negatives=30,
                    batch_size=8)
  queries = rng.normal(size=(s, d)).astype(np.float32)
  keys = rng.normal(size=(num_items, d)).astype(np.float32)
  got = ev.evaluate_queries(queries, keys)
  cand = ev.candidates['uniform']
  np.testing.assert_array_equal(cand[:, 0], targets[:, 0])
  for row, sn, t in zip(cand, seen, targets):
    assert not np.isin(row[1:], np.r_[sn, t[t >= 0]]).any()
  ref = _eval_reference(queries, keys, seen, targets, cand, (5, 10))
  for k, v in ref.items():
    assert got[k] == pytest.approx(v, abs=1e-6), k
  # metric_names (checked against eval.select_metric before training) is
  # exactly the set of metrics evaluate_queries returns.
  assert ev.metric_names() == set(got) - {'eval_users'}


# ------------------------------------------------------------ objectives

def test_cloze_masks_a_share_of_real_positions():
  from recjax.train.seq_trainer import cloze_positions
  items = jnp.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 0, 3, 4, 5],
                     [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]], jnp.int32)
  pos, chosen, masked = cloze_positions(jax.random.key(3), items, 0.2)
  assert pos.shape == (3, 2)
  np.testing.assert_array_equal(masked.sum(1), [0, 1, 2])
  assert not (masked & (items == 0)).any()
  np.testing.assert_array_equal(
      jnp.take_along_axis(masked, pos, 1) & chosen, chosen)


def test_position_negatives_avoid_the_users_items():
  """loss.exclude_seen redraws negatives among the user's training items
  (and the position's target); any left there are masked, nothing else."""
  import ml_collections
  from recjax.train import seq_trainer
  cfg = ml_collections.ConfigDict(dict(loss=dict(
      name='bce', num_negatives=3, negatives='position', exclude_seen=True)))
  num_items, b, t = 20, 3, 50
  seen = np.zeros((b, num_items + 1), bool)
  seen[0, 1:3] = True                       # user 0 saw 2 items
  seen[1, 1:20] = True                      # user 1 saw all but item 20
  seen[2, 1:] = True                        # user 2 saw everything
  target = jnp.asarray(np.random.default_rng(0).integers(1, 21, (b, t)))
  pool = jnp.arange(1, num_items + 1)
  neg, ok = seq_trainer._negatives(jax.random.key(0), cfg, target, pool,
                                   jnp.asarray(seen))
  neg, ok = np.asarray(neg), np.asarray(ok)
  bad = np.take_along_axis(seen, neg.reshape(b, -1), 1).reshape(neg.shape)
  bad |= neg == np.asarray(target)[..., None]
  np.testing.assert_array_equal(ok, ~bad)
  assert ok[0].mean() > 0.95 and ok[2].sum() == 0
  assert 0 < ok[1].mean() < 0.5 and (neg[1][ok[1] > 0] == 20).all()
  # Without it only the target is masked.
  plain, plain_ok = seq_trainer._negatives(jax.random.key(0), cfg, target,
                                           pool)
  want = np.asarray(plain) != np.asarray(target)[..., None]
  np.testing.assert_array_equal(np.asarray(plain_ok), want)
  assert seq_trainer.check_exclude_seen(cfg, num_items)
  cfg.loss.negatives = 'row'
  with pytest.raises(ValueError, match='exclude_seen.*position'):
    seq_trainer.check_exclude_seen(cfg, num_items)


def test_bert4rec_queries_append_a_mask_token():
  from recjax.train.seq_trainer import _queries
  model = BERT4Rec(num_items=9, vocab_size=16, max_len=8, embed_dim=8,
                   num_blocks=1, ff_dim=8)
  items = _items()
  params = _init(model, {'item': items})
  q = model.apply({'params': params}, {'item': items}, 'cloze',
                  method=_queries)
  shifted = jnp.concatenate([items[:, 1:], jnp.full((2, 1), 10)], 1)
  h = model.apply({'params': params}, {'item': shifted})
  ref = model.apply({'params': params}, h[:, -1], method='query')
  np.testing.assert_allclose(q, ref, atol=1e-6)
