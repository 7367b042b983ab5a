"""Device mesh and the logical -> mesh axis rules.

Models name their parameter axes logically ('node', 'embed', ...); the
config's `sharding_rules` map each logical name to a mesh axis or None
(replicated). Changing the layout is a config change, never a model edit.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(shape: Sequence[int], axes: Sequence[str]) -> Mesh:
  """A mesh over all visible devices; one -1 in `shape` takes the rest.

  Raises:
    ValueError: if the shape does not multiply out to the device count.
  """
  n = jax.device_count()
  shape = list(shape)
  if len(shape) != len(axes):
    raise ValueError(f'mesh.shape {shape} and mesh.axes {axes} differ in rank')
  if shape.count(-1) > 1:
    raise ValueError(f'mesh.shape {shape}: at most one -1')
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if n % known:
      raise ValueError(f'mesh.shape {shape} does not divide {n} devices')
    shape[shape.index(-1)] = n // known
  if int(np.prod(shape)) != n:
    raise ValueError(f'mesh.shape {shape} needs {int(np.prod(shape))} devices, '
                     f'{n} are visible')
  # Auto axes: the compiler propagates shardings from the annotated inputs.
  return jax.make_mesh(tuple(shape), tuple(axes),
                       axis_types=(AxisType.Auto,) * len(axes))


def logical_shardings(logical_tree: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]]) -> Any:
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_tree, mesh, tuple(
      (name, axis) for name, axis in rules))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]]
                   ) -> NamedSharding:
  """Sharding for arrays whose leading axis is the batch."""
  axis = dict(rules).get('batch')
  return NamedSharding(mesh, P(axis))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def describe(mesh: Mesh) -> dict:
  return dict(zip(mesh.axis_names, (int(s) for s in mesh.devices.shape)))
