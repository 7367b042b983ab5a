"""Orbax checkpointing of the train state (async, keep N, resume latest).

Orbax writes each step to a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous checkpoint as the latest.
Restores go into an abstract target that carries the shardings, so arrays
come back already sharded over the current mesh.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints` (created if missing)."""
  path = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(path, options=options)


def require_fresh(workdir: str, error: type[Exception] = ValueError) -> None:
  """Raises `error` (a command line passes absl's app.UsageError) if
  `workdir/checkpoints` holds a step. Training resumes from one, which a
  benchmark must not: its figures would come from an earlier run (with,
  maybe, another config)."""
  path = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(n) for n in os.listdir(path)
                 if n.isdigit()) if os.path.isdir(path) else []
  if steps:
    raise error(f'{path} holds checkpoints of an earlier run (latest '
                f'step {steps[-1]}) that training would resume from; '
                'pass a new --workdir or remove that one')


def save(mgr: ocp.CheckpointManager, step: int, state: Any,
         force: bool = False) -> None:
  mgr.save(step, args=ocp.args.StandardSave(state), force=force)


def restore_latest(mgr: ocp.CheckpointManager, abstract_state: Any,
                   shardings: Any) -> tuple[Optional[int], Any]:
  """Restores the newest complete checkpoint, or returns (None, None).

  Args:
    abstract_state: tree of ShapeDtypeStruct for the state.
    shardings: matching tree of NamedSharding.
  """
  step = mgr.latest_step()
  if step is None:
    return None, None
  target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state, shardings)
  state = mgr.restore(step, args=ocp.args.StandardRestore(target))
  return step, state


def init_or_restore(init_fn, rng, mesh, rules, workdir: str, keep: int
                    ) -> tuple[Any, Any, ocp.CheckpointManager,
                               Optional[int]]:
  """The sharded train state, from the latest checkpoint in `workdir` if any.

  Returns:
    (state, shardings, manager, restored step or None).
  """
  from recjax.train.state import create_sharded
  state, abstract, shardings = create_sharded(init_fn, rng, mesh, rules)
  mgr = manager(workdir, keep=keep)
  step, restored = restore_latest(mgr, abstract, shardings)
  if restored is not None:
    state = restored
    logging.info('resumed from step %d', step)
  return state, shardings, mgr, step
