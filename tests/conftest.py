"""Test-wide setup: 8 fake CPU devices so sharded code runs on one host, and one XLA
compilation cache for the run."""

import atexit
import os
import shutil
import tempfile

# One persistent XLA compilation cache for the whole run, shared by the xdist workers and
# the subprocesses the tests start (they inherit the environment): a program one test
# compiled (the tiny model's initialiser, train step, evaluation encoders) is read back,
# not compiled again, by the next test or run that builds the same program. Made by the
# first process (pytest's controller), removed when it exits; a cache named in the
# environment is used as it is, and JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="syncmask_jax_tests_xla_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# Must be set before jax initialises its backends.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

import numpy as np
import pytest


def toy_batch(batch: int = 8, seq: int = 12, image_size: int = 64, vocab: int = 100,
              seed: int = 0) -> dict:
  """A batch in the pipeline's layout: [CLS]=2 ... [SEP]=3, [PAD]=0, half padded."""
  rs = np.random.RandomState(seed)
  ids = rs.randint(5, vocab, (batch, seq)).astype(np.int32)
  ids[:, 0] = 2
  ids[:, -1] = 3
  mask = np.ones((batch, seq), np.int32)
  half = batch // 2
  ids[:half, seq - 4:] = 0
  mask[:half, seq - 4:] = 0
  ids[:half, seq - 5] = 3
  n = (image_size // 16) ** 2
  return dict(
      image=rs.randn(batch, image_size, image_size, 3).astype(np.float32),
      text_ids=ids, text_mask=mask,
      product_id=np.array([0, 0] + list(range(1, batch - 1)), np.int32),
      gt_patch_visible=rs.rand(batch, n) > 0.5,
      gt_token_visible=(rs.rand(batch, seq) > 0.5) & mask.astype(bool))


def make_tiny_config():
  """The default config at toy_batch's size: batch 8, a queue of two batches, vocab 100."""
  from syncmask_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.default_config()
  c.data.global_batch_size = 8
  c.queue_size = 16
  c.model.vocab_size = 100
  c.model.text_dropout = 0.0
  return c


@pytest.fixture
def tiny_config():
  return make_tiny_config()


@pytest.fixture(scope="module")
def finetune_files(tmp_path_factory):
  """The fine-tuning tasks' inputs: tiny FashionGen and FashionIQ files, a vocab and a
  pretraining checkpoint (fakes.finetune_files)."""
  import fakes  # pylint: disable=g-import-not-at-top
  return fakes.finetune_files(tmp_path_factory.mktemp("finetune"))


def assert_no_host_round_trip(hlo: str) -> None:
  """No host callback or transfer in a compiled step's HLO.

  Instructions only: the HLO's stack-frame metadata names Python functions, which may
  contain any word (a test called "..._callbacks", say).
  """
  import re  # pylint: disable=g-import-not-at-top
  targets = re.findall(r'custom_call_target="([^"]+)"', hlo)
  assert not [t for t in targets if "callback" in t or "host" in t.lower()], targets
  for op in (" outfeed(", " infeed(", " send(", " recv("):
    assert op not in hlo, op


def saved_state(workdir: str, step: int):
  """A run's saved train state at `step` as host arrays, whatever device layout wrote it
  (a local or a gs:// workdir)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  path = f"{workdir}/checkpoints/{step}/state"
  meta = checkpointer.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
  return jax.device_get(checkpointer.restore(path, target))
