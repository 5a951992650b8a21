"""A released checkpoint (ALBEF's and LAVIS's `.pth` files, BLIP's) as a run's starting point.

`config.init_checkpoint` names either a run's `checkpoints/` directory (Orbax,
`checkpointing.load_pretrained`) or a released weights file; `Pretrained` reads either
into a model's parameters, so pretraining and every fine-tuning task start from both
the same way (train.init_from_checkpoint, finetune.init_from).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from syncmask_jax import checkpointing, paths
from syncmask_jax.checkpoint_import import albef, blip, files, keymap, log_report

Params = dict[str, Any]
WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors")


def is_released(path: str) -> bool:
  """A weights file or a Hugging Face directory (config.json and its weights), not a
  run's checkpoints/ directory."""
  if path.endswith(WEIGHT_FILES) or paths.path(path).is_file():
    return True
  directory = paths.path(path)
  return (directory / "config.json").exists() and any(
      (directory / name).exists() for name in ("model.safetensors", "pytorch_model.bin",
                                               "model.safetensors.index.json"))


def _place(tree: Params, like: Params) -> Params:
  """`tree`'s arrays with `like`'s shardings (host arrays where `like` has none)."""
  return jax.tree.map(
      lambda x, ref: jax.device_put(np.asarray(x, ref.dtype), ref.sharding)
      if hasattr(ref, "sharding") else np.asarray(x, ref.dtype), tree, like)


class Pretrained:
  """The parameters `config.init_checkpoint` holds, read into a model's layout."""

  def __init__(self, config: ml_collections.ConfigDict, source: str):
    self.config = config
    self.source = source
    self.released = is_released(source)
    if self.released and not paths.path(source).exists():
      raise FileNotFoundError(f"config.init_checkpoint={source!r}: no such file")

  def load(self, target: Params, *, allow_missing: tuple[str, ...] = ()
           ) -> tuple[Params, int]:
    """(`target` filled from the checkpoint, its step; 0 for a released file). A
    released file fills what it holds and leaves the rest as `target` has it (listed
    in the log); a run's checkpoint must hold all but `allow_missing`."""
    if not self.released:
      return checkpointing.load_pretrained(self.source, target, allow_missing=allow_missing)
    imported = self._import(target, partial=True)
    abstract = [k for k, v in keymap.flatten(target).items() if not hasattr(v, "__array__")]
    unfilled = [k for k in imported.report.initialised
                if k in abstract and not k.startswith(tuple(allow_missing))]
    if unfilled:  # nothing to keep for these: an error, as for a run's checkpoint
      raise ValueError(f"config.init_checkpoint={self.source!r} lacks {len(unfilled)} "
                       f"parameters this model needs, e.g. {unfilled[:5]}")
    return _place(imported.params, target), 0

  def holds(self, prefix: str) -> bool:
    """Whether the checkpoint has our parameters under `prefix` (a decoder: a VQA or
    caption checkpoint's is used as it is, a pretraining one's starts from the fusion)."""
    if not self.released:
      return checkpointing.holds(self.source, prefix)
    tensors = self._tensors
    if blip.is_blip_caption(tensors):
      return prefix in ("vision", "text_decoder")
    return prefix != "answer_decoder" or bool(albef.detect(tensors, self.source).decoder_layers)

  def load_state(self, params: Params, momentum: Params, queue: dict
                 ) -> tuple[Params, Params, dict]:
    """Pretraining's start: parameters, momentum model and queue (each as given where
    the checkpoint has none)."""
    if not self.released:
      new_params, step = checkpointing.load_pretrained(self.source, params)
      new_momentum, _ = checkpointing.load_pretrained(self.source, momentum,
                                                      item="momentum_params", step=step)
      return new_params, new_momentum, queue
    imported = self._import(params, momentum=True, queue_size=self.config.queue_size)
    new_queue = queue if imported.queue is None else _place(imported.queue, queue)
    return (_place(imported.params, params), _place(imported.momentum, momentum), new_queue)

  @functools.cached_property
  def _checkpoint(self) -> tuple[dict, dict[str, np.ndarray]]:
    """The file's (config, tensors), read once however often `holds` and `_import` ask."""
    return files.read_checkpoint(self.source, require_config=False)

  @property
  def _tensors(self) -> dict[str, np.ndarray]:
    return self._checkpoint[1]

  def _import(self, target: Params, **kw) -> albef.Imported:
    """ALBEF's checkpoints, or BLIP's caption ones (parameters only)."""
    host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)) if hasattr(x, "__array__")
                        else np.zeros(x.shape, x.dtype), target)
    if blip.is_blip_caption(self._tensors):
      if kw.get("momentum"):
        raise ValueError(f"config.init_checkpoint={self.source!r} is a BLIP caption "
                         "checkpoint: it starts the captioning task, not pretraining")
      imported = albef.Imported(*blip.import_blip_caption(
          self.source, host, self.config, checkpoint=self._checkpoint),
                                momentum=None, queue=None)
    else:
      imported = albef.import_albef(self.source, host, self.config,
                                    checkpoint=self._checkpoint, **kw)
    log_report(imported.report)
    return imported
