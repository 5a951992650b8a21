"""Checkpoints: the whole train state and the data iterator's state, behind one class.

Orbax writes each step into a temporary directory and renames it when the write is
complete, so a checkpoint left half-written by a crash is never listed, never
restored, and is cleaned up by the next manager. Saves are asynchronous; restore goes
straight into the sharded layout of the abstract state it is given.
"""

from __future__ import annotations

from typing import Any

import os

import flax

import jax
import orbax.checkpoint as ocp
from absl import logging

from syncmask_jax import checkpoint_import, paths


def latest_step(directory: str) -> int | None:
  """The step of the latest complete checkpoint in `directory` (None: none), read-only."""
  directory = paths.resolve(directory)
  if not paths.path(directory).is_dir():
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False), item_names=("state", "data"))
  try:
    return manager.latest_step()
  finally:
    manager.close()


class Checkpointer:

  def __init__(self, directory: str, *, keep: int = 3, keep_every: int = 0,
               async_save: bool = True):
    if keep < 1:
      raise ValueError(f"config.keep_checkpoints={keep}: must be >= 1")
    if keep_every < 0:
      raise ValueError(f"config.keep_every={keep_every}: must be >= 0 (0: off)")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, keep_period=keep_every or None, create=True,
        enable_async_checkpointing=async_save)
    self.directory = paths.resolve(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
    saved = self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=ocp.args.JsonSave(data_state)), force=force)
    if saved:
      logging.info("checkpoint of step %d -> %s", step, self.directory)
    return saved

  def save_start(self, state: Any, data_state: dict) -> dict:
    """A run's starting state as its step-0 checkpoint, written through (the converter,
    `python -m syncmask_jax.convert`: the run then resumes, evaluates or is an
    init_checkpoint like any other)."""
    self.save(0, state, data_state, force=True)
    self.wait_until_finished()
    self.close()
    return {"checkpoint": os.path.join(self.directory, "0")}

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores `step` (default the latest complete one) into `abstract_state`'s layout."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      data=ocp.args.JsonRestore()))
    logging.info("restored step %d from %s", step, self.directory)
    return out["state"], out["data"], step

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host got a preemption notice (multi-host agreement)."""
    return self._manager.reached_preemption(step)

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _stored_params(directory: str, step: int | None = None, item: str = "params"
                   ) -> tuple[dict, int]:
  """The flat {path: metadata} of `item` in the latest (or `step`) checkpoint."""
  directory = paths.resolve(directory)  # Orbax has no metadata for a relative path
  if not paths.path(directory).is_dir():
    raise FileNotFoundError(f"{directory!r}: no such directory (expected a run's "
                            "checkpoints/ directory)")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False), item_names=("state", "data"))
  step = manager.latest_step() if step is None else step
  all_steps = manager.all_steps()
  manager.close()
  if step is None or step not in all_steps:
    raise FileNotFoundError(f"{directory}: no complete checkpoint"
                            + (f" of step {step}" if step is not None else ""))
  # The handler's metadata, not a PyTreeCheckpointer's: the step's metadata file sits
  # one level up (the manager's), and the checkpointer warns on every read that `state/`
  # has none.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    stored = handler.metadata(paths.path(directory) / str(step) / "state")
  finally:
    handler.close()
  if item not in stored:
    raise ValueError(f"{directory}/{step}: no {item!r} in the checkpoint's state")
  return flax.traverse_util.flatten_dict(dict(stored[item]), sep="/"), step


def holds(directory: str, prefix: str) -> bool:
  """Whether the latest checkpoint in `directory` has parameters under `prefix`."""
  stored, _ = _stored_params(directory)
  return any(k.startswith(prefix + "/") for k in stored)


def load_as_stored(directory: str, item: str, step: int | None = None) -> tuple[dict, int]:
  """`item` of the latest (or `step`) checkpoint with the shapes it was stored with (the
  queue, whose size is the run's, not the config's), on the first local device."""
  stored, step = _stored_params(directory, step, item)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = flax.traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype, sharding=device)
       for k, v in stored.items()}, sep="/")
  return load_pretrained(directory, target, item=item, step=step)


def load_pretrained(directory: str, target: dict, *, item: str = "params",
                    allow_missing: tuple[str, ...] = (), step: int | None = None
                    ) -> tuple[dict, int]:
  """`item` parameters of the latest (or `step`) checkpoint in `directory`, into
  `target`'s layout.

  `target` is a pure dict of sharded arrays or ShapeDtypeStructs (or host arrays:
  restored to the first local device). Entries the checkpoint lacks stay as in
  `target` when their path starts with one of `allow_missing` (the task's new head);
  any other missing entry, or a shape mismatch, is an error naming the parameter.
  Checkpoint entries the model lacks (a MIM decoder, SemMIM prototypes) are ignored.
  Returns (parameters, checkpoint step).
  """
  flat_stored, step = _stored_params(directory, step, item)
  directory = paths.resolve(directory)
  flat_target = flax.traverse_util.flatten_dict(target, sep="/")
  missing = [k for k in flat_target if k not in flat_stored]
  bad = [k for k in missing if not k.startswith(tuple(allow_missing))]
  if bad:
    raise ValueError(f"{directory}/{step}: {len(bad)} parameters of the model are not in the "
                     f"checkpoint, e.g. {bad[:5]} (is it a checkpoint of this model? "
                     f"{checkpoint_import.mismatch_cause(bad)})")
  mismatched = [k for k, v in flat_target.items()
                if k in flat_stored and tuple(flat_stored[k].shape) != tuple(v.shape)]
  if mismatched:
    shapes = [f"{k}: checkpoint {tuple(flat_stored[k].shape)} vs model "
              f"{tuple(flat_target[k].shape)}" for k in mismatched[:5]]
    raise ValueError(f"{directory}/{step}: shape mismatch, "
                     f"{checkpoint_import.mismatch_cause(mismatched)}: {shapes}")
  # Host arrays have no sharding: they come back on the first local device.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = flax.traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", device))
       for k, v in flat_target.items() if k in flat_stored}, sep="/")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, create=False), item_names=("state", "data"))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={item: abstract}, restore_args=ocp.checkpoint_utils.construct_restore_args(
          {item: abstract}), partial_restore=True)))["state"][item]
  manager.close()
  out = dict(flat_target)
  out.update(flax.traverse_util.flatten_dict(restored, sep="/"))
  unused = len([k for k in flat_stored if k not in flat_target])
  logging.info("%s of %s/%d: %d restored, %d not in the checkpoint (%s), %d unused", item,
               directory, step, len(flat_target) - len(missing), len(missing),
               ", ".join(allow_missing), unused)
  return flax.traverse_util.unflatten_dict(out, sep="/"), step
