"""The evaluators: retrieval protocols, mask precision and grounding, FashionIQ TGIR.

Pretraining (`evaluate_pretraining`) and the fine-tuning tasks (`tasks/`) call these;
each task file holds what only it evaluates (CR/SCR: `tasks/category.py`). Results go
to `DIR/eval/<task>.json` (task = pretrain | category | tgir | retrieval) and to the
run's metric writers (TensorBoard, metrics.jsonl). Every number sits in a block
that names its protocol and scoring (`"results": [...]`); pretraining also copies its
first retrieval block to the top level (what `main.py` prints).

* Retrieval (`retrieval.py` holds the one scorer): FashionGen / SynthFashion run
  `full_gallery` and `one_plus_100`; COCO / Flickr30K run `karpathy`; each under every
  scoring of `config.eval.scoring` (`itc`, `itc+itm`). FashionIQ runs TGIR.
* Mask precision (SynthFashion, pretraining): the configured masking strategy and
  uniform random masks at the same ratios, from the same momentum model on the same
  held-out pairs, against the generator's ground truth.
* FashionIQ TGIR: R@10 / R@50 per category and their mean, under both gallery
  protocols (`split`, `val_union`). Queries whose target is not in the gallery count as
  misses and are counted.

Features are computed in sharded batches over all devices (one jit over the mesh,
`make_global_batch`); every process gets every row back (replicated outputs), so the
host-side ranking is the same on every host and process 0 writes.

CLI (`__main__.py`), on the latest or a named checkpoint of a run:

  python -m syncmask_jax.evaluate --config=configs/synthfashion.py --workdir=DIR [--step=N]
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from syncmask_jax import caption_eval, config_lib, console, grounding, masking, paths
from syncmask_jax import retrieval
from syncmask_jax import sharding, tokenizer
from syncmask_jax import visualize
from syncmask_jax.data import pipeline, synthfashion

_ID_FIELDS = ("product_id", "category", "subcategory", "index", "image_index",
              "target_index")


def eval_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.eval` with its protocols resolved (empty: the dataset's, DEFAULT_PROTOCOLS),
  its batch sizes checked against the devices."""
  ev = ml_collections.ConfigDict(config.eval.to_dict())
  ev.protocols = (tuple(ev.protocols)
                  or config_lib.DEFAULT_PROTOCOLS.get(config.data.name, ()))
  devices = data_parallel_size(config)
  for field, size in (("eval.itm_batch_size", ev.itm_batch_size),
                      ("data.eval_batch_size", config.data.eval_batch_size)):
    if size % devices:
      raise ValueError(f"config.{field}={size}: must be a multiple of the {devices} "
                       "devices the batch is split over")
  return ev


def data_parallel_size(config: ml_collections.ConfigDict) -> int:
  """Devices the batch axis spans (the mesh's data x fsdp)."""
  mesh = sharding.make_mesh(config.mesh)
  return mesh.shape["data"] * mesh.shape["fsdp"]


# -- sharded passes over eval data ------------------------------------------------------


def eval_rows(fn: Callable[[Any, dict], dict], params: Any,
              iterator: pipeline.EvalIterator, mesh: jax.sharding.Mesh
              ) -> Iterator[dict[str, np.ndarray]]:
  """Runs `fn(params, batch) -> {name: (B, ...)}` over an eval iterator under one jit;
  yields each global batch's real rows (`valid`) on the host, in source order."""
  jitted = _jit_rows(fn, mesh)
  countdown = console.Countdown(f"encoding {iterator.source!r}", iterator.steps_per_epoch,
                                "batches")
  try:
    for host_batch in iterator:
      out = jax.device_get(jitted(params, pipeline.make_global_batch(host_batch, mesh)))
      valid = np.asarray(out.pop("valid"), bool)
      countdown.add(1)
      yield {k: np.asarray(v)[valid] for k, v in out.items()}
  finally:
    iterator.close()


@functools.lru_cache(maxsize=64)
def _jit_rows(fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """One jitted pass function per (fn, mesh): repeated evaluations reuse the compilation."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(lambda p, b: dict(fn(p, b), valid=b["valid"]), out_shardings=replicated)


class Rows:
  """Per-example outputs appended batch by batch into arrays allocated once (the ITM
  token tables of a large split would otherwise be held twice while concatenating)."""

  def __init__(self, total: int):
    self.total, self.filled, self.columns = total, 0, {}

  def add(self, rows: dict[str, np.ndarray]) -> None:
    n = len(next(iter(rows.values())))
    for k, v in rows.items():
      if k not in self.columns:
        self.columns[k] = np.empty((self.total, *v.shape[1:]), v.dtype)
      self.columns[k][self.filled:self.filled + n] = v
    self.filled += n

  def result(self) -> dict[str, np.ndarray]:
    if self.filled != self.total:
      raise RuntimeError(f"evaluation saw {self.filled} rows, the source has {self.total}")
    return self.columns


@functools.lru_cache(maxsize=64)
def _encode_fn(graphdef: Any, *, tokens: bool = False, query: bool = False) -> Callable:
  """(params, batch) -> projected features (and encoder outputs for ITM) of whatever the
  batch holds: images, texts, or (TGIR) fused (reference image, text) queries."""

  def fn(params, batch):
    model = nnx.merge(graphdef, params)
    out = {k: batch[k] for k in _ID_FIELDS if k in batch}
    image_tokens = model.encode_image(batch["image"]) if "image" in batch else None
    text_hidden = (model.encode_text(batch["text_ids"], batch["text_mask"])
                   if "text_ids" in batch else None)
    if query:
      fused, _ = model.fuse(text_hidden, batch["text_mask"], image_tokens)
      out["query_feat"] = model.text_feature(fused)
      return out
    if image_tokens is not None:
      out["image_feat"] = model.image_feature(image_tokens)
      if tokens:
        out["image_tokens"] = image_tokens
    if text_hidden is not None:
      out["text_feat"] = model.text_feature(text_hidden)
      if tokens:
        out["text_hidden"], out["text_mask"] = text_hidden, batch["text_mask"]
    return out

  return fn


@functools.lru_cache(maxsize=16)
def _pair_pass_fn(graphdef: Any, tokens: bool, masking_json: str | None, seed: int,
                  token_info: tokenizer.TokenInfo | None) -> Callable:
  """Features of (image, text) pairs; with a masking config (JSON, so the function can be
  cached across evaluations) also per-row hits and counts of those masks and of random
  masks at the same ratios (momentum model, unmasked pair) against SynthFashion's
  ground truth. Params are (online, momentum)."""
  encode = _encode_fn(graphdef, tokens=tokens)
  if masking_json is None:
    return lambda p, batch: encode(p[0], batch)
  method_cfg = ml_collections.ConfigDict(json.loads(masking_json))
  random_cfg = ml_collections.ConfigDict(json.loads(masking_json))
  random_cfg.strategy = "random"
  key = jax.random.key(seed + 1)

  def fn(p, batch):
    out = encode(p[0], batch)
    teacher = nnx.merge(graphdef, p[1])
    image_m = teacher.encode_image(batch["image"])
    text_m = teacher.encode_text(batch["text_ids"], batch["text_mask"])
    probs, cams = masking.teacher_cross_attention(teacher, text_m, batch["text_mask"],
                                                  image_m, "gradcam")
    maskable = tokenizer.text_maskable(batch["text_ids"], batch["text_mask"], token_info)
    # A key per batch, from its first record: the same masks for any batching order.
    k = jax.random.fold_in(key, batch["index"][0])
    num_patches = image_m.shape[1] - 1
    for name, cfg in (("method", method_cfg), ("random", random_cfg)):
      patch, token = masking.masks_from_config(k, cfg, probs, maskable, num_patches, cams)
      out.update({f"masks/{name}/{key}": v for key, v in grounding.mask_sums(
          patch, token, batch["gt_patch_visible"], batch["gt_token_part"],
          maskable).items()})
    out.update(_grounding_rows(method_cfg, k, probs, cams, maskable, batch))
    return out

  return fn


def _grounding_rows(cfg: ml_collections.ConfigDict, key: jax.Array, probs: jax.Array,
                    cams: jax.Array, maskable: jax.Array, batch: dict) -> dict[str, jax.Array]:
  """Per-row grounding sums (`grounding.py`) of every mask source's map, with the AUCs
  of its SyncMask scores (`grounding/<source>/...`), and of every fusion layer and head
  of the attention and Grad-CAM maps (`heads/<source>/...`, (B, L, H); Grad-CAM without
  the last layer)."""
  token_part, patch_part = batch["gt_token_part"], batch["gt_patch_part"]
  num_layers = probs.shape[0]
  out = {}
  for source in config_lib.MASK_SOURCES:
    sync_cfg = ml_collections.ConfigDict(dict(cfg.to_dict(), strategy="syncmask",
                                              source=source, warmup_steps=0))
    if source.startswith("gradcam") and not cfg.source.startswith("gradcam"):
      if num_layers == 1:
        continue  # one fusion layer has no Grad-CAM for words (masking.word_patch_map)
      sync_cfg.layers = (masking.gradcam_layer(num_layers),)
    attn = masking.word_patch_map(sync_cfg, probs, maskable, cams)
    patch, token = masking.masks_from_config(key, sync_cfg, probs, maskable, attn.shape[-1],
                                             cams)
    sums = {**grounding.map_sums(attn, token_part, maskable, patch_part),
            **grounding.score_sums(masking.patch_score(attn, maskable),
                                   masking.token_score(attn, maskable, patch,
                                                       sync_cfg.token_score),
                                   batch["gt_patch_visible"], batch["gt_token_visible"],
                                   maskable),
            **grounding.mask_sums(patch, token, batch["gt_patch_visible"], token_part,
                                  maskable)}
    out.update({f"grounding/{source}/{k}": v for k, v in sums.items()})
  # Grad-CAM per layer leaves out the last, where it is zero for every word.
  for source, maps in (("attention", probs), ("gradcam", cams[:-1])):
    if not maps.shape[0]:
      continue
    # (L, B, H, T, 1+N) -> sums over (L, H), rows first so padded rows can be dropped.
    per_head = jax.vmap(jax.vmap(
        lambda a: grounding.map_sums(a[..., 1:], token_part, maskable, patch_part),
        in_axes=1), in_axes=0)(maps)
    out.update({f"heads/{source}/{k}": jnp.moveaxis(v, -1, 0) for k, v in per_head.items()})
  return out


# -- retrieval --------------------------------------------------------------------------


def _scorer(scoring: str, ev: ml_collections.ConfigDict, graphdef: Any, params: Any,
            mesh: jax.sharding.Mesh, images: dict, texts: dict) -> retrieval.Scorer:
  itm = None
  if scoring == "itc+itm":
    itm = retrieval.ItmPairs(graphdef, params, mesh, images["image_tokens"],
                             texts["text_hidden"], texts["text_mask"], ev.itm_batch_size)
  return retrieval.Scorer(scoring, int(ev.itm_k), itm)


def fashion_retrieval(config: ml_collections.ConfigDict, graphdef: Any, params: Any,
                      mesh: jax.sharding.Mesh, *, momentum_params: Any = None,
                      tokens: tokenizer.TokenInfo | None = None
                      ) -> tuple[list[dict], dict[str, float]]:
  """`full_gallery` / `one_plus_100` blocks on a product dataset's eval split, and (with
  momentum parameters, on SynthFashion) the summed mask-precision counts."""
  ev = eval_settings(config)
  source = pipeline.make_eval_source(config)
  meta = pipeline.source_metadata(source)
  _, first, record_product = retrieval.product_table(meta["product_id"])
  is_first = np.zeros(len(source), bool)
  is_first[first] = True
  with_tokens = "itc+itm" in ev.scoring
  gt = momentum_params is not None and config.data.name == "synthfashion"
  fn = _pair_pass_fn(graphdef, with_tokens, config.masking.to_json() if gt else None,
                     int(config.seed), tokens if gt else None)
  images, texts, counts = Rows(len(source)), Rows(len(first)), {}
  iterator = pipeline.make_eval_iterator(config, source=source)
  for rows in eval_rows(fn, (params, momentum_params), iterator, mesh):
    text_keys = ("text_feat", "text_hidden", "text_mask")
    keep = is_first[rows["index"]]
    texts.add({k: rows.pop(k)[keep] for k in text_keys if k in rows})
    for k in [k for k in rows if k.startswith(("masks/", "grounding/", "heads/"))]:
      counts[k] = counts.get(k, 0.0) + rows.pop(k).astype(np.float64).sum(axis=0)
    images.add(rows)
  images, texts = images.result(), texts.result()
  subcategory = meta.get("subcategory", np.full(len(source), -1))
  split = pipeline.EVAL_SPLIT[config.data.name]
  twins = (_twins_features(config, ev, graphdef, params, mesh, source, with_tokens)
           if "twins" in ev.protocols and config.data.name == "synthfashion" else None)
  blocks = []
  for scoring in ev.scoring:
    scorer = _scorer(scoring, ev, graphdef, params, mesh, images, texts)
    for protocol in ev.protocols:
      if protocol == "twins" and twins is not None:
        twin_images, twin_texts, groups = twins
        metrics = retrieval.twins_recall(
            twin_images["image_feat"], twin_texts["text_feat"], groups,
            _scorer(scoring, ev, graphdef, params, mesh, twin_images, twin_texts))
        blocks.append({"protocol": protocol, "scoring": scoring,
                       "dataset": config.data.name, "split": split,
                       **({"itm_k": int(ev.itm_k)} if scoring != "itc" else {}), **metrics})
        continue
      if protocol == "full_gallery":
        metrics = retrieval.bidirectional(images["image_feat"], record_product,
                                          texts["text_feat"], np.arange(len(first)), scorer,
                                          ev.query_chunk)
      elif protocol == "one_plus_100":
        metrics = retrieval.one_plus_100_rounds(
            images["image_feat"], meta["product_id"], subcategory, texts["text_feat"],
            scorer, **ev.one_plus_100.to_dict())
      else:
        raise ValueError(f"config.eval.protocols: {protocol!r} does not apply to "
                         f"{config.data.name}")
      blocks.append({"protocol": protocol, "scoring": scoring, "dataset": config.data.name,
                     "split": split, **({"itm_k": int(ev.itm_k)} if scoring != "itc" else {}),
                     "skipped_records": {"pairs": pipeline.skipped_records(source)},
                     **metrics})
  return blocks, counts


class _Records(list):
  """Records held in memory as an eval source, named in the log by what they are."""

  def __init__(self, name: str, records: list[dict]):
    super().__init__(records)
    self.name = name

  def __repr__(self) -> str:
    return f"{self.name} ({len(self)} records)"


def _twins_features(config: ml_collections.ConfigDict, ev: ml_collections.ConfigDict,
                    graphdef: Any, params: Any, mesh: jax.sharding.Mesh, source: Any,
                    with_tokens: bool) -> tuple[dict, dict, dict]:
  """(image rows, text rows, groups) of the 1+K twins protocol on the first
  `eval.twins.num_products` products of SynthFashion's eval split, as many as asked
  (more than the retrieval gallery holds is allowed: a tighter twins protocol need not
  change the other protocols' galleries): the twins are drawn by the generator
  (`synthfashion.twin_records`) and encoded like any eval split."""
  product_ids = synthfashion.split_product_ids(source.split, int(ev.twins.num_products))
  groups = synthfashion.twin_records(source.seed, product_ids, int(ev.twins.num_twins),
                                     image_size=source.image_size, style=source.style)
  encode = _encode_fn(graphdef, tokens=with_tokens)
  parts = {}
  for part, records in (
      ("images", [{"image": im, "index": np.int64(i)} for i, im in enumerate(groups["image"])]),
      ("texts", [{"text": t, "index": np.int64(i)} for i, t in enumerate(groups["text"])])):
    records = _Records(f"SynthFashion twins {part}", records)
    rows = Rows(len(records))
    for r in eval_rows(encode, params, pipeline.make_eval_iterator(config, source=records),
                       mesh):
      rows.add(r)
    parts[part] = rows.result()
  return parts["images"], parts["texts"], groups


def karpathy_retrieval(config: ml_collections.ConfigDict, graphdef: Any, params: Any,
                       mesh: jax.sharding.Mesh) -> list[dict]:
  """COCO / Flickr30K: images vs all captions; i2t hits on any of an image's captions."""
  ev = eval_settings(config)
  with_tokens = "itc+itm" in ev.scoring
  encode = _encode_fn(graphdef, tokens=with_tokens)
  parts, skipped = {}, {}
  for part in ("images", "texts"):
    source = pipeline.make_eval_source(config, part=part)
    skipped[part] = pipeline.skipped_records(source)
    rows = Rows(len(source))
    for r in eval_rows(encode, params, pipeline.make_eval_iterator(config, source=source),
                       mesh):
      rows.add(r)
    parts[part] = rows.result()
  images, texts = parts["images"], parts["texts"]
  blocks = []
  for scoring in ev.scoring:
    scorer = _scorer(scoring, ev, graphdef, params, mesh, images, texts)
    metrics = retrieval.bidirectional(images["image_feat"], np.arange(len(images["index"])),
                                      texts["text_feat"], texts["image_index"], scorer,
                                      ev.query_chunk)
    blocks.append({"protocol": "karpathy", "scoring": scoring,
                   "dataset": config.data.karpathy_name,
                   "split": pipeline.EVAL_SPLIT["coco"],
                   **({"itm_k": int(ev.itm_k)} if scoring != "itc" else {}),
                   "skipped_records": skipped, **metrics})
  return blocks


def retrieval_blocks(config: ml_collections.ConfigDict, graphdef: Any, params: Any,
                     mesh: jax.sharding.Mesh) -> list[dict]:
  """The retrieval (or, on FashionIQ, TGIR) blocks of `config.data`'s eval split."""
  name = config.data.name
  if name == "coco":
    return karpathy_retrieval(config, graphdef, params, mesh)
  if name in TGIR_PROTOCOL:
    return tgir_blocks(config, graphdef, params, mesh)
  return fashion_retrieval(config, graphdef, params, mesh)[0]


# -- TGIR: FashionIQ, SynthFashion-TGIR ---------------------------------------------------

# The block's protocol name per dataset of the tgir task.
TGIR_PROTOCOL = {"fashioniq": "fashioniq_tgir", "synthfashion_tgir": "synthfashion_tgir"}


def with_data(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of `config` with `config.data` fields replaced."""
  c = copy.deepcopy(config)
  for k, v in fields.items():
    c.data[k] = v
  return c


def tgir_blocks(config: ml_collections.ConfigDict, graphdef: Any, params: Any,
                mesh: jax.sharding.Mesh) -> list[dict]:
  """R@10/R@50 per category and their mean, per gallery protocol (scoring `itc`: the
  cosine of the projected fused query and the projected gallery image)."""
  t = config.tgir
  protocol_name = TGIR_PROTOCOL[config.data.name]
  split = pipeline.EVAL_SPLIT[config.data.name]
  ks = tuple(int(k) for k in t.ks)
  chunk = eval_settings(config).query_chunk
  scorer = retrieval.Scorer("itc")
  blocks = []
  for category in t.categories:
    base = with_data(config, fashioniq_category=category,
                      fashioniq_gallery=t.gallery_protocols[0])
    source = pipeline.make_eval_source(base, part="queries")
    skipped = {"queries": pipeline.skipped_records(source)}
    queries = Rows(len(source))
    for r in eval_rows(_encode_fn(graphdef, query=True), params,
                       pipeline.make_eval_iterator(base, source=source), mesh):
      queries.add(r)
    queries = queries.result()
    for protocol in t.gallery_protocols:
      cfg = with_data(config, fashioniq_category=category, fashioniq_gallery=protocol)
      source = pipeline.make_eval_source(cfg, part="gallery")
      gallery = Rows(len(source))
      for r in eval_rows(_encode_fn(graphdef), params,
                         pipeline.make_eval_iterator(cfg, source=source), mesh):
        gallery.add(r)
      gallery = gallery.result()
      ranks = retrieval.rank_queries(queries["query_feat"], gallery["image_feat"],
                                     queries["product_id"], gallery["product_id"], scorer,
                                     query_is_image=False, chunk=chunk,
                                     names=("query_feat", "image_feat"))
      missing = ~np.isin(queries["product_id"], gallery["product_id"])
      blocks.append({"protocol": protocol_name, "gallery": protocol, "scoring": "itc",
                     "category": category, "split": split,
                     "num_queries": int(len(ranks)), "num_gallery": int(len(gallery["index"])),
                     "queries_target_not_in_gallery": int(missing.sum()),
                     "skipped_records": {**skipped,
                                         "gallery": pipeline.skipped_records(source)},
                     **retrieval.recall_at_k(ranks, ks)})
  for protocol in t.gallery_protocols:
    per = [b for b in blocks if b["gallery"] == protocol]
    blocks.append({"protocol": protocol_name, "gallery": protocol, "scoring": "itc",
                   "category": "mean", "split": split,
                   "categories": [b["category"] for b in per],
                   **{f"r{k}": float(np.mean([b[f"r{k}"] for b in per])) for k in ks}})
  return blocks


# -- shared ---------------------------------------------------------------------------


@contextlib.contextmanager
def naming_step(step: int):
  """Puts the evaluated step into a NonFiniteError: the message says which checkpoint
  (or training step) produced NaN features."""
  try:
    yield
  except retrieval.NonFiniteError as e:
    raise retrieval.NonFiniteError(f"evaluation at step {step}: {e}") from e


# -- pretraining ------------------------------------------------------------------------


def masks_trained(config: ml_collections.ConfigDict, counts: dict[str, float]) -> list[str]:
  """The kinds of mask (patch, token) the recipe trains with, whose precision means
  something: patch masks feed only MIM (none in ALBEF), and text-guided masking picks no
  tokens (SemMIM's MLM mask is the random one)."""
  return [kind for kind, used in (("patch", config.loss.mim > 0),
                                  ("token", counts["masks/method/token_share_visible_count"]
                                   > 0)) if used]


def evaluate_pretraining(config: ml_collections.ConfigDict, setup, state, tokens,
                         workdir: str, writer=None, *, step: int = 0) -> dict[str, Any]:
  """Retrieval of the online model on the eval split; on SynthFashion also mask
  precision (momentum model) and a few pictures. Writes DIR/eval/pretrain.json."""
  name = config.data.name
  counts: dict[str, float] = {}
  with naming_step(step):
    if name in ("synthfashion", "fashiongen"):
      blocks, counts = fashion_retrieval(config, setup.graphdef, state.params, setup.mesh,
                                         momentum_params=state.momentum_params, tokens=tokens)
    else:
      blocks = retrieval_blocks(config, setup.graphdef, state.params, setup.mesh)
  results: dict[str, Any] = {"task": "pretrain", "step": int(step), "dataset": name,
                             "split": pipeline.EVAL_SPLIT[name]}
  if blocks and "i2t_r1" in blocks[0]:
    results.update(blocks[0])  # the headline (main.py's summary line)
  results["results"] = blocks
  if counts:
    results["mask_strategy"] = config.masking.strategy
    results["mask_source"] = config.masking.source
    results["masks_trained"] = masks_trained(config, counts)
    for kind in ("method", "random"):
      shares = grounding.ratios({k[len(f"masks/{kind}/"):]: v for k, v in counts.items()
                                 if k.startswith(f"masks/{kind}/")})
      # 0 where nothing was masked (no MIM, or no token mask).
      value = lambda k: float(np.nan_to_num(shares[k]))
      results[f"mask_precision_patch_{kind}"] = value("patch_precision")
      results[f"mask_precision_token_{kind}"] = value("token_share_visible")
      for word_class in grounding.WORD_CLASSES:
        results[f"mask_token_share_{word_class}_{kind}"] = value(f"token_share_{word_class}")
    results["grounding"] = _grounding_results(counts)
  ev = eval_settings(config)
  if name == "synthfashion" and ev.pictures > 0:
    results["pictures"] = visualize.pretraining_pictures(
        config, setup.graphdef, state.momentum_params, setup.mesh, tokens,
        os.path.join(workdir, "eval", "pictures"), step=step, num=int(ev.pictures),
        words=int(ev.picture_words))
  write_results(workdir, "pretrain", results, writer, step)
  return results


def _grounding_results(counts: dict[str, np.ndarray]) -> dict[str, Any]:
  """{"<source>": {measure: value}, "heads": {"<source>": {measure: [[per head] per
  layer]}}} from the summed `_grounding_rows`; measures nothing was counted for are left
  out."""
  out: dict[str, Any] = {"heads": {}}
  for prefix in ("grounding", "heads"):
    for source in config_lib.MASK_SOURCES:
      sums = {k[len(f"{prefix}/{source}/"):]: v for k, v in counts.items()
              if k.startswith(f"{prefix}/{source}/")}
      if not sums:
        continue
      values = {k: np.asarray(v).tolist() for k, v in grounding.ratios(sums).items()
                if np.all(np.isfinite(np.asarray(v)))}
      (out if prefix == "grounding" else out["heads"])[source] = values
  return out


# -- output -----------------------------------------------------------------------------


def block_label(block: dict[str, Any]) -> str:
  """'protocol[/gallery][/category|label]/scoring': what a block's numbers are."""
  parts = [block.get("protocol", "")]
  parts += [str(block[k]) for k in ("gallery", "category", "label") if k in block]
  if "scoring" in block:
    parts.append(block["scoring"])
  return "/".join(p for p in parts if p)


def scalars(task: str, results: dict[str, Any]) -> dict[str, float]:
  """TensorBoard names: eval/<task>/<protocol>/.../<scoring>/<metric>."""
  out = {}
  for block in results.get("results", []):
    label = block_label(block)
    for k, v in block.items():
      if isinstance(v, float):
        out[f"eval/{task}/{label}/{k}"] = v
  for k, v in results.items():
    if k.startswith(("mask_precision", "mask_token_share")) and isinstance(v, float):
      out[f"eval/{task}/{k}"] = v
  for source, values in results.get("grounding", {}).items():
    if source != "heads":
      out.update({f"eval/{task}/grounding/{source}/{k}": v for k, v in values.items()})
  return out


def write_results(workdir: str, task: str, results: dict[str, Any], writer=None,
                  step: int = 0) -> str:
  """DIR/eval/<task>.json (process 0) and the writer's scalars; returns the path."""
  path = os.path.join(workdir, "eval", f"{task}.json")
  if jax.process_index() == 0:
    paths.path(path).parent.mkdir(parents=True, exist_ok=True)
    paths.write_json(path, results)
    if writer is not None:
      writer.write_scalars(step, scalars(task, results))
      writer.flush()
    logging.info("evaluation -> %s", path)
  return path


def summary_lines(results: dict[str, Any]) -> list[str]:
  """One line per result block, for the end of a run."""
  lines = []
  for b in results.get("results", []):
    label = block_label(b)
    if b.get("protocol") == "twins":
      # A view shows only the twins whose change it shows, so an attribute's row is
      # often 1+1 or 1+2, not 1+K: its R@1 by chance is printed beside it.
      nan = float("nan")
      per = "  ".join(f"{a} {b.get(f'i2t_r1_{a}', nan):.0f}/{b.get(f't2i_r1_{a}', nan):.0f}"
                      f" [{b.get(f'r1_chance_{a}', nan):.0f}]" for a in b["attributes"])
      lines.append(f"retrieval {label} ({b['num_products']} products x 1+{b['twin_slots']} "
                   f"twins, visible changes): i2t R@1 {b['i2t_r1']:.1f}  t2i R@1 "
                   f"{b['t2i_r1']:.1f}; per attribute, i2t/t2i [by chance]: {per}")
    elif "i2t_r1" in b:
      size = (f"{b['num_queries']} queries x 1+{b['num_negatives']}, {b['rounds']} rounds"
              if "rounds" in b else f"{b['num_images']} images x {b['num_texts']} texts")
      lines.append(f"retrieval {label} ({size}): i2t R@1/5/10 {b['i2t_r1']:.1f}/"
                   f"{b['i2t_r5']:.1f}/{b['i2t_r10']:.1f}  t2i R@1/5/10 {b['t2i_r1']:.1f}/"
                   f"{b['t2i_r5']:.1f}/{b['t2i_r10']:.1f}  mean {b['r_mean']:.1f}")
    elif b.get("protocol") == "vqa":
      scores = "  ".join(f"{k} {v:.2f}" for k, v in b.items() if isinstance(v, float))
      lines.append(f"VQA {b['split']} ({b['num_questions']} questions, {b['scoring']}): "
                   f"{scores or 'no answers to score'} -> {b['results_file']}")
    elif "accuracy" in b:
      lines.append(f"{b['label']} recognition ({b['num_classes']} classes, "
                   f"{b['num_evaluated']} rows, {b['num_excluded_unseen']} excluded: label "
                   f"unseen in train): accuracy {b['accuracy']:.1f}  macro-F1 "
                   f"{b['macro_f1']:.1f}")
    elif b.get("protocol") == "captioning":
      scores = "  ".join(f"{m} {b[m]:.1f}" for m in caption_eval.METRICS if m in b)
      lines.append(f"captioning {b['dataset']} {b['split']} ({b['num_images']} images): "
                   + (scores or f"not scored ({', '.join(b['skipped'])})"))
    else:
      recalls = "  ".join(f"R@{k[1:]} {v:.1f}" for k, v in b.items()
                          if k[:1] == "r" and k[1:].isdigit())
      size = (f" ({b['num_queries']} queries x {b['num_gallery']} images)"
              if "num_gallery" in b else "")
      lines.append(f"{label}{size}: {recalls}")
  plural = {"patch": "patches", "token": "tokens"}
  trained = results.get("masks_trained", ())
  precisions = [f"{plural[kind]} {results[f'mask_precision_{kind}_method']:.3f} vs "
                f"{results[f'mask_precision_{kind}_random']:.3f}" for kind in trained]
  if precisions:
    lines.append(f"mask precision ({results['mask_strategy']} vs random): "
                 + ", ".join(precisions))
  if "grounding" in results:
    source = results.get("mask_source", "attention")
    g = results["grounding"].get(source, {})
    line = (f"grounding ({source}, momentum model): visible words' pointing "
            f"{g.get('visible/pointing', float('nan')):.2f}, share on their patches "
            f"{g.get('visible/own_share', float('nan')):.2f}; AUC s_img "
            f"{g.get('auc_patch', float('nan')):.2f}, s_txt "
            f"{g.get('auc_token', float('nan')):.2f}")
    if "token" in trained:
      line += (f"; masked tokens: function words "
               f"{results['mask_token_share_function_method']:.2f} vs "
               f"{results['mask_token_share_function_random']:.2f}, unshowable "
               f"{results['mask_token_share_invisible_method']:.2f} vs "
               f"{results['mask_token_share_invisible_random']:.2f}")
    lines.append(line)
  return lines
