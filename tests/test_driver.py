"""The training driver: exact resume after SIGKILL, SIGTERM/SIGINT save, half-written
checkpoints, what a resume may find in its workdir (lock, config, metrics), progress
and summary figures, non-finite losses, config validation, and a 2-process gloo run."""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import saved_state
from syncmask_jax import checkpointing, config_lib, loop, main, resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthfashion.py")
TINY = ["--config.data.global_batch_size=8", "--config.queue_size=16",
        "--config.data.synth_train_products=48", "--config.data.synth_val_products=16",
        "--config.data.eval_batch_size=16", "--config.log_every=2",
        "--config.checkpoint_every=2", "--config.optim.warmup_steps=2",
        "--config.eval_at_end=False"]


def _env(devices: int = 1) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _cmd(workdir, steps, *extra):
  return [sys.executable, "-m", "syncmask_jax.main", f"--config={CONFIG}",
          f"--workdir={workdir}", f"--config.total_steps={steps}", *TINY, *extra]


def _wait_for(pred, timeout=300):
  t0 = time.time()
  while not pred():
    if time.time() - t0 > timeout:
      raise TimeoutError
    time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_exact(tmp_path):
  ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
  # The interrupted run and its resumption share a persistent compilation cache: the
  # resumed run's executables come from it and must still be bitwise exact.
  cache = str(tmp_path / "xla_cache")
  subprocess.run(_cmd(ref, 6), check=True, env=_env(), cwd=ROOT, capture_output=True)
  proc = subprocess.Popen(_cmd(cut, 6, f"--config.compilation_cache_dir={cache}"), env=_env(),
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = os.path.join(cut, "checkpoints")
  _wait_for(lambda: os.path.isdir(os.path.join(ckpt_dir, "2")) or proc.poll() is not None)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.isdir(os.path.join(ckpt_dir, "6")), "killed too late to test resume"
  assert os.listdir(cache), "the first run wrote nothing to the compilation cache"
  subprocess.run(_cmd(cut, 6, f"--config.compilation_cache_dir={cache}"), check=True,
                 env=_env(), cwd=ROOT, capture_output=True)
  a, b = saved_state(ref, 6), saved_state(cut, 6)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The resumed run logged the steps after the restored checkpoint only once more.
  steps = [json.loads(l)["step"] for l in open(os.path.join(cut, "metrics.jsonl"))
           if "train/loss" in l]
  assert steps == [2, 4, 6]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_current_step_and_exits_cleanly(tmp_path, signum):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_cmd(workdir, 10000, "--config.checkpoint_every=100000"),
                          env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  _wait_for(lambda: os.path.exists(metrics) and "train/loss" in open(metrics).read())
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
  steps = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
  assert len(steps) == 1 and 2 <= steps[0] < 10000
  assert f"stopped at step {steps[0]} by {signum.name}, checkpoint saved" in out
  # The console has one short line per log step; the files keep every metric.
  assert re.search(r"step 2/10000: loss \d+\.\d{4}, [\d.]+ steps/s, ETA \d+m\d\ds$", err,
                   re.M), err[-3000:]
  assert "grad_norm" not in err and "train/" not in err
  assert "| Name" not in err and "embeddings/word" in open(f"{workdir}/parameters.txt").read()
  rows = [json.loads(l) for l in open(metrics)]
  assert {"train/loss", "train/grad_norm", "train/loss_itc", "steps_per_sec",
          "eta_seconds"} <= set().union(*rows)
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))


def _checkpoint_at(workdir, step):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(step, {"w": np.zeros(2)}, {"position": step})
  ckpt.close()


def _start(config, workdir):
  loop.start_run(config, workdir).close()


def test_resume_with_a_changed_config_is_refused_naming_the_fields(tmp_path):
  workdir = str(tmp_path)
  c = config_lib.default_config()
  _start(c, workdir)
  _checkpoint_at(workdir, 4)
  c.log_every, c.eval.pictures = 5, 0  # logging and evaluation may change freely
  _start(c, workdir)
  c.optim.lr, c.total_steps, c.init_checkpoint = 1e-3, 400, "elsewhere"
  with pytest.raises(resume.ConfigChangeError,
                     match=r"config.init_checkpoint: '' -> 'elsewhere', config.optim.lr: "
                           r"0.0001 -> 0.001, config.total_steps: 200 -> 400\. .*"
                           r"--config.allow_config_change=True"):
    _start(c, workdir)
  stored = json.load(open(tmp_path / "config.json"))
  assert stored["optim"]["lr"] == 1e-4 and stored["log_every"] == 5  # not overwritten
  # A model of other shapes is refused even when changes are allowed.
  c.allow_config_change, c.model.embed_dim = True, 48
  with pytest.raises(resume.ConfigChangeError,
                     match=r"other shapes than this config's: config.model.embed_dim: 32 -> "
                           r"48 \("):
    _start(c, workdir)
  c.model.embed_dim = 32
  _start(c, workdir)
  assert json.load(open(tmp_path / "config.json"))["optim"]["lr"] == 1e-3
  history = [json.loads(l) for l in open(tmp_path / resume.HISTORY_FILE)]
  assert len(history) == 1 and history[0]["step"] == 4 and history[0]["changes"] == {
      "init_checkpoint": ["", "elsewhere"], "optim.lr": [1e-4, 1e-3],
      "total_steps": [200, 400]}


def test_a_second_run_in_a_workdir_is_refused_and_a_dead_runs_lock_taken_over(tmp_path):
  workdir, lock = str(tmp_path), tmp_path / resume.LOCK_FILE
  c = config_lib.default_config()
  host = socket.gethostname()
  for pid, owner_host in ((os.getppid(), host), (1, "another-host")):  # alive; unknowable
    lock.write_text(json.dumps({"pid": pid, "host": owner_host, "started": "earlier"}))
    with pytest.raises(resume.WorkdirInUseError,
                       match=f"in use by pid {pid} on host {owner_host} .started earlier"):
      _start(c, workdir)
    assert not (tmp_path / "config.json").exists()
  dead = subprocess.Popen(["true"])
  dead.wait()
  lock.write_text(json.dumps({"pid": dead.pid, "host": host, "started": "earlier"}))
  _start(c, workdir)
  assert json.loads(lock.read_text())["pid"] == os.getpid()
  _start(c, workdir)  # the same process again: its own lock


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
  """As after a kill -9 past the checkpoint of step 4: steps 6 and 8 will be redone."""
  workdir = str(tmp_path)
  _checkpoint_at(workdir, 4)
  rows = [{"step": s, "train/loss": 1.0 / s} for s in (2, 4, 6, 8)]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 10, "tra')
  _start(config_lib.default_config(), workdir)
  assert [json.loads(l) for l in open(tmp_path / "metrics.jsonl")] == rows[:2]


class _Recorder:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, dict(scalars)))


def test_progress_times_finished_steps_and_writes_the_eta():
  """The clock is read at the first step (after compilation) and at report steps only,
  once the step's result is ready."""
  clock = iter([100.0, 109.0, 119.0]).__next__
  writer = _Recorder()
  progress = loop.Progress(total_steps=25, every=10, writer=writer, clock=clock)
  for step in range(1, 21):
    progress(step, jax.numpy.zeros(()))
  assert writer.rows == [(10, {"steps_per_sec": 1.0, "eta_seconds": 15.0}),
                         (20, {"steps_per_sec": 1.0, "eta_seconds": 5.0})]
  assert progress.line(20, 2.5) == "step 20/25: loss 2.5000, 1.00 steps/s, ETA 0m05s"
  first = loop.Progress(total_steps=25, every=10, writer=writer, clock=clock)
  assert first.line(1, 3.0) == "step 1/25: loss 3.0000"  # no rate measured yet


def test_compiled_flops_are_labelled_per_device():
  class Compiled:
    def cost_analysis(self):
      return [{"flops": 3e9}]

    def memory_analysis(self):
      raise NotImplementedError

  writer = _Recorder()
  loop.log_compiled(Compiled(), writer, global_batch=8, step=6)
  assert writer.rows == [(6, {"compiled/step_gflops_per_device": 3.0})]


def test_summary_names_an_evaluation_only_when_one_ran(tmp_path, capsys):
  main._print_summary(str(tmp_path), "pretrain", {"task": "pretrain", "step": 6})
  assert "evaluation:" not in capsys.readouterr().out
  main._print_summary(str(tmp_path), "pretrain", {"task": "pretrain", "results": []})
  assert f"evaluation:   {tmp_path}/eval/pretrain.json" in capsys.readouterr().out


def test_half_written_checkpoint_is_never_restored(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  state = {"w": np.arange(4.0)}
  ckpt.save(2, state, {"position": 2})
  ckpt.close()
  # A crash mid-save leaves orbax's temporary directory behind, with partial content.
  partial = tmp_path / "4.orbax-checkpoint-tmp-1234"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.latest_step() == 2
  abstract = {"w": jax.numpy.zeros(4)}
  restored, data, step = ckpt.restore(abstract)
  assert step == 2 and data == {"position": 2}
  np.testing.assert_array_equal(restored["w"], np.arange(4.0))


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  subprocess.run(_cmd(workdir, 2), check=True, env=_env(), cwd=ROOT, capture_output=True)
  # A resume with another loss weight and step count: allowed explicitly.
  bad = subprocess.run(_cmd(workdir, 6, "--config.loss.itc=1e39",
                            "--config.allow_config_change=True"), env=_env(), cwd=ROOT,
                       capture_output=True, text=True)
  assert bad.returncode != 0
  assert "non-finite loss or gradient at step 2" in bad.stderr
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.all_steps() == [2]
  state = saved_state(workdir, 2)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("field,value,match", [
    ("masking.ratio_img", 1.5, "config.masking.ratio_img=1.5"),
    ("negatives.mode", "hardest", "config.negatives.mode='hardest'"),
    ("queue_size", 20, "config.queue_size=20"),
    ("data.max_text_len", 1000, "config.data.max_text_len=1000"),
    ("model.image_size", 70, "config.model.image_size=70"),
    ("model.dense_vjp", "manual", "config.model.dense_vjp='manual'"),
])
def test_config_validation_names_the_field(field, value, match):
  c = config_lib.default_config()
  node, _, leaf = field.rpartition(".")
  target = c
  for part in filter(None, node.split(".")):
    target = target[part]
  target[leaf] = value
  with pytest.raises(ValueError, match=match.replace("[", r"\[")):
    config_lib.validate(c)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tmp_path):
  one = str(tmp_path / "one")
  # One process with 2 devices vs two processes with 1 device each: same global mesh,
  # training and then the end-of-training evaluation (each process scores its shard).
  evaluate = ["--config.eval_at_end=True", "--config.eval.pictures=0"]
  subprocess.run(_cmd(one, 3, *evaluate), check=True, env=_env(2), cwd=ROOT,
                 capture_output=True)
  two = str(tmp_path / "two")
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(two, 3, *evaluate, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}", "--cpu_collectives=gloo"),
      env=_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
  a, b = saved_state(one, 3), saved_state(two, 3)
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(a["queue"]["product_id"], b["queue"]["product_id"])
  # The evaluation: every protocol's figures, the mask statistics and the counts agree
  # (features equal to float tolerance; ranks and hence recalls exactly).
  one_eval, two_eval = (json.load(open(os.path.join(w, "eval", "pretrain.json"),
                                       encoding="utf-8")) for w in (one, two))
  assert one_eval["num_images"] == 41 and len(one_eval["results"]) == 3  # + the twins
  assert jax.tree.structure(one_eval) == jax.tree.structure(two_eval)
  for x, y in zip(jax.tree.leaves(one_eval), jax.tree.leaves(two_eval)):
    if isinstance(x, float):
      np.testing.assert_allclose(x, y, rtol=1e-6)
    else:
      assert x == y
