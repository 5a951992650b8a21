"""Runs the PyTorch parity tests (test_checkpoint_import.py) in a subprocess.

torch and the jax/TensorFlow stack share one address space badly: PyPI's CUDA build of
torch (2.14.1) segfaulted in the first parity test when the whole tests directory was
collected in one process, though the same test passed alone (README, "Tests"). In a
subprocess a crash fails this one test, naming the signal, and the suite goes on; the
subprocess imports only what that module needs.
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


def test_checkpoint_import_parity_in_subprocess():
  env = dict(os.environ, SYNCMASK_TORCH_SUBPROCESS="1")
  # -p no:xdist: one process (the parent already runs under xdist); -rs lists the skips
  # (timm where torchvision does not import).
  cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:xdist", "-p",
         "no:cacheprovider", os.path.join(HERE, "test_checkpoint_import.py")]
  proc = subprocess.run(cmd, cwd=os.path.dirname(HERE), env=env, capture_output=True,
                        text=True, timeout=1200, check=False)
  out = proc.stdout + proc.stderr
  print(out[-4000:])
  if proc.returncode < 0:
    pytest.fail(f"the torch parity tests died with {signal.Signals(-proc.returncode).name} "
                f"in their own interpreter (a torch/jax clash?):\n{out[-4000:]}")
  assert proc.returncode == 0, out[-6000:]
