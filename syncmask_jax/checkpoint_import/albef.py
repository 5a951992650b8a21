"""ALBEF's checkpoints whole, both the original code's and LAVIS's: import and export.

The layout (salesforce/ALBEF `models/model_*.py`, LAVIS `lavis/models/albef_models`):
  visual_encoder.*           timm ViT (`vit.TIMM_VIT`)
  text_encoder.bert.*        BertForMaskedLM's BERT (pretraining: `ALBEF.pth`,
  text_encoder.cls.*           `ALBEF_4M.pth`, LAVIS `AlbefPretrain`) with its MLM head,
  text_encoder.*             or a BertModel (retrieval, VQA: LAVIS `AlbefRetrieval`,
                               `AlbefVQA`); layers from `fusion_layer` on cross-attend
                               to the image: our text / fusion split
  vision_proj, text_proj, itm_head, temp
  text_decoder.bert.*, .cls.*  VQA's answer decoder (BertLMHeadModel, cross-attention in
                               every layer) -> our `answer_decoder`
  *_m.*                      the momentum copies -> our momentum model
  image_queue, text_queue    (embed_dim, queue) -> our queue; queue_ptr its pointer;
  idx_queue                    retrieval's image ids -> the queue's product ids
The original code's BERT has a token-type table (row 0 is added to every token);
LAVIS's (its `med` BERT, as BLIP's) has none (`hf_bert.embedding_rules`).

Every checkpoint tensor is mapped, or reported unused with the reason. Our parameters
that ALBEF has no counterpart for (the MIM decoder, the ViT's [MASK] embedding, heads a
task adds) keep their initialisation and are listed. Sizes are checked against the
config before anything is written; each difference is an error naming the config field.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import ml_collections
import numpy as np

from syncmask_jax.checkpoint_import import files, hf_bert, keymap, vit
from syncmask_jax.checkpoint_import.keymap import Rule, linear, same

Params = keymap.Params

# What export writes: LAVIS's classes (loaded with strict=True by their load_state_dict).
EXPORT_LAYOUTS = ("pretrain", "retrieval")


@dataclasses.dataclass(frozen=True)
class Layout:
  """What one ALBEF checkpoint holds, told from its keys."""
  text: str  # the BERT body's prefix: "text_encoder.bert." or "text_encoder."
  mlm_head: bool  # text_encoder.cls.* (pretraining)
  token_type: bool  # the original code's BERT; LAVIS's has no token-type table
  text_layers: int  # layers before the first cross-attention (BERT config fusion_layer)
  fusion_layers: int
  vision_depth: int
  decoder_layers: int  # VQA's text_decoder, 0 without one
  heads: bool  # vision_proj, text_proj, itm_head, temp (VQA's checkpoints have none)
  momentum: bool  # *_m copies
  queue: bool  # image_queue, text_queue, queue_ptr
  idx_queue: bool  # retrieval's


def _layers(tensors: dict, prefix: str) -> tuple[int, int | None]:
  """(number of BERT layers under `prefix`, index of the first with cross-attention)."""
  pattern = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.(\w+)\.")
  found = [(int(m.group(1)), m.group(2)) for m in map(pattern.match, tensors) if m]
  count = max((i for i, _ in found), default=-1) + 1
  cross = [i for i, part in found if part == "crossattention"]
  return count, (min(cross) if cross else None)


def detect(tensors: dict[str, np.ndarray], path: str) -> Layout:
  """The ALBEF layout of `tensors`, or an error saying what the checkpoint is not."""
  text = next((p for p in ("text_encoder.bert.", "text_encoder.")
               if p + hf_bert.ANCHOR in tensors), None)
  if text is None or vit.TIMM_VIT.anchor not in {k[len("visual_encoder."):] for k in tensors
                                                 if k.startswith("visual_encoder.")}:
    sample = ", ".join(sorted(tensors)[:4])
    raise ValueError(f"{path!r} is not an ALBEF checkpoint: it has no visual_encoder.* "
                     f"ViT and text_encoder[.bert].* BERT (its first keys: {sample})")
  count, first_cross = _layers(tensors, text)
  if first_cross is None or first_cross == 0:
    raise ValueError(
        f"{path!r}: the text encoder's layer 0 cross-attends to the image or no layer does; "
        "ALBEF's first layers are text-only (a BLIP checkpoint? checkpoint_import.blip)")
  decoder_layers, _ = _layers(tensors, "text_decoder.bert.")
  blocks = {int(k.split(".")[2]) for k in tensors if k.startswith("visual_encoder.blocks.")}
  return Layout(
      text=text, mlm_head="text_encoder.cls.predictions.bias" in tensors,
      token_type=text + "embeddings.token_type_embeddings.weight" in tensors,
      text_layers=first_cross, fusion_layers=count - first_cross,
      vision_depth=max(blocks) + 1 if blocks else 0, decoder_layers=decoder_layers,
      heads="vision_proj.weight" in tensors,
      momentum="visual_encoder_m.cls_token" in tensors, queue="image_queue" in tensors,
      idx_queue="idx_queue" in tensors)


def check_config(layout: Layout, tensors: dict[str, np.ndarray], m: ml_collections.ConfigDict,
                 path: str, decoder_layers: int) -> None:
  """Every size the checkpoint fixes against config.model; the first difference is an
  error naming the config field. (Heads are not stored: config.model's are used.)"""
  word = tensors[layout.text + "embeddings.word_embeddings.weight"]
  pos = tensors[layout.text + "embeddings.position_embeddings.weight"]
  ffn = tensors[layout.text + "encoder.layer.0.intermediate.dense.weight"]
  cross = tensors[f"{layout.text}encoder.layer.{layout.text_layers}"
                  ".crossattention.self.key.weight"]
  t = layout.text
  found = [
      ("vocab_size", word.shape[0], f"{t}embeddings.word_embeddings.weight"),
      ("text_width", word.shape[1], f"{t}embeddings.word_embeddings.weight"),
      ("max_positions", pos.shape[0], f"{t}embeddings.position_embeddings.weight"),
      ("text_mlp_dim", ffn.shape[0], f"{t}encoder.layer.0.intermediate.dense.weight"),
      ("text_layers", layout.text_layers, f"{t}encoder.layer.* before the first crossattention"),
      ("fusion_layers", layout.fusion_layers, f"{t}encoder.layer.* with crossattention"),
      ("vision_width", cross.shape[1], f"{t}encoder.layer.{layout.text_layers}"
       ".crossattention.self.key.weight"),
      ("vision_depth", layout.vision_depth, "visual_encoder.blocks.*")]
  if layout.heads:
    found.append(("embed_dim", tensors["vision_proj.weight"].shape[0], "vision_proj.weight"))
  for field, got, where in found:
    if got != m[field]:
      raise ValueError(f"checkpoint {path!r}: {where} gives {field}={got} but "
                       f"config.model.{field}={m[field]} "
                       f"({keymap.mismatch_cause([field])})")
  if layout.decoder_layers and layout.decoder_layers != decoder_layers:
    raise ValueError(f"checkpoint {path!r}: text_decoder.bert.encoder.layer.* has "
                     f"{layout.decoder_layers} layers but the model's answer decoder has "
                     f"{decoder_layers} (config.model.fusion_layers)")
  vit_config, source = vit.timm_vit_config(
      {k: v for k, v in tensors.items() if k.startswith("visual_encoder.")},
      "visual_encoder.", path)
  if vit_config["patch_size"] != m.patch_size or vit_config["hidden_size"] != m.vision_width:
    raise ValueError(f"checkpoint {path!r}: {source('patch_size')} patch_size="
                     f"{vit_config['patch_size']} and width {vit_config['hidden_size']}, but "
                     f"config.model.patch_size={m.patch_size} and config.model.vision_width="
                     f"{m.vision_width}")


def model_rules(layout: Layout, momentum: bool = False, ours_token_type: bool = True
                ) -> list[Rule]:
  """The online model's table (or, with `momentum`, the `*_m` copies' one);
  `ours_token_type`: our model has a token-type table (`hf_bert.embedding_rules`)."""
  s = "_m" if momentum else ""
  text = layout.text.replace("text_encoder.", f"text_encoder{s}.", 1)
  rules = [r.under("", f"visual_encoder{s}.")
           for r in vit.vit_rules(vit.TIMM_VIT, layout.vision_depth)]
  layers = [(f"text/layer_{i}", False) for i in range(layout.text_layers)]
  layers += [(f"fusion/layer_{i}", True) for i in range(layout.fusion_layers)]
  rules += [r.under("", text) for r in hf_bert.embedding_rules(layout.token_type,
                                                                ours_token_type)
            + hf_bert.encoder_rules(layers)]
  if layout.mlm_head:
    rules += [r.under("", f"text_encoder{s}.") for r in hf_bert.mlm_head_rules()]
  if layout.heads:
    rules += linear("vision_proj", f"vision_proj{s}") + linear("text_proj", f"text_proj{s}")
    if not momentum:  # ALBEF keeps no momentum copy of the ITM head and the temperature
      rules += linear("itm_head", "itm_head") + [same("temp", "temp")]
  if layout.decoder_layers:
    rules += hf_bert.lm_decoder_rules("answer_decoder/", f"text_decoder{s}.",
                                      layout.decoder_layers, layout.token_type, ours_token_type)
  return rules


_QUEUE_KEYS = ("image_queue", "text_queue", "queue_ptr", "idx_queue")


@dataclasses.dataclass
class Imported:
  params: Params
  report: keymap.ImportReport
  momentum: Params | None = None
  queue: dict | None = None  # our queue layout (queue.init_queue); None: the checkpoint's none


def import_albef(path: str, params: Params, config: ml_collections.ConfigDict, *,
                 momentum: bool = False, queue_size: int = 0, partial: bool = False,
                 checkpoint: tuple[dict, dict] | None = None) -> Imported:
  """An ALBEF checkpoint file (`.pth`, or `.safetensors`) into our `params` (a pure
  dict, not modified), checked against `config.model`.

  With `momentum` the momentum model is imported too: from the `*_m` copies where the
  checkpoint has them (the ITM head and temperature, which ALBEF does not copy, from
  the online ones), else as a copy of the imported parameters. With `queue_size` the
  queues become ours when their size matches (else the queue starts empty, with a
  warning). Raises before writing anything if the checkpoint is not ALBEF's or a size
  differs from the config. With `partial`, `params` may be part of a model (keymap.Importer).
  `checkpoint`: the file as `files.read_checkpoint` returned it, where it was read already.
  """
  _, tensors = checkpoint or files.read_checkpoint(path, require_config=False)
  layout = detect(tensors, path)
  decoder = keymap.layer_count(keymap.flatten(params.get("answer_decoder", {})).keys(),
                               "decoder")
  check_config(layout, tensors, config.model, path, decoder)
  grid = config.model.image_size // config.model.patch_size
  scopes = tuple(params)

  def run(target: Params, rules: list[Rule], suffix: str) -> keymap.Importer:
    imp = keymap.Importer(path, target, tensors, scopes, partial=partial)
    if "vision" in target:
      vit.prepare_vit(imp, vit.TIMM_VIT, f"visual_encoder{suffix}.", grid)
    if decoder and not layout.decoder_layers:
      rules = [r for r in rules if not r.ours[0].startswith("answer_decoder/")]
    imp.apply(rules)
    return imp

  token_type = "token_type" in params.get("embeddings", {})
  online = run(params, model_rules(layout, ours_token_type=token_type), "")
  new_params, report = online.finish()
  used = set(online.used)
  new_momentum = None
  if momentum and layout.momentum:
    imp = run(params, model_rules(layout, momentum=True, ours_token_type=token_type), "_m")
    used |= imp.used
    new_momentum, _ = imp.finish()
    copied = [k for k in keymap.flatten(new_params) if k not in imp.written]
    flat = keymap.flatten(new_momentum)
    flat.update({k: keymap.flatten(new_params)[k] for k in copied})
    new_momentum = keymap.unflatten(flat)
    report.warnings.append("momentum model: from the *_m copies; "
                           f"{len(copied)} parameters without one (itm_head, temp, ...) "
                           "copied from the online model")
  elif momentum:
    new_momentum = jax.tree.map(np.array, new_params)
    report.warnings.append("no *_m copies in the checkpoint: the momentum model starts as "
                           "a copy of the parameters, as in ALBEF")
  used |= {k for k in tensors if k.endswith(hf_bert.POSITION_IDS)}  # buffers, not weights
  if not momentum:
    report.reasons.update({
        k: "a momentum copy, not read: a fine-tuning run starts its momentum model, if any, "
           "as a copy of the parameters" for k in tensors
        if k.startswith(("visual_encoder_m.", "text_encoder_m.", "vision_proj_m.",
                         "text_proj_m.", "text_decoder_m."))})
  new_queue = None
  if layout.queue and queue_size:
    used |= set(_QUEUE_KEYS)
    new_queue = _import_queue(tensors, queue_size, report)
  else:
    report.reasons.update({k: "the queue: this model has none" for k in _QUEUE_KEYS
                           if k in tensors})
  report.unused = sorted(k for k in tensors if k not in used)
  return Imported(new_params, report, new_momentum, new_queue)


def _import_queue(tensors: dict[str, np.ndarray], size: int,
                  report: keymap.ImportReport) -> dict | None:
  image, text = tensors["image_queue"], tensors["text_queue"]
  if image.shape[1] != size:
    report.warnings.append(f"the checkpoint's queue holds {image.shape[1]} entries, "
                           f"config.queue_size={size}: the queue starts empty")
    return None
  pid = (tensors["idx_queue"].reshape(-1).astype(np.int32) if "idx_queue" in tensors
         else np.full((size,), -1, np.int32))  # pretraining queues carry no ids
  return {"image_feat": np.ascontiguousarray(image.T, np.float32),
          "text_feat": np.ascontiguousarray(text.T, np.float32), "product_id": pid,
          "valid": np.ones((size,), bool),
          "ptr": np.asarray(int(np.asarray(tensors["queue_ptr"]).reshape(-1)[0]), np.int32)}


# ----------------------------------------------------------------------------- export


def export_albef(params: Params, momentum: Params, queue: dict, config: ml_collections.ConfigDict,
                 layout: str = "pretrain") -> dict[str, np.ndarray]:
  """Our parameters, momentum model and queue -> the state dict of LAVIS's
  `AlbefPretrain` (`layout="pretrain"`) or `AlbefRetrieval` ("retrieval"), which their
  `load_state_dict(..., strict=True)` accept (tests/test_released_weights.py).

  LAVIS's BERT has no token-type table: a model with one (config.model.type_vocab_size
  > 0) has its row 0 folded into the position table (`hf_bert.embedding_rules`). Queue
  slots never filled hold zeros (ALBEF fills them with random features at start; either
  is a negative of no consequence).
  """
  if layout not in EXPORT_LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {EXPORT_LAYOUTS}")
  m = config.model
  shape = Layout(
      text="text_encoder.bert." if layout == "pretrain" else "text_encoder.",
      mlm_head=layout == "pretrain", token_type=False, text_layers=m.text_layers,
      fusion_layers=m.fusion_layers, vision_depth=m.vision_depth, decoder_layers=0,
      heads=True, momentum=True, queue=True, idx_queue=layout == "retrieval")
  token_type = "token_type" in params["embeddings"]
  out = keymap.export(model_rules(shape, ours_token_type=token_type), keymap.flatten(params))
  out.update(keymap.export(model_rules(shape, momentum=True, ours_token_type=token_type),
                           keymap.flatten(momentum)))
  for text in (shape.text, shape.text.replace("text_encoder.", "text_encoder_m.", 1)):
    out[text + "embeddings.position_ids"] = hf_bert.position_ids(m.max_positions)
  valid = np.asarray(jax.device_get(queue["valid"]))[:, None]
  for ours, key in (("image_feat", "image_queue"), ("text_feat", "text_queue")):
    out[key] = np.ascontiguousarray(
        np.where(valid, np.asarray(jax.device_get(queue[ours]), np.float32), 0.0).T)
  out["queue_ptr"] = np.asarray([int(jax.device_get(queue["ptr"]))], np.int64)
  if shape.idx_queue:
    out["idx_queue"] = np.asarray(jax.device_get(queue["product_id"]), np.int64)[None]
  return out
