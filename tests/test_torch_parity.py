"""Runs the PyTorch parity tests (test_checkpoint_import.py: transformers and timm;
test_released_weights.py: LAVIS's ALBEF) in subprocesses.

torch and the rest of the suite share one address space badly. With PyPI's CUDA build of
torch (2.14.1, which brings triton), collecting the whole tests directory segfaulted the
first parity test: the data tests import TensorFlow, which loads its own LLVM with
RTLD_GLOBAL (tensorflow/python/pywrap_dlopen_global_flags.py); transformers' BERT then
imports torch._dynamo -> triton, and the static initialisers of libtriton.so (another
LLVM) bind to TensorFlow's llvm::DebugCounter and crash in free(). Alone, TensorFlow
is never imported and the test passes. In a subprocess that imports only this module's
needs, the clash cannot happen, and any other crash fails this one test, naming the
signal, while the suite goes on.
"""

import importlib.util
import os
import signal
import subprocess
import sys

import pytest

# Looked up, not imported: importing torch here would bring back the shared process.
for _name in ("torch", "transformers"):
  if importlib.util.find_spec(_name) is None:
    pytest.skip(f"{_name} is not installed (the test extra: pip install -e '.[test]')",
                allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("module", ["test_checkpoint_import.py", "test_released_weights.py"])
def test_torch_parity_in_subprocess(module):
  env = dict(os.environ, SYNCMASK_TORCH_SUBPROCESS="1")
  # -p no:xdist: one process (the parent already runs under xdist); -rs lists the skips
  # (timm where torchvision does not import).
  cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:xdist", "-p",
         "no:cacheprovider", os.path.join(HERE, module)]
  proc = subprocess.run(cmd, cwd=os.path.dirname(HERE), env=env, capture_output=True,
                        text=True, timeout=1200, check=False)
  out = proc.stdout + proc.stderr
  print(out[-4000:])
  if proc.returncode < 0:
    pytest.fail(f"the torch parity tests died with {signal.Signals(-proc.returncode).name} "
                f"in their own interpreter (a torch/jax clash?):\n{out[-4000:]}")
  assert proc.returncode == 0, out[-6000:]
