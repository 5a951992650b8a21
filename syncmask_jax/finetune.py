"""Fine-tuning from a pretraining checkpoint, generic over the tasks of `tasks.TASKS`.

  python -m syncmask_jax.main --config=configs/finetune_<task>.py --workdir=DIR

with `config.task` one of `tasks.TASKS` (category | tgir | retrieval; each task's file
says what it trains and evaluates). The loop is `loop.run_loop` (metric writers,
Checkpointer, progress report, SIGTERM, exact resume of the state and the data
iterator). Parameters start from `config.init_checkpoint`, a run's `checkpoints`
directory (its latest step, parameters only: no optimizer, no queue), unless
`DIR/checkpoints` already holds a fine-tuning checkpoint, which is resumed.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from syncmask_jax import checkpointing, config_lib, evaluate, loop, optim, sharding, tasks
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.checkpoint_import import released
from syncmask_jax.data import pipeline
from syncmask_jax.tasks import base


def validate(config: ml_collections.ConfigDict) -> None:
  """config_lib's checks, the task's own, and what no fine-tuning task supports."""
  config_lib.validate(config)
  tasks.get(config).validate()
  if config.data.grouping == "embedding":
    raise ValueError("config.data.grouping='embedding' needs the pretraining step's "
                     "embeddings: fine-tuning supports none | subcategory")
  evaluate.eval_settings(config)


def create_state(task: base.Task, mesh: jax.sharding.Mesh
                 ) -> tuple[Callable[[], Any], Any, train_state_lib.Setup]:
  """(init, abstract state, setup): `init()` makes a fresh state straight into its
  sharded layout; the abstract state is what a resumed run restores into."""
  config = task.config
  init, setup = train_state_lib.make_state_setup(
      config, mesh, task.build_model,
      lambda p: optim.make_optimizer(config.optim, p, config.total_steps), task.new_state,
      param_fields=task.param_fields())
  return (jax.jit(init, out_shardings=setup.state_shardings),
          train_state_lib.abstract_state(init, setup), setup)


def evaluate_params(task: base.Task, graphdef: Any, params: dict, mesh: jax.sharding.Mesh,
                    workdir: str, writer=None, step: int = 0) -> dict[str, Any]:
  """The task's blocks on `params`, written to DIR/eval/<task>.json and the writer."""
  c = task.config
  task.eval_dir = os.path.join(workdir, "eval")
  with evaluate.naming_step(step):
    blocks = task.evaluate(graphdef, params, mesh)
  results = {"task": task.name, "step": int(step), "dataset": c.data.name,
             "split": pipeline.EVAL_SPLIT[c.data.name],
             "init_checkpoint": c.init_checkpoint, "results": blocks}
  evaluate.write_results(workdir, task.name, results, writer, step)
  return results


def init_from(task: base.Task, state: Any, source: str) -> Any:
  """`state` with the pretrained parameters of `source` (`config.init_checkpoint`: a
  run's checkpoints/ or a released file, `released.Pretrained`); the new head's stay, or
  start from pretrained ones (`task.init_new_params`); a momentum model starts as their
  copy (`task.start_from`)."""
  pretrained = released.Pretrained(task.config, source)
  params, step = pretrained.load(state.params, allow_missing=task.new_params)
  logging.info("%s: parameters from %s (step %d)", task.name, source, step)
  return task.start_from(state, task.init_new_params(params, pretrained))


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                          initialise_only: bool = False) -> dict:
  """Fine-tunes `config.task` from `config.init_checkpoint`, evaluates at the end.
  `initialise_only`: stop after the set-up, its state saved as step 0 (the converter)."""
  validate(config)
  pipeline.resolve_vocab(config)  # before config.json is written: it records the values
  task = tasks.get(config)
  # What a user names (the data, the pretrained run) is read before the workdir is
  # made: a mistake there leaves no config.json or events behind.
  source = task.train_source()
  if source is None:
    source = pipeline.make_source(config, "train")
  writer = loop.start_run(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  train_iter = pipeline.make_train_iterator(config, source=source)
  init, abstract, setup = create_state(task, mesh)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    keep=config.keep_checkpoints, keep_every=config.keep_every)
  if ckpt.latest_step() is not None:  # resume: init_checkpoint is not read again
    state, data_state, _ = ckpt.restore(abstract)
    train_iter.set_state(data_state)
  else:
    state = init()
    if config.init_checkpoint:
      state = init_from(task, state, config.init_checkpoint)
    else:
      logging.warning("config.init_checkpoint is empty: fine-tuning from random weights")
  if initialise_only:
    return ckpt.save_start(state, train_iter.get_state())
  return loop.run_loop(
      config, workdir, state=state, step_fn=task.make_step(setup), setup=setup,
      train_iter=train_iter, ckpt=ckpt, writer=writer,
      evaluate=lambda s, step: evaluate_params(task, setup.graphdef, s.params, mesh, workdir,
                                               writer, step),
      name=task.name)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None, writer=None) -> dict[str, Any]:
  """Evaluates the latest (or `step`) checkpoint of the fine-tuning run in `workdir`:
  only the parameters are restored (straight into their sharded layout), nothing is
  initialised and no training data is opened."""
  validate(config)
  pipeline.resolve_vocab(config)
  mesh = sharding.make_mesh(config.mesh)
  task = tasks.get(config)
  graphdef, abstract = train_state_lib.abstract_params(task.build_model, config, mesh)
  params, step = checkpointing.load_pretrained(os.path.join(workdir, "checkpoints"),
                                               abstract, step=step)
  return evaluate_params(task, graphdef, params, mesh, workdir, writer, step)
