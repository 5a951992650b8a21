"""What every benchmark shares: machine facts, quiet-machine wait, configs, batches, the
compiled JAX step, medians.

Each benchmark prints its figures beside `machine_info()` (cpu count, model name, load
average, versions) and writes them with it to `--json`, so a number is never read
without the machine and the config it was measured on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from syncmask_jax import config_lib  # noqa: E402
from syncmask_jax import optim, sharding, tokenizer, train_state, train_step  # noqa: E402
from syncmask_jax.data import pipeline  # noqa: E402


# -- the machine ----------------------------------------------------------------------


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float]:
  return tuple(round(x, 2) for x in os.getloadavg())


def versions() -> dict[str, str]:
  out = {"python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__}
  for name in ("jaxlib", "flax", "optax", "torch", "transformers"):
    try:
      out[name] = __import__(name).__version__
    except ImportError:
      pass
  return out


def machine_info() -> dict[str, Any]:
  return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
          "cpu_model": cpu_model(), "platform": platform.platform(),
          "jax_devices": [str(d) for d in jax.devices()],
          "load_average": load_average(), "versions": versions(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def wait_for_quiet(threshold: float = 1.2, max_wait_s: float = 1500.0,
                   poll_s: float = 20.0) -> dict[str, Any]:
  """Polls the 1-minute load average until it is below `threshold` (other agents share
  the cores; a busy machine halves a 2-core timing). Gives up after `max_wait_s` and
  says so in the result rather than failing: a busy timing, labelled, beats none."""
  start = time.time()
  first = load_average()
  while os.getloadavg()[0] >= threshold and time.time() - start < max_wait_s:
    time.sleep(poll_s)
  now = load_average()
  return {"threshold": threshold, "waited_s": round(time.time() - start, 1),
          "load_before": first, "load_after": now, "quiet": now[0] < threshold}


# -- timing ---------------------------------------------------------------------------


def summarize(times: list[float]) -> dict[str, float]:
  """Median (the figure) and the spread that says how much to trust it."""
  q = np.percentile(times, [10, 90])
  return {"median_s": statistics.median(times), "p10_s": float(q[0]), "p90_s": float(q[1]),
          "n": len(times)}


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, k: int, pause_s: float,
                after_round: Callable[[], Any] | None = None
                ) -> tuple[dict[str, list[float]], list[float]]:
  """Times `k` calls of each function per round, the functions taking turns, so a change
  of machine load hits all of them alike; returns the times per name and the 1-minute
  load average at each round's start."""
  times = {name: [] for name in calls}
  load = []
  for _ in range(rounds):
    load.append(os.getloadavg()[0])
    for name, call in calls.items():
      # Idle between blocks so neither runtime's spinning worker threads (OpenMP's,
      # XLA's) eat into the next block's timing.
      time.sleep(pause_s)
      times[name] += time_calls(call, k)
    if after_round is not None:
      after_round()
  return times, load


def write_json(path: str, payload: dict) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1, default=str)
  print(f"wrote {path}")


# -- configs and batches --------------------------------------------------------------


def experiment_config(preset: str, recipe: str = "syncmask", batch_size: int = 32,
                      vocab_size: int | None = None):
  """`configs/synthfashion.py` (the embedded default experiment) at `preset` size: the
  config a user actually trains, not one tuned for the benchmark."""
  spec = importlib.util.spec_from_file_location(
      "synthfashion_config", os.path.join(ROOT, "configs", "synthfashion.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"recipe={recipe},size={preset}")
  c.data.global_batch_size = batch_size
  c.queue_size = max(c.queue_size // batch_size, 1) * batch_size
  if vocab_size is not None:
    c.model.vocab_size = vocab_size
  return c


def variant(config, name: str):
  """The masking ablations of the overhead comparison, on copies of `config`:
  `syncmask` (as is), `random` (same step, uniform masks: same MIM and MLM work) and
  `albef` (the baseline recipe: random masks, hard negatives, no MIM)."""
  c = config.copy_and_resolve_references()
  if name == "random":
    c.masking.strategy = "random"
  elif name == "albef":
    c = config_lib.apply_recipe(c, "albef")
  elif name != "syncmask":
    raise ValueError(f"variant {name!r}: expected syncmask | random | albef")
  return c


def real_batch(config, seed: int = 0) -> tuple[dict[str, np.ndarray], tokenizer.TokenInfo]:
  """One host batch from the real SynthFashion pipeline (realistic caption lengths and
  padding), and the tokenizer's special ids; sets `config.model.vocab_size`."""
  c = config.copy_and_resolve_references()
  c.seed = seed
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  batch = next(it)
  tokens = tokenizer.token_info(it.tokenizer)
  it.close()
  config.model.vocab_size = tokens.vocab_size
  return batch, tokens


# -- the JAX step ---------------------------------------------------------------------


def compiled_step(config, tokens: tokenizer.TokenInfo, host_batch: dict[str, np.ndarray],
                  devices=None, steps_per_epoch: int = 1000,
                  state_on_host: bool = False) -> dict[str, Any]:
  """The train step exactly as `train.py` builds it (state, jit over the mesh with
  donated state), lowered and compiled once; compile time and XLA's analyses.

  `state_on_host`: initialise the state with the CPU backend and place it on `devices`
  (same shardings). Only the initial values' origin differs; on a GPU it saves the ~2
  minutes XLA:GPU takes to compile the state's initialiser (hundreds of RNG kernels)."""
  mesh = sharding.make_mesh(config.mesh, devices if devices is not None else jax.devices())
  make_tx = lambda p: optim.make_optimizer(config.optim, p, config.total_steps)
  if state_on_host:
    init, setup = train_state.make_setup(config, mesh, make_tx)
    with jax.default_device(jax.devices("cpu")[0]):
      host_state = jax.jit(init)()
    state = jax.device_put(host_state, setup.state_shardings)
    del host_state
  else:
    state, setup = train_state.create_train_state(config, mesh, make_tx)
  fn = train_step.make_train_step(config, setup, tokens, steps_per_epoch)
  jitted = train_step.jit_train_step(fn, setup, config, host_batch)
  batch = pipeline.make_global_batch(
      host_batch, mesh, train_step.batch_shardings(mesh, config.mesh.axis_rules, host_batch))
  t0 = time.perf_counter()
  lowered = jitted.lower(state, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return {"compiled": compiled, "state": state, "batch": batch, "setup": setup,
          "lower_s": t1 - t0, "compile_s": t2 - t1, "flops": step_flops(compiled),
          "matmul_flops": matmul_flops(compiled),
          "memory": memory_bytes(compiled)}


def lowered_step_flops(config, tokens: tokenizer.TokenInfo, host_batch: dict[str, np.ndarray],
                       devices=None, steps_per_epoch: int = 1000) -> float:
  """FLOPs of the step's HLO before backend optimisation, from abstract state and batch:
  no array is created and nothing compiled, so `base` costs seconds on the CPU. The
  figure for MFU on a GPU, whose cost analysis of the compiled step misses most FLOPs
  (presumably the GEMMs handed to cuBLAS) and, of the `Lowered`, reports nothing."""
  mesh = sharding.make_mesh(config.mesh, devices if devices is not None else jax.devices())
  init, setup = train_state.make_setup(
      config, mesh, lambda p: optim.make_optimizer(config.optim, p, config.total_steps))
  fn = train_step.make_train_step(config, setup, tokens, steps_per_epoch)
  jitted = train_step.jit_train_step(fn, setup, config, host_batch)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}
  return step_flops(jitted.lower(jax.eval_shape(init), batch))


def step_flops(compiled) -> float:
  """XLA's cost analysis of a compiled step, or of a `Lowered` one (the HLO before backend
  optimisation: the same count whatever the backend fuses or hands to a library)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float((cost or {}).get("flops", 0.0))  # None where the backend gives none


_HLO_DEF = re.compile(r"%([\w.-]+) = (\w+)\[([\d,]*)\]")
_HLO_DOT = re.compile(r"%[\w.-]+ = \w+\[([\d,]*)\]\S* dot\(%([\w.-]+), %[\w.-]+\), ([^\n]*)")


def matmul_flops(compiled) -> float:
  """2 * M * N * K summed over every dot of the optimised HLO (fused ones included).

  `cost_analysis()['flops']` also counts elementwise work (an erf GELU is ~64 flops an
  element), so this is the share that can run at matmul peak.
  """
  text = compiled.as_text()
  shapes = {m.group(1): [int(d) for d in m.group(3).split(",") if d]
            for m in _HLO_DEF.finditer(text)}
  total = 0.0
  for m in _HLO_DOT.finditer(text):
    out = [int(d) for d in m.group(1).split(",") if d]
    lhs = shapes.get(m.group(2))
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", m.group(3))
    k = 1
    if lhs is not None and contracting and contracting.group(1):
      k = int(np.prod([lhs[int(i)] for i in contracting.group(1).split(",")]))
    total += 2.0 * k * float(np.prod(out))
  return total


def memory_bytes(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
         ("temp", "argument", "output", "alias", "generated_code")}
  out["peak"] = out["temp"] + out["argument"] + out["output"]
  # Donated state buffers are both argument and output: counted once they are the
  # real footprint.
  out["peak_without_alias"] = out["peak"] - out["alias"]
  return out


class JaxRunner:
  """Calls a compiled step on its own (donated) state; `step()` returns when done."""

  def __init__(self, built: dict[str, Any]):
    self.compiled, self.state, self.batch = built["compiled"], built["state"], built["batch"]
    self.metrics = None

  def step(self) -> None:
    self.steps(1)

  def steps(self, k: int) -> None:
    """k steps dispatched back to back, one wait at the end (an accelerator queues them)."""
    for _ in range(k):
      self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready(self.metrics["loss"])
    jax.block_until_ready(self.state.step)


def peak_matmul_flops(n: int = 2048, repeats: int = 10,
                      dtype: str = "float32") -> dict[str, float]:
  """The machine's matmul rate in `dtype`: a large jnp.dot, median of `repeats` calls."""
  a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), jax.numpy.dtype(dtype))
  f = jax.jit(jax.numpy.dot)
  f(a, b).block_until_ready()
  times = time_calls(lambda: f(a, b).block_until_ready(), repeats)
  med = statistics.median(times)
  return {"n": n, "median_s": med, "flops_per_s": 2.0 * n ** 3 / med,
          "best_flops_per_s": 2.0 * n ** 3 / min(times)}
