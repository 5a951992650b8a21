"""Seconds to score an N x N bidirectional retrieval (i2t and t2i), `itc` and `itc+itm`.

`syncmask_jax.retrieval.bidirectional` on random L2-normalised features, one positive
per query, at N = 2,500, 5,000 and 10,000: `itc` is an (N, N) matrix product in
query chunks, so it grows ~4x per doubling only through BLAS and numpy's row work; the
Python loop count grows linearly (N / chunk). `itc+itm` (k candidates per query
re-ranked by the ITM head of a freshly initialised model on stored encoder outputs,
`retrieval.ItmPairs`, jitted fixed-size pair batches) adds 2 N k fusion passes,
linear in N.

  python benchmarks/retrieval_eval.py [--sizes 2500,5000,10000] [--k 16]
      [--itm_preset tiny] [--itm_batch_size 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from syncmask_jax import retrieval, sharding, train_state  # noqa: E402


def features(n: int, d: int, seed: int) -> np.ndarray:
  x = np.random.RandomState(seed).randn(n, d).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def itm_scorer(preset: str, n: int, k: int, batch_size: int, text_len: int) -> retrieval.Scorer:
  """An `itc+itm` scorer over stored encoder outputs of n images and n texts."""
  config = common.experiment_config(preset)
  common.real_batch(config)  # the SynthFashion vocabulary size
  model = train_state.build_model(config, 0)
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  mesh = sharding.make_mesh(config.mesh, jax.devices())
  rs = np.random.RandomState(0)
  m = config.model
  tokens = 1 + (m.image_size // m.patch_size) ** 2
  image_tokens = rs.randn(n, tokens, m.vision_width).astype(np.float32)
  text_hidden = rs.randn(n, text_len, m.text_width).astype(np.float32)
  lengths = rs.randint(text_len // 2, text_len + 1, n)
  text_mask = (np.arange(text_len)[None] < lengths[:, None]).astype(np.int32)
  pairs = retrieval.ItmPairs(graphdef, params, mesh, image_tokens, text_hidden, text_mask,
                             batch_size)
  return retrieval.Scorer("itc+itm", k, pairs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="2500,5000,10000")
  parser.add_argument("--dim", type=int, default=256, help="ITC feature width (base: 256)")
  parser.add_argument("--k", type=int, default=16)
  parser.add_argument("--itm_preset", default="tiny")
  parser.add_argument("--itm_batch_size", type=int, default=64,
                      help="pairs per jitted ITM call (the evaluators' default)")
  parser.add_argument("--text_len", type=int, default=40)
  parser.add_argument("--skip_itm", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  info = common.machine_info()
  print("machine:", info, flush=True)
  sizes = [int(s) for s in args.sizes.split(",")]
  rows = []
  for n in sizes:
    image, text = features(n, args.dim, 0), features(n, args.dim, 1)
    key = np.arange(n)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = retrieval.bidirectional(image, key, text, key, retrieval.Scorer("itc"))
    rows.append({"n": n, "scoring": "itc", "seconds": time.perf_counter() - t0,
                 "load_1min": load, "r_mean": out["r_mean"]})
    print(rows[-1], flush=True)
    if not args.skip_itm:
      scorer = itm_scorer(args.itm_preset, n, args.k, args.itm_batch_size, args.text_len)
      scorer.itm(np.zeros(1, np.int64), np.zeros(1, np.int64))  # compile outside the timing
      load = os.getloadavg()[0]
      t0 = time.perf_counter()
      out = retrieval.bidirectional(image, key, text, key, scorer)
      rows.append({"n": n, "scoring": f"itc+itm k={args.k}", "seconds": time.perf_counter() - t0,
                   "load_1min": load, "r_mean": out["r_mean"], "itm_pairs": 2 * n * args.k,
                   "itm_preset": args.itm_preset, "itm_batch_size": args.itm_batch_size})
      print(rows[-1], flush=True)
  print(f"\nmachine: {info['cpu_count']} cpus, {info['cpu_model']} | load avg "
        f"{info['load_average']} -> {common.load_average()} | feature dim {args.dim}")
  print(f"{'N x N':>13s} {'scoring':>14s} {'seconds':>9s} {'vs N/2':>7s} {'load 1m':>8s}")
  prev = {}
  for r in rows:
    ratio = r["seconds"] / prev[r["scoring"]] if r["scoring"] in prev else float("nan")
    prev[r["scoring"]] = r["seconds"]
    print(f"{r['n']:>6d}x{r['n']:<6d} {r['scoring']:>14s} {r['seconds']:9.2f} {ratio:7.2f} "
          f"{r['load_1min']:8.2f}")
  common.write_json(args.json, {"machine": info, "args": vars(args), "results": rows})


if __name__ == "__main__":
  main()
