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
  """Pretraining's state."""
  step: jax.Array
  params: dict
  momentum_params: dict
  opt_state: Any
  rng: jax.Array  # raw uint32 key data: checkpointable as a plain array
  queue: dict
  # Running centres of teacher logits (SemMIM agreement / MIM targets); empty otherwise.
  centers: dict


@flax.struct.dataclass
class FinetuneState:
  """A fine-tuning task's state: no momentum model, no queue."""
  step: jax.Array
  params: dict
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, as TrainState's


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the step builder and the driver need beside the state."""
  graphdef: Any
  state_shardings: Any  # the state's tree of NamedShardings
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation


def abstract_params(build: Callable[[], nnx.Module], config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh) -> tuple[Any, dict]:
  """(graphdef, parameters as ShapeDtypeStructs carrying their shardings) of the model
  `build()` makes: what a restore needs, without initialising anything."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
  shardings = sharding.named(
      mesh, sharding.param_specs(abstract_state, config.mesh.axis_rules, mesh))
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(abstract_state), shardings)
  return graphdef, params


def make_state_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                     build: Callable[[], nnx.Module],
                     make_tx: Callable[[dict], optax.GradientTransformation],
                     new_state: Callable[[dict, Any, jax.Array], Any],
                     param_fields: tuple[str, ...] = ("params",)
                     ) -> tuple[Callable[[], Any], Setup]:
  """The one state creation (pretraining and every task): the (unjitted) initialiser and
  the Setup with the state's shardings; no arrays are created, so a state from elsewhere
  (a checkpoint, another layout) can be placed.

  `new_state(params, opt_state, rng)` assembles the state (its extra fields: a momentum
  model, a queue, ...); the fields in `param_fields` (parameter copies) and the
  optimizer state follow the parameters' sharding, everything else is replicated.
  """
  graphdef, abstract = abstract_params(build, config, mesh)
  tx = make_tx(abstract)

  def init():
    params = nnx.to_pure_dict(nnx.state(build()))
    return new_state(params, tx.init(params),
                     jax.random.key_data(jax.random.key(config.seed)))

  shapes = jax.eval_shape(init)
  param_specs = jax.tree.map(lambda a: a.sharding.spec, abstract)
  opt_specs = optax.tree_map_params(
      tx, lambda _, spec: spec, shapes.opt_state, param_specs,
      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
  specs = jax.tree.map(lambda _: P(), shapes).replace(
      opt_state=opt_specs, **{field: param_specs for field in param_fields})
  return init, Setup(graphdef=graphdef, state_shardings=sharding.named(mesh, specs),
                     mesh=mesh, tx=tx)


def abstract_state(init: Callable[[], Any], setup: Setup) -> Any:
  """The state as ShapeDtypeStructs with their shardings: what a resumed run restores
  into, with nothing initialised."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      jax.eval_shape(init), setup.state_shardings)


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
  """Pretraining's `make_state_setup`: the momentum model starts as an exact copy of the
  parameters (as in ALBEF) and shares their sharding; the queue starts empty."""

  def new_state(params, opt_state, rng) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, momentum_params=params,
        opt_state=opt_state, rng=rng,
        queue=queue_lib.init_queue(config.queue_size, config.model.embed_dim),
        centers=init_centers(config))

  return make_state_setup(config, mesh, lambda: build_model(config, config.seed), make_tx,
                          new_state, param_fields=("params", "momentum_params"))


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
