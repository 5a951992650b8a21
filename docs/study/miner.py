"""Which ITM negatives the miner picks in grouped and ungrouped batches (issue 20).

For each finished SynthFashion pretraining run: its config from `config.json`, the
online parameters and the momentum model of its latest checkpoint, and the first
--batches training batches of epoch 0 drawn by the run's own train iterator (its
grouping) and, to compare, by the same iterator under `data.grouping` "subcategory" and
"none" (same seed; so an ungrouped run also meets grouped batches). On each batch the
in-batch ITC similarities are computed as the train step hands them to the miner (online
image features x momentum text features, divided by the temperature), and
`negatives.mine_negatives` runs in each mode with the run's margin and exclusion rule.
Over all 2B anchors (B images, each given a text; B texts, each given an image) the
table shows:

  subcat    share of negatives of the anchor's subcategory (garment type x gender)
  garment   share of negatives of the anchor's garment type (gender is never drawn)
  colour    share of negatives whose product has the anchor product's garment colour
  gar+col   share of negatives of the anchor's garment type and colour both
  alike     share of negative pairs that the pair's image cannot tell from a positive: the
            text's product, drawn in the view and framing of the pair's image, is that
            image pixel for pixel. Image i with negative text j: product j in image i's
            view; text i with negative image j: product i in image j's view. E.g. two
            products that differ only in a detail on the back, seen from the front.
  alike_any share of anchors with at least one admissible candidate that is alike: the
            most any miner could pick.
  same_img  (text anchors only) the negative image is pixel-identical to the anchor's own
            image; ~0 by construction, as every product has its own framing jitter.
  gap       s(i, i) - s(i, neg), cosine units (before the temperature)
  rank      the negative's rank by s among the anchor's admissible candidates (those the
            miner's `false_negative_mask` allows, ~30 of 31; 1 = hardest)
  hardest   share of rank 1
  fallback  the miner's fallback_rate (rows without a candidate of the mode)

"Pixel-identical" is a mean absolute difference below 0.1 grey level (of 255). The
renderer is noise-free: content the view does not change is drawn bit for bit (0.0),
while the smallest visible one-attribute change of SynthFashion's twins (a small
detail's colour) is 0.28 grey level (min over 3214 twin views of 150 products), so a
threshold of 1 grey level would call visibly different images identical.

Run from the repository root (CPU is enough; about a minute per run and 20 batches):

  python docs/study/miner.py --run=runs/study/syncmask/seed0 \
    --run=runs/study/full_subcategory/seed0 --batches=20 --out=docs/study/miner.json
"""

import argparse
import dataclasses
import functools
import json
import os

import jax
import ml_collections
import numpy as np
from flax import nnx

from syncmask_jax import checkpointing, config_lib, negatives, paths, sharding
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import pipeline, synthfashion

IDENTICAL_MAD = 0.1  # grey levels; see the module docstring
COLUMNS = ("subcat", "garment", "colour", "gar+col", "alike", "alike_any", "same_img", "gap",
           "rank", "hardest", "fallback")


def pixel_identical(a: np.ndarray, b: np.ndarray) -> bool:
  """Mean absolute difference of two uint8 images below IDENTICAL_MAD grey levels."""
  return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32)))) < IDENTICAL_MAD


def looks_alike(image_product: synthfashion.Product, view: int, image: np.ndarray,
                text_product: synthfashion.Product, seed: int) -> bool:
  """Whether `text_product`, drawn in `view` with `image_product`'s framing (`render`
  draws the framing from the product id, as the twins do), is `image` (the image product's
  render of that view) pixel for pixel: the image cannot tell the two products apart."""
  stand_in = dataclasses.replace(text_product, product_id=image_product.product_id)
  return pixel_identical(image, synthfashion.render(stand_in, view, image.shape[0], seed)[0])


def alike_matrix(products: list, views: list, seed: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(B, B) bool: [i, j] product j looks like image i in image i's view (`looks_alike`),
  and image j is pixel-identical to image i."""
  images = [synthfashion.render(p, v, size, seed)[0] for p, v in zip(products, views)]
  n = len(products)
  alike = np.array([[looks_alike(products[i], views[i], images[i], products[j], seed)
                     for j in range(n)] for i in range(n)])
  same = np.array([[pixel_identical(images[i], images[j]) for j in range(n)]
                   for i in range(n)])
  return alike, same


def load_run(run: str):
  """(config, graphdef, online params, momentum params, step) of a run's directory."""
  config = ml_collections.ConfigDict(
      config_lib.with_defaults(paths.read_json(os.path.join(run, "config.json"))))
  mesh = sharding.make_mesh(config.mesh)
  graphdef, abstract = train_state_lib.abstract_params(
      lambda: train_state_lib.build_model(config, config.seed), config, mesh)
  directory = os.path.join(run, "checkpoints")
  params, step = checkpointing.load_pretrained(directory, abstract)
  momentum, _ = checkpointing.load_pretrained(directory, abstract, item="momentum_params",
                                              step=step)
  return config, graphdef, params, momentum, step


@functools.partial(jax.jit, static_argnums=0)
def itc_cosines(graphdef, params, momentum, batch):
  """(B, B) cosines of online image and momentum text features, and the temperature:
  what `train_step.online_losses` passes to the miner is cosines / temperature."""
  model, teacher = nnx.merge(graphdef, params), nnx.merge(graphdef, momentum)
  image = model.image_feature(model.encode_image(batch["image"]))
  text = teacher.text_feature(teacher.encode_text(batch["text_ids"], batch["text_mask"]))
  return image @ text.T, model.temperature()


def batch_rows(config, products, alike, same, batch, cos, temp, key, mode
               ) -> dict[str, list]:
  """Per-anchor measures of one batch and mode (image anchors, then text anchors)."""
  pid, ids = batch["product_id"], batch["text_ids"]
  margin = config.negatives.margin
  exclude = config.negatives.exclude
  neg_text, neg_image, stats = negatives.mine_negatives(key, cos / temp, pid, ids, mode,
                                                        margin, exclude)
  allowed = ~np.asarray(negatives.false_negative_mask(pid, ids, exclude))
  rows = {k: [] for k in COLUMNS}
  # Image i with text j: alike[i, j]; text i with image j: alike[j, i].
  for sims, ok, seen, chosen in ((cos, allowed, alike, neg_text),
                                 (cos.T, allowed.T, alike.T, neg_image)):
    for i, j in enumerate(np.asarray(chosen)):
      rows["subcat"].append(products[i].subcategory == products[j].subcategory)
      rows["garment"].append(products[i].category == products[j].category)
      rows["colour"].append(products[i].colour == products[j].colour)
      rows["gar+col"].append(rows["garment"][-1] and rows["colour"][-1])
      rows["alike"].append(seen[i, j])
      rows["alike_any"].append(np.any(seen[i] & ok[i]))
      rows["gap"].append(sims[i, i] - sims[i, j])
      rows["rank"].append(1 + np.sum(ok[i] & (sims[i] > sims[i, j])))
  rows["same_img"] = [same[i, j] for i, j in enumerate(np.asarray(neg_image))]
  rows["hardest"] = [r == 1 for r in rows["rank"]]
  rows["fallback"] = [float(stats["fallback_rate"])]
  return rows


def measure(run: str, num_batches: int, modes=config_lib.NEGATIVE_MODES) -> dict:
  config, graphdef, params, momentum, step = load_run(run)
  source = pipeline.make_source(config, "train")
  out = {"run": run, "step": step, "grouping": config.data.grouping,
         "mode_trained": config.negatives.mode, "results": {}}
  # The run's own batches first; an ungrouped run also meets grouped batches.
  for grouping in dict.fromkeys((config.data.grouping, "subcategory", "none")):
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.data.grouping, cfg.data.read_threads = grouping, 1
    it = pipeline.make_train_iterator(cfg, process_index=0, process_count=1, source=source)
    rows = {m: {k: [] for k in COLUMNS} for m in modes}
    for b in range(num_batches):
      batch = next(it)
      cos, temp = jax.device_get(itc_cosines(graphdef, params, momentum, {
          k: batch[k] for k in ("image", "text_ids", "text_mask")}))
      located = [source.locate(int(i)) for i in batch["index"]]
      products = [source.product(p) for p, _ in located]
      alike, same = alike_matrix(products, [v for _, v in located], source.seed,
                                 source.image_size)
      for m in modes:
        key = jax.random.fold_in(jax.random.key(config.seed), b)
        mined = batch_rows(config, products, alike, same, batch, cos, temp, key, m)
        for k, v in mined.items():
          rows[m][k] += v
    it.close()
    out["temperature"] = float(temp)
    out["results"][grouping] = {m: {k: float(np.mean(v)) for k, v in r.items()}
                                for m, r in rows.items()}
  return out


def table(results: list[dict]) -> str:
  lines = ["| run | batches | mode | " + " | ".join(COLUMNS) + " |",
           "|" + "---|" * (3 + len(COLUMNS))]
  for r in results:
    name = os.path.join(*os.path.normpath(r["run"]).split(os.sep)[-2:])
    for grouping, modes in r["results"].items():
      for m, v in modes.items():
        cells = [f"{v[k]:.3f}" if k == "gap" else f"{v[k]:.1f}" if k == "rank"
                 else f"{100 * v[k]:.1f}%" for k in COLUMNS]
        lines.append(f"| {name} | {grouping} | {m} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", action="append", required=True,
                      help="a finished pretraining run's directory (repeatable)")
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--out", default="", help="write the results as JSON here")
  args = parser.parse_args()
  results = [measure(run, args.batches) for run in args.run]
  print(table(results))
  for r in results:
    print(f"{r['run']}: step {r['step']}, ITC temperature {r['temperature']:.4f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"batches": args.batches, "identical_mad": IDENTICAL_MAD,
                 "runs": results}, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  main()
