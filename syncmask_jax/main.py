"""Entry point: `python -m syncmask_jax.main --config=configs/synthfashion.py --workdir=DIR`.

`config.task` picks the job: pretrain (default; train.py) or a fine-tuning task
(one of `tasks.TASKS`, listed under --config below; finetune.py). A mistake in a flag,
a field or a path ends in one line; SYNCMASK_TRACEBACK=1 shows the traceback.

On several hosts (TPU pod, SLURM GPU cluster) the same command runs on every host;
`jax.distributed.initialize()` finds the peers from the environment, or from the
`--coordinator_address/--num_processes/--process_id` flags.
"""

import os

# TensorFlow (pulled in by clu/TFDS) is only used for I/O here; keep its logs quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from absl import flags, logging

from syncmask_jax import cli, cluster, evaluate, finetune, paths, train
# pylint: enable=g-import-not-at-top,wrong-import-position

cli.define_config_flag()
flags.declare_key_flag("config")  # --help lists it beside this module's flags
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, eval.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host runs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", None, "CPU collectives for multi-process CPU runs, e.g. 'gloo'.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if _CPU_COLLECTIVES.value:
    jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
  if _DISTRIBUTED.value or _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value,
                               local_device_ids=cluster.local_device_ids(os.environ))
  logging.info("JAX process %d/%d: local devices %s (%d global)", jax.process_index(),
               jax.process_count(), jax.local_devices(), jax.device_count())
  if jax.default_backend() == "gpu":
    cluster.check_devices(os.environ, jax.local_devices(), jax.process_index())
  config = cli.resolved_config(flags.FLAGS["config"])
  task = config.task
  if task == "pretrain":
    results = train.train_and_evaluate(config, _WORKDIR.value)
  else:  # a fine-tuning task, from a pretraining checkpoint
    results = finetune.finetune_and_evaluate(config, _WORKDIR.value)
  if jax.process_index() == 0:
    _print_summary(_WORKDIR.value, task, results)


def _print_summary(workdir: str, task: str, results: dict) -> None:
  lines = [f"workdir:      {paths.resolve(workdir)}",
           f"metrics:      {os.path.join(workdir, 'metrics.jsonl')} (+ TensorBoard events)",
           f"checkpoints:  {os.path.join(workdir, 'checkpoints')}"]
  if "results" in results:  # an evaluation ran (not with eval_at_end=False or a stop)
    lines.append(f"evaluation:   {os.path.join(workdir, 'eval', task + '.json')}")
  if "preempted_at" in results:
    lines.append(f"stopped at step {results['preempted_at']} by {results['signal']}, "
                 "checkpoint saved; rerun the same command to resume")
  else:
    lines += evaluate.summary_lines(results)
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  cli.run(main)
