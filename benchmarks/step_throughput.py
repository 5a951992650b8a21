"""Train-step speed: JAX vs the PyTorch reference, MFU, SyncMask overhead, input headroom.

For each model preset (SynthFashion experiment config, real pipeline batch) it compiles
the JAX step of three variants (`syncmask`, `random` masks with the same MIM/MLM,
the `albef` recipe) and builds the PyTorch reference step (`torch_reference.py`), then
runs them *interleaved* in rounds (k steps of each per round) so a change of machine
load hits all of them alike. Figures, all from that one run:

* examples/s (batch / median step time, compile excluded) of each, JAX/PyTorch ratio;
* MFU: the compiled step's FLOPs (`cost_analysis`) / median step time / the peak of
  a large float32 `jnp.dot` measured in the same run;
* SyncMask overhead: syncmask step time / random (and / albef) - 1;
* input pipeline (benchmarks/pipeline.py's `measure`, same data config) / step rate;
* compile time and compiled memory (temp + argument + output) of the step.

  python benchmarks/step_throughput.py [--presets tiny,small] [--rounds 8] [--k 5]
      [--batch_size 32] [--wait_quiet 1.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets sys.path for syncmask_jax)
import jax  # noqa: E402
import torch  # noqa: E402

import torch_reference  # noqa: E402

VARIANTS = ("syncmask", "random", "albef")


def load_pipeline_bench():
  spec = importlib.util.spec_from_file_location(
      "pipeline_bench", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_preset(preset: str, args) -> dict:
  config = common.experiment_config(preset, "syncmask", args.batch_size)
  host_batch, tokens = common.real_batch(config)
  b = args.batch_size
  out = {"preset": preset, "batch_size": b, "model": config.model.to_dict(),
         "text_len": int(host_batch["text_ids"].shape[1]),
         "mean_valid_tokens": float(host_batch["text_mask"].sum(1).mean())}

  runners, built_info = {}, {}
  for name in VARIANTS:
    c = common.variant(config, name)
    built = common.compiled_step(c, tokens, host_batch, devices=jax.devices()[:1])
    runners[f"jax_{name}"] = common.JaxRunner(built)
    built_info[name] = {k: built[k] for k in ("lower_s", "compile_s", "flops", "matmul_flops",
                                              "memory")}
    print(f"[{preset}] jax {name}: lower {built['lower_s']:.1f}s compile "
          f"{built['compile_s']:.1f}s, {built['flops'] / 1e9:.2f} GFLOP/step", flush=True)
  out["jax"] = built_info
  params = runners["jax_syncmask"].state.params
  out["jax_params"] = int(sum(x.size for x in jax.tree.leaves(params)))

  calls = {k: r.step for k, r in runners.items()}
  if not args.skip_torch:
    ref = torch_reference.TorchSyncMaskStep(config, tokens, attn=args.torch_attn)
    torch_batch = ref.to_torch(host_batch)
    calls["torch_syncmask"] = lambda: ref.step(torch_batch)
    out["torch_params"] = ref.num_params()
    out["torch_attn"] = args.torch_attn

  for name, call in calls.items():  # warm-up: first calls allocate, fill caches
    for _ in range(args.warmup):
      call()
  peaks = []
  times, load = common.interleaved(
      calls, args.rounds, args.k, args.pause_s, after_round=lambda: peaks.append(
          common.peak_matmul_flops(args.peak_n, repeats=3)["flops_per_s"]))
  peak = statistics.median(peaks)
  out["peak_flops_per_s"] = peak
  out["peak_samples"] = peaks
  out["load_1min_during"] = {"min": min(load), "max": max(load),
                             "median": statistics.median(load)}
  out["times"] = {name: common.summarize(t) for name, t in times.items()}
  med = {name: s["median_s"] for name, s in out["times"].items()}
  out["examples_per_s"] = {name: b / m for name, m in med.items()}
  flops = built_info["syncmask"]["flops"]
  out["mfu"] = {name: built_info[name]["flops"] / med[f"jax_{name}"] / peak
                for name in VARIANTS}
  out["mfu_matmul_only"] = {name: built_info[name]["matmul_flops"] / med[f"jax_{name}"] / peak
                            for name in VARIANTS}
  out["achieved_flops_per_s"] = flops / med["jax_syncmask"]
  out["syncmask_overhead_vs_random"] = med["jax_syncmask"] / med["jax_random"] - 1.0
  out["syncmask_overhead_vs_albef"] = med["jax_syncmask"] / med["jax_albef"] - 1.0
  if "torch_syncmask" in med:
    out["jax_over_torch"] = med["torch_syncmask"] / med["jax_syncmask"]

  if not args.skip_pipeline:
    bench = load_pipeline_bench()
    pc = config.copy_and_resolve_references()
    pc.data.read_threads = args.pipeline_threads
    pipe = bench.measure(pc, args.pipeline_batches)
    out["pipeline"] = pipe
    out["pipeline_over_step"] = pipe["examples_per_s"] / out["examples_per_s"]["jax_syncmask"]
  return out


def print_table(results: list[dict], info: dict) -> None:
  print("\nmachine:", info["cpu_count"], "cpus,", info["cpu_model"], "| load avg",
        info["load_average"], "| jax", info["versions"]["jax"], "torch",
        info["versions"].get("torch"))
  rows = []
  for r in results:
    p = r["preset"]
    load = r["load_1min_during"]
    rows.append((p, "load avg (1 min) during timing", f"{load['min']:.2f}-{load['max']:.2f}", ""))
    for name, eps in r["examples_per_s"].items():
      t = r["times"][name]
      rows.append((p, f"{name} examples/s (median step {t['median_s'] * 1e3:.1f} ms, "
                   f"p10-p90 {t['p10_s'] * 1e3:.1f}-{t['p90_s'] * 1e3:.1f})",
                   f"{eps:.1f}", "ex/s"))
    if "jax_over_torch" in r:
      rows.append((p, "JAX / PyTorch throughput (syncmask step)", f"{r['jax_over_torch']:.2f}",
                   "x  (target >= 1.5)"))
    rows.append((p, "peak float32 jnp.dot", f"{r['peak_flops_per_s'] / 1e9:.1f}", "GFLOP/s"))
    rows.append((p, "step FLOPs (cost_analysis)", f"{r['jax']['syncmask']['flops'] / 1e9:.2f}",
                 "GFLOP"))
    rows.append((p, "step matmul FLOPs (dots of the optimised HLO)",
                 f"{r['jax']['syncmask']['matmul_flops'] / 1e9:.2f}", "GFLOP"))
    rows.append((p, "MFU syncmask step (cost_analysis FLOPs / s / peak)",
                 f"{100 * r['mfu']['syncmask']:.1f}", "%  (target >= 40 on small)"))
    rows.append((p, "MFU syncmask step, matmul FLOPs only",
                 f"{100 * r['mfu_matmul_only']['syncmask']:.1f}", "%"))
    rows.append((p, "SyncMask overhead vs random masks",
                 f"{100 * r['syncmask_overhead_vs_random']:+.1f}", "%  (target <= 15)"))
    rows.append((p, "SyncMask step vs albef recipe",
                 f"{100 * r['syncmask_overhead_vs_albef']:+.1f}", "%"))
    if "pipeline_over_step" in r:
      rows.append((p, "input pipeline examples/s", f"{r['pipeline']['examples_per_s']:.1f}",
                   "ex/s"))
      rows.append((p, "input pipeline / step consumption", f"{r['pipeline_over_step']:.2f}",
                   "x  (target >= 3)"))
    j = r["jax"]["syncmask"]
    rows.append((p, "compile time (lower + compile)", f"{j['lower_s'] + j['compile_s']:.1f}",
                 "s"))
    rows.append((p, "compiled peak (temp+arg+out) per example",
                 f"{j['memory']['peak'] / r['batch_size'] / 2**20:.2f}", "MiB"))
  width = max(len(x[1]) for x in rows)
  for preset, what, value, unit in rows:
    print(f"{preset:6s} {what:{width}s} {value:>9s} {unit}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="tiny,small")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--k", type=int, default=5, help="steps of each runner per round")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--pause_s", type=float, default=0.5, help="idle before each block")
  parser.add_argument("--peak_n", type=int, default=2048)
  parser.add_argument("--torch_attn", default="sdpa", choices=("sdpa", "eager"))
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--skip_pipeline", action="store_true")
  parser.add_argument("--pipeline_batches", type=int, default=20)
  parser.add_argument("--pipeline_threads", type=int, default=4)
  parser.add_argument("--wait_quiet", type=float, default=0.0,
                      help="wait (up to --max_wait_s) for the 1-min load avg below this")
  parser.add_argument("--max_wait_s", type=float, default=1500.0)
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  # Same thread count on both sides: XLA's CPU client uses every core.
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  quiet = common.wait_for_quiet(args.wait_quiet, args.max_wait_s) if args.wait_quiet else None
  info = common.machine_info()
  info["torch_threads"] = torch.get_num_threads()
  info["quiet_wait"] = quiet
  print("machine:", info, flush=True)
  results = []
  for preset in args.presets.split(","):
    t0 = time.time()
    results.append(run_preset(preset, args))
    print(f"[{preset}] done in {time.time() - t0:.0f}s", flush=True)
  info["load_average_end"] = common.load_average()
  print_table(results, info)
  common.write_json(args.json, {"machine": info, "args": vars(args), "results": results})


if __name__ == "__main__":
  main()
