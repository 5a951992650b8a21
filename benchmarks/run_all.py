"""Runs every benchmark (each in its own process) and prints one table against the targets.

  python benchmarks/run_all.py [--out benchmarks/results] [--wait_quiet 1.2]
      [--max_wait_s 1500] [--quick]

Waits (up to --max_wait_s before the first benchmark, --max_wait_next_s before the
others) for the 1-minute load average to fall below --wait_quiet, then runs:

  step_throughput.py  tiny,small: JAX vs PyTorch, MFU, SyncMask overhead, pipeline
  memory.py           tiny,small,base: compile time, compiled memory, FSDP split
  retrieval_eval.py   2.5k/5k/10k: itc and itc+itm (k=16) scoring time

and writes their JSON under --out, then `summary.json` and the table below. `--quick`
shortens everything (a smoke run; its numbers are not the results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def wait(threshold: float, max_wait_s: float) -> tuple[float, float]:
  start = time.time()
  while os.getloadavg()[0] >= threshold and time.time() - start < max_wait_s:
    time.sleep(20)
  return os.getloadavg()[0], time.time() - start


def run(script: str, args: list[str], out: str, threshold: float, max_wait_s: float) -> dict:
  load, waited = wait(threshold, max_wait_s)
  path = os.path.join(out, script.replace(".py", ".json"))
  cmd = [sys.executable, os.path.join(HERE, script), *args, "--json", path]
  print(f"\n$ {' '.join(cmd)}   (load {load:.2f} after waiting {waited:.0f}s)", flush=True)
  subprocess.run(cmd, check=True)
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
  ok = value >= target if higher_is_better else value <= target
  return "met" if ok else "MISSED"


def summarize(step: dict, memory: dict, retrieval: dict) -> list[tuple]:
  rows = []
  for r in step["results"]:
    p, load = r["preset"], r["load_1min_during"]
    tag = f"load {load['min']:.2f}-{load['max']:.2f}"
    eps = r["examples_per_s"]
    rows.append((p, "JAX syncmask step", f"{eps['jax_syncmask']:.1f} ex/s", "", tag))
    if "jax_over_torch" in r:
      rows.append((p, "PyTorch reference step", f"{eps['torch_syncmask']:.1f} ex/s", "", tag))
      rows.append((p, "JAX / PyTorch", f"{r['jax_over_torch']:.2f}x", ">= 1.5x: "
                   + verdict(r["jax_over_torch"], 1.5), tag))
    rows.append((p, "MFU (cost_analysis FLOPs)", f"{100 * r['mfu']['syncmask']:.1f}%",
                 (">= 40%: " + verdict(r["mfu"]["syncmask"], 0.4)) if p == "small" else "",
                 tag))
    rows.append((p, "MFU (matmul FLOPs only)", f"{100 * r['mfu_matmul_only']['syncmask']:.1f}%",
                 "", tag))
    rows.append((p, "peak float32 jnp.dot", f"{r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s", "",
                 tag))
    rows.append((p, "SyncMask vs random masks", f"{100 * r['syncmask_overhead_vs_random']:+.1f}%",
                 "<= 15%: " + verdict(r["syncmask_overhead_vs_random"], 0.15, False), tag))
    rows.append((p, "SyncMask vs albef recipe", f"{100 * r['syncmask_overhead_vs_albef']:+.1f}%",
                 "", tag))
    if "pipeline_over_step" in r:
      rows.append((p, "pipeline / step rate", f"{r['pipeline_over_step']:.2f}x",
                   ">= 3x: " + verdict(r["pipeline_over_step"], 3.0), tag))
  b = memory["batch_size"]
  load = memory["machine"]["load_average"][0]
  for p, r in memory["results"].items():
    tag = f"load {load:.2f}"
    if "memory" in r:
      rows.append((p, "compile time (lower+compile)", f"{r['lower_s'] + r['compile_s']:.1f} s",
                   "", tag))
      m = r["memory"]
      rows.append((p, "compiled peak / example", f"{m['peak'] / b / 2**20:.2f} MiB",
                   f"(no-alias {m['peak_without_alias'] / b / 2**20:.2f})", tag))
    ratio = r["fsdp"]["ratio_to_ideal"]
    rows.append((p, "FSDP-8 state / device vs 1/8", f"{ratio:.3f}x",
                 "<= 1.10x: " + verdict(ratio, 1.10, False), "-"))
  for r in retrieval["results"]:
    rows.append(("eval", f"{r['n']}x{r['n']} retrieval, {r['scoring']}", f"{r['seconds']:.1f} s",
                 "", f"load {r['load_1min']:.2f}"))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(HERE, "results"))
  parser.add_argument("--wait_quiet", type=float, default=1.2)
  parser.add_argument("--max_wait_s", type=float, default=1500.0)
  parser.add_argument("--max_wait_next_s", type=float, default=300.0)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  first, rest = (args.wait_quiet, args.max_wait_s), (args.wait_quiet, args.max_wait_next_s)
  if args.quick:
    step_args = ["--presets", "tiny", "--rounds", "2", "--k", "2", "--pipeline_batches", "4"]
    mem_args = ["--presets", "tiny"]
    ret_args = ["--sizes", "500,1000"]
  else:
    step_args = ["--rounds", "6", "--k", "3"]
    mem_args, ret_args = [], []
  step = run("step_throughput.py", step_args, args.out, *first)
  memory = run("memory.py", mem_args, args.out, *rest)
  retrieval = run("retrieval_eval.py", ret_args, args.out, *rest)
  rows = summarize(step, memory, retrieval)
  m = step["machine"]
  print(f"\nmachine: {m['cpu_count']} cpus ({m['cpu_model']}), jax {m['versions']['jax']}, "
        f"torch {m['versions'].get('torch')}, load at start {m['load_average']}")
  widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
  for r in rows:
    print("  ".join(f"{str(c):{w}s}" for c, w in zip(r, widths)))
  with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"machine": m, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
