"""Initialise the model from Hugging Face BERT-family and ViT/DeiT, and timm ViT/DeiT
checkpoints.

docs/method.md section 1: the ALBEF split builds the text encoder from BERT layers
0..L_t-1 and the fusion encoder from layers L_t..L_t+L_f-1 of one checkpoint; the
fusion encoder's cross-attention (and its LayerNorm) has no counterpart in BERT and
stays newly initialised, as in ALBEF. The image encoder comes from a ViT or DeiT.

A Hugging Face checkpoint is a directory holding `config.json` and `model.safetensors`
(or a sharded `model.safetensors.index.json`), or `pytorch_model.bin` when torch is
installed. A timm ViT/DeiT is such a directory (timm's `config.json` is not needed) or a
single `.safetensors` or torch file (`.pth`, `.pt`, `.bin`: a state dict, possibly under
"model" or "state_dict", as ALBEF's `deit_base_patch16_224-b5f2ef4d.pth` or a full ALBEF
checkpoint). The layout is told from the keys, not the file name. Keys may carry any
prefix (`bert.`, `vit.`, `deit.`, `visual_encoder.`, `module.`, none, ...): it is found
from one anchor key. Our parameters are the functional pure dict of
`nnx.split(model)[1].to_pure_dict()`; Dense kernels are (in, out), so torch Linear
weights are transposed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import re
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
from absl import logging

from syncmask_jax import paths
from syncmask_jax.models import vit

Params = dict[str, Any]

_BERT_ANCHOR = "embeddings.word_embeddings.weight"
# Families whose position ids start after the padding index: a silent misalignment here.
_OFFSET_POSITION_FAMILIES = ("roberta", "xlm-roberta", "camembert", "longformer")


@dataclasses.dataclass
class ImportReport:
  """What one import did: our parameter paths written or left alone, checkpoint keys
  not used, and warnings (eps mismatch, truncated tables, untied decoder, ...)."""
  source: str
  loaded: list[str] = dataclasses.field(default_factory=list)
  initialised: list[str] = dataclasses.field(default_factory=list)
  unused: list[str] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    lines = [f"{self.source}: loaded {len(self.loaded)} params, "
             f"{len(self.initialised)} left initialised, {len(self.unused)} checkpoint keys "
             "unused"]
    if self.initialised:
      lines.append("  left initialised: " + ", ".join(self.initialised))
    if self.unused:
      lines.append("  unused checkpoint keys: " + ", ".join(self.unused))
    lines += [f"  warning: {w}" for w in self.warnings]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading


def _read_safetensors_raw(raw: bytes) -> dict[str, np.ndarray]:
  """Minimal safetensors reader for dtypes numpy lacks (bfloat16, float8): the format is
  an 8-byte header length, a JSON header, then the raw little-endian tensors."""
  dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
            "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
            "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64, "I32": np.int32,
            "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
  n = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8:8 + n])
  data = raw[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[start:end], dtypes[info["dtype"]]).reshape(info["shape"])
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load  # pylint: disable=g-import-not-at-top
  raw = paths.path(path).read_bytes()  # an init checkpoint may sit in a bucket
  try:
    try:
      return load(raw)
    except (TypeError, KeyError):  # bfloat16 and friends are not numpy dtypes (the
      # numpy loader of bytes raises KeyError('BF16'), of a file TypeError).
      return _read_safetensors_raw(raw)
  except OSError:
    raise  # names the file already
  except Exception as e:  # SafetensorError (no file name), the raw reader's errors
    raise ValueError(f"cannot read {path!r} as safetensors ({type(e).__name__}: {e}); "
                     "a truncated download or not a safetensors file?") from e


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{path} is a PyTorch pickle and torch is not installed: convert the checkpoint to "
        "safetensors (e.g. `transformers` `save_pretrained(dir, safe_serialization=True)` or "
        "`safetensors.torch.save_file`) or install torch") from e
  try:
    state = torch.load(io.BytesIO(paths.path(path).read_bytes()), map_location="cpu",
                       weights_only=True)
  except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
    raise ValueError(f"cannot read {path!r} as a torch checkpoint: {e}") from e
  state = state.get("model", state.get("state_dict", state))
  return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in state.items() if hasattr(v, "numpy")}


def _normalise_key(key: str) -> str:
  # Original Google BERT conversions (bert-base-uncased among them) name LN params
  # gamma/beta; later ones weight/bias.
  if key.endswith("LayerNorm.gamma"):
    return key[:-len("gamma")] + "weight"
  if key.endswith("LayerNorm.beta"):
    return key[:-len("beta")] + "bias"
  return key


def _read_weights_file(path: str) -> dict[str, np.ndarray]:
  """A single weights file: safetensors by its extension, else a torch pickle."""
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  return _read_torch_bin(path)


def read_checkpoint(path: str, *, require_config: bool = True
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json contents, {key: array}) of a checkpoint.

  `path` is a directory with `model.safetensors` (or a sharded index) or
  `pytorch_model.bin`, and `config.json`. With `require_config=False` the config may be
  absent ({} then) and `path` may also be a single weights file (`_read_weights_file`).
  """
  if not require_config and paths.path(path).is_file():
    return {}, {_normalise_key(k): v for k, v in _read_weights_file(path).items()}
  if not paths.path(path).is_dir():
    if require_config and paths.path(path).is_file():
      raise FileNotFoundError(f"checkpoint {path!r} is a file: expected the checkpoint "
                              "directory holding config.json and the weights, "
                              f"{os.path.dirname(path) or '.'!r}")
    if require_config:
      raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    raise FileNotFoundError(f"checkpoint {path!r} does not exist: expected a checkpoint "
                            "directory or a .safetensors/.pth/.pt/.bin file")
  config_path = os.path.join(path, "config.json")
  hf_config: dict[str, Any] = {}
  if paths.path(config_path).exists():
    hf_config = paths.read_json(config_path)
  elif require_config:
    raise FileNotFoundError(f"no config.json in checkpoint directory {path!r}")
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  torch_bin = os.path.join(path, "pytorch_model.bin")
  if paths.path(single).exists():
    tensors = _read_safetensors(single)
  elif paths.path(index).exists():
    shards = sorted(set(paths.read_json(index)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(_read_safetensors(os.path.join(path, shard)))
  elif paths.path(torch_bin).exists():
    tensors = _read_torch_bin(torch_bin)
  else:
    raise FileNotFoundError(
        f"no weights in checkpoint directory {path!r}: expected model.safetensors, "
        "model.safetensors.index.json or pytorch_model.bin")
  return hf_config, {_normalise_key(k): v for k, v in tensors.items()}


def _find_prefix(tensors: dict[str, np.ndarray], anchor: str, path: str) -> str:
  prefixes = sorted({k[:-len(anchor)] for k in tensors if k.endswith(anchor)}, key=len)
  if not prefixes:
    raise ValueError(f"checkpoint {path!r} has no key ending in {anchor!r}: not the expected "
                     "Hugging Face layout")
  # ALBEF-style checkpoints also hold the momentum copy (`visual_encoder_m.` beside
  # `visual_encoder.`, `text_encoder_m.bert.` beside `text_encoder.bert.`): the online
  # model is the one to load; the copy is reported unused.
  online = [p for p in prefixes if p.replace("_m.", ".", 1) == p
            or p.replace("_m.", ".", 1) not in prefixes]
  if len(online) > 1:
    raise ValueError(f"checkpoint {path!r} holds several models ({online}); expected one")
  return online[0]


# ----------------------------------------------------------------------------- writing


# Our parameters (and the config field) whose size is the vocabulary's.
_VOCAB_SIZED = ("embeddings/word", "mlm_head/bias", "vocab_size")


def mismatch_cause(names: Iterable[str]) -> str:
  """The likely reason parameters (our paths, or config fields) of a checkpoint do not
  fit the model: another vocabulary, else another model size."""
  if any(n.endswith(_VOCAB_SIZED) for n in names):
    return ("likely another vocabulary: config.model.vocab_size follows "
            "config.data.vocab_path, which must be the checkpoint's")
  return ("likely another model size: config.model (the size variant: widths, depths, "
          "heads, patch and image size) must be the checkpoint's")




def _flatten(tree: Params, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    p = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, p + "/"))
    else:
      out[p] = v
  return out


def _unflatten(flat: dict[str, Any]) -> Params:
  tree: Params = {}
  for p, v in flat.items():
    node = tree
    *parents, leaf = p.split("/")
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = v
  return tree


class _Importer:
  """Copies checkpoint tensors into a flat copy of our params, tracking both sides."""

  def __init__(self, source: str, params: Params, tensors: dict[str, np.ndarray],
               scopes: tuple[str, ...]):
    self.flat = _flatten(params)
    self.tensors = tensors
    self.used: set[str] = set()
    self.written: set[str] = set()
    self.scopes = scopes
    self.report = ImportReport(source)

  def get(self, key: str) -> np.ndarray:
    if key not in self.tensors:
      raise ValueError(f"checkpoint {self.report.source!r} lacks {key!r}")
    self.used.add(key)
    return np.asarray(self.tensors[key], np.float32)

  def put(self, ours: str, value: np.ndarray, key: str = "") -> None:
    if ours not in self.flat:
      raise ValueError(f"model has no parameter {ours!r} (for checkpoint key {key!r})")
    old = self.flat[ours]
    if tuple(value.shape) != tuple(old.shape):
      raise ValueError(f"checkpoint {self.report.source!r}: {key!r} has shape "
                       f"{tuple(value.shape)}, model parameter {ours!r} is "
                       f"{tuple(old.shape)} ({mismatch_cause([ours])})")
    new = jnp.asarray(value, old.dtype)
    # Keep the placement of the parameter we replace (a sharded init stays sharded).
    self.flat[ours] = jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new
    self.written.add(ours)

  def linear(self, ours: str, key: str) -> None:
    """torch Linear (out, in) weight + bias -> our Dense (in, out) kernel + bias."""
    self.put(f"{ours}/kernel", self.get(f"{key}.weight").T, f"{key}.weight")
    self.put(f"{ours}/bias", self.get(f"{key}.bias"), f"{key}.bias")

  def norm(self, ours: str, key: str) -> None:
    self.put(f"{ours}/scale", self.get(f"{key}.weight"), f"{key}.weight")
    self.put(f"{ours}/bias", self.get(f"{key}.bias"), f"{key}.bias")

  def finish(self) -> tuple[Params, ImportReport]:
    r = self.report
    r.loaded = sorted(self.written)
    r.initialised = sorted(p for p in self.flat if p.split("/")[0] in self.scopes
                           and p not in self.written)
    r.unused = sorted(k for k in self.tensors if k not in self.used)
    return _unflatten(self.flat), r


def _check_fields(hf_config: dict[str, Any], expected: dict[str, int | None], path: str,
                  ours: Callable[[str], str],
                  source: Callable[[str], str] = lambda field: "config.json") -> None:
  """Each `expected` field (None: unchecked) against the checkpoint's; `source(field)`
  says where the checkpoint's value comes from, for the error."""
  for field, want in expected.items():
    if want is None:
      continue
    got = hf_config.get(field)
    if got != want:
      raise ValueError(f"checkpoint {path!r}: {source(field)} {field}={got} but the model "
                       f"has {ours(field)}={want} ({mismatch_cause([field])})")


def _check_eps(hf_config: dict[str, Any], ln_eps: float | None, field: str,
               report: ImportReport) -> None:
  got = hf_config.get("layer_norm_eps")
  if ln_eps is not None and got is not None and not np.isclose(got, ln_eps, rtol=1e-6, atol=0):
    msg = (f"checkpoint layer_norm_eps={got} but the model uses {field}={ln_eps}; "
           f"set config.model.{field}={got} to reproduce the checkpoint exactly")
    report.warnings.append(msg)


def _layer_count(flat_keys: Iterable[str], root: str) -> int:
  return sum(1 for k in flat_keys if k.startswith(f"{root}/layer_") and k.endswith(
      "/self_norm/scale"))


# ----------------------------------------------------------------------------- BERT


def load_bert(path: str, params: Params, text_layers: int, fusion_layers: int, *,
              num_heads: int | None = None, ln_eps: float | None = None
              ) -> tuple[Params, ImportReport]:
  """A BERT-family checkpoint -> embeddings, text encoder, fusion encoder, MLM head.

  Layers 0..text_layers-1 go to `text`, the next `fusion_layers` to `fusion`
  (self-attention, FFN and their LayerNorms; cross-attention stays initialised, as
  ALBEF). Widths, intermediate size and vocabulary are checked against the parameter
  shapes, and heads against `num_heads` when given; `ln_eps` (the model's
  `text_ln_eps`) is compared with the checkpoint's and a difference is reported as a
  warning. Returns new params (the input is not modified) and the report.
  """
  hf, tensors = read_checkpoint(path)
  model_type = hf.get("model_type", "bert")
  if model_type in _OFFSET_POSITION_FAMILIES:
    raise ValueError(f"checkpoint {path!r} is {model_type}: its position ids are offset by the "
                     "padding index, which this BERT importer does not reproduce")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"checkpoint {path!r}: position_embedding_type="
                     f"{hf['position_embedding_type']}; only absolute positions are supported")
  word = params["embeddings"]["word"]
  _check_fields(hf, {"hidden_size": word.shape[1], "vocab_size": word.shape[0],
                     "intermediate_size": params["text"]["layer_0"]["mlp"]["fc1"]["kernel"]
                     .shape[1] if text_layers else None,
                     "num_attention_heads": num_heads}, path,
                {"hidden_size": "text_width", "vocab_size": "vocab_size",
                 "intermediate_size": "text_mlp_dim", "num_attention_heads": "text_heads"}.get)
  have = hf.get("num_hidden_layers")
  if have is None or have < text_layers + fusion_layers:
    raise ValueError(f"checkpoint {path!r} has num_hidden_layers={have}, fewer than "
                     f"text_layers + fusion_layers = {text_layers} + {fusion_layers}")
  flat_keys = _flatten(params).keys()
  for root, want in (("text", text_layers), ("fusion", fusion_layers)):
    if _layer_count(flat_keys, root) != want:
      raise ValueError(f"params have {_layer_count(flat_keys, root)} {root} layers, "
                       f"but {root}_layers={want}")

  prefix = _find_prefix(tensors, _BERT_ANCHOR, path)
  # BertForMaskedLM/BertForPreTraining keep the head beside the `bert.` body.
  head = prefix[:-len("bert.")] if prefix.endswith("bert.") else prefix
  imp = _Importer(path, params, tensors, scopes=("embeddings", "text", "fusion", "mlm_head"))
  _check_eps(hf, ln_eps, "text_ln_eps", imp.report)
  if hf.get("hidden_act", "gelu") != "gelu":
    imp.report.warnings.append(f"checkpoint hidden_act={hf['hidden_act']}; the model uses the "
                               "exact erf GELU")

  e = f"{prefix}embeddings."
  imp.put("embeddings/word", imp.get(e + "word_embeddings.weight"), e + "word_embeddings.weight")
  for ours, key in (("position", "position_embeddings"), ("token_type", "token_type_embeddings")):
    table, mine = imp.get(f"{e}{key}.weight"), params["embeddings"][ours]
    rows = min(table.shape[0], mine.shape[0])
    if table.shape[0] < mine.shape[0]:
      imp.report.warnings.append(f"{key}: checkpoint has {table.shape[0]} rows, the model "
                                 f"{mine.shape[0]}; rows {table.shape[0]}.. stay initialised")
    # Absolute positions/types: the first rows mean the same thing in both tables.
    imp.put(f"embeddings/{ours}", np.concatenate([table[:rows], np.asarray(mine)[rows:]]),
            f"{e}{key}.weight")
  imp.norm("embeddings/norm", e + "LayerNorm")
  imp.used.add(e + "position_ids")  # a buffer (0..max_positions-1), not a weight.

  for i in range(text_layers + fusion_layers):
    ours = f"text/layer_{i}" if i < text_layers else f"fusion/layer_{i - text_layers}"
    k = f"{prefix}encoder.layer.{i}."
    for name in ("query", "key", "value"):
      imp.linear(f"{ours}/self_attn/{name}", f"{k}attention.self.{name}")
    imp.linear(f"{ours}/self_attn/out", k + "attention.output.dense")
    imp.norm(f"{ours}/self_norm", k + "attention.output.LayerNorm")
    imp.linear(f"{ours}/mlp/fc1", k + "intermediate.dense")
    imp.linear(f"{ours}/mlp/fc2", k + "output.dense")
    imp.norm(f"{ours}/mlp_norm", k + "output.LayerNorm")

  c = f"{head}cls.predictions."
  if c + "transform.dense.weight" in tensors:
    imp.linear("mlm_head/dense", c + "transform.dense")
    imp.norm("mlm_head/norm", c + "transform.LayerNorm")
    bias_key = c + "bias" if c + "bias" in tensors else c + "decoder.bias"
    imp.put("mlm_head/bias", imp.get(bias_key), bias_key)
    if c + "decoder.bias" in tensors:
      imp.used.add(c + "decoder.bias")  # tied to cls.predictions.bias in HF.
    if c + "decoder.weight" in tensors:
      decoder = imp.get(c + "decoder.weight")
      if not np.array_equal(decoder, imp.get(e + "word_embeddings.weight")):
        imp.report.warnings.append("cls.predictions.decoder.weight differs from the word "
                                   "embeddings; our MLM decoder is tied, so it is not used")
  else:
    imp.report.warnings.append("no cls.predictions.* MLM head in the checkpoint: the MLM "
                               "head stays initialised")
  params, report = imp.finish()
  return params, report


# ----------------------------------------------------------------------------- ViT


@dataclasses.dataclass(frozen=True)
class _ViTLayout:
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


_HF_VIT = _ViTLayout(
    anchor="embeddings.patch_embeddings.projection.weight",
    patch_embed="embeddings.patch_embeddings.projection", cls_token="embeddings.cls_token",
    pos_embed="embeddings.position_embeddings", dist_token="embeddings.distillation_token",
    mask_token="embeddings.mask_token", block="encoder.layer.{i}.", norm1="layernorm_before",
    qkv="attention.attention.{name}", attn_out="attention.output.dense",
    norm2="layernorm_after", fc1="intermediate.dense", fc2="output.dense", norm="layernorm")
_TIMM_VIT = _ViTLayout(
    anchor="patch_embed.proj.weight", patch_embed="patch_embed.proj",
    cls_token="cls_token", pos_embed="pos_embed", dist_token="dist_token",
    mask_token="mask_token", block="blocks.{i}.", norm1="norm1", qkv="attn.qkv",
    attn_out="attn.proj", norm2="norm2", fc1="mlp.fc1", fc2="mlp.fc2", norm="norm")
# Every key (after the prefix) of a timm ViT/DeiT that is ALBEF's ViT; the classifier
# heads are accepted and left unused. Anything else (fc_norm, norm_pre, layer scale
# ls1/ls2, register tokens, q/k norms, BEiT's q_bias, ...) changes the network.
_TIMM_VIT_KEY = re.compile(
    r"(cls_token|pos_embed|dist_token|mask_token|patch_embed\.proj\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|norm\.(weight|bias)|(head|head_dist|pre_logits)\..+)")
# timm's ViT LayerNorm eps; a state dict does not store it.
_TIMM_LN_EPS = 1e-6


def _vit_layout(tensors: dict[str, np.ndarray], path: str) -> tuple[_ViTLayout, str]:
  """The layout of a ViT checkpoint, told from its keys, and its key prefix."""
  found = [layout for layout in (_HF_VIT, _TIMM_VIT)
           if any(k.endswith(layout.anchor) for k in tensors)]
  if not found:
    raise ValueError(f"checkpoint {path!r} has no ViT: no key ending in {_HF_VIT.anchor!r} "
                     f"(Hugging Face) or {_TIMM_VIT.anchor!r} (timm)")
  if len(found) > 1:
    raise ValueError(f"checkpoint {path!r} holds both a Hugging Face and a timm ViT; "
                     "expected one")
  return found[0], _find_prefix(tensors, found[0].anchor, path)


def _timm_vit_config(tensors: dict[str, np.ndarray], prefix: str, path: str
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
  conv = tensors[prefix + _TIMM_VIT.anchor]
  if conv.ndim != 4 or conv.shape[2] != conv.shape[3]:
    raise ValueError(f"checkpoint {path!r}: {prefix + _TIMM_VIT.anchor!r} has shape "
                     f"{tuple(conv.shape)}; expected (width, channels, patch, patch)")
  blocks = {int(k.split(".")[1]) for k in keys if k.startswith("blocks.")}
  fc1 = tensors.get(f"{prefix}blocks.0.{_TIMM_VIT.fc1}.weight")
  config = {"hidden_size": conv.shape[0], "num_channels": conv.shape[1],
            "patch_size": conv.shape[2], "num_hidden_layers": max(blocks, default=-1) + 1,
            "intermediate_size": None if fc1 is None else fc1.shape[0],
            "layer_norm_eps": _TIMM_LN_EPS,
            "qkv_bias": f"{prefix}blocks.0.{_TIMM_VIT.qkv}.bias" in tensors}
  source = {"intermediate_size": f"blocks.0.{_TIMM_VIT.fc1}.weight",
            "num_hidden_layers": "blocks.*"}
  return config, lambda field: f"{prefix + source.get(field, _TIMM_VIT.anchor)!r} gives"


def _vit_qkv(imp: _Importer, ours: str, key: str, width: int, bias: bool) -> None:
  """q/k/v projections: `key` with `{name}` names three Linears (Hugging Face); without,
  one fused Linear whose output rows are [q; k; v] (timm). Biasless projections get zero
  biases (our Dense has one)."""
  names = ("query", "key", "value")
  if "{name}" in key:
    keys = [key.format(name=n) for n in names]
    weights = [imp.get(k + ".weight") for k in keys]
    biases = [imp.get(k + ".bias") if bias else None for k in keys]
  else:
    keys = [key] * 3
    weights = np.split(imp.get(key + ".weight"), 3)
    biases = np.split(imp.get(key + ".bias"), 3) if bias else [None] * 3
  for name, k, w, b in zip(names, keys, weights, biases):
    imp.put(f"{ours}/{name}/kernel", w.T, k + ".weight")
    imp.put(f"{ours}/{name}/bias", np.zeros((width,), np.float32) if b is None else b,
            k + (".weight" if b is None else ".bias"))


def load_vit(path: str, params: Params, image_size: int, *, num_heads: int | None = None,
             ln_eps: float | None = None) -> tuple[Params, ImportReport]:
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

  The position table is resized (`vit.interpolate_pos_embed`, [CLS] row kept) when the
  checkpoint's patch grid differs from `image_size // patch_size`. DeiT's
  distillation token has no counterpart in ALBEF's ViT: the token and its position row
  (row 1, between [CLS] and the patches) are dropped. A mask token
  (`embeddings.mask_token` of ViTForMaskedImageModeling, timm `mask_token`) initialises
  our MIM [MASK] embedding; without one it keeps its init. timm models that are not
  ALBEF's ViT (`fc_norm`, no class token, other extra keys) are refused. Classifier heads
  are reported unused. Returns new params (the input is not modified) and the report.
  """
  config, tensors = read_checkpoint(path, require_config=False)
  layout, prefix = _vit_layout(tensors, path)
  if layout is _TIMM_VIT:
    config, source = _timm_vit_config(tensors, prefix, path)
    num_heads = None  # not in a timm state dict: nothing to check.
  elif not config:
    raise FileNotFoundError(f"checkpoint {path!r} is in the Hugging Face ViT layout but has no "
                            "config.json: pass its directory")
  else:
    source = lambda field: "config.json"
  v = params["vision"]
  width = v["cls_token"].shape[-1]
  depth = sum(1 for k in v if k.startswith("block_"))
  patch_dim = v["patch_embed"]["kernel"].shape[0]
  have = config.get("num_hidden_layers")
  if have is None or have < depth:
    raise ValueError(f"checkpoint {path!r}: {source('num_hidden_layers')} num_hidden_layers="
                     f"{have}, fewer than the model's vision_depth={depth}")
  patch = config.get("patch_size")
  _check_fields(config, {"hidden_size": width, "intermediate_size":
                         v["block_0"]["mlp"]["fc1"]["kernel"].shape[1] if depth else None,
                         "num_attention_heads": num_heads, "num_channels": 3}, path,
                {"hidden_size": "vision_width", "intermediate_size": "vision_mlp_dim",
                 "num_attention_heads": "vision_heads", "num_channels": "channels"}.get,
                source)
  if patch is None or patch * patch * 3 != patch_dim:
    raise ValueError(f"checkpoint {path!r}: {source('patch_size')} patch_size={patch} but the "
                     f"model has patch_size={int(round((patch_dim / 3) ** 0.5))}")
  grid = image_size // patch
  if 1 + grid * grid != v["pos_embed"].shape[1]:
    raise ValueError(f"image_size={image_size} gives {grid * grid} patches, but the model's "
                     f"position table has {v['pos_embed'].shape[1] - 1}")

  imp = _Importer(path, params, tensors, scopes=("vision",))
  _check_eps(config, ln_eps, "vision_ln_eps", imp.report)
  if have > depth:
    imp.report.warnings.append(f"checkpoint has {have} layers, the model {depth}: the first "
                               f"{depth} are used, then the final layernorm")
  key = {f.name: prefix + getattr(layout, f.name) for f in dataclasses.fields(layout)}
  imp.put("vision/cls_token", imp.get(key["cls_token"]), key["cls_token"])
  pos = imp.get(key["pos_embed"])
  if key["dist_token"] in tensors:
    imp.used.add(key["dist_token"])
    pos = np.concatenate([pos[:, :1], pos[:, 2:]], axis=1)
  n = pos.shape[1] - 1
  if int(round(n ** 0.5)) ** 2 != n:
    raise ValueError(f"checkpoint {path!r}: {key['pos_embed']!r} of shape {pos.shape} (after "
                     "dropping any distillation row) is not [CLS] + a square grid of patches")
  imp.put("vision/pos_embed", np.asarray(vit.interpolate_pos_embed(pos, grid)),
          key["pos_embed"])
  # Conv2d (D, C, ph, pw) -> Dense on patchify's (ph, pw, C) vectors.
  conv = imp.get(key["patch_embed"] + ".weight")
  imp.put("vision/patch_embed/kernel", conv.transpose(2, 3, 1, 0).reshape(-1, conv.shape[0]),
          key["patch_embed"] + ".weight")
  imp.put("vision/patch_embed/bias", imp.get(key["patch_embed"] + ".bias"),
          key["patch_embed"] + ".bias")
  if key["mask_token"] in tensors:
    imp.put("vision/mask_token", imp.get(key["mask_token"]).reshape(-1), key["mask_token"])

  for i in range(depth):
    ours, k = f"vision/block_{i}", key["block"].replace("{i}", str(i))
    imp.norm(f"{ours}/norm1", k + layout.norm1)
    _vit_qkv(imp, f"{ours}/attn", k + layout.qkv, width, config.get("qkv_bias", True))
    imp.linear(f"{ours}/attn/out", k + layout.attn_out)
    imp.norm(f"{ours}/norm2", k + layout.norm2)
    imp.linear(f"{ours}/mlp/fc1", k + layout.fc1)
    imp.linear(f"{ours}/mlp/fc2", k + layout.fc2)
  imp.norm("vision/norm", key["norm"])
  return imp.finish()


# ----------------------------------------------------------------------------- trainer


def apply_inits(config: ml_collections.ConfigDict, params: Params) -> Params:
  """Loads `config.model.text_init` / `image_init` (empty: skip) into `params`.

  Call it on the online parameters before the momentum copy is made, so the EMA model
  starts from the same weights.
  """
  m = config.model
  if m.text_init:
    params, report = load_bert(m.text_init, params, m.text_layers, m.fusion_layers,
                               num_heads=m.text_heads, ln_eps=m.text_ln_eps)
    _log(report)
  if m.image_init:
    params, report = load_vit(m.image_init, params, m.image_size, num_heads=m.vision_heads,
                              ln_eps=m.vision_ln_eps)
    _log(report)
  return params


def _log(report: ImportReport) -> None:
  logging.info("%s", report.summary())
  for w in report.warnings:
    logging.warning("%s: %s", report.source, w)
