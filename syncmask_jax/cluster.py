"""Which accelerators each process of a SLURM job drives, and a check of what it got.

`launch/slurm_gpu.sbatch` starts one process per node (`--ntasks-per-node=1`) that drives
every GPU of its node. `jax.distributed.initialize()` alone would not do that: on SLURM
it sets `local_device_ids=[SLURM_LOCALID]`, one GPU per process (its layout for one
process per GPU), so 1 of 8 GPUs would train, silently. So the entry point passes the
ids `local_device_ids` gives, and refuses a device count other than SLURM allocated.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence


def slurm_gpus_on_node(env: Mapping[str, str]) -> int | None:
  """GPUs SLURM allocated on this node (None: not a SLURM job with GPUs)."""
  if "SLURM_JOB_ID" not in env:
    return None
  if env.get("SLURM_GPUS_ON_NODE"):
    return int(env["SLURM_GPUS_ON_NODE"])
  # --gpus-per-node=[type:]count, as the job asked.
  match = re.fullmatch(r"(?:[\w-]+:)?(\d+)", env.get("SLURM_GPUS_PER_NODE", ""))
  return int(match.group(1)) if match else None


def slurm_tasks_on_node(env: Mapping[str, str]) -> int:
  """Processes of this step on this node: SLURM_STEP_TASKS_PER_NODE is like '8(x2)' or
  '2,1' (per node, in node order), SLURM_NTASKS_PER_NODE the job's request."""
  per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
  if per_node:
    counts = [int(re.match(r"\d+", c).group()) for c in per_node.split(",")]
    return counts[min(int(env.get("SLURM_NODEID", 0)), len(counts) - 1)]
  return int(env.get("SLURM_NTASKS_PER_NODE", 1))


def local_device_ids(env: Mapping[str, str]) -> list[int] | None:
  """`local_device_ids` for jax.distributed.initialize: every allocated GPU of the node
  when one process runs per node; None (JAX's choice: SLURM_LOCALID) otherwise."""
  gpus = slurm_gpus_on_node(env)
  if gpus is None or slurm_tasks_on_node(env) != 1:
    return None
  return list(range(gpus))


def expected_local_devices(env: Mapping[str, str]) -> int | None:
  """Devices each process should see: the node's GPUs over its processes."""
  gpus = slurm_gpus_on_node(env)
  if gpus is None:
    return None
  tasks = slurm_tasks_on_node(env)
  if gpus % tasks:
    raise ValueError(f"SLURM allocated {gpus} GPUs on this node for {tasks} processes: "
                     "not a whole number each (launch/slurm_gpu.sbatch runs one per node)")
  return gpus // tasks


def check_devices(env: Mapping[str, str], local_devices: Sequence[object],
                  process_index: int) -> None:
  """Refuses a process whose device count differs from what SLURM allocated."""
  expected = expected_local_devices(env)
  if expected is not None and len(local_devices) != expected:
    raise RuntimeError(
        f"process {process_index} sees {len(local_devices)} devices ({list(local_devices)}) "
        f"but SLURM allocated {expected} to it (SLURM_GPUS_ON_NODE="
        f"{env.get('SLURM_GPUS_ON_NODE', env.get('SLURM_GPUS_PER_NODE'))}, "
        f"{slurm_tasks_on_node(env)} process(es) on the node): check --gpus-per-node, "
        "--ntasks-per-node and CUDA_VISIBLE_DEVICES")
