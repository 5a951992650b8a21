"""Evaluation CLI, on the latest or a named checkpoint of a run:

  python -m syncmask_jax.evaluate --config=configs/synthfashion.py --workdir=DIR [--step=N]

A mistake in a flag, a field or a path ends in one line; SYNCMASK_TRACEBACK=1 shows the
traceback.

Pretraining runs are evaluated by `train.evaluate_checkpoint`, fine-tuning runs by
`finetune.evaluate_checkpoint`; results go to `DIR/eval/<task>.json`.
"""

import os

# TensorFlow (pulled in by clu/TFDS) is only used for I/O here; keep its logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
from typing import Any

import jax
import ml_collections
from absl import flags

from syncmask_jax import cli, evaluate, finetune, loop, train
# pylint: enable=g-import-not-at-top,wrong-import-position


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict[str, Any]:
  """Evaluates the latest (or `step`) checkpoint of the run in `workdir` for its task.

  Only the parameters are restored (straight into their sharded layout): no optimizer
  state, no queue, nothing initialised.
  """
  loop.use_compilation_cache(config)
  writer = loop.make_writer(workdir, config)
  try:
    if config.task == "pretrain":
      return train.evaluate_checkpoint(config, workdir, step, writer)
    return finetune.evaluate_checkpoint(config, workdir, step, writer)
  finally:
    writer.close()


def main() -> None:
  cli.define_config_flag()
  flags.declare_key_flag("config")  # --help lists it beside this module's flags
  workdir_flag = flags.DEFINE_string("workdir", None, "The run's directory.")
  step_flag = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["config", "workdir"])

  def run(argv):
    del argv
    config = cli.resolved_config(flags.FLAGS["config"],
                                 checkpoints=os.path.join(workdir_flag.value, "checkpoints"))
    results = evaluate_checkpoint(config, workdir_flag.value, step_flag.value)
    if jax.process_index() == 0:
      task = config.task
      print("\n".join([f"evaluation:   {os.path.join(workdir_flag.value, 'eval', task)}.json"]
                      + evaluate.summary_lines(results)), flush=True)

  cli.run(run)


if __name__ == "__main__":
  main()
