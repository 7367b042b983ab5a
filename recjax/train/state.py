"""Train state, optimiser and the sharded initialisation of both."""

from __future__ import annotations

import math
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


def learning_rate(cfg: Any, progress: float) -> float:
  """The schedule of `config.optimizer` at `progress` in [0, 1].

  The schedule is a function of progress rather than of the step so that a
  run with a time budget (train.budget_minutes) can decay over the time it
  actually has: the trainer passes max(step / total, elapsed / budget).
  Fields: learning_rate, schedule ('constant' | 'cosine' | 'linear'),
  warmup_steps is handled by the caller through `warmup`.
  """
  lr, p = cfg.learning_rate, min(max(progress, 0.0), 1.0)
  shapes = {'constant': lambda: lr,
            'cosine': lambda: lr * 0.5 * (1.0 + math.cos(math.pi * p)),
            'linear': lambda: lr * (1.0 - p)}
  if cfg.schedule not in shapes:
    raise ValueError(f'optimizer.schedule={cfg.schedule!r} is not one of '
                     f'{sorted(shapes)}')
  return shapes[cfg.schedule]()


def scheduled_lr(cfg: Any, step: int, total: int, elapsed_s: float = 0.0,
                 budget_s: float = 0.0) -> float:
  """Learning rate for `step`: linear warmup, then `learning_rate(progress)`."""
  warm = int(cfg.get('warmup_steps', 0))
  if step < warm:
    return cfg.learning_rate * (step + 1) / warm
  progress = (step - warm) / max(total - warm, 1)
  if budget_s:
    progress = max(progress, elapsed_s / budget_s)
  return learning_rate(cfg, progress)


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
  """Optax optimiser from `config.optimizer` with an injectable learning rate.

  Fields: name ('adam' | 'adamw' | 'sgd'), weight_decay, grad_clip_norm
  (0 = off), b2 (Adam's second-moment decay, default 0.999; SASRec's code
  uses 0.98). The learning rate lives in the optimiser state
  (`optax.inject_hyperparams`) and the step sets it from `scheduled_lr`.
  """
  b2 = cfg.get('b2', 0.999)
  if not 0.0 <= b2 < 1.0:
    raise ValueError(f'optimizer.b2={b2!r} must be in [0, 1)')
  makers = {
      'adam': lambda lr: optax.adam(lr, b2=b2),
      'adamw': lambda lr: optax.adamw(lr, b2=b2,
                                      weight_decay=cfg.weight_decay),
      'sgd': lambda lr: optax.sgd(lr),
  }
  if cfg.name not in makers:
    raise ValueError(f'optimizer.name={cfg.name!r} is not one of '
                     f'{sorted(makers)}')
  learning_rate(cfg, 0.0)   # Validates the schedule name early.

  def build(learning_rate):
    chain = [makers[cfg.name](learning_rate)]
    if cfg.get('grad_clip_norm', 0):
      chain.insert(0, optax.clip_by_global_norm(cfg.grad_clip_norm))
    return optax.chain(*chain)

  return optax.inject_hyperparams(build)(learning_rate=cfg.learning_rate)


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
