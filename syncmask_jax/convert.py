"""Released checkpoints in and out of run directories.

Import: a released ALBEF checkpoint (the original `ALBEF.pth`, `ALBEF_4M.pth`, the
retrieval and VQA fine-tuned files, or LAVIS's) becomes the step-0 checkpoint of a run
of `--config` (its task: pretraining, or a fine-tuning task), exactly as
`--config.init_checkpoint=FILE` would start that run:

  python -m syncmask_jax.convert --config=configs/coco.py:size=albef_base \\
      --checkpoint=/ckpt/ALBEF.pth --workdir=runs/albef_released

The run directory can then be evaluated (`python -m syncmask_jax.evaluate`), resumed
(`python -m syncmask_jax.main` with the same config and workdir trains from step 0),
or be another run's `--config.init_checkpoint=runs/albef_released/checkpoints`.

Export: a pretraining run's latest checkpoint (parameters, momentum model, queue) as
the state dict of LAVIS's `AlbefPretrain` (`--layout=pretrain`) or `AlbefRetrieval`
(`--layout=retrieval`), loadable with `load_state_dict(..., strict=True)`:

  python -m syncmask_jax.convert --config=configs/synthfashion.py \\
      --workdir=runs/synthfashion --export=runs/synthfashion/albef.pth
"""

import os

# TensorFlow (pulled in by clu/TFDS) is only used for I/O here; keep its logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import ml_collections
from absl import flags

from syncmask_jax import checkpointing, cli, console, finetune, optim, paths, sharding, train
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.checkpoint_import import albef, files
from syncmask_jax.data import pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position


def import_checkpoint(config: ml_collections.ConfigDict, checkpoint: str, workdir: str) -> str:
  """`checkpoint` as the step-0 checkpoint of a new run of `config` in `workdir`;
  returns that checkpoint's directory."""
  existing = checkpointing.latest_step(os.path.join(workdir, "checkpoints"))
  if existing is not None:
    raise ValueError(f"--workdir={workdir!r} already holds a run (checkpoint of step "
                     f"{existing}): convert into a new directory")
  config.unlock()
  config.init_checkpoint = paths.resolve(checkpoint)
  config.lock()
  run = train.train_and_evaluate if config.task == "pretrain" else finetune.finetune_and_evaluate
  return run(config, workdir, initialise_only=True)["checkpoint"]


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str, out: str,
                      layout: str) -> int:
  """The latest pretraining checkpoint of `workdir` as a LAVIS ALBEF state dict in
  `out`; returns its step."""
  if config.task != "pretrain":
    raise ValueError(f"config.task={config.task!r}: export writes ALBEF's pretraining and "
                     "retrieval layouts, from a pretraining run")
  pipeline.resolve_vocab(config)  # the vocabulary's size, as the run resolved it
  mesh = sharding.make_mesh(config.mesh)
  init, setup = train_state_lib.make_setup(
      config, mesh, lambda p: optim.make_optimizer(config.optim, p, config.total_steps))
  abstract = train_state_lib.abstract_state(init, setup)
  directory = os.path.join(workdir, "checkpoints")
  params, step = checkpointing.load_pretrained(directory, abstract.params)
  momentum, _ = checkpointing.load_pretrained(directory, abstract.momentum_params,
                                              item="momentum_params", step=step)
  queue, _ = checkpointing.load_as_stored(directory, "queue", step)
  files.save_torch(out, albef.export_albef(params, momentum, queue, config, layout))
  return step


def main() -> None:
  cli.define_config_flag()
  flags.declare_key_flag("config")  # --help lists it beside this module's flags
  workdir = flags.DEFINE_string("workdir", None, "The run directory (import: a new one).")
  checkpoint = flags.DEFINE_string("checkpoint", None,
                                   "Import: a released ALBEF checkpoint file (.pth).")
  export = flags.DEFINE_string("export", None, "Export: the .pth file to write.")
  layout = flags.DEFINE_enum("layout", "pretrain", albef.EXPORT_LAYOUTS,
                             "Export: LAVIS's AlbefPretrain or AlbefRetrieval layout.")
  flags.mark_flags_as_required(["config", "workdir"])

  def run(argv):
    del argv
    if bool(checkpoint.value) == bool(export.value):
      console.exit_with("give exactly one of --checkpoint (import) and --export")
    if checkpoint.value:
      config = cli.resolved_config(flags.FLAGS["config"], checkpoints=checkpoint.value)
      path = import_checkpoint(config, checkpoint.value, workdir.value)
      print(f"imported {checkpoint.value} -> {path}", flush=True)
    else:
      config = cli.resolved_config(flags.FLAGS["config"],
                                   checkpoints=os.path.join(workdir.value, "checkpoints"))
      step = export_checkpoint(config, workdir.value, export.value, layout.value)
      if jax.process_index() == 0:
        print(f"exported step {step} of {workdir.value} -> {export.value} "
              f"(LAVIS Albef{layout.value.capitalize()} layout)", flush=True)

  cli.run(run)


if __name__ == "__main__":
  main()
