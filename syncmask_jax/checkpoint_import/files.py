"""Reading and writing checkpoint files: safetensors, torch pickles, Hugging Face
directories. Every layout module reads through here; nothing here knows a layout.

A Hugging Face checkpoint is a directory holding `config.json` and `model.safetensors`
(or a sharded `model.safetensors.index.json`), or `pytorch_model.bin` when torch is
installed. A single weights file is safetensors by its extension, else a torch pickle
(`.pth`, `.pt`, `.bin`: a state dict, possibly under "model" or "state_dict", as
ALBEF's and BLIP's released files).
"""

from __future__ import annotations

import io
import json
import os
import pickle
from typing import Any

import ml_dtypes
import numpy as np

from syncmask_jax import paths


def _read_safetensors_raw(raw: bytes) -> dict[str, np.ndarray]:
  """Minimal safetensors reader for dtypes numpy lacks (bfloat16, float8): the format is
  an 8-byte header length, a JSON header, then the raw little-endian tensors."""
  dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
            "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
            "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64, "I32": np.int32,
            "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
  n = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8:8 + n])
  data = raw[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[start:end], dtypes[info["dtype"]]).reshape(info["shape"])
  return out


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
  raw = paths.path(path).read_bytes()  # an init checkpoint may sit in a bucket
  try:
    try:
      return load(raw)
    except (TypeError, KeyError):  # bfloat16 and friends are not numpy dtypes (the
      # numpy loader of bytes raises KeyError('BF16'), of a file TypeError).
      return _read_safetensors_raw(raw)
  except OSError:
    raise  # names the file already
  except Exception as e:  # SafetensorError (no file name), the raw reader's errors
    raise ValueError(f"cannot read {path!r} as safetensors ({type(e).__name__}: {e}); "
                     "a truncated download or not a safetensors file?") from e


def read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{path} is a PyTorch pickle and torch is not installed: convert the checkpoint to "
        "safetensors (e.g. `transformers` `save_pretrained(dir, safe_serialization=True)` or "
        "`safetensors.torch.save_file`) or install torch") from e
  try:
    state = torch.load(io.BytesIO(paths.path(path).read_bytes()), map_location="cpu",
                       weights_only=True)
  except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
    raise ValueError(f"cannot read {path!r} as a torch checkpoint (a truncated download, or "
                     f"not a state dict?): {e}") from e
  if not isinstance(state, dict):
    raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict")
  state = state.get("model", state.get("state_dict", state))
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items() if hasattr(v, "numpy")}


def save_torch(path: str, tensors: dict[str, np.ndarray], under: str | None = None) -> None:
  """torch.save of a flat state dict (float32 stays float32, int64 stays int64); with
  `under`, wrapped as {under: state dict}, as ALBEF's released files hold "model"."""
  import torch  # pylint: disable=g-import-not-at-top
  state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in tensors.items()}
  if under:
    state = {under: state}
  buffer = io.BytesIO()
  torch.save(state, buffer)
  paths.path(path).write_bytes(buffer.getvalue())


def normalise_key(key: str) -> str:
  # Original Google BERT conversions (bert-base-uncased among them) name LN params
  # gamma/beta; later ones weight/bias.
  if key.endswith("LayerNorm.gamma"):
    return key[:-len("gamma")] + "weight"
  if key.endswith("LayerNorm.beta"):
    return key[:-len("beta")] + "bias"
  return key


def read_weights_file(path: str) -> dict[str, np.ndarray]:
  """A single weights file: safetensors by its extension, else a torch pickle."""
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  return read_torch(path)


def read_checkpoint(path: str, *, require_config: bool = True
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json contents, {key: array}) of a checkpoint.

  `path` is a directory with `model.safetensors` (or a sharded index) or
  `pytorch_model.bin`, and `config.json`. With `require_config=False` the config may be
  absent ({} then) and `path` may also be a single weights file (`read_weights_file`).
  """
  if not require_config and paths.path(path).is_file():
    return {}, {normalise_key(k): v for k, v in read_weights_file(path).items()}
  if not paths.path(path).is_dir():
    if require_config and paths.path(path).is_file():
      raise FileNotFoundError(f"checkpoint {path!r} is a file: expected the checkpoint "
                              "directory holding config.json and the weights, "
                              f"{os.path.dirname(path) or '.'!r}")
    if require_config:
      raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    raise FileNotFoundError(f"checkpoint {path!r} does not exist: expected a checkpoint "
                            "directory or a .safetensors/.pth/.pt/.bin file")
  config_path = os.path.join(path, "config.json")
  hf_config: dict[str, Any] = {}
  if paths.path(config_path).exists():
    hf_config = paths.read_json(config_path)
  elif require_config:
    raise FileNotFoundError(f"no config.json in checkpoint directory {path!r}")
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  torch_bin = os.path.join(path, "pytorch_model.bin")
  if paths.path(single).exists():
    tensors = read_safetensors(single)
  elif paths.path(index).exists():
    shards = sorted(set(paths.read_json(index)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(read_safetensors(os.path.join(path, shard)))
  elif paths.path(torch_bin).exists():
    tensors = read_torch(torch_bin)
  else:
    raise FileNotFoundError(
        f"no weights in checkpoint directory {path!r}: expected model.safetensors, "
        "model.safetensors.index.json or pytorch_model.bin")
  return hf_config, {normalise_key(k): v for k, v in tensors.items()}
