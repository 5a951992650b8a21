"""Pretraining, top to bottom: set-up, restore, train (`loop.run_loop`), evaluate.

`main.py` only parses flags and calls `train_and_evaluate`; `python -m
syncmask_jax.evaluate` calls `evaluate_checkpoint` on a pretraining run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from absl import logging
from clu import parameter_overview

from syncmask_jax import checkpoint_import, checkpointing, config_lib, evaluate, loop, optim
from syncmask_jax import paths, sharding
from syncmask_jax.checkpoint_import import released
from syncmask_jax import train_state as train_state_lib
from syncmask_jax import train_step as train_step_lib
from syncmask_jax.data import pipeline


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       initialise_only: bool = False) -> dict:
  """Pretrains per `config`, checkpoints into `workdir`, evaluates at the end.
  `initialise_only`: stop after the set-up, its state saved as step 0 (the converter)."""
  config_lib.validate(config)
  tokens = pipeline.resolve_vocab(config)
  # The data is opened before the workdir is made: a wrong root leaves nothing behind.
  source = pipeline.make_source(config, "train")
  writer = loop.start_run(config, workdir)

  # --- data, model, state --------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  train_iter = pipeline.make_train_iterator(config, source=source)
  steps_per_epoch = train_iter.steps_per_epoch
  state, setup = train_state_lib.create_train_state(
      config, mesh, lambda p: optim.make_optimizer(config.optim, p, config.total_steps),
      init_params=(lambda p: checkpoint_import.apply_inits(config, p))
      if (config.model.text_init or config.model.image_init) else None)
  if jax.process_index() == 0:
    # The per-parameter table goes to the run's files; the console gets its total.
    params = jax.device_get(state.params)
    table = os.path.join(workdir, "parameters.txt")
    paths.write_text(table, parameter_overview.get_parameter_overview(params) + "\n")
    logging.info("%s parameters (each: %s)",
                 f"{int(parameter_overview.count_parameters(params)):,}", table)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    keep=config.keep_checkpoints, keep_every=config.keep_every)
  if ckpt.latest_step() is not None:  # resume: init_checkpoint is not read again
    state, data_state, _ = ckpt.restore(state)
    train_iter.set_state(data_state)
  elif config.init_checkpoint:
    state = init_from_checkpoint(state, setup, config)
  if initialise_only:
    return ckpt.save_start(state, train_iter.get_state())
  logging.info("%d steps per epoch", steps_per_epoch)
  step_fn = train_step_lib.make_train_step(config, setup, tokens, steps_per_epoch)

  def on_metrics(metrics: dict) -> None:
    if config.data.grouping == "embedding":
      train_iter.record_embeddings(*jax.device_get(
          (metrics.pop("example_index"), metrics.pop("example_embedding"))))

  return loop.run_loop(
      config, workdir, state=state, step_fn=step_fn, setup=setup, train_iter=train_iter,
      ckpt=ckpt, writer=writer,
      evaluate=lambda s, step: evaluate.evaluate_pretraining(config, setup, s, tokens,
                                                             workdir, writer, step=step),
      on_metrics=on_metrics, log_compile=True)


def init_from_checkpoint(state: train_state_lib.TrainState, setup: train_state_lib.Setup,
                         config: ml_collections.ConfigDict) -> train_state_lib.TrainState:
  """Pretraining that starts from `config.init_checkpoint`: an earlier run's checkpoints/
  (its parameters and momentum model, so the teacher that picks SyncMask's masks is the
  earlier run's from step 0 on: a grounded teacher, as a pretrained one would be), or a
  released ALBEF file (`checkpoint_import.released`: its parameters, momentum copies
  and queue, as FashionSAP starts from `ALBEF.pth`). Everything else starts afresh:
  step 0, the optimizer, the data order, and the queue of a run's checkpoint."""
  pretrained = released.Pretrained(config, config.init_checkpoint)
  params, momentum, queue = pretrained.load_state(state.params, state.momentum_params,
                                                  state.queue)
  logging.info("pretraining starts from %s: parameters and momentum model%s",
               config.init_checkpoint, " and queue" if queue is not state.queue else "")
  return state.replace(params=params, momentum_params=momentum, queue=queue,
                       opt_state=jax.jit(setup.tx.init,
                                         out_shardings=setup.state_shardings.opt_state)(params))


@dataclasses.dataclass(frozen=True)
class EvalState:
  """The parts of a pretraining TrainState evaluation reads."""
  params: dict
  momentum_params: dict


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None, writer=None) -> dict[str, Any]:
  """Evaluates the latest (or `step`) pretraining checkpoint of the run in `workdir`.

  Only the parameters and the momentum model are restored (straight into their sharded
  layout): no optimizer state, no queue, nothing initialised.
  """
  config_lib.validate(config)
  evaluate.eval_settings(config)
  tokens = pipeline.resolve_vocab(config)
  mesh = sharding.make_mesh(config.mesh)
  directory = os.path.join(workdir, "checkpoints")
  graphdef, abstract = train_state_lib.abstract_params(
      lambda: train_state_lib.build_model(config, config.seed), config, mesh)
  params, step = checkpointing.load_pretrained(directory, abstract, step=step)
  momentum, _ = checkpointing.load_pretrained(directory, abstract, item="momentum_params",
                                              step=step)
  setup = train_state_lib.Setup(graphdef=graphdef, state_shardings=None, mesh=mesh, tx=None)
  return evaluate.evaluate_pretraining(config, setup, EvalState(params, momentum), tokens,
                                       workdir, writer, step=step)
