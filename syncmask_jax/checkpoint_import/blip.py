"""BLIP's caption checkpoints (the original code's `model_base_caption*.pth`, LAVIS's
`BlipCaption`, and Hugging Face's `BlipForConditionalGeneration` directories), whole,
into the captioning model (`tasks.captioning.CaptionModel`).

The layout (salesforce/BLIP `models/blip.py` BLIP_Decoder, LAVIS `blip_caption.py`):
  visual_encoder.*          timm ViT (`vit.TIMM_VIT`) -> our `vision`; Hugging Face:
  vision_model.*              `vit.HF_BLIP_VIT` (LayerNorm eps 1e-5 in its config.json)
  text_decoder.bert.*       BertLMHeadModel, cross-attention to the image in every layer,
  text_decoder.cls.*          no token-type table (`med` BERT) -> our `text_decoder`
BLIP's tokenizer adds [DEC] (the caption's BOS) and [ENC] after BERT's vocabulary, so
config.model.vocab_size is BERT's + 2 (30524 for bert-base-uncased).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from syncmask_jax.checkpoint_import import files, hf_bert, keymap, vit
from syncmask_jax.checkpoint_import.keymap import Rule

Params = keymap.Params
_DECODER = "text_decoder."


# (the ViT's layout, its key prefix): the original code's and LAVIS's, Hugging Face's.
_VISIONS = ((vit.TIMM_VIT, "visual_encoder."), (vit.HF_BLIP_VIT, "vision_model."))


def _vision(tensors: dict[str, np.ndarray]) -> tuple[vit.ViTLayout, str] | None:
  return next(((layout, prefix) for layout, prefix in _VISIONS
               if prefix + layout.anchor in tensors), None)


def is_blip_caption(tensors: dict[str, np.ndarray]) -> bool:
  return (_DECODER + "bert." + hf_bert.ANCHOR in tensors and _vision(tensors) is not None
          and not any(k.startswith(("text_encoder.", "text_model.")) for k in tensors))


def caption_rules(vision: tuple[vit.ViTLayout, str], vision_depth: int, decoder_layers: int,
                  ours_token_type: bool) -> list[Rule]:
  layout, prefix = vision
  return ([r.under("", prefix) for r in vit.vit_rules(layout, vision_depth)]
          + hf_bert.lm_decoder_rules("text_decoder/", _DECODER, decoder_layers,
                                     token_type=False, ours_token_type=ours_token_type))


def import_blip_caption(path: str, params: Params, config: ml_collections.ConfigDict,
                        checkpoint: tuple[dict, dict] | None = None
                        ) -> tuple[Params, keymap.ImportReport]:
  """A BLIP caption checkpoint file into the captioning model's `params` (a pure dict,
  not modified), checked against config.model and config.captioning. `checkpoint`: the
  file as `files.read_checkpoint` returned it, where it was read already."""
  hf, tensors = checkpoint or files.read_checkpoint(path, require_config=False)
  if not is_blip_caption(tensors):
    sample = ", ".join(sorted(tensors)[:4])
    raise ValueError(f"{path!r} is not a BLIP caption checkpoint: it needs visual_encoder.* "
                     f"(or vision_model.*) and text_decoder.bert.*, and no text encoder (its "
                     f"first keys: {sample})")
  vision = _vision(tensors)
  m = config.model
  word = tensors[_DECODER + "bert.embeddings.word_embeddings.weight"]
  layers = 1 + max(int(k.split(".")[4]) for k in tensors
                   if k.startswith(_DECODER + "bert.encoder.layer."))
  ours = keymap.layer_count(keymap.flatten(params["text_decoder"]).keys(), "decoder")
  block = vision[1] + vision[0].block.split("{i}")[0]
  blocks = 1 + max(int(k[len(block):].split(".")[0]) for k in tensors if k.startswith(block))
  for field, got, want in (("config.model.vocab_size", word.shape[0], m.vocab_size),
                           ("config.model.text_width", word.shape[1], m.text_width),
                           ("config.model.vision_depth", blocks, m.vision_depth),
                           ("the decoder's layers (config.model.text_layers + fusion_layers "
                            "with captioning.init_layers='text+fusion')", layers, ours)):
    if got != want:
      raise ValueError(f"checkpoint {path!r} gives {got} for {field}, the model has {want} "
                       f"({keymap.mismatch_cause([field])})")
  imp = keymap.Importer(path, params, tensors, scopes=tuple(params))
  keymap.check_eps(hf.get("vision_config", {"layer_norm_eps": vit.TIMM_LN_EPS}),
                   m.vision_ln_eps, "vision_ln_eps", imp.report)
  vit.prepare_vit(imp, vision[0], vision[1], m.image_size // m.patch_size)
  token_type = "token_type" in params["text_decoder"]["embeddings"]
  imp.apply(caption_rules(vision, blocks, layers, token_type))
  for key in tensors:
    if key.endswith(hf_bert.POSITION_IDS):
      imp.used.add(key)
  return imp.finish()
