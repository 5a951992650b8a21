"""Device mesh and the logical-axis rules that place parameters and batches on it.

Parameters carry only logical names (`logical_axes` metadata on each `nnx.Param`); the
config's `mesh.axis_rules` table maps them to the mesh axes `data`, `fsdp`, `tensor`.
Changing the parallelism layout is a config edit (MaxText style).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
              ) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh; `data=-1` takes all devices the other axes leave."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  for name, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"config.mesh.{name}={size}: must be a positive size or -1")
  if sizes.count(-1) > 1:
    raise ValueError("config.mesh: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n % known:
      raise ValueError(f"config.mesh: {n} devices are not divisible by fsdp*tensor={known}")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) != n:
    raise ValueError(f"config.mesh: data*fsdp*tensor={int(np.prod(sizes))} != {n} devices")
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _mesh_axis_size(mesh: jax.sharding.Mesh, axis: Any) -> int:
  if axis is None:
    return 1
  axes = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], rules: Sequence,
                    mesh: jax.sharding.Mesh) -> P:
  """Maps logical axis names to a PartitionSpec; a dimension that the mesh axis does not
  divide stays replicated (e.g. a 2-way classifier head under 8-way FSDP)."""
  table = {name: (tuple(a) if isinstance(a, list) else a) for name, a in rules}
  spec, used = [], set()
  for name, dim in zip(logical, shape):
    axis = table.get(name) if name is not None else None
    axes = axis if isinstance(axis, tuple) else (axis,)
    if (axis is None or any(a in used for a in axes)
        or dim % _mesh_axis_size(mesh, axis) != 0):
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axis)
  return P(*spec)


def param_specs(abstract_state: nnx.State, rules: Sequence, mesh: jax.sharding.Mesh) -> dict:
  """Pure-dict tree of PartitionSpecs for a model state whose Params carry logical axes."""

  def spec(v):
    logical = v.get_metadata().get("logical_axes")
    if logical is None or len(logical) != len(v.shape):
      raise ValueError(f"parameter of shape {v.shape} has logical axes {logical}")
    return logical_to_spec(logical, v.shape, rules, mesh)

  tree = jax.tree.map(spec, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(tree)


def named(mesh: jax.sharding.Mesh, specs: Any) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_spec(rules: Sequence, ndim: int) -> P:
  """Leading (batch) dimension split over the rules' `batch` axes, the rest replicated."""
  table = dict(rules)
  return P(table.get("batch"), *([None] * (ndim - 1)))


def log_layout(specs: dict, mesh: jax.sharding.Mesh) -> None:
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  sharded = sum(1 for _, s in flat if any(a is not None for a in s))
  logging.info("mesh %s: %d of %d parameters sharded", dict(mesh.shape), sharded, len(flat))
