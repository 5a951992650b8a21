"""Checks an exported AlbefPretrain state dict against LAVIS's own code.

  .venv-lavis/bin/python tests/reference/check_albef_export.py EXPORTED.pth OURS.npz

Builds the tiny AlbefPretrain of albef_tiny.py (the model of tests/data/lavis_albef/),
loads EXPORTED.pth with `load_state_dict(..., strict=True)` (a checkpoint that wraps the
state dict in {"model": ...}, as LAVIS's own checkpoints do, is unwrapped), runs the
eval-mode forward of forward.npz on tests/data/lavis_albef/inputs.npz, and compares it
with OURS.npz: each key of OURS.npz must be one of forward.npz's keys, and agree with
LAVIS within a relative error of 1e-5 (max |ours - lavis| / max |lavis|). Prints one row
per key; exits 1 on any failure (a strict-load error, an unknown key, a shape mismatch,
a non-finite value, an error above the tolerance) and 0 when every key passes.
"""

import os
import sys

import numpy as np

import albef_tiny as tiny

TOLERANCE = 1e-5


def compare(ours: dict, lavis: dict, tolerance: float = TOLERANCE) -> list[tuple]:
  """Rows (key, shape, relative error or None, status) for every key of `ours`."""
  rows = []
  for key in sorted(ours):
    a = np.asarray(ours[key])
    if key not in lavis:
      rows.append((key, a.shape, None, "FAIL: unknown key"))
      continue
    b = np.asarray(lavis[key])
    if a.shape != b.shape:
      rows.append((key, a.shape, None, f"FAIL: shape, LAVIS has {b.shape}"))
      continue
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if not np.all(np.isfinite(a64)):
      rows.append((key, a.shape, None, "FAIL: non-finite values"))
      continue
    scale = np.max(np.abs(b64)) if b64.size else 0.0
    diff = np.max(np.abs(a64 - b64)) if a64.size else 0.0
    error = diff / scale if scale > 0 else diff
    rows.append((key, a.shape, error, "ok" if error <= tolerance else "FAIL"))
  return rows


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(__doc__.strip().splitlines()[2], file=sys.stderr)
    return 2
  exported, ours_file = argv
  tiny.setup()
  import torch
  torch.set_num_threads(1)
  state = torch.load(exported, map_location="cpu")
  if isinstance(state, dict) and "model" in state and not torch.is_tensor(state["model"]):
    state = state["model"]
  model = tiny.build_pretrain()
  try:
    model.load_state_dict(state, strict=True)
  except RuntimeError as error:
    print(f"FAIL: strict load of {exported}:\n{error}")
    return 1
  with np.load(os.path.join(tiny.DATA, "inputs.npz")) as inputs:
    lavis = tiny.eval_forward(model, dict(inputs))
  with np.load(ours_file) as f:
    ours = dict(f)
  if not ours:
    print(f"FAIL: {ours_file} holds no arrays")
    return 1
  rows = compare(ours, lavis)
  width = max(len(r[0]) for r in rows)
  print(f"{'key':<{width}}  {'shape':<16} {'rel. error':>11}  status")
  for key, shape, error, status in rows:
    shown = "-" if error is None else f"{error:.3e}"
    print(f"{key:<{width}}  {str(shape):<16} {shown:>11}  {status}")
  failed = [r[0] for r in rows if r[3] != "ok"]
  print(f"{len(rows) - len(failed)}/{len(rows)} keys within {TOLERANCE:g}"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
