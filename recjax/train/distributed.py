"""Multi-process ("multi-host") JAX: start-up and host <-> global arrays.

One recjax run spans N processes, each owning its local devices (a TPU VM
worker, a GPU node, or on this machine a CPU process with simulated
devices). Every process runs the same program; jit sees one global mesh
over all devices. Three things differ from one process:

  start-up  `initialize` connects the processes through a coordinator
            before anything touches a device: explicit flags first, then
            RECJAX_COORDINATOR / RECJAX_NUM_PROCESSES / RECJAX_PROCESS_ID,
            then (RECJAX_DISTRIBUTED=1) JAX's own detection of Cloud TPU
            slices and SLURM jobs. CPU processes use gloo collectives.
  inputs    jit refuses host (numpy) inputs with a sharding that spans
            other processes' devices. `to_global` builds the global
            jax.Array from a host value that every process holds in full
            (the deterministic samplers produce the same global batch on
            every process; each contributes only its own devices' rows),
            and `from_process_local` from each process's own rows.
  outputs   an array spread over other processes cannot be read on this
            one; `to_host` gathers it (or reads a local replica).

Nothing here changes single-process behaviour: with one process every
helper returns its input unchanged.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import numpy as np

_ENV = ('RECJAX_COORDINATOR', 'RECJAX_NUM_PROCESSES', 'RECJAX_PROCESS_ID')


def initialize(coordinator: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Joins this process to a multi-process run, if one is configured.

  Args:
    coordinator: 'host:port' of process 0's coordinator service.
    num_processes: N, the number of processes.
    process_id: this process's index in [0, N).
    Each falls back to its RECJAX_* environment variable. With none set,
    RECJAX_DISTRIBUTED=1 asks JAX to detect the cluster (TPU pod slices,
    SLURM); otherwise this is a single-process run.

  Returns:
    True if jax.distributed was initialised.

  Raises:
    ValueError: an incomplete or inconsistent explicit configuration.
  """
  env = [os.environ.get(k) for k in _ENV]
  coordinator = coordinator or env[0]
  num_processes = num_processes if num_processes is not None else (
      int(env[1]) if env[1] else None)
  process_id = process_id if process_id is not None else (
      int(env[2]) if env[2] else None)
  given = [coordinator, num_processes, process_id]
  if any(v is not None for v in given):
    if any(v is None for v in given):
      raise ValueError(
          'multi-process run: coordinator address, number of processes and '
          'process id must all be set (flags --coordinator_address, '
          '--num_processes, --process_id or env RECJAX_COORDINATOR, '
          f'RECJAX_NUM_PROCESSES, RECJAX_PROCESS_ID); got {given}')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process id {process_id} is outside [0, '
                       f'{num_processes})')
    if ':' not in coordinator:
      raise ValueError(f'coordinator address {coordinator!r} is not '
                       'host:port')
  elif os.environ.get('RECJAX_DISTRIBUTED') != '1':
    return False
  # XLA:CPU needs a collectives backend across processes; the setting
  # only concerns the CPU client, so TPU and GPU runs are unaffected.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if coordinator is not None:
    kwargs = dict(coordinator_address=coordinator,
                  num_processes=num_processes, process_id=process_id)
    host = coordinator.rsplit(':', 1)[0].strip('[]')
    if host in ('127.0.0.1', 'localhost', '::1'):
      # A loopback coordinator serves only this machine: bind it there
      # rather than on every interface (JAX's default).
      kwargs['coordinator_bind_address'] = coordinator
  jax.distributed.initialize(**kwargs)
  logging.info('process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def multi_process() -> bool:
  return jax.process_count() > 1


def agreed(value: float) -> float:
  """Process 0's `value` on every process (a host collective each call).

  Wall-clock time differs between processes; a run that decays its
  learning rate or stops on a time budget must use one clock everywhere, or
  processes would disagree on the learning rate (silently diverging
  replicas) or on the last step (the others block forever).
  """
  if not multi_process():
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return float(multihost_utils.broadcast_one_to_all(np.float64(value)))


def check_process_major(sharding, rows_per_process: int) -> None:
  """Raises unless process i's devices hold rows [i n, (i + 1) n) of a
  [N n, ...] array with this batch sharding: what building a global batch
  from per-process blocks (`from_process_local`) and regrouping it by
  process assumes.

  Raises:
    ValueError: naming the first device whose rows lie elsewhere.
  """
  n = rows_per_process
  rows = n * jax.process_count()
  for device, index in sharding.devices_indices_map((rows,)).items():
    sl = index[0]
    start = sl.start or 0
    stop = rows if sl.stop is None else sl.stop
    lo, hi = device.process_index * n, (device.process_index + 1) * n
    if not lo <= start < stop <= hi:
      raise ValueError(
          f'device {device} of process {device.process_index} holds batch '
          f'rows [{start}, {stop}), outside its process block [{lo}, {hi}): '
          'the mesh is not process-major along the batch axis; order '
          'mesh devices by process (e.g. '
          'mesh_utils.create_hybrid_device_mesh)')


def to_global(tree: Any, shardings: Any) -> Any:
  """Host values held in full by every process -> global jax.Arrays.

  Args:
    tree: numpy arrays (or scalars), identical on every process.
    shardings: a matching tree of NamedShardings (or one for every leaf).

  Returns:
    `tree` unchanged in a single-process run; else jax.Arrays laid out by
    `shardings`, each process filling only its own devices' shards.
  """
  if not multi_process():
    return tree
  if not isinstance(shardings, (dict, list, tuple)) and not hasattr(
      shardings, '__dataclass_fields__'):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def put(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding,
                                        lambda index: x[index])
  return jax.tree.map(put, tree, shardings)


def from_process_local(local: Any, sharding, global_rows: int) -> Any:
  """Each process's own rows [B / N, ...] -> one global [B, ...] array.

  For input pipelines where each process reads only its part of the data
  (its shard files): rows are laid out process by process along the
  batch axis of `sharding`.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, np.asarray(x), (global_rows,) + np.shape(x)[1:]), local)


def to_host(x: Any) -> Any:
  """A (possibly cross-process) jax.Array as a numpy array on this host."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return x
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
