"""The training loop shared by pretraining and every fine-tuning task.

`run_loop` compiles a step over the mesh, logs, checkpoints (state and data iterator
together), evaluates, and stops cleanly on SIGTERM / SIGINT / a multi-host preemption
notice. Resume is exact: the train state (RNG included: the step's key is folded from
the step number) and the data iterator's state are restored together, so a run killed at
any point and restarted with the same command reaches the same final state as an
uninterrupted one. `start_run` claims a run's directory and makes its metric writers.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from syncmask_jax import checkpointing, paths, resume
from syncmask_jax import train_state as train_state_lib
from syncmask_jax import train_step as train_step_lib
from syncmask_jax.data import pipeline


class NonFiniteLossError(RuntimeError):
  pass


class Preemption:
  """SIGTERM (preemption notice) or SIGINT (Ctrl-C) sets `requested` to the signal's
  name; the loop saves and exits cleanly. A second Ctrl-C stops at once, unsaved."""

  def __init__(self):
    self.requested = ""
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM,
                                                                   signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint at the current step", self.requested)
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class JsonlWriter(metric_writers.MetricWriter):
  """Appends `{"step": s, name: value, ...}` lines: greppable, diffable metrics."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars) -> None:
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    paths.append_text(self._path, json.dumps(row) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def make_writer(workdir: str, config: ml_collections.ConfigDict) -> metric_writers.MetricWriter:
  """metrics.jsonl (+ TensorBoard events unless `config.tensorboard` is False) on process
  0; nothing elsewhere (the metrics are global). Every metric goes there and none to the
  console, where `Progress.line` is the one line a person reads.

  TensorBoard's event files are the one thing written outside the path layer: TensorFlow
  writes them through its own gfile (which reaches gs:// on the cloud, but no emulator).
  """
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  writers = [JsonlWriter(os.path.join(workdir, "metrics.jsonl"))]
  if config.tensorboard:
    writers.insert(0, metric_writers.SummaryWriter(workdir))
  return metric_writers.MultiWriter(writers)


def use_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """JAX's persistent compilation cache in `config.compilation_cache_dir` ('' = off): a
  restart (preemption, a fine-tuning or evaluation run of the same model) reuses the
  compiled executables; on a GPU the state's initialiser alone compiles for minutes."""
  directory = config.compilation_cache_dir
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))


def start_run(config: ml_collections.ConfigDict, workdir: str) -> metric_writers.MetricWriter:
  """Creates `workdir`, claims it (resume.claim_workdir: lock, a resume's config, metrics
  after the checkpoint), writes the resolved config.json (process 0), turns on the
  compilation cache, returns the writer. A missing `config.init_checkpoint` is refused
  before the workdir is made (a resume, whose workdir holds checkpoints, never reads it),
  so that mistake leaves nothing behind."""
  if (config.init_checkpoint and not paths.path(config.init_checkpoint).exists()
      and not paths.path(os.path.join(workdir, "checkpoints")).is_dir()):
    raise FileNotFoundError(
        f"config.init_checkpoint={config.init_checkpoint!r}: no such directory (expected "
        "a pretraining run's checkpoints/, e.g. runs/synthfashion/checkpoints from "
        "./launch/local.sh, or a released checkpoint file such as ALBEF.pth)")
  use_compilation_cache(config)
  if paths.path(workdir).exists() and not paths.path(workdir).is_dir():
    raise NotADirectoryError(f"--workdir={workdir} is a file; a workdir is a directory "
                             "(it holds the run's checkpoints, metrics and config)")
  paths.path(workdir).mkdir(parents=True, exist_ok=True)
  resume.record_config(config, workdir, resume.claim_workdir(workdir))
  return make_writer(workdir, config)


def log_compiled(compiled, writer, global_batch: int, step: int = 0) -> dict:
  """FLOPs and memory of the compiled step (XLA's own analyses), logged at `step` (where
  the run starts). Both analyses are of one device's SPMD program."""
  info = {}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    info["step_gflops_per_device"] = float(cost.get("flops", 0.0)) / 1e9
  except Exception as e:  # pylint: disable=broad-except  # backend-dependent API
    logging.warning("cost analysis unavailable: %s", e)
  try:
    mem = compiled.memory_analysis()
    info["temp_mib"] = mem.temp_size_in_bytes / 2**20
    info["argument_mib"] = mem.argument_size_in_bytes / 2**20
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("memory analysis unavailable: %s", e)
  logging.info("compiled train step (global batch %d over %d devices), per device: %s",
               global_batch, jax.device_count(), info)
  if info:
    writer.write_scalars(step, {f"compiled/{k}": v for k, v in info.items()})
  return info


class Progress:
  """steps/s and the ETA every `every` steps (and at the last), written as
  `steps_per_sec` and `eta_seconds`; `line` is the console's line.

  Dispatch is asynchronous, so the clock is read only once the device has finished the
  step (`result` is ready); it starts at the first step seen, so compilation is not in
  the rate. (Timing at dispatch read 7.6 steps/s and "ETA 0m", then took 78 s more.)
  """

  def __init__(self, total_steps: int, every: int, writer: metric_writers.MetricWriter,
               clock: Callable[[], float] = time.monotonic):
    self._total, self._every, self._writer, self._clock = total_steps, every, writer, clock
    self._step = self._time = self._rate = None

  def __call__(self, step: int, result: Any) -> None:
    if self._step is not None and step % self._every and step != self._total:
      return
    jax.block_until_ready(result)
    now = self._clock()
    if self._step is not None:
      self._rate = (step - self._step) / max(now - self._time, 1e-9)
      self._writer.write_scalars(step, {"steps_per_sec": self._rate,
                                        "eta_seconds": (self._total - step) / self._rate})
    self.restart(step, now)

  def line(self, step: int, loss: float) -> str:
    """step, loss, and the last measured steps/s and ETA: what a person reads."""
    text = f"step {step}/{self._total}: loss {loss:.4f}"
    if self._rate is not None:
      eta = round((self._total - step) / self._rate)
      text += f", {self._rate:.2f} steps/s, ETA {eta // 60}m{eta % 60:02d}s"
    return text

  def restart(self, step: int, now: float | None = None) -> None:
    """Measures from `step` on (after an evaluation, which is not training speed)."""
    self._step, self._time = step, self._clock() if now is None else now


def mean_metrics(history: list[dict]) -> dict:
  host = jax.device_get(history)
  return {k: float(np.mean([h[k] for h in host])) for k in host[0]}


def check_finite(history: list[dict], first_step: int, config) -> None:
  if config.nonfinite != "stop":
    return
  finite = jax.device_get([h["finite"] for h in history])
  bad = [first_step + i for i, f in enumerate(finite) if not f]
  if bad:
    raise NonFiniteLossError(
        f"non-finite loss or gradient at step {bad[0]} (config.nonfinite='stop'); the last "
        "good checkpoint is kept. Set config.nonfinite='skip' to drop such updates.")


def run_loop(config: ml_collections.ConfigDict, workdir: str, *, state, step_fn: Callable,
             setup: train_state_lib.Setup, train_iter, ckpt: checkpointing.Checkpointer,
             writer: metric_writers.MetricWriter,
             evaluate: Callable[[Any, int], dict],
             on_metrics: Callable[[dict], None] | None = None, log_compile: bool = False,
             name: str = "pretrain") -> dict:
  """The training loop shared by pretraining and fine-tuning, from `state.step` on.

  Compiles `step_fn` over `setup.mesh` at the first batch (logging its FLOPs and memory
  with `log_compile`), logs metrics every `log_every` steps (the non-finite check
  included), checkpoints with the data iterator's state, evaluates every `eval_every`
  steps and at the end (`evaluate(state, step)`), and saves and returns
  `{"preempted_at": step, "signal": ...}` on SIGTERM, SIGINT or a multi-host preemption
  notice. `on_metrics` sees (and may pop from) each step's metrics before they are kept
  for logging.
  """
  mesh = setup.mesh
  start = int(jax.device_get(state.step))
  progress = Progress(config.total_steps, config.log_every, writer)
  hooks = []
  if jax.process_index() == 0 and config.profile_steps:
    hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                          logdir=workdir))
  preemption = Preemption()
  history: list[dict] = []
  history_start = step = start
  batch_shardings = p_step = None
  t0 = time.time()
  logging.info("%s: training steps %d..%d in %s", name, start, config.total_steps, workdir)
  try:
    while step < config.total_steps:
      host_batch = next(train_iter)
      if p_step is None:
        like = global_like(host_batch)
        batch_shardings = train_step_lib.batch_shardings(mesh, config.mesh.axis_rules, like)
        p_step = train_step_lib.jit_train_step(step_fn, setup, config, like)
        batch = pipeline.make_global_batch(host_batch, mesh, batch_shardings)
        if log_compile:
          p_step = p_step.lower(state, batch).compile()
          log_compiled(p_step, writer, config.data.global_batch_size, start)
      else:
        batch = pipeline.make_global_batch(host_batch, mesh, batch_shardings)
      state, metrics = p_step(state, batch)
      if on_metrics is not None:
        on_metrics(metrics)
      history.append(metrics)
      step += 1
      progress(step, metrics)
      for hook in hooks:
        hook(step)
      preempted = preemption.requested or (jax.process_count() > 1
                                           and ckpt.reached_preemption(step)
                                           and "preemption notice")
      logged = step % config.log_every == 0 or step == config.total_steps
      if logged or step % config.checkpoint_every == 0 or preempted:
        check_finite(history, history_start, config)
        scalars = {f"train/{k}": v for k, v in mean_metrics(history).items()}
        # Bad records skipped so far (built + replaced at read time), for the record.
        scalars["data/num_skipped"] = train_iter.skip_report()["num_skipped"]
        writer.write_scalars(step, scalars)
        if logged:
          logging.info("%s", progress.line(step, scalars["train/loss"]))
        history, history_start = [], step
      if step % config.checkpoint_every == 0 or step == config.total_steps or preempted:
        ckpt.save(step, state, train_iter.get_state(), force=True)
      if config.eval_every and step % config.eval_every == 0 and step < config.total_steps:
        evaluate(state, step)
        progress.restart(step)
      if preempted:
        ckpt.wait_until_finished()
        logging.warning("%s: checkpoint of step %d saved, exiting", preempted, step)
        return {"preempted_at": step, "signal": preempted}
    ckpt.wait_until_finished()
  finally:
    preemption.restore()
    writer.flush()
  logging.info("%s: trained %d steps in %.1f s", name, step - start, time.time() - t0)
  results: dict = {"task": name, "step": step}
  if config.eval_at_end:
    results = evaluate(state, step)
  writer.close()
  ckpt.close()
  return results


def global_like(host_batch: dict) -> dict:
  """Shape stand-ins of the global batch (host batch x process count) for jit."""
  n = jax.process_count()
  return {k: jax.ShapeDtypeStruct((v.shape[0] * n, *v.shape[1:]), v.dtype)
          for k, v in host_batch.items()}
