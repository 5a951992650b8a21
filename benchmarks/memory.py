"""Compile time and memory of the train step; the FSDP split of the persistent state.

Per preset (`tiny`, `small` on the SynthFashion tokenizer and a real batch; `base`,
ALBEF's ViT-B/16 + BERT-base 6+6 at 256 px with BERT's 30522-word vocabulary, on a
synthetic batch of the same layout; compiled only, never run):

* lower and compile time of the SyncMask step (one device);
* XLA's memory analysis of the compiled step: temp + argument + output bytes, also
  per example, and the same without the donated (aliased) state counted twice;
* the persistent state (params + momentum params + optimizer state) per device under
  FSDP over 8 devices (`mesh.fsdp=8`, fake host devices in a subprocess) against one
  device: ideal is 1/8; replicated leftovers (LayerNorms, biases whose axis is not
  FSDP-sharded) push it above.

  python benchmarks/memory.py [--presets tiny,small,base] [--batch_size 32]
      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FSDP_DEVICES = 8


def bert_tokens():
  from syncmask_jax import tokenizer  # pylint: disable=g-import-not-at-top
  # bert-base-uncased: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103.
  return tokenizer.TokenInfo(vocab_size=30522, pad_id=0, cls_id=101, sep_id=102,
                             mask_id=103, min_random_id=999)


def synthetic_batch(config, tokens, seed: int = 0) -> dict:
  """The pipeline's batch layout at `config`'s sizes: [CLS] words [SEP] [PAD]..."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rs = np.random.RandomState(seed)
  b, t, s = config.data.global_batch_size, config.data.max_text_len, config.model.image_size
  lengths = rs.randint(t // 2, t + 1, b)
  ids = rs.randint(tokens.min_random_id, tokens.vocab_size, (b, t)).astype(np.int32)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  ids[:, 0] = tokens.cls_id
  ids[np.arange(b), lengths - 1] = tokens.sep_id
  ids[mask == 0] = tokens.pad_id
  n = (s // config.model.patch_size) ** 2
  return {"image": rs.randn(b, s, s, 3).astype(np.float32), "text_ids": ids,
          "text_mask": mask, "product_id": np.arange(b, dtype=np.int32),
          "index": np.arange(b, dtype=np.int32),
          "gt_patch_visible": rs.rand(b, n) > 0.5,
          "gt_token_visible": (rs.rand(b, t) > 0.5) & mask.astype(bool)}


def preset_config(preset: str, batch_size: int):
  import common  # pylint: disable=g-import-not-at-top
  config = common.experiment_config(preset, "syncmask", batch_size)
  if preset == "base":
    tokens = bert_tokens()
    config.model.vocab_size = tokens.vocab_size
    return config, synthetic_batch(config, tokens), tokens
  batch, tokens = common.real_batch(config)
  return config, batch, tokens


# -- FSDP split (runs in a child with 8 fake devices) -----------------------------------


def state_bytes_per_device(config, mesh) -> dict:
  """Bytes of params / momentum / optimizer state that each device holds, from the
  abstract state and its shardings: nothing is allocated, so `base` costs nothing."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from syncmask_jax import optim, train_state  # pylint: disable=g-import-not-at-top
  init, setup = train_state.make_setup(
      config, mesh, lambda p: optim.make_optimizer(config.optim, p, config.total_steps))
  abstract = jax.eval_shape(init)
  out = {}
  for part in ("params", "momentum_params", "opt_state"):
    leaves = jax.tree.leaves(getattr(abstract, part))
    shardings = jax.tree.leaves(getattr(setup.state_shardings, part),
                                is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    per_device = total = 0
    replicated = 0
    for leaf, s in zip(leaves, shardings, strict=True):
      nbytes = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
      shard = int(np.prod(s.shard_shape(leaf.shape))) * leaf.dtype.itemsize
      total += nbytes
      per_device += shard
      replicated += nbytes if shard == nbytes and nbytes else 0
    out[part] = {"total": total, "per_device": per_device, "replicated": replicated}
  out["all"] = {k: sum(out[p][k] for p in ("params", "momentum_params", "opt_state"))
                for k in ("total", "per_device", "replicated")}
  return out


def fsdp_child(presets: list[str], batch_size: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from syncmask_jax import sharding  # pylint: disable=g-import-not-at-top
  result = {"devices": jax.device_count()}
  for preset in presets:
    import common  # pylint: disable=g-import-not-at-top
    config = common.experiment_config(preset, "syncmask", batch_size)
    if preset == "base":
      config.model.vocab_size = bert_tokens().vocab_size
    else:
      common.real_batch(config)  # sets the tokenizer's vocab size
    one = config.copy_and_resolve_references()
    one.mesh.data, one.mesh.fsdp = 1, 1
    single = state_bytes_per_device(one, sharding.make_mesh(one.mesh, jax.devices()[:1]))
    fsdp = config.copy_and_resolve_references()
    fsdp.mesh.data, fsdp.mesh.fsdp = 1, FSDP_DEVICES
    split = state_bytes_per_device(fsdp, sharding.make_mesh(fsdp.mesh))
    result[preset] = {"one_device": single, "fsdp": split,
                      "ratio_to_ideal": split["all"]["per_device"]
                      / (single["all"]["per_device"] / FSDP_DEVICES)}
  print("FSDP_JSON " + json.dumps(result))


def run_fsdp(presets: list[str], batch_size: int) -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                      + f" --xla_force_host_platform_device_count={FSDP_DEVICES}").strip()
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--fsdp_child", "--presets", ",".join(presets),
       "--batch_size", str(batch_size)], env=env, capture_output=True, text=True, check=True)
  line = [l for l in proc.stdout.splitlines() if l.startswith("FSDP_JSON ")][-1]
  return json.loads(line[len("FSDP_JSON "):])


# -- main ---------------------------------------------------------------------------------


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--presets", default="tiny,small,base")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--fsdp_child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--skip_compile", action="store_true")
  parser.add_argument("--remat", default="base",
                      help="presets also compiled with model.remat=True (memory lever)")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  presets = args.presets.split(",")
  if args.fsdp_child:
    fsdp_child(presets, args.batch_size)
    return

  import common  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  info = common.machine_info()
  print("machine:", info, flush=True)
  results = {}
  for preset in presets:
    r = {}
    if not args.skip_compile:
      config, batch, tokens = preset_config(preset, args.batch_size)
      built = common.compiled_step(config, tokens, batch, devices=jax.devices()[:1])
      r = {k: built[k] for k in ("lower_s", "compile_s", "flops", "matmul_flops", "memory")}
      r["load_average_after"] = common.load_average()
      r["params"] = int(sum(x.size for x in jax.tree.leaves(built["state"].params)))
      del built
      print(f"[{preset}] lower {r['lower_s']:.1f}s compile {r['compile_s']:.1f}s", flush=True)
    results[preset] = r
    if not args.skip_compile and preset in args.remat.split(","):
      config.model.remat = True
      built = common.compiled_step(config, tokens, batch, devices=jax.devices()[:1])
      results[preset]["remat"] = {k: built[k] for k in ("lower_s", "compile_s", "flops",
                                                         "memory")}
      del built
      m = results[preset]["remat"]["memory"]
      print(f"[{preset}] remat: compile {results[preset]['remat']['compile_s']:.1f}s, peak "
            f"{m['peak'] / args.batch_size / 2**20:.1f} MiB/example", flush=True)
  t0 = time.time()
  fsdp = run_fsdp(presets, args.batch_size)
  print(f"FSDP split computed in {time.time() - t0:.0f}s")
  for preset in presets:
    results[preset]["fsdp"] = fsdp[preset]

  mib = 2 ** 20
  b = args.batch_size
  print(f"\nmachine: {info['cpu_count']} cpus, {info['cpu_model']} | load avg "
        f"{info['load_average']} -> {common.load_average()} | jax {info['versions']['jax']}")
  print(f"{'preset':6s} {'params':>10s} {'lower s':>8s} {'compile s':>9s} {'peak MiB':>9s} "
        f"{'MiB/ex':>7s} {'no-alias MiB/ex':>15s} {'temp MiB/ex':>11s} "
        f"{'state/dev 1':>11s} {'state/dev 8':>11s} {'x ideal':>8s}")
  for preset in presets:
    r = results[preset]
    f = r["fsdp"]
    one = f["one_device"]["all"]["per_device"] / mib
    eight = f["fsdp"]["all"]["per_device"] / mib
    if "memory" in r:
      m = r["memory"]
      cols = (f"{r['params']:10d} {r['lower_s']:8.1f} {r['compile_s']:9.1f} "
              f"{m['peak'] / mib:9.1f} {m['peak'] / b / mib:7.2f} "
              f"{m['peak_without_alias'] / b / mib:15.2f} {m['temp'] / b / mib:11.2f}")
    else:
      cols = " " * 67
    print(f"{preset:6s} {cols} {one:9.2f}Mi {eight:9.2f}Mi {f['ratio_to_ideal']:8.3f}")
    if "remat" in r:
      m = r["remat"]["memory"]
      print(f"{preset + '+remat':17s} {r['remat']['lower_s']:8.1f} {r['remat']['compile_s']:9.1f} "
            f"{m['peak'] / mib:9.1f} {m['peak'] / b / mib:7.2f} "
            f"{m['peak_without_alias'] / b / mib:15.2f} {m['temp'] / b / mib:11.2f}  "
            f"(step GFLOP {r['remat']['flops'] / 1e9:.0f} vs {r['flops'] / 1e9:.0f})")
  print("(state = params + momentum params + AdamW state; 'x ideal' = per-device bytes on 8 "
        "FSDP devices / (one-device bytes / 8), target <= 1.10)")
  common.write_json(args.json, {"machine": info, "args": vars(args), "batch_size": b,
                                "results": results})


if __name__ == "__main__":
  main()
