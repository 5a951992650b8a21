"""What a run may find in its workdir, checked before it writes anything there.

* One run per workdir: `run.lock` names the process, host and start time of the run
  holding it. A second run refuses; a lock left by a dead process of this host (kill -9,
  a crash) is taken over with a warning.
* A resume continues the stored config: `config.json` (as the run wrote it; a field
  added since reads as its default, `config_lib.with_defaults`) is compared with the new
  config. Fields that fix the checkpointed state's shapes never change on resume; any
  other difference needs `--config.allow_config_change=True` and is then logged and
  appended to `config_history.jsonl`. `FREE_ON_RESUME` lists what may change without a
  word.
* `metrics.jsonl` is cut back to the restored step, so the steps a killed run logged
  after its last checkpoint are not logged twice.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from syncmask_jax import checkpointing, config_lib, paths

LOCK_FILE = "run.lock"
HISTORY_FILE = "config_history.jsonl"

# Fields a resume may change freely: when things are logged, evaluated and checkpointed,
# and how the step is laid out on the hardware (the same math). A trailing "." is a
# whole group.
FREE_ON_RESUME = ("log_every", "checkpoint_every", "keep_checkpoints", "keep_every",
                  "eval_every", "eval_at_end", "eval.", "profile_steps",
                  "compilation_cache_dir", "tensorboard", "mesh.", "model.remat", "data.read_threads",
                  "data.prefetch_batches", "allow_config_change")

# Fields that fix the shapes of the checkpointed state (parameters, optimizer state,
# queue, SemMIM centres, a fine-tuning head): a checkpoint cannot be restored under
# other values, whatever is allowed.
STATE_FIELDS = (tuple(f"model.{k}" for k in config_lib.MODEL_PRESETS["tiny"])
                + ("model.preset", "model.vocab_size", "model.type_vocab_size",
                   "model.mim_decoder_layers", "recipe", "task", "queue_size",
                   "loss.mim_target", "semmim.num_prototypes", "semmim.shared_head",
                   "optim.grad_accum_steps", "finetune.label", "finetune.num_classes"))


class WorkdirInUseError(RuntimeError):
  pass


class ConfigChangeError(ValueError):
  pass


def claim_workdir(workdir: str) -> int | None:
  """Locks `workdir` for this run and cuts metrics.jsonl back to the checkpoint the run
  will restore. Returns that checkpoint's step (None: a fresh start). Call before the
  run writes anything there."""
  _lock_on_process_0(workdir)
  step = checkpointing.latest_step(os.path.join(workdir, "checkpoints"))
  if jax.process_index() == 0:
    truncate_metrics(os.path.join(workdir, "metrics.jsonl"), step or 0)
  return step


def record_config(config: ml_collections.ConfigDict, workdir: str, step: int | None) -> None:
  """Writes WORKDIR/config.json (process 0), first checking a resume from the checkpoint
  of `step` against the stored one (check_config). One function, so the comparison is
  always between two configs as the run writes them (both resolved, or neither)."""
  if step is not None:
    check_config(config, workdir, step)
  if jax.process_index() == 0:
    paths.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


# -- the lock ---------------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
  """The process's start time in clock ticks since boot (Linux), to tell a live process
  from a later one that reuses its pid; None where /proc has no such entry."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:  # paths: ok (not a run file)
      return f.read().rsplit(")", 1)[1].split()[19]  # field 22, starttime
  except (OSError, IndexError):
    return None


def _alive(owner: dict) -> bool:
  try:
    os.kill(int(owner["pid"]), 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  start = owner.get("pid_start")
  return start is None or _process_start(int(owner["pid"])) in (None, start)


def _read_lock(path: str) -> dict | None:
  try:
    owner = paths.read_json(path)
    if not (isinstance(owner, dict) and isinstance(owner.get("pid"), int) and "host" in owner):
      raise ValueError("expected a JSON object with pid, host and started")
    return owner
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise WorkdirInUseError(f"{path}: unreadable lock file ({e!r}); delete it if no run "
                            "uses this workdir") from e


def lock_workdir(workdir: str) -> None:
  """Creates WORKDIR/run.lock for this process, or raises WorkdirInUseError naming the
  run that holds it. Re-entrant within a process; released at exit."""
  path = os.path.join(workdir, LOCK_FILE)
  me = {"pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "pid_start": _process_start(os.getpid())}
  while not paths.create_new(path, json.dumps(me)):
    owner = _read_lock(path)
    if owner is None:  # released meanwhile
      continue
    if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
      return
    if owner.get("host") != me["host"] or _alive(owner):
      raise WorkdirInUseError(
          f"{workdir} is in use by pid {owner.get('pid')} on host {owner.get('host')} "
          f"(started {owner.get('started')}; {path}). Use another --workdir, or delete "
          "the lock file if that run is dead.") from None
    # A dead process's lock: moved aside (atomically on a local file system), so of two
    # runs taking it over only one succeeds; the other then finds the winner's lock.
    stale = paths.path(f"{path}.stale.{me['pid']}")
    try:
      paths.path(path).rename(stale)
    except FileNotFoundError:
      continue
    logging.warning("%s: taking over the lock of pid %s on %s (started %s), which is no "
                    "longer running", workdir, owner.get("pid"), owner.get("host"),
                    owner.get("started"))
    stale.unlink()
  atexit.register(_release, path, me)


def _release(path: str, me: dict) -> None:
  try:
    if _read_lock(path) == me:
      paths.path(path).unlink()
  except (OSError, WorkdirInUseError):
    pass


def _lock_on_process_0(workdir: str) -> None:
  """Only process 0 writes to the workdir, so only it locks; all processes learn the
  outcome, so a refused run stops everywhere."""
  error = None
  if jax.process_index() == 0:
    try:
      lock_workdir(workdir)
    except WorkdirInUseError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if refused and error is None:
      raise WorkdirInUseError(f"{workdir} is in use by another run (process 0's log names it)")
  if error is not None:
    raise error


# -- the config of a resume -------------------------------------------------------------


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _matches(field: str, names: tuple[str, ...]) -> bool:
  return any(field == n or (n.endswith(".") and field.startswith(n)) for n in names)


def config_changes(stored: dict, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{field: (stored, new)} for the fields outside FREE_ON_RESUME that differ, compared as
  config.json writes them (a field one side lacks is "<absent>")."""
  old = _flat(stored)
  new = _flat(json.loads(config.to_json_best_effort()))
  absent = "<absent>"
  return {k: (old.get(k, absent), new.get(k, absent)) for k in sorted(old.keys() | new.keys())
          if old.get(k, absent) != new.get(k, absent) and not _matches(k, FREE_ON_RESUME)}


def _describe(changes: dict[str, tuple]) -> str:
  return ", ".join(f"config.{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())


def check_config(config: ml_collections.ConfigDict, workdir: str, step: int) -> None:
  """Refuses a resume from the checkpoint of `step` under a config that differs from
  WORKDIR/config.json outside FREE_ON_RESUME (naming the fields), unless
  `config.allow_config_change`; state-shape fields are refused even then."""
  path = os.path.join(workdir, "config.json")
  if not paths.path(path).exists():
    return
  changes = config_changes(config_lib.with_defaults(paths.read_json(path)), config)
  if not changes:
    return
  shape = {k: v for k, v in changes.items() if _matches(k, STATE_FIELDS)}
  if shape:
    raise ConfigChangeError(
        f"{workdir} holds a checkpoint of step {step} whose state has other shapes than "
        f"this config's: {_describe(shape)} (vs {path}). Use another --workdir, or the "
        "stored values to resume.")
  if not config.allow_config_change:
    raise ConfigChangeError(
        f"resuming {workdir} from step {step} with a config that differs from {path}: "
        f"{_describe(changes)}. Rerun with the stored values, or pass "
        "--config.allow_config_change=True to continue under the new ones (recorded in "
        f"{os.path.join(workdir, HISTORY_FILE)}).")
  logging.warning("resuming %s from step %d under a changed config: %s", workdir, step,
                  _describe(changes))
  if jax.process_index() == 0:
    entry = {"step": step,
             "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "changes": {k: list(v) for k, v in changes.items()}}
    paths.append_text(os.path.join(workdir, HISTORY_FILE), json.dumps(entry) + "\n")


# -- metrics ----------------------------------------------------------------------------


def truncate_metrics(path: str, step: int) -> None:
  """Drops the rows of `path` (metrics.jsonl) logged after `step`, and a row left
  half-written by a kill: the resumed run logs those steps again."""
  if not paths.path(path).exists():
    return
  lines = paths.path(path).read_text(encoding="utf-8").splitlines(keepends=True)
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line if line.endswith("\n") else line + "\n")
    except (ValueError, KeyError, TypeError):
      pass
  if len(keep) == len(lines):
    return
  paths.write_text(path, "".join(keep))
  logging.info("%s: dropped %d rows logged after step %d", path, len(lines) - len(keep), step)
