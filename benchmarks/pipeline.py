"""Input pipeline throughput (examples/s) on this machine.

Cases: SynthFashion at 64 and 256 px (generated on the fly), FashionGen-format data
(a generated h5 with 256x256 rows, the release's layout) read from the h5 and, after
a TFDS build, from ArrayRecord. Every case runs the full train pipeline: source ->
decode -> augment -> tokenize -> host batch.

  python benchmarks/pipeline.py [--batches 20] [--batch_size 32] [--rows 512]
      [--threads 4] [--workers 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import grain
import h5py
import jax
import numpy as np
import PIL
import tensorflow_datasets as tfds
import tokenizers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from syncmask_jax import config_lib  # noqa: E402
from syncmask_jax.data import fashiongen  # noqa: E402
from syncmask_jax.data import pipeline  # noqa: E402
from syncmask_jax.data import synthfashion  # noqa: E402


def machine() -> dict:
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpus": os.cpu_count(), "python": platform.python_version(),
          "numpy": np.__version__, "jax": jax.__version__, "grain": grain.__version__,
          "tfds": tfds.__version__, "h5py": h5py.__version__,
          "pillow": PIL.__version__, "tokenizers": tokenizers.__version__}


def write_fashiongen_like(directory: str, rows: int) -> None:
  """FashionGen layout from SynthFashion renders at 256 px (compressible like photos)."""
  os.makedirs(directory, exist_ok=True)
  for split, n in (("train", rows), ("validation", max(rows // 8, 8))):
    src = synthfashion.SynthFashion("train" if split == "train" else "val",
                                    num_products=n, image_size=256)
    records = [src[i] for i in range(n)]
    names = synthfashion.SynthFashion.subcategory_names
    columns = {
        "input_description": [r["text"].replace(". ", ".<br>") for r in records],
        "input_name": [names[r["subcategory"]] for r in records],
        "input_productID": [int(r["product_id"]) for r in records],
        "input_category": [synthfashion.SynthFashion.category_names[r["category"]].upper()
                           for r in records],
        "input_subcategory": [names[r["subcategory"]].upper() for r in records],
        "input_pose": [f"id_gridfs_{int(r['view']) + 1}" for r in records],
        "index_2": list(range(n)),
    }
    fashiongen.write_h5(os.path.join(directory, fashiongen.SPLIT_FILES[split]),
                        np.stack([r["image"] for r in records]), columns)


def measure(config, batches: int) -> dict:
  t0 = time.perf_counter()
  it = pipeline.make_train_iterator(config, process_index=0, process_count=1)
  setup = time.perf_counter() - t0
  for _ in range(2):  # warm-up: thread pool, file handles, first tokenizer copy
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - t0
  it.close()
  b = config.data.global_batch_size
  return {"examples_per_s": batches * b / elapsed, "batches": batches, "batch_size": b,
          "setup_s": setup}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--rows", type=int, default=512, help="FashionGen-format rows")
  parser.add_argument("--threads", type=int, default=4)
  parser.add_argument("--workers", type=int, default=0)
  parser.add_argument("--no_tfds", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  def config(name: str, image_size: int, **data):
    c = config_lib.default_config()
    c.data.name = name
    c.data.global_batch_size = args.batch_size
    c.model.image_size = image_size  # the size the pipeline renders and resizes to
    c.data.read_threads = args.threads
    c.data.num_workers = args.workers
    c.data.synth_train_products = 2000
    for k, v in data.items():
      c.data[k] = v
    return c

  info = machine()
  print("machine:", json.dumps(info))
  results = []
  tmp = tempfile.mkdtemp(prefix="syncmask_bench_")
  vocab = synthfashion.vocab_file()
  cases = [("synthfashion 64px", config("synthfashion", 64)),
           ("synthfashion 256px", config("synthfashion", 256))]
  t0 = time.perf_counter()
  write_fashiongen_like(tmp, args.rows)
  print(f"generated FashionGen-format h5, {args.rows} rows: {time.perf_counter() - t0:.1f} s")
  cases.append(("fashiongen h5 256px", config("fashiongen", 256, root=tmp, vocab_path=vocab)))
  if not args.no_tfds:
    tfds.disable_progress_bar()
    t0 = time.perf_counter()
    data_dir = os.path.join(tmp, "tfds")
    fashiongen.Fashiongen(data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=tmp))
    print(f"tfds build to ArrayRecord: {time.perf_counter() - t0:.1f} s")
    cases.append(("fashiongen ArrayRecord 256px",
                  config("fashiongen", 256, root=tmp, vocab_path=vocab,
                         source_format="tfds", tfds_data_dir=data_dir)))
  for name, c in cases:
    r = measure(c, args.batches)
    r.update(case=name, threads=args.threads, workers=args.workers)
    results.append(r)
  print(f"\n{'case':32s} {'examples/s':>11s} {'setup s':>8s}")
  for r in results:
    print(f"{r['case']:32s} {r['examples_per_s']:11.1f} {r['setup_s']:8.2f}")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump({"machine": info, "args": vars(args), "results": results}, fh, indent=1)
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
