"""Step time and peak memory of a SASRec training step per attention kernel
and history length (full, local window, linear).

  python tools/bench_attention.py [--lengths=50,200,500,1000] [--batch_size=16]

Memory is XLA's own account of the compiled step (temporaries + arguments +
outputs, `Compiled.memory_analysis()`), which is exact and per kernel, unlike
the process RSS. Prints a table, then one JSON line: per kernel and length
step_s and peak_mb, and each kernel's memory growth from the shortest to the
longest history (linear kernels grow ~linearly, full attention ~quadratically).
"""

import json
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

_LENGTHS = flags.DEFINE_list('lengths', ['50', '200', '500', '1000'],
                             'History lengths T.')
_KINDS = flags.DEFINE_list('kinds', ['full', 'local', 'linear'], 'Kernels.')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Sequences per step.')
_DIM = flags.DEFINE_integer('embed_dim', 50, 'Hidden size D.')
_WINDOW = flags.DEFINE_integer('window', 64, 'Local window / linear chunk.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps (after one warm-up).')
_ITEMS = 3416   # ml-1m's catalogue


def _step_fn(kind: str, length: int):
  from recjax import models
  from recjax.train import seq_trainer
  cfg = ml_collections.ConfigDict(dict(
      model=dict(embed_dim=_DIM.value, num_blocks=2, num_heads=1,
                 ff_dim=_DIM.value, dropout=0.2, attention=kind,
                 window=_WINDOW.value, chunk=_WINDOW.value, init_std=0.02),
      loss=dict(name='bce', num_negatives=1, negatives='position',
                gbce_t=0.0)))
  sizes = dict(num_items=_ITEMS, vocab_size=_ITEMS + 64, max_len=length)
  model = models.get('sasrec')(cfg.model, sizes)
  tx = optax.adam(1e-3)
  pool = jnp.arange(1, _ITEMS + 1, dtype=jnp.int32)

  def step(params, opt_state, batch, rng):
    def loss_fn(p):
      d, o = jax.random.split(rng)
      return model.apply({'params': p}, batch, o, cfg, pool,
                         method=seq_trainer._next_item, rngs={'dropout': d})
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  dummy = {'item': jnp.ones((1, 2), jnp.int32)}
  params = model.init(jax.random.key(0), dummy, method='init_all')['params']
  params = jax.tree.map(lambda x: getattr(x, 'value', x), params,
                        is_leaf=lambda x: hasattr(x, 'value'))
  return jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params)


def measure(kind: str, length: int) -> dict:
  step, params, opt_state = _step_fn(kind, length)
  rng = np.random.default_rng(0)
  batch = {'item': rng.integers(1, _ITEMS + 1, (_BATCH.value, length + 1),
                                dtype=np.int32)}
  compiled = step.lower(params, opt_state, batch, jax.random.key(0)).compile()
  mem = compiled.memory_analysis()
  peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
          + mem.output_size_in_bytes - mem.alias_size_in_bytes)
  params, opt_state, loss = compiled(params, opt_state, batch,
                                     jax.random.key(1))
  loss.block_until_ready()
  times = []
  for i in range(_STEPS.value):
    t = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, batch,
                                       jax.random.key(i + 2))
    loss.block_until_ready()
    times.append(time.perf_counter() - t)
  return dict(step_s=round(float(np.median(times)), 4),
              peak_mb=round(peak / 2**20, 1),
              temp_mb=round(mem.temp_size_in_bytes / 2**20, 1),
              loss=round(float(loss), 4))


def main(argv):
  del argv
  lengths = [int(x) for x in _LENGTHS.value]
  out = {}
  print(f'{"kernel":8s} {"T":>6s} {"step_s":>9s} {"peak_mb":>9s}')
  for kind in _KINDS.value:
    out[kind] = {}
    for t in lengths:
      r = measure(kind, t)
      out[kind][str(t)] = r
      print(f'{kind:8s} {t:6d} {r["step_s"]:9.4f} {r["peak_mb"]:9.1f}',
            flush=True)
  lo, hi = str(lengths[0]), str(lengths[-1])
  growth = {k: round(v[hi]['temp_mb'] / max(v[lo]['temp_mb'], 1e-9), 2)
            for k, v in out.items()}
  print(json.dumps(dict(batch_size=_BATCH.value, embed_dim=_DIM.value,
                        window=_WINDOW.value, devices=jax.device_count(),
                        results=out, memory_growth=growth,
                        length_growth=round(lengths[-1] / lengths[0], 2))),
        flush=True)


if __name__ == '__main__':
  app.run(main)
