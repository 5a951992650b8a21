"""What every fine-tuning task provides, and the update its step ends with.

A task is one file under `tasks/` holding a `Task` subclass, plus one entry in
`tasks.TASKS`. `finetune.py` drives any of them: it builds the task's model and state
(`train_state.make_state_setup`), restores the pretrained parameters (all but
`new_params`), runs `loop.run_loop` over `make_step`, and writes `evaluate`'s blocks to
`DIR/eval/<name>.json`. A task with a decoder head and generation-based evaluation
(VQA, captioning) fits the same methods: its model in `build_model`, its decoder's
parameters in `new_params`, its decoding in `evaluate`.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from syncmask_jax import optim
from syncmask_jax import train_state as train_state_lib

Step = Callable[[Any, dict], tuple[Any, dict]]


class Task:
  """A fine-tuning task for one config (`config.task` names it in `tasks.TASKS`).

  Methods may cache what they read from the data (e.g. the class count) on the instance.
  """
  name: ClassVar[str] = ""
  # Parameters the task adds to the pretrained model: allowed to be absent from the
  # pretraining checkpoint (they keep their fresh initialisation).
  new_params: ClassVar[tuple[str, ...]] = ()
  eval_dir: str = ""  # DIR/eval, set by finetune.py before `evaluate`

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def validate(self) -> None:
    """Raises ValueError on a config the task cannot run (beyond config_lib.validate)."""

  def build_model(self) -> nnx.Module:
    """The model, initialised from `config.seed` (called under eval_shape and jit)."""
    raise NotImplementedError

  def new_state(self, params: dict, opt_state: Any, rng: jax.Array) -> Any:
    """The fresh train state around initialised parameters; a task with more state
    (a momentum model, a queue) returns its own dataclass."""
    return train_state_lib.FinetuneState(step=jnp.zeros((), jnp.int32), params=params,
                                         opt_state=opt_state, rng=rng)

  def param_fields(self) -> tuple[str, ...]:
    """The fields of `new_state`'s state that are parameter copies (a momentum model):
    they take the parameters' sharding (`train_state.make_state_setup`)."""
    return ("params",)

  def start_from(self, state: Any, params: dict) -> Any:
    """`state` starting from `params` (the pretrained ones after `init_new_params`,
    finetune.init_from); a task with a momentum model starts it as their copy here."""
    return state.replace(params=params)

  def init_new_params(self, params: dict, pretrained: Any) -> dict:
    """`params` just read from the pretrained checkpoint (`pretrained`, a
    `checkpoint_import.released.Pretrained`: a run's checkpoints/ or a released file)
    -> the parameters training starts from: a task whose new parameters start as copies
    of pretrained ones sets them here, from `params` (VQA's answer decoder, ALBEF's) or,
    for pretrained parameters its model lacks, through `pretrained.load` (captioning's
    decoder); the default keeps them as initialised."""
    del pretrained
    return params

  def train_source(self) -> Any | None:
    """The training record source; None: the pipeline's for `config.data`."""
    return None

  def make_step(self, setup: train_state_lib.Setup) -> Step:
    """The pure step (state, batch) -> (state, metrics); `loop.run_loop` jits it."""
    raise NotImplementedError

  def evaluate(self, graphdef: Any, params: dict, mesh: jax.sharding.Mesh) -> list[dict]:
    """The result blocks (`evaluate.block_label` names them) of `params` on the eval
    split. Files beside the blocks (an evaluation server's results) go to
    `self.eval_dir`, DIR/eval, which finetune.py sets before calling."""
    raise NotImplementedError


def update(config: ml_collections.ConfigDict, setup: train_state_lib.Setup, state: Any,
           loss_fn: Callable[[dict], tuple[jax.Array, dict]],
           momentum: float | None = None) -> tuple[Any, dict]:
  """Gradients of `loss_fn(params) -> (loss, aux)` -> the optimizer update (as the
  pretraining step's: `optim.apply_gradients`, `optim.keep_finite`) -> metrics.

  With `momentum`, the state's `momentum_params` then take the EMA step towards the new
  parameters, as pretraining's (only on a step the optimizer moved them; a skipped
  non-finite step keeps them too)."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  params, opt_state, grad_norm = optim.apply_gradients(config, setup.tx, state, grads)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if momentum is not None:
    updated = optim.has_updated(setup.tx, opt_state)
    new_state = new_state.replace(momentum_params=jax.tree.map(
        lambda new, old: jnp.where(updated, new, old),
        optax.incremental_update(params, state.momentum_params, step_size=1.0 - momentum),
        state.momentum_params))
  new_state, finite = optim.keep_finite(config, new_state, state, loss, grad_norm)
  lr = optim.learning_rate_schedule(config.optim, config.total_steps)(state.step)
  return new_state, dict(aux, loss=loss, grad_norm=grad_norm, finite=finite,
                         learning_rate=lr)


def step_rng(state: Any) -> jax.Array:
  """The step's key: folded from the step number, so a resumed run draws the same."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
