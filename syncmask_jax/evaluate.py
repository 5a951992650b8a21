"""Evaluation after pretraining: held-out retrieval and, on SynthFashion, mask precision.

Retrieval here is the *full gallery* protocol with `itc` scoring (METHOD.md 7): every
held-out view against one text per product; a text query hits if any view of its
product is retrieved, an image query if its product's text is.
Mask precision compares, on the same held-out pairs and the same momentum model, the
configured masking strategy with uniform random masks at the same ratios.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from syncmask_jax import masking, retrieval, train_step
from syncmask_jax.data import pipeline


def _batch_fn(config: ml_collections.ConfigDict, graphdef, tokens: train_step.TokenInfo,
              with_masks: bool):
  random_cfg = ml_collections.ConfigDict(config.masking.to_dict())
  random_cfg.strategy = "random"

  @jax.jit
  def fn(params, momentum_params, batch, key):
    model = nnx.merge(graphdef, params)
    image_tokens = model.encode_image(batch["image"])
    text_hidden = model.encode_text(batch["text_ids"], batch["text_mask"])
    out = {"image_feat": model.image_feature(image_tokens),
           "text_feat": model.text_feature(text_hidden)}
    if with_masks:
      teacher = nnx.merge(graphdef, momentum_params)
      image_m = teacher.encode_image(batch["image"])
      text_m = teacher.encode_text(batch["text_ids"], batch["text_mask"])
      _, probs = teacher.fuse(text_m, batch["text_mask"], image_m)
      maskable = train_step.text_maskable(batch["text_ids"], batch["text_mask"], tokens) & \
          batch["valid"][:, None]
      n = image_m.shape[1] - 1
      gt_patch = batch["gt_patch_visible"] & batch["valid"][:, None]
      for name, cfg in (("method", config.masking), ("random", random_cfg)):
        patch_mask, token_mask = masking.masks_from_config(key, cfg, probs, maskable, n)
        patch_mask = patch_mask & batch["valid"][:, None]
        out[f"{name}_patch_hits"] = jnp.sum(patch_mask & gt_patch)
        out[f"{name}_patch_count"] = jnp.sum(patch_mask)
        out[f"{name}_token_hits"] = jnp.sum(token_mask & batch["gt_token_visible"])
        out[f"{name}_token_count"] = jnp.sum(token_mask)
    return out

  return fn


def evaluate_pretraining(config: ml_collections.ConfigDict, setup, state, tokens,
                         workdir: str, writer=None, *, step: int = 0) -> dict[str, Any]:
  eval_iter = pipeline.make_eval_iterator(config)
  first = next(eval_iter)
  with_masks = "gt_patch_visible" in first
  fn = _batch_fn(config, setup.graphdef, tokens, with_masks)
  feats: dict[str, list] = {"image_feat": [], "text_feat": [], "product_id": []}
  counts: dict[str, float] = {}
  key = jax.random.key(config.seed + 1)
  batch = first
  while batch is not None:
    key, sub = jax.random.split(key)
    global_batch = pipeline.make_global_batch(batch, setup.mesh)
    out = jax.device_get(fn(state.params, state.momentum_params, global_batch, sub))
    valid = np.asarray(jax.device_get(global_batch["valid"]))
    feats["image_feat"].append(out.pop("image_feat")[valid])
    feats["text_feat"].append(out.pop("text_feat")[valid])
    feats["product_id"].append(np.asarray(jax.device_get(global_batch["product_id"]))[valid])
    for k, v in out.items():
      counts[k] = counts.get(k, 0.0) + float(v)
    batch = next(eval_iter, None)

  image_feat = np.concatenate(feats["image_feat"])
  text_feat = np.concatenate(feats["text_feat"])
  pid = np.concatenate(feats["product_id"])
  # Full gallery: all views as images, one text (the first view's) per product.
  _, first_of_product = np.unique(pid, return_index=True)
  texts = text_feat[first_of_product]
  text_pid = pid[first_of_product]
  sim = image_feat @ texts.T
  results: dict[str, Any] = {
      "protocol": "full_gallery", "scoring": "itc", "split": pipeline.EVAL_SPLIT[config.data.name],
      "num_images": int(len(pid)), "num_texts": int(len(text_pid)), "step": step}
  results.update(retrieval.bidirectional_recall(sim, pid[:, None] == text_pid[None, :]))
  if with_masks:
    ratio = lambda h, c: counts[h] / max(counts[c], 1.0)
    results["mask_strategy"] = config.masking.strategy
    for name in ("method", "random"):
      results[f"mask_precision_patch_{name}"] = ratio(f"{name}_patch_hits", f"{name}_patch_count")
      results[f"mask_precision_token_{name}"] = ratio(f"{name}_token_hits", f"{name}_token_count")

  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    path = os.path.join(workdir, "eval", "pretrain.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
    if writer is not None:
      writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()
                                  if isinstance(v, float)})
    logging.info("evaluation -> %s: %s", path, results)
  return results
