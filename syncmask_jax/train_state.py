"""The train state and its creation directly into the sharded layout.

Parameters are pure dicts of arrays (string paths, orbax- and regex-friendly); the
module structure lives in the `graphdef` (`nnx.split` once, `nnx.merge` in the step).
The momentum (EMA) parameters share the parameters' sharding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from syncmask_jax import queue as queue_lib
from syncmask_jax import semmim, sharding
from syncmask_jax.models.vlp import VLP


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  momentum_params: dict
  opt_state: Any
  rng: jax.Array  # raw uint32 key data: checkpointable as a plain array
  queue: dict
  # Running centres of teacher logits (SemMIM agreement / MIM targets); empty otherwise.
  centers: dict


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the step builder and the driver need beside the state."""
  graphdef: Any
  state_shardings: TrainState
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation


def mim_head_kind(config: ml_collections.ConfigDict) -> str:
  if config.loss.mim <= 0:
    return "none"
  return config.loss.mim_target


def build_model(config: ml_collections.ConfigDict, seed: int) -> VLP:
  semmim = config.recipe == "semmim"
  return VLP(config.model, mim_head=mim_head_kind(config),
             num_prototypes=config.semmim.num_prototypes if semmim else 0,
             shared_prototype_head=bool(config.semmim.shared_head) if semmim else True,
             rngs=nnx.Rngs(params=seed))


def init_centers(config: ml_collections.ConfigDict) -> dict:
  """SemMIM's running centres of the momentum prototype logits (DINO), `semmim.init_centers`."""
  if config.recipe != "semmim":
    return {}
  return semmim.init_centers(config.semmim.num_prototypes, config.optim.grad_accum_steps)


def make_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               make_tx: Callable[[dict], optax.GradientTransformation]
               ) -> tuple[Callable[[], TrainState], Setup]:
  """The state's (unjitted) initialiser and the Setup with its shardings; no arrays
  are created, so a state from elsewhere (a checkpoint, another layout) can be placed."""
  abstract_model = nnx.eval_shape(lambda: build_model(config, config.seed))
  graphdef, abstract_state = nnx.split(abstract_model)
  param_specs = sharding.param_specs(abstract_state, config.mesh.axis_rules, mesh)
  abstract_params = nnx.to_pure_dict(abstract_state)
  tx = make_tx(abstract_params)

  def init() -> TrainState:
    params = nnx.to_pure_dict(nnx.state(build_model(config, config.seed)))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, momentum_params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(config.seed)),
        queue=queue_lib.init_queue(config.queue_size, config.model.embed_dim),
        centers=init_centers(config))

  abstract = jax.eval_shape(init)
  opt_specs = optax.tree_map_params(
      tx, lambda _, spec: spec, abstract.opt_state, param_specs,
      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
  specs = TrainState(
      step=P(), params=param_specs, momentum_params=param_specs, opt_state=opt_specs,
      rng=P(), queue=jax.tree.map(lambda _: P(), abstract.queue),
      centers=jax.tree.map(lambda _: P(), abstract.centers))
  return init, Setup(graphdef=graphdef, state_shardings=sharding.named(mesh, specs),
                     mesh=mesh, tx=tx)


def create_train_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       make_tx: Callable[[dict], optax.GradientTransformation],
                       init_params: Callable[[dict], dict] | None = None
                       ) -> tuple[TrainState, Setup]:
  """Initialises the state straight into its sharded layout (no full host copy).

  `init_params`, if given, edits the freshly initialised parameters on the host (the
  checkpoint importer); the momentum model starts as an exact copy, as in ALBEF.
  """
  init, setup = make_setup(config, mesh, make_tx)
  shardings, tx = setup.state_shardings, setup.tx
  state = jax.jit(init, out_shardings=shardings)()
  if init_params is not None:
    params = init_params(jax.device_get(state.params))
    params = jax.device_put(params, shardings.params)
    state = state.replace(params=params, momentum_params=jax.tree.map(jnp.copy, params),
                          opt_state=jax.jit(tx.init, out_shardings=shardings.opt_state)(params))
  return state, setup
