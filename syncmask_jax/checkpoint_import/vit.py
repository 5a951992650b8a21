"""The ViT layouts (Hugging Face ViT/DeiT, timm ViT/DeiT, which ALBEF's and BLIP's
`visual_encoder` is) and `load_vit` for a ViT checkpoint on its own."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import numpy as np

from syncmask_jax.checkpoint_import import files, keymap
from syncmask_jax.checkpoint_import.keymap import Rule, fused_qkv, linear, norm, patch_conv, same
from syncmask_jax.models import vit

Params = keymap.Params


@dataclasses.dataclass(frozen=True)
class ViTLayout:
  """Where one checkpoint layout keeps the parts of ALBEF's ViT (keys after the prefix)."""
  anchor: str  # the patch projection's Conv2d weight; locates the prefix.
  patch_embed: str
  cls_token: str
  pos_embed: str
  dist_token: str  # DeiT's distillation token.
  mask_token: str
  block: str  # one block's key prefix; `{i}` is its index.
  norm1: str
  qkv: str  # with `{name}`: separate query/key/value Linears; else one fused [q; k; v].
  attn_out: str
  norm2: str
  fc1: str
  fc2: str
  norm: str


HF_VIT = ViTLayout(
    anchor="embeddings.patch_embeddings.projection.weight",
    patch_embed="embeddings.patch_embeddings.projection", cls_token="embeddings.cls_token",
    pos_embed="embeddings.position_embeddings", dist_token="embeddings.distillation_token",
    mask_token="embeddings.mask_token", block="encoder.layer.{i}.", norm1="layernorm_before",
    qkv="attention.attention.{name}", attn_out="attention.output.dense",
    norm2="layernorm_after", fc1="intermediate.dense", fc2="output.dense", norm="layernorm")
TIMM_VIT = ViTLayout(
    anchor="patch_embed.proj.weight", patch_embed="patch_embed.proj",
    cls_token="cls_token", pos_embed="pos_embed", dist_token="dist_token",
    mask_token="mask_token", block="blocks.{i}.", norm1="norm1", qkv="attn.qkv",
    attn_out="attn.proj", norm2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", norm="norm")
# Hugging Face's BLIP vision model (BlipForConditionalGeneration's `vision_model.`).
HF_BLIP_VIT = ViTLayout(
    anchor="embeddings.patch_embedding.weight", patch_embed="embeddings.patch_embedding",
    cls_token="embeddings.class_embedding", pos_embed="embeddings.position_embedding",
    dist_token="embeddings.distillation_token", mask_token="embeddings.mask_token",
    block="encoder.layers.{i}.", norm1="layer_norm1", qkv="self_attn.qkv",
    attn_out="self_attn.projection", norm2="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2",
    norm="post_layernorm")
# Every key (after the prefix) of a timm ViT/DeiT that is ALBEF's ViT; the classifier
# heads are accepted and left unused. Anything else (fc_norm, norm_pre, layer scale
# ls1/ls2, register tokens, q/k norms, BEiT's q_bias, ...) changes the network.
_TIMM_VIT_KEY = re.compile(
    r"(cls_token|pos_embed|dist_token|mask_token|patch_embed\.proj\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|norm\.(weight|bias)|(head|head_dist|pre_logits)\..+)")
# timm's ViT LayerNorm eps; a state dict does not store it.
TIMM_LN_EPS = 1e-6


def block_rules(layout: ViTLayout, qkv_bias: bool = True) -> list[Rule]:
  """One block, relative to `block_i/` and the layout's block prefix. Without
  `qkv_bias` the q/k/v bias rules are left out (the caller zeroes ours)."""
  if "{name}" in layout.qkv:
    qkv = sum((linear(f"attn/{n}", layout.qkv.format(name=n))
               for n in ("query", "key", "value")), [])
  else:
    qkv = fused_qkv("attn", layout.qkv)
  if not qkv_bias:
    qkv = [r for r in qkv if not r.keys[0].endswith(".bias")]
  return (norm("norm1", layout.norm1) + qkv + linear("attn/out", layout.attn_out)
          + norm("norm2", layout.norm2) + linear("mlp/fc1", layout.fc1)
          + linear("mlp/fc2", layout.fc2))


def blocks_rules(layout: ViTLayout, depth: int, qkv_bias: bool = True) -> list[Rule]:
  return [r.under(f"vision/block_{i}/", layout.block.replace("{i}", str(i)))
          for i in range(depth) for r in block_rules(layout, qkv_bias)]


def vit_rules(layout: ViTLayout, depth: int, qkv_bias: bool = True) -> list[Rule]:
  """The whole ViT, both ways. Import reads the position table after `prepare_vit` has
  fitted it to the model's grid; ALBEF's ViT has no mask token (`mask_token_rule`)."""
  return ([same("vision/cls_token", layout.cls_token),
           same("vision/pos_embed", layout.pos_embed)]
          + patch_conv("vision/patch_embed", layout.patch_embed)
          + blocks_rules(layout, depth, qkv_bias) + norm("vision/norm", layout.norm))


def prepare_vit(imp: keymap.Importer, layout: ViTLayout, prefix: str, grid: int) -> None:
  """Fits the checkpoint's position table (in `imp.tensors`) to the model's `grid`:
  DeiT's distillation token and its row (row 1, between [CLS] and the patches) dropped,
  the patch rows resized bicubically (`vit.interpolate_pos_embed`, [CLS] row kept; ALBEF
  fine-tunes VQA at 384 px from a 256-px checkpoint this way)."""
  pos_key, dist_key = prefix + layout.pos_embed, prefix + layout.dist_token
  pos = np.asarray(imp.tensors[pos_key], np.float32) if pos_key in imp.tensors else None
  if pos is None:
    return  # the rule reports the missing key
  if dist_key in imp.tensors:
    imp.used.add(dist_key)  # DeiT's: ALBEF's ViT has no distillation token
    pos = np.concatenate([pos[:, :1], pos[:, 2:]], axis=1)
  n = pos.shape[1] - 1
  if int(round(n ** 0.5)) ** 2 != n:
    raise ValueError(f"checkpoint {imp.report.source!r}: {pos_key!r} of shape {pos.shape} "
                     "(after dropping any distillation row) is not [CLS] + a square grid of "
                     "patches")
  if int(round(n ** 0.5)) != grid:
    imp.report.warnings.append(f"{pos_key}: a {int(round(n ** 0.5))}^2 patch grid, resized "
                               f"to the model's {grid}^2 (bicubic)")
  imp.tensors = dict(imp.tensors, **{pos_key: np.asarray(vit.interpolate_pos_embed(pos, grid))})


def mask_token_rule(layout: ViTLayout) -> Rule:
  return same("vision/mask_token", layout.mask_token, ours_shape=lambda x: (-1,),
              ckpt_shape=lambda x: (1, 1, -1))


def apply_vit(imp: keymap.Importer, layout: ViTLayout, prefix: str, depth: int, grid: int,
              qkv_bias: bool = True) -> None:
  """The ViT under key `prefix` into `vision/` of `imp`'s params (`vit_rules` after
  `prepare_vit`), with a mask token where the checkpoint has one; without `qkv_bias`
  our q/k/v biases become zeros."""
  prepare_vit(imp, layout, prefix, grid)
  rules = vit_rules(layout, depth, qkv_bias)
  if prefix + layout.mask_token in imp.tensors:
    rules.append(mask_token_rule(layout))
  imp.apply([r.under("", prefix) for r in rules])
  if not qkv_bias:
    width = imp.flat["vision/cls_token"].shape[-1]
    for i in range(depth):
      for name in ("query", "key", "value"):
        imp.put(f"vision/block_{i}/attn/{name}/bias", np.zeros((width,), np.float32),
                prefix + layout.block.replace("{i}", str(i)) + layout.qkv)


# ----------------------------------------------------------------------------- load_vit


def _vit_layout(tensors: dict[str, np.ndarray], path: str) -> tuple[ViTLayout, str]:
  """The layout of a ViT checkpoint, told from its keys, and its key prefix."""
  found = [layout for layout in (HF_VIT, TIMM_VIT)
           if any(k.endswith(layout.anchor) for k in tensors)]
  if not found:
    raise ValueError(f"checkpoint {path!r} has no ViT: no key ending in {HF_VIT.anchor!r} "
                     f"(Hugging Face) or {TIMM_VIT.anchor!r} (timm)")
  if len(found) > 1:
    raise ValueError(f"checkpoint {path!r} holds both a Hugging Face and a timm ViT; "
                     "expected one")
  return found[0], keymap.find_prefix(tensors, found[0].anchor, path)


def timm_vit_config(tensors: dict[str, np.ndarray], prefix: str, path: str
                    ) -> tuple[dict[str, Any], Callable[[str], str]]:
  """What a timm state dict says about its ViT, as Hugging Face config.json fields, and
  the key each is read from. The number of heads is not stored."""
  keys = [k[len(prefix):] for k in tensors if k.startswith(prefix)]
  for key in sorted(keys):
    if key.startswith("fc_norm."):
      raise ValueError(f"checkpoint {path!r} has {prefix + key!r}: a global-average-pool "
                       "ViT (fc_norm after pooling, no final norm), not ALBEF's [CLS] ViT")
    if not _TIMM_VIT_KEY.fullmatch(key):
      raise ValueError(f"checkpoint {path!r}: key {prefix + key!r} is not part of ALBEF's "
                       "ViT (timm layout)")
  if "cls_token" not in keys:
    raise ValueError(f"checkpoint {path!r} has no {prefix + 'cls_token'!r}: ALBEF's ViT "
                     "needs a class token")
  conv = tensors[prefix + TIMM_VIT.anchor]
  if conv.ndim != 4 or conv.shape[2] != conv.shape[3]:
    raise ValueError(f"checkpoint {path!r}: {prefix + TIMM_VIT.anchor!r} has shape "
                     f"{tuple(conv.shape)}; expected (width, channels, patch, patch)")
  blocks = {int(k.split(".")[1]) for k in keys if k.startswith("blocks.")}
  fc1 = tensors.get(f"{prefix}blocks.0.{TIMM_VIT.fc1}.weight")
  fields = {"hidden_size": conv.shape[0], "num_channels": conv.shape[1],
            "patch_size": conv.shape[2], "num_hidden_layers": max(blocks, default=-1) + 1,
            "intermediate_size": None if fc1 is None else fc1.shape[0],
            "layer_norm_eps": TIMM_LN_EPS,
            "qkv_bias": f"{prefix}blocks.0.{TIMM_VIT.qkv}.bias" in tensors}
  source = {"intermediate_size": f"blocks.0.{TIMM_VIT.fc1}.weight",
            "num_hidden_layers": "blocks.*"}
  return fields, lambda field: f"{prefix + source.get(field, TIMM_VIT.anchor)!r} gives"


def check_vit(fields: dict[str, Any], source: Callable[[str], str], vision: Params,
              image_size: int, path: str, num_heads: int | None = None) -> tuple[int, int]:
  """The checkpoint's ViT (`fields`, Hugging Face field names) against our `vision`
  params, each difference an error naming our config field. Returns (depth, grid)."""
  width = vision["cls_token"].shape[-1]
  depth = sum(1 for k in vision if k.startswith("block_"))
  patch_dim = vision["patch_embed"]["kernel"].shape[0]
  have = fields.get("num_hidden_layers")
  if have is None or have < depth:
    raise ValueError(f"checkpoint {path!r}: {source('num_hidden_layers')} num_hidden_layers="
                     f"{have}, fewer than the model's config.model.vision_depth={depth}")
  patch = fields.get("patch_size")
  keymap.check_fields(
      fields, {"hidden_size": width, "intermediate_size":
               vision["block_0"]["mlp"]["fc1"]["kernel"].shape[1] if depth else None,
               "num_attention_heads": num_heads, "num_channels": 3}, path,
      {"hidden_size": "config.model.vision_width",
       "intermediate_size": "config.model.vision_mlp_dim",
       "num_attention_heads": "config.model.vision_heads", "num_channels": "channels"}.get,
      source)
  if patch is None or patch * patch * 3 != patch_dim:
    raise ValueError(f"checkpoint {path!r}: {source('patch_size')} patch_size={patch} but the "
                     "model has config.model.patch_size="
                     f"{int(round((patch_dim / 3) ** 0.5))}")
  grid = image_size // patch
  if 1 + grid * grid != vision["pos_embed"].shape[1]:
    raise ValueError(f"config.model.image_size={image_size} gives {grid * grid} patches, but "
                     f"the model's position table has {vision['pos_embed'].shape[1] - 1}")
  return depth, grid


def load_vit(path: str, params: Params, image_size: int, *, num_heads: int | None = None,
             ln_eps: float | None = None) -> tuple[Params, keymap.ImportReport]:
  """A ViT / DeiT checkpoint, Hugging Face or timm layout -> the image encoder `vision`.

  `path` is a Hugging Face ViTModel / DeiT directory (config.json + weights), or a timm
  state dict: a `.pth`/`.pt`/`.bin`/`.safetensors` file or a directory with
  `model.safetensors` / `pytorch_model.bin`, keys possibly under a prefix
  (`visual_encoder.` of an ALBEF checkpoint, whose momentum copy `visual_encoder_m.` is
  skipped; `module.`). The layout is told from the keys. Widths, patch size and depth are
  checked against the parameter shapes (a deeper checkpoint gives its first blocks, with a
  warning), heads against `num_heads` for Hugging Face only (a timm state dict does not
  store them: the model's are used). `ln_eps` (the model's `vision_ln_eps`) is compared
  with the checkpoint's (timm: 1e-6) and a difference is reported as a warning.

  The position table is resized when the checkpoint's patch grid differs from
  `image_size // patch_size` (`apply_vit`). A mask token (`embeddings.mask_token` of
  ViTForMaskedImageModeling, timm `mask_token`) initialises our MIM [MASK] embedding;
  without one it keeps its init. timm models that are not ALBEF's ViT (`fc_norm`, no
  class token, other extra keys) are refused. Classifier heads are reported unused.
  Returns new params (the input is not modified) and the report.
  """
  fields, tensors = files.read_checkpoint(path, require_config=False)
  layout, prefix = _vit_layout(tensors, path)
  if layout is TIMM_VIT:
    fields, source = timm_vit_config(tensors, prefix, path)
    num_heads = None  # not in a timm state dict: nothing to check.
  elif not fields:
    raise FileNotFoundError(f"checkpoint {path!r} is in the Hugging Face ViT layout but has no "
                            "config.json: pass its directory")
  else:
    source = lambda field: "config.json"
  depth, grid = check_vit(fields, source, params["vision"], image_size, path, num_heads)
  imp = keymap.Importer(path, params, tensors, scopes=("vision",))
  keymap.check_eps(fields, ln_eps, "vision_ln_eps", imp.report)
  if fields["num_hidden_layers"] > depth:
    imp.report.warnings.append(f"checkpoint has {fields['num_hidden_layers']} layers, the "
                               f"model {depth}: the first {depth} are used, then the final "
                               "layernorm")
  apply_vit(imp, layout, prefix, depth, grid, fields.get("qkv_bias", True))
  return imp.finish()
