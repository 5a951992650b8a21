"""Checkpoints: the whole train state and the data iterator's state, behind one class.

Orbax writes each step into a temporary directory and renames it when the write is
complete, so a checkpoint left half-written by a crash is never listed, never
restored, and is cleaned up by the next manager. Saves are asynchronous; restore goes
straight into the sharded layout of the abstract state it is given.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from syncmask_jax import paths


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
