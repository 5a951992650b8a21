"""The multi-host launchers' dry runs (launch/slurm_gpu.sbatch, launch/tpu_pod.sh), the
shell quoting of overrides through them, and the SLURM device check (cluster.py)."""

import os
import re
import subprocess

import pytest

from syncmask_jax import cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tuple override: commas, parentheses, quotes and a space, as a user types it.
OVERRIDE = '--config.eval.scoring=("itc", "itc+itm")'
MAIN = ["-m", "syncmask_jax.main", "--distributed"]


def _argv(line: str) -> list[str]:
  """The words bash makes of `line` (one level of quoting removed)."""
  out = subprocess.run(["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", line],
                       capture_output=True, text=True, check=True).stdout
  return out.split("\0")[:-1]


def _dry_run(argv, **env):
  out = subprocess.run(argv, cwd=ROOT, env={**os.environ, "DRY_RUN": "1", **env},
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_slurm_dry_run_two_nodes_one_process_each_with_all_gpus():
  out = _dry_run(["bash", "launch/slurm_gpu.sbatch", "configs/fashiongen.py", "/shared/fg",
                  OVERRIDE], SLURM_JOB_NUM_NODES="2")
  lines = out.splitlines()
  srun = _argv(lines[1])
  assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
  nodes = [i for i, l in enumerate(lines) if l.startswith("# node ")]
  assert len(nodes) == 2
  for rank, i in enumerate(nodes):
    assert f"process {rank} of 2" in lines[i] and "GPUs 0-7" in lines[i]
    argv = _argv(lines[i + 1])
    assert argv[0] == ".venv/bin/python" and argv[1:4] == MAIN
    assert argv == srun[3:]
    assert argv[-1] == OVERRIDE and "--workdir=/shared/fg" in argv


def test_tpu_dry_run_four_workers_detached_with_quoted_overrides():
  out = _dry_run(["bash", "launch/tpu_pod.sh", "configs/fashiongen.py", "gs://bucket/fg",
                  OVERRIDE, "--config.data.root=/mnt/with space"],
                 TPU="my-v4-32", ZONE="us-central2-b", WORKERS="4")
  lines = out.splitlines()
  copy = [_argv(l) for l in lines if l.startswith("gcloud compute tpus tpu-vm scp")]
  assert len(copy) == 1 and "--worker=all" in copy[0]
  ssh = [_argv(l) for l in lines if l.startswith("gcloud") and "--worker=all" not in l]
  assert len(ssh) == 4
  for i, argv in enumerate(ssh):
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
    assert f"--worker={i}" in argv
    script = next(a for a in argv if a.startswith("--command=")).split("=", 1)[1]
    # Installs once per commit, runs detached, logs locally and to the bucket.
    assert "if [ ! -f .venv/.tpu-installed ]" in script and "launch/venv.sh" in script
    assert re.search(rf"setsid nohup bash \S+/worker\.sh > \S+/worker-{i}\.log", script)
    assert f"gs://bucket/fg/logs/worker-{i}.log" in script
    # The trainer's line in the worker's script: the worker's bash parses it once.
    trainer = next(l for l in script.splitlines() if "syncmask_jax.main" in l)
    words = _argv(trainer.rstrip("& "))
    assert words[0] == ".venv/bin/python" and words[1:4] == MAIN
    assert words[-2:] == [OVERRIDE, "--config.data.root=/mnt/with space"]
  assert "kill -TERM" in out and "tail -f" in out  # how to stop and follow


def test_tpu_dry_run_needs_the_worker_count():
  out = subprocess.run(["bash", "launch/tpu_pod.sh", "c.py", "gs://b/r"], cwd=ROOT,
                       env={**os.environ, "DRY_RUN": "1", "TPU": "t", "ZONE": "z"},
                       capture_output=True, text=True, timeout=60)
  assert out.returncode != 0 and "WORKERS" in out.stderr


def test_readme_multi_host_section_shows_the_launchers_and_their_dry_runs():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  section = readme.split("### Multi-host", 1)[1].split("\n## ", 1)[0]
  for text in ("launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "DRY_RUN=1", ".[cuda]",
               "gs://"):
    assert text in section, text


SLURM_NODE = {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "8",
              "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_NODEID": "1", "SLURM_LOCALID": "0"}


def test_one_process_per_node_gets_every_gpu_of_the_node():
  assert cluster.local_device_ids(SLURM_NODE) == list(range(8))
  assert cluster.expected_local_devices(SLURM_NODE) == 8
  cluster.check_devices(SLURM_NODE, list(range(8)), 1)
  with pytest.raises(RuntimeError, match=r"process 1 sees 1 devices .* SLURM allocated 8"):
    cluster.check_devices(SLURM_NODE, [0], 1)  # jax's default: SLURM_LOCALID's GPU only


def test_one_process_per_gpu_keeps_jax_default_and_checks_one_each():
  env = {**SLURM_NODE, "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}
  assert cluster.local_device_ids(env) is None
  assert cluster.expected_local_devices(env) == 1
  env = {"SLURM_JOB_ID": "7", "SLURM_GPUS_PER_NODE": "a100:4", "SLURM_NTASKS_PER_NODE": "3"}
  with pytest.raises(ValueError, match="4 GPUs on this node for 3 processes"):
    cluster.expected_local_devices(env)
  assert cluster.local_device_ids({}) is None and cluster.expected_local_devices({}) is None
