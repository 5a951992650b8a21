"""What each SyncMask mask source costs: train-step time against random masks, one run.

The SynthFashion experiment config (`configs/synthfashion.py`) at each preset, one real
pipeline batch, and the train step compiled for `random` masks and for SyncMask masks
from each `masking.source` (`attention`, `gradcam` at the middle fusion layer as ALBEF,
and their `_centered` forms). The steps run *interleaved* in rounds (k steps of each per
round), so machine load hits all of them alike; the figure is the median step time,
compile excluded. Targets (the grounded-masks issue): `attention` <= 5% over random,
`gradcam` (and the SynthFashion default, `gradcam_centered`) <= 25%.

  python benchmarks/mask_sources.py [--presets tiny] [--rounds 6] [--k 5]
      [--json benchmarks/results/mask_sources.json]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets sys.path for syncmask_jax)
import jax  # noqa: E402

from syncmask_jax import config_lib, masking  # noqa: E402

TARGETS = {"attention": 0.05, "gradcam": 0.25, "gradcam_centered": 0.25}


def variants(config) -> dict:
  """random masks, then SyncMask from each source, on copies of `config`."""
  out = {}
  c = config.copy_and_resolve_references()
  c.masking.strategy = "random"
  out["random"] = c
  for source in config_lib.MASK_SOURCES:
    c = config.copy_and_resolve_references()
    c.masking.strategy, c.masking.source, c.masking.warmup_steps = "syncmask", source, 0
    if source.startswith("gradcam"):
      c.masking.layers = (masking.gradcam_layer(c.model.fusion_layers),)
    out[source] = c
  return out


def run_preset(preset: str, args) -> dict:
  config = common.experiment_config(preset, "syncmask", args.batch_size)
  host_batch, tokens = common.real_batch(config)
  calls, out = {}, {"preset": preset, "batch_size": args.batch_size,
                    "fusion_layers": int(config.model.fusion_layers),
                    "num_patches": (config.model.image_size // config.model.patch_size) ** 2,
                    "compile_s": {}, "gflops": {}}
  for name, c in variants(config).items():
    c.model.vocab_size = config.model.vocab_size
    built = common.compiled_step(c, tokens, host_batch, devices=jax.devices()[:1])
    calls[name] = common.JaxRunner(built).step
    out["compile_s"][name] = built["compile_s"]
    out["gflops"][name] = built["flops"] / 1e9
    print(f"[{preset}] {name}: compile {built['compile_s']:.1f}s, "
          f"{built['flops'] / 1e9:.2f} GFLOP/step", flush=True)
  for call in calls.values():
    for _ in range(args.warmup):
      call()
  times, load = common.interleaved(calls, args.rounds, args.k, args.pause_s)
  out["load_1min_during"] = {"min": min(load), "max": max(load)}
  out["times"] = {name: common.summarize(t) for name, t in times.items()}
  base = out["times"]["random"]["median_s"]
  out["overhead_vs_random"] = {name: t["median_s"] / base - 1.0
                               for name, t in out["times"].items() if name != "random"}
  out["targets"] = {name: {"max_overhead": limit,
                           "met": out["overhead_vs_random"][name] <= limit}
                    for name, limit in TARGETS.items()}
  return out


def print_table(results: list[dict]) -> None:
  print("\n| preset | variant | step (ms, median) | p10-p90 (ms) | over random | target |")
  print("|---|---|---|---|---|---|")
  for r in results:
    for name, t in r["times"].items():
      over = r["overhead_vs_random"].get(name)
      over = "-" if over is None else f"{over * 100:+.1f}%"
      target = r["targets"].get(name)
      if target is not None:
        verdict = "met" if target["met"] else "missed"
        target = f"{verdict} (<= {target['max_overhead'] * 100:.0f}%)"
      print(f"| {r['preset']} | {name} | {t['median_s'] * 1e3:.1f} | "
            f"{t['p10_s'] * 1e3:.1f}-{t['p90_s'] * 1e3:.1f} | {over} | {target or '-'} |")
    print(f"| {r['preset']} | load avg (1 min) during timing | "
          f"{r['load_1min_during']['min']:.2f}-{r['load_1min_during']['max']:.2f} | | | |")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--presets", default="tiny")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--k", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--pause_s", type=float, default=0.2)
  p.add_argument("--json", default="")
  args = p.parse_args()
  results = [run_preset(preset, args) for preset in args.presets.split(",")]
  print_table(results)
  common.write_json(args.json, {"machine": common.machine_info(), "args": vars(args),
                                "results": results})


if __name__ == "__main__":
  main()
