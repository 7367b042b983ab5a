"""Train state, optimiser and the sharded initialisation of both."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(cfg: Any, total_steps: int) -> optax.GradientTransformation:
  """Optax optimiser and schedule from `config.optimizer`.

  Fields: name ('adam' | 'adamw' | 'sgd'), learning_rate, schedule
  ('constant' | 'cosine' | 'linear'), warmup_steps, weight_decay,
  grad_clip_norm (0 = off).
  """
  lr = cfg.learning_rate
  warm = int(cfg.get('warmup_steps', 0))
  decay_steps = max(total_steps - warm, 1)
  schedules = {
      'constant': lambda: optax.constant_schedule(lr),
      'cosine': lambda: optax.cosine_decay_schedule(lr, decay_steps, 0.0),
      'linear': lambda: optax.linear_schedule(lr, 0.0, decay_steps),
  }
  if cfg.schedule not in schedules:
    raise ValueError(f'optimizer.schedule={cfg.schedule!r} is not one of '
                     f'{sorted(schedules)}')
  sched = schedules[cfg.schedule]()
  if warm:
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), sched], [warm])
  makers = {
      'adam': lambda: optax.adam(sched),
      'adamw': lambda: optax.adamw(sched, weight_decay=cfg.weight_decay),
      'sgd': lambda: optax.sgd(sched),
  }
  if cfg.name not in makers:
    raise ValueError(f'optimizer.name={cfg.name!r} is not one of '
                     f'{sorted(makers)}')
  chain = [makers[cfg.name]()]
  if cfg.get('grad_clip_norm', 0):
    chain.insert(0, optax.clip_by_global_norm(cfg.grad_clip_norm))
  return optax.chain(*chain)


def create_sharded(init_fn: Callable[[jax.Array], TrainState], rng: jax.Array,
                   mesh, rules) -> tuple[TrainState, Any, Any]:
  """Initialises the state directly into its sharded layout.

  The abstract state (jax.eval_shape) carries the models' logical axis names;
  the rules turn them into NamedShardings, and the jitted init writes each
  shard on its own device, so no full copy of a table lands on one device.

  Returns:
    (state, abstract unboxed state, shardings).
  """
  boxed = jax.eval_shape(init_fn, rng)
  logical = nn.get_partition_spec(boxed)
  shardings = nn.logical_to_mesh_sharding(logical, mesh, tuple(rules))
  unboxed_init = lambda r: nn.meta.unbox(init_fn(r))
  abstract = jax.eval_shape(unboxed_init, rng)
  state = jax.jit(unboxed_init, out_shardings=shardings)(rng)
  return state, abstract, shardings
