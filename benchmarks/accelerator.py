"""The train step on an accelerator: step time, MFU against the chip's bf16 matmul rate,
and the PyTorch reference step on the same device (issue 9: `base` at >= 45% MFU in bf16).

Per preset (synthetic batch in the pipeline's layout at the preset's sizes, BERT's
30522-word vocabulary, as `memory.py` builds `base`; SynthFashion experiment config
otherwise: SyncMask recipe, captions padded to 40, queue 256, dropout 0):

* the PyTorch reference step (`torch_reference.py`, eager, `torch.autocast` in the
  same dtype) first, in a child process, so that JAX's preallocation (75% of the GPU)
  is not yet made; examples/s and peak memory;
* the step's FLOPs: XLA's cost analysis of the step's HLO before optimisation
  (`common.lowered_step_flops`, abstract state, in a CPU child). On a GPU the cost
  analysis of the *compiled* step misses most FLOPs (H100, base: 3.22 of 31.87 TFLOP;
  presumably the GEMMs handed to cuBLAS, not checked) and the `Lowered` one reports
  nothing, so that count is the MFU numerator (model FLOPs of the `default` variant
  for every variant: remat's recomputation is not useful work); the compiled count is
  printed beside it;
* the JAX step as `train.py` builds it, one device: state + step build time (the state's
  jitted init compiles too), lower + compile time of the step, median step time over
  blocks of `--k` steps dispatched back to back, examples/s, peak device memory, the
  loss after the timed steps (must be finite);
* the chip's peak: a large `jnp.dot` in `--peak_dtype` at each `--peak_n`, before and
  after the steps in the same process; the highest median rate is the peak;
* MFU = step FLOPs / median step time / peak; JAX / PyTorch examples/s.

`--variants` compiles and times other forms of the same step in the same process:
`default`; `cudnn_attention` (`config.model.attention="cudnn"`: cuDNN's fused
attention wherever attention probabilities are not returned, `layers.fused_attention`);
`autodiff_dense` (`config.model.dense_vjp="autodiff"`: plain autodiff for the dense
layers instead of the custom VJP); `autodiff_layer_norm` (a monkeypatch of
`syncmask_jax.models.layers`, undone after the variant: plain autodiff of the layer norm);
`remat` (`model.remat=True`); `+` joins them (`cudnn_attention+autodiff_dense`).
XLA flags go in `XLA_FLAGS`, one process per setting; they are printed with the rest.
`--profile VARIANTS` traces `--profile_steps` more steps of those variants after timing
and sums the device time by kernel kind (GEMM, attention, XLA fusion, copy), kernel and
HLO op (`profile_summary`).

  python benchmarks/accelerator.py [--presets base] [--batch_size 64] [--dtype bfloat16]
      [--variants default,cudnn_attention] [--rounds 5] [--k 5] [--peak_n 8192,16384]
      [--skip_torch] [--profile default --profile_steps 3] [--json out.json]
  python benchmarks/accelerator.py --recount out.json   # (re)count FLOPs, MFU, table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets sys.path for syncmask_jax)
import jax  # noqa: E402

import memory  # noqa: E402  (bert_tokens, synthetic_batch)


def build(preset: str, batch_size: int, dtype: str, remat: bool = False,
          attention: str = "einsum", dense_vjp: str = "custom"):
  config = common.experiment_config(preset, "syncmask", batch_size)
  tokens = memory.bert_tokens()
  config.model.vocab_size = tokens.vocab_size
  config.model.dtype = dtype
  config.model.remat = remat
  config.model.attention = attention
  config.model.dense_vjp = dense_vjp
  return config, memory.synthetic_batch(config, tokens), tokens


def gpu_state() -> dict:
  """nvidia-smi's read-only view of the card (name, driver, clocks, power, temperature)."""
  fields = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit," \
           "temperature.gpu,memory.used,memory.total"
  try:
    out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return dict(zip(fields.split(","), (v.strip() for v in out.splitlines()[0].split(","))))
  except (OSError, subprocess.SubprocessError, IndexError):
    return {}


def median_step(call, k: int, rounds: int, warmup: int) -> dict:
  """`call(k)` runs k steps and waits; the per-step times of `rounds` blocks."""
  call(warmup)
  times = [t / k for t in common.time_calls(lambda: call(k), rounds)]
  return common.summarize(times)


# -- the PyTorch reference (child process) --------------------------------------------


def torch_child(args) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  config, batch, tokens = build(args.presets, args.batch_size, args.dtype)
  amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(args.dtype)
  out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
         "amp_dtype": str(amp), "attn": args.torch_attn}
  try:
    ref = torch_reference.TorchSyncMaskStep(config, tokens, attn=args.torch_attn,
                                            device="cuda", amp_dtype=amp)
    tb = ref.to_torch(batch)
    losses = []

    def run(k: int) -> None:
      for _ in range(k):
        m = ref.step(tb)
      torch.cuda.synchronize()
      losses.append(float(m["loss"]))

    out["times"] = median_step(run, args.k, args.rounds, args.warmup)
    out["examples_per_s"] = args.batch_size / out["times"]["median_s"]
    out["loss_last"] = losses[-1]
    out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    out["params"] = ref.num_params()
    torch.cuda.empty_cache()
    n = 8192  # torch's own bf16 GEMM rate, a cross-check of the jnp.dot peak
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
      a @ b
    torch.cuda.synchronize()
    t = common.time_calls(lambda: (a @ b, torch.cuda.synchronize()), 20)
    out["matmul_bf16_flops_per_s"] = 2.0 * n ** 3 / statistics.median(t)
  except torch.cuda.OutOfMemoryError as e:
    out["error"] = f"OutOfMemoryError: {str(e).splitlines()[0]}"
  print("TORCH_JSON " + json.dumps(out), flush=True)


def run_torch(preset: str, args) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.abspath(__file__), "--torch_child", "--presets", preset,
         "--batch_size", str(args.batch_size), "--dtype", args.dtype, "--k", str(args.k),
         "--rounds", str(args.rounds), "--warmup", str(args.warmup),
         "--torch_attn", args.torch_attn]
  t0 = time.time()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("TORCH_JSON ")]
  if not lines:
    return {"error": f"child exited {proc.returncode}: {proc.stderr[-2000:]}"}
  out = json.loads(lines[-1][len("TORCH_JSON "):])
  out["wall_s"] = time.time() - t0
  return out


# -- the step's FLOPs (CPU child) -----------------------------------------------------


def flops_child(args) -> None:
  config, batch, tokens = build(args.presets, args.batch_size, args.dtype)
  print("FLOPS_JSON " + json.dumps(common.lowered_step_flops(config, tokens, batch)),
        flush=True)


def model_flops(preset: str, batch_size: int, dtype: str) -> float:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, os.path.abspath(__file__), "--flops_child", "--presets", preset,
         "--batch_size", str(batch_size), "--dtype", dtype]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
  line = [l for l in proc.stdout.splitlines() if l.startswith("FLOPS_JSON ")][-1]
  return float(json.loads(line[len("FLOPS_JSON "):]))


def finish(r: dict, flops: float) -> None:
  """MFU and JAX / PyTorch of every timed variant of preset result `r`."""
  r["model_flops"] = flops
  peak, t = r["peak_flops_per_s"], r.get("torch") or {}
  for v in r["variants"].values():
    if "times" not in v:
      continue
    med = v["times"]["median_s"]
    v["achieved_flops_per_s"] = flops / med
    v["mfu"] = flops / med / peak
    v["mfu_compiled_cost"] = v["flops"] / med / peak
    if "examples_per_s" in t:
      v["jax_over_torch"] = v["examples_per_s"] / t["examples_per_s"]


# -- a profile of the step -----------------------------------------------------------

# Kernel name -> kind, first match wins (cuBLAS/CUTLASS GEMM kernels are named nvjet_*,
# sm90_xmma_*, cutlass_*, *gemm*; cuDNN's fused attention *fmha*/*flash*).
KERNEL_KINDS = (("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "wgmma")),
                ("attention", ("fmha", "flash", "cudnn", "sdpa")),
                ("copy", ("memcpy", "memset", "copy")),
                ("triton", ("triton",)))


def kernel_kind(name: str) -> str:
  low = name.lower()
  for kind, keys in KERNEL_KINDS:
    if any(k in low for k in keys):
      return kind
  return "xla_fusion"


def profile_summary(trace_dir: str, steps: int, top: int = 40) -> dict:
  """Device time of a `jax.profiler.trace(..., create_perfetto_trace=True)` directory
  summed by kernel kind, by kernel and by HLO op (events of the `/device:` processes;
  where there are none, as on the CPU, the non-Python host threads)."""
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path, "rt", encoding="utf-8") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  procs = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
  thread = lambda e: threads.get((e["pid"], e.get("tid")), "")
  device = [e for e in spans if procs.get(e["pid"], "").startswith("/device:")]
  # A GPU's process also has summary lines ("XLA Ops", "XLA Modules") over the same
  # time as the kernels on its "Stream #" lines: kernels only.
  if any(thread(e).startswith("Stream") for e in device):
    device = [e for e in device if thread(e).startswith("Stream")]
  if not device:
    device = [e for e in spans if thread(e) != "python"]
  by_thread = {}
  for e in spans:
    name = f"{procs.get(e['pid'], e['pid'])} / {thread(e)}"
    by_thread[name] = by_thread.get(name, 0.0) + float(e["dur"])
  by_kind, by_kernel, by_op = ({} for _ in range(3))
  for e in device:
    us, args = float(e["dur"]), e.get("args") or {}
    kind = kernel_kind(e["name"])
    by_kind[kind] = by_kind.get(kind, 0.0) + us
    key = (e["name"][:120], kind)
    by_kernel[key] = by_kernel.get(key, 0.0) + us
    op = args.get("hlo_op") or args.get("long_name") or e["name"]
    by_op[op[:120]] = by_op.get(op[:120], 0.0) + us
  total = sum(by_kind.values())
  span_us = (max(e["ts"] + e["dur"] for e in device) - min(e["ts"] for e in device)
             if device else 0.0)
  per_step = lambda us: us / 1e3 / steps
  return {
      "trace": path, "steps": steps, "events": len(device),
      "threads_ms_per_step": {k: v / 1e3 / steps for k, v in by_thread.items()},
      "busy_ms_per_step": per_step(total), "span_ms_per_step": per_step(span_us),
      "by_kind_ms_per_step": {k: per_step(v) for k, v in
                              sorted(by_kind.items(), key=lambda kv: -kv[1])},
      "top_kernels": [{"kernel": k, "kind": kind, "ms_per_step": per_step(v)} for (k, kind), v
                      in sorted(by_kernel.items(), key=lambda kv: -kv[1])[:top]],
      "top_hlo_ops": [{"op": k, "ms_per_step": per_step(v)} for k, v
                      in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]],
  }


def print_profile(name: str, prof: dict) -> None:
  print(f"[{name}] profile of {prof['steps']} steps ({prof['events']} device events): busy "
        f"{prof['busy_ms_per_step']:.1f} ms/step of a {prof['span_ms_per_step']:.1f} ms span",
        flush=True)
  for kind, ms in prof["by_kind_ms_per_step"].items():
    print(f"    {kind:12s} {ms:8.2f} ms/step ({100 * ms / prof['busy_ms_per_step']:.1f}%)")
  for row in prof["top_kernels"][:25]:
    print(f"    {row['ms_per_step']:8.2f} ms  {row['kind']:10s} {row['kernel']}")
  for row in prof["top_hlo_ops"][:25]:
    print(f"    {row['ms_per_step']:8.2f} ms  {row['op']}")


# -- the JAX step, and its variants ---------------------------------------------------


VARIANT_PARTS = ("default", "remat", "cudnn_attention", "autodiff_dense",
                 "autodiff_layer_norm")


@contextlib.contextmanager
def patched(variant: str):
  from syncmask_jax.models import layers  # pylint: disable=g-import-not-at-top
  saved = layers.layer_norm
  parts = set(variant.split("+"))
  unknown = parts - set(VARIANT_PARTS)
  if unknown:
    raise ValueError(f"unknown variant part(s) {sorted(unknown)}: expected {VARIANT_PARTS}")
  try:
    if "autodiff_layer_norm" in parts:
      layers.layer_norm = saved.fun  # the undecorated closed form
    yield
  finally:
    layers.layer_norm = saved


def run_jax(preset: str, variant: str, args) -> dict:
  parts = variant.split("+")
  config, batch, tokens = build(preset, args.batch_size, args.dtype, remat="remat" in parts,
                                attention="cudnn" if "cudnn_attention" in parts else "einsum",
                                dense_vjp="autodiff" if "autodiff_dense" in parts else "custom")
  out = {"variant": variant}
  t0 = time.perf_counter()
  try:
    with patched(variant):
      built = common.compiled_step(config, tokens, batch, devices=jax.devices()[:1],
                                   state_on_host=args.state_on_host)
  except Exception as e:  # pylint: disable=broad-except
    out["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
    return out
  # State creation (its jitted init compiles too) + lowering + compiling the step.
  out["build_s"] = time.perf_counter() - t0
  out.update({k: built[k] for k in ("lower_s", "compile_s", "flops", "memory")})
  print(f"[{preset} {variant}] lower {built['lower_s']:.1f}s compile {built['compile_s']:.1f}s"
        f", compiled cost analysis {built['flops'] / 1e12:.2f} TFLOP/step; state + step "
        f"built in {out['build_s']:.0f}s", flush=True)
  runner = common.JaxRunner(built)
  del built
  try:
    out["times"] = median_step(runner.steps, args.k, args.rounds, args.warmup)
  except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory at run time)
    out["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
    return out
  out["loss_last"] = float(runner.metrics["loss"])
  out["examples_per_s"] = args.batch_size / out["times"]["median_s"]
  if variant in args.profile.split(","):
    trace_dir = os.path.join(args.profile_dir, f"{preset}_{variant}")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      runner.steps(args.profile_steps)
    out["profile"] = profile_summary(trace_dir, args.profile_steps)
    print_profile(f"{preset} {variant}", out["profile"])
  out["params"] = int(sum(x.size for x in jax.tree.leaves(runner.state.params)))
  stats = jax.devices()[0].memory_stats() or {}
  out["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  out["bytes_limit"] = stats.get("bytes_limit")
  del runner
  return out


def run_preset(preset: str, args, torch_result: dict | None, flops: float, save) -> dict:
  out = {"preset": preset, "batch_size": args.batch_size, "dtype": args.dtype,
         "variants": {}, "torch": torch_result, "model_flops": flops}

  def measure_peak() -> list[dict]:
    return [common.peak_matmul_flops(int(n), args.peak_repeats, args.peak_dtype)
            for n in args.peak_n.split(",")]

  # The peak before the steps (so a run cut short still has one) and after them (a
  # warm chip); the highest median counts.
  peaks = measure_peak()
  first = max(p["flops_per_s"] for p in peaks)
  print(f"[{preset}] peak {args.peak_dtype} jnp.dot {first / 1e12:.1f} TFLOP/s", flush=True)
  for variant in args.variants.split(","):
    t0 = time.time()
    r = out["variants"][variant] = run_jax(preset, variant, args)
    if "times" in r:
      print(f"[{preset} {variant}] median step {r['times']['median_s'] * 1e3:.1f} ms, "
            f"{r['examples_per_s']:.1f} ex/s, MFU vs first peak "
            f"{100 * flops / r['times']['median_s'] / first:.1f}%", flush=True)
    else:
      print(f"[{preset} {variant}] {r.get('error', '')[:600]}", flush=True)
    print(f"[{preset} {variant}] done in {time.time() - t0:.0f}s", flush=True)
    save(out, first)  # a run cut short keeps what it measured
  peaks += measure_peak()
  out["peak_samples"] = peaks
  out["peak_flops_per_s"] = max(p["flops_per_s"] for p in peaks)
  finish(out, flops)
  return out


def print_table(results: list[dict], info: dict) -> None:
  gpu = info.get("gpu_before", {})
  print(f"\ndevice: {info['jax_devices']} ({gpu.get('name', '?')}, driver "
        f"{gpu.get('driver_version', '?')}) | jax {info['versions']['jax']} jaxlib "
        f"{info['versions'].get('jaxlib')} flax {info['versions'].get('flax')} torch "
        f"{info['versions'].get('torch')} | XLA_FLAGS={info['xla_flags']!r}")
  gib = 2 ** 30
  for r in results:
    p, b = r["preset"], r["batch_size"]
    print(f"{p}: batch {b}, {r['dtype']}, synthetic batch, 30522-word vocabulary; step "
          f"{r['model_flops'] / 1e12:.2f} TFLOP (HLO before optimisation); peak "
          f"{r['peak_flops_per_s'] / 1e12:.1f} TFLOP/s ({info['peak_dtype']} jnp.dot, n = "
          f"{','.join(str(s['n']) for s in r['peak_samples'])}, before and after the steps, "
          f"best median)")
    t = r["torch"]
    if t is not None:
      if "examples_per_s" in t:
        print(f"  torch reference ({t['attn']}, autocast {t['amp_dtype']}): median step "
              f"{t['times']['median_s'] * 1e3:.1f} ms, {t['examples_per_s']:.1f} ex/s, peak "
              f"{t['peak_memory_bytes'] / gib:.1f} GiB, loss {t['loss_last']:.3f}; torch bf16 "
              f"matmul {t['matmul_bf16_flops_per_s'] / 1e12:.1f} TFLOP/s")
      else:
        print(f"  torch reference: {t.get('error')}")
    print(f"  {'variant':30s} {'build s':>7s} {'compile s':>9s} {'step ms':>8s} "
          f"{'p10-p90 ms':>13s} {'ex/s':>7s} {'MFU %':>6s} {'JAX/torch':>9s} "
          f"{'XLA TFLOP':>9s} {'its MFU%':>8s} {'peak GiB*':>9s} {'loss':>7s}")
    for name, v in r["variants"].items():
      if "times" not in v:
        print(f"  {name:30s} ERROR {v.get('error', '')[:300]}")
        continue
      tm = v["times"]
      ratio = f"{v['jax_over_torch']:.2f}" if "jax_over_torch" in v else "-"
      print(f"  {name:30s} {v['build_s']:7.0f} {v['lower_s'] + v['compile_s']:9.1f} "
            f"{tm['median_s'] * 1e3:8.1f} {tm['p10_s'] * 1e3:6.1f}-{tm['p90_s'] * 1e3:6.1f} "
            f"{v['examples_per_s']:7.1f} {100 * v['mfu']:6.1f} {ratio:>9s} "
            f"{v['flops'] / 1e12:9.2f} {100 * v['mfu_compiled_cost']:8.1f} "
            f"{(v['peak_bytes_in_use'] or 0) / gib:9.1f} {v['loss_last']:7.3f}")
  print("(MFU = step FLOPs (XLA cost analysis of the HLO before optimisation) / median step / "
        "peak; target: base >= 45% in bf16. 'XLA TFLOP' = cost analysis of the compiled step, "
        "which on a GPU misses most FLOPs, and 'its MFU%' the MFU it would give. build s "
        "= state (jitted init) + lower + compile. *peak device memory of the process so far)")


def recount(path: str, out_path: str) -> None:
  """FLOPs, MFU and the table of a result JSON (e.g. one written before FLOPs were counted
  in a CPU child); the step timings and peaks are the run's own."""
  with open(path, encoding="utf-8") as f:
    payload = json.load(f)
  for r in payload["results"]:
    for v in r["variants"].values():
      v.pop("mfu_lowered_flops", None)
      v.pop("flops_lowered", None)
    finish(r, model_flops(r["preset"], r["batch_size"], r["dtype"]))
  payload["recounted"] = {"from": path, "machine": common.machine_info()}
  print_table(payload["results"], payload["machine"])
  common.write_json(out_path, payload)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--presets", default="base")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--variants", default="default")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--k", type=int, default=5, help="steps per timed block")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--peak_n", default="8192,16384")
  parser.add_argument("--peak_dtype", default="bfloat16")
  parser.add_argument("--peak_repeats", type=int, default=20)
  parser.add_argument("--torch_attn", default="sdpa", choices=("sdpa", "eager"))
  parser.add_argument("--skip_torch", action="store_true")
  parser.add_argument("--state_on_host", action=argparse.BooleanOptionalAction, default=True,
                      help="initialise the state on the CPU and place it on the device "
                           "(saves XLA:GPU's ~2 min compile of the initialiser)")
  parser.add_argument("--compilation_cache", default="",
                      help="jax_compilation_cache_dir for this run ('' = off)")
  parser.add_argument("--profile", default="", help="variants to profile after timing")
  parser.add_argument("--profile_steps", type=int, default=3)
  parser.add_argument("--profile_dir", default="/tmp/syncmask_profile")
  parser.add_argument("--recount", default="", help="result JSON to recount (CPU only)")
  parser.add_argument("--torch_child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--flops_child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  if args.torch_child:
    torch_child(args)
    return
  if args.flops_child:
    flops_child(args)
    return
  if args.recount:
    recount(args.recount, args.json or args.recount)
    return

  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
  presets = args.presets.split(",")
  # PyTorch first, each preset in its own child: JAX has not claimed the GPU yet.
  torch_results = {}
  if not args.skip_torch:
    for preset in presets:
      torch_results[preset] = run_torch(preset, args)
      print(f"[{preset}] torch: " + json.dumps(torch_results[preset]), flush=True)
  flops = {p: model_flops(p, args.batch_size, args.dtype) for p in presets}
  print("step FLOPs (HLO before optimisation):", flops, flush=True)
  info = common.machine_info()
  info["device_kind"] = jax.devices()[0].device_kind
  info["gpu_before"] = gpu_state()
  info["peak_dtype"] = args.peak_dtype
  print("machine:", info, flush=True)
  results = []

  def save(partial: dict, first_peak: float) -> None:
    common.write_json(args.json, {"machine": info, "args": vars(args), "partial": True,
                                  "first_peak_flops_per_s": first_peak,
                                  "results": results + [partial]})

  for preset in presets:
    results.append(run_preset(preset, args, torch_results.get(preset), flops[preset], save))
  info["gpu_after"] = gpu_state()
  print_table(results, info)
  common.write_json(args.json, {"machine": info, "args": vars(args), "results": results})
  if not all(math.isfinite(v.get("loss_last", 0.0)) for r in results
             for v in r["variants"].values()):
    print("WARNING: a non-finite loss", flush=True)


if __name__ == "__main__":
  main()
