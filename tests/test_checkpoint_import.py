"""Parity of syncmask_jax.checkpoint_import with the PyTorch references (transformers, timm).

Small random BERT/ViT models are built in-process and saved to a temporary directory;
nothing is downloaded. timm is optional (see `_timm`): without it the timm layout is
still tested, on the Hugging Face ViT's weights under timm's names. Every comparison is
float32 on CPU with dropout off (our model called without rngs, the references in
eval()). The error measure is max|ours - ref| / max|ref|, bound
1e-5: both sides compute the same float32 graph with different summation orders, so the
expected error is a few ulps (~1e-7) grown over a few layers, two orders below the bound,
while any mapping mistake (a transposed kernel, a swapped LayerNorm, a dropped bias, a
mis-masked pad) gives errors of order 1.

torch runs in its own interpreter: this module is skipped when collected with the rest
of the suite, and tests/test_torch_parity.py runs it in a subprocess (with
SYNCMASK_TORCH_SUBPROCESS=1), so a torch/jax clash in one process fails one test with
its exit signal instead of killing the whole pytest run.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

if os.environ.get("SYNCMASK_TORCH_SUBPROCESS") != "1":
  pytest.skip("torch runs in a subprocess: see tests/test_torch_parity.py",
              allow_module_level=True)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top

from syncmask_jax import checkpoint_import, config_lib  # pylint: disable=g-import-not-at-top
from syncmask_jax.models import vit  # pylint: disable=g-import-not-at-top
from syncmask_jax.models.vlp import VLP  # pylint: disable=g-import-not-at-top
from syncmask_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

TEXT_LAYERS, FUSION_LAYERS = 2, 2
RTOL = 1e-5
WORDS = ("a red cotton dress with short sleeves and a round neck blue denim jacket "
         "long black leather boots white linen shirt pocket collar zip button floral print "
         "slim fit wool sweater striped knit skirt pleated midi").split()
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
         + [chr(c) for c in range(ord("a"), ord("z") + 1)]
         + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)])
# The second caption is shorter, so its batch row is padded; "tee" exercises WordPiece
# continuation pieces.
CAPTIONS = ["a red cotton dress with short sleeves and a round neck", "blue tee"]


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _randomise(model: "torch.nn.Module", seed: int) -> None:
  """Non-trivial weights everywhere: LN scales away from 1 and non-zero biases, so a
  swapped or skipped parameter cannot hide behind its default init; std 0.1 (not HF's
  0.02) so attention is far from uniform and a wrong pad mask shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if "norm" in name.lower() and name.endswith("weight"):  # BERT, HF and timm LNs
        p.copy_(1.0 + 0.2 * noise)
      else:
        p.copy_(0.1 * noise)


def _model_cfg(**overrides):
  cfg = config_lib.model_config("tiny", vocab_size=len(VOCAB))
  cfg.update(dict(text_width=64, text_heads=4, text_mlp_dim=128, max_positions=64,
                  text_layers=TEXT_LAYERS, fusion_layers=FUSION_LAYERS, text_ln_eps=1e-12,
                  image_size=32, patch_size=8, vision_width=64, vision_depth=2,
                  vision_heads=4, vision_mlp_dim=128, vision_ln_eps=1e-12))
  cfg.update(overrides)
  return cfg


def _split(cfg):
  graphdef, state = nnx.split(VLP(cfg, rngs=nnx.Rngs(0)))
  return graphdef, nnx.to_pure_dict(state)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  """A random 4-layer BertForMaskedLM saved as safetensors, with its vocab."""
  path = str(tmp_path_factory.mktemp("bert"))
  config = transformers.BertConfig(
      vocab_size=len(VOCAB), hidden_size=64, num_hidden_layers=TEXT_LAYERS + FUSION_LAYERS,
      num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
      layer_norm_eps=1e-12, attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(config)
  _randomise(model, seed=1)
  model.save_pretrained(path)
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(VOCAB) + "\n")
  return path


@pytest.fixture(scope="module")
def hf_bert(bert_dir):
  return transformers.BertForMaskedLM.from_pretrained(bert_dir, attn_implementation="eager"
                                                      ).eval()


@pytest.fixture(scope="module")
def tokens(bert_dir):
  """(ids, mask) of CAPTIONS through the project's WordPiece tokenizer on the test vocab,
  padded to 16 so both rows carry [PAD]."""
  tok = Tokenizer.from_file(os.path.join(bert_dir, "vocab.txt"))
  enc = tok.encode(CAPTIONS, max_len=16)
  ids, mask = enc["ids"], enc["mask"]
  assert 0 < mask[1].sum() < mask[0].sum() < 16 and (ids != tok.unk_id).all()
  return ids, mask


@pytest.fixture(scope="module")
def loaded_bert(bert_dir):
  graphdef, params = _split(_model_cfg())
  params, report = checkpoint_import.load_bert(bert_dir, params, TEXT_LAYERS, FUSION_LAYERS,
                                               num_heads=4, ln_eps=1e-12)
  return graphdef, params, report


def _hf_hidden(hf_bert, ids, mask):
  with torch.no_grad():
    out = hf_bert.bert(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long),
                       output_hidden_states=True)
  return [h.numpy() for h in out.hidden_states]


def test_text_encoder_matches_hf(loaded_bert, hf_bert, tokens):
  graphdef, params, _ = loaded_bert
  ids, mask = tokens
  ours = nnx.merge(graphdef, params).encode_text(jnp.asarray(ids), jnp.asarray(mask))
  ref = _hf_hidden(hf_bert, ids, mask)[TEXT_LAYERS]
  # Padded query positions are free in both models (nobody attends to them); compare
  # the real tokens, as the HF attention_mask defines them.
  keep = mask.astype(bool)
  err = _rel_err(np.asarray(ours)[keep], ref[keep])
  print(f"text encoder rel err {err:.2e}")
  assert err <= RTOL


def test_fusion_reduces_to_bert_layers(loaded_bert, hf_bert, tokens):
  """Our fusion layer is self-attn -> self_norm -> cross-attn -> cross_norm -> FFN, HF's
  BERT layer self-attn -> LN -> FFN. With the cross-attention output projection zero,
  cross_norm sees x1 = self_norm(z) unchanged. Move self_norm's affine (gamma, beta) to
  cross_norm and give self_norm (1, 0): then x1 = n = (z - mean) / sqrt(var + eps) and
  cross_norm(n) = gamma * n / sqrt(var(n) + eps) + beta with var(n) = var / (var + eps),
  i.e. HF's gamma * n + beta times (1 + O(eps)), eps = 1e-12: exact in float32. HF's
  weights stay untouched, and the image tokens are irrelevant."""
  graphdef, params, _ = loaded_bert
  ids, mask = tokens
  params = jax.tree.map(lambda x: x, params)  # a copy: the fixture is shared
  for j in range(FUSION_LAYERS):
    layer = params["fusion"][f"layer_{j}"]
    layer["cross_attn"]["out"] = jax.tree.map(jnp.zeros_like, layer["cross_attn"]["out"])
    layer["cross_norm"] = dict(layer["self_norm"])
    layer["self_norm"] = dict(scale=jnp.ones_like(layer["self_norm"]["scale"]),
                              bias=jnp.zeros_like(layer["self_norm"]["bias"]))
  model = nnx.merge(graphdef, params)
  text = model.encode_text(jnp.asarray(ids), jnp.asarray(mask))
  image = jax.random.normal(jax.random.key(0), (ids.shape[0], 17, 64))
  fused, probs = model.fuse(text, jnp.asarray(mask), image)
  ref = _hf_hidden(hf_bert, ids, mask)[TEXT_LAYERS + FUSION_LAYERS]
  keep = mask.astype(bool)
  err = _rel_err(np.asarray(fused)[keep], ref[keep])
  print(f"fusion encoder rel err {err:.2e}")
  assert err <= RTOL
  assert probs.shape == (FUSION_LAYERS, 2, 4, ids.shape[1], 17)


def test_mlm_head_matches_hf(loaded_bert, hf_bert, tokens):
  graphdef, params, _ = loaded_bert
  ids, mask = tokens
  hidden = _hf_hidden(hf_bert, ids, mask)[-1]
  with torch.no_grad():
    ref = hf_bert.cls(torch.tensor(hidden)).numpy()
  ours = nnx.merge(graphdef, params).mlm_logits(jnp.asarray(hidden))
  err = _rel_err(ours, ref)
  print(f"MLM head rel err {err:.2e}")
  assert err <= RTOL


def test_bert_report(loaded_bert):
  _, params, report = loaded_bert
  cross = {p for p in report.initialised if "/cross_attn/" in p or "/cross_norm/" in p}
  # Everything in the text-side scopes is loaded except the fusion cross-attention.
  assert set(report.initialised) == cross
  assert len(cross) == FUSION_LAYERS * (8 + 2)
  assert report.unused == [] and report.warnings == []
  assert "mlm_head/bias" in report.loaded and "fusion/layer_1/mlp/fc2/kernel" in report.loaded
  assert "loaded" in report.summary()
  # The cross-attention LayerNorm keeps its fresh init (ones/zeros), as ALBEF.
  np.testing.assert_array_equal(params["fusion"]["layer_0"]["cross_norm"]["scale"], 1.0)


def test_bert_split_uses_first_layers_and_reports_rest(bert_dir):
  """A shallower model takes layers 0..L_t+L_f-1; the checkpoint's deeper layers are
  reported unused (the 12 -> 6+6 split of bert-base, scaled down)."""
  _, params = _split(_model_cfg(text_layers=1, fusion_layers=1))
  params, report = checkpoint_import.load_bert(bert_dir, params, 1, 1)
  ref = load_file(os.path.join(bert_dir, "model.safetensors"))
  np.testing.assert_array_equal(params["fusion"]["layer_0"]["mlp"]["fc1"]["kernel"],
                                ref["bert.encoder.layer.1.intermediate.dense.weight"].T)
  assert {k.split(".")[3] for k in report.unused} == {"2", "3"}


def test_bert_without_prefix_or_head_and_old_ln_names(bert_dir, loaded_bert, tmp_path):
  """A bare BertModel (no `bert.` prefix, no MLM head) with gamma/beta LN names, as the
  original Google conversions: same encoder weights, head left initialised."""
  tensors = load_file(os.path.join(bert_dir, "model.safetensors"))
  bare = {}
  for k, v in tensors.items():
    if k.startswith("bert."):
      k = k[len("bert."):].replace("LayerNorm.weight", "LayerNorm.gamma").replace(
          "LayerNorm.bias", "LayerNorm.beta")
      bare[k] = v
  save_file(bare, str(tmp_path / "model.safetensors"))
  shutil.copy(os.path.join(bert_dir, "config.json"), tmp_path)
  _, params = _split(_model_cfg())
  params, report = checkpoint_import.load_bert(str(tmp_path), params, 2, 2)
  ref = loaded_bert[1]
  for path in (("embeddings", "norm", "scale"), ("text", "layer_1", "self_norm", "bias"),
               ("fusion", "layer_1", "self_attn", "value", "kernel")):
    a, b = params, ref
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_array_equal(a, b)
  assert "mlm_head/dense/kernel" in report.initialised
  assert any("MLM head" in w for w in report.warnings)


def test_pytorch_bin_matches_safetensors(hf_bert, loaded_bert, tmp_path):
  torch.save(hf_bert.state_dict(), str(tmp_path / "pytorch_model.bin"))
  hf_bert.config.to_json_file(str(tmp_path / "config.json"))
  _, params = _split(_model_cfg())
  params, _ = checkpoint_import.load_bert(str(tmp_path), params, 2, 2)
  jax.tree.map(np.testing.assert_array_equal, params, loaded_bert[1])


def test_bfloat16_safetensors(tmp_path):
  """numpy has no bfloat16: the fallback reader decodes it via ml_dtypes."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  x = torch.randn(3, 5)
  safetensors.torch.save_file({"w": x.bfloat16(), "v": x}, str(tmp_path / "t.safetensors"))
  out = checkpoint_import.files.read_safetensors(str(tmp_path / "t.safetensors"))
  np.testing.assert_array_equal(out["w"].astype(np.float32), x.bfloat16().float().numpy())
  np.testing.assert_array_equal(out["v"], x.numpy())


def test_bert_errors(bert_dir, tmp_path):
  _, params = _split(_model_cfg(text_width=32))
  with pytest.raises(ValueError, match=r"hidden_size=64.*text_width=32"):
    checkpoint_import.load_bert(bert_dir, params, 2, 2)
  _, params = _split(_model_cfg())
  with pytest.raises(ValueError, match="num_attention_heads=4.*text_heads=8"):
    checkpoint_import.load_bert(bert_dir, params, 2, 2, num_heads=8)
  _, params = _split(_model_cfg(text_layers=3))
  with pytest.raises(ValueError, match="num_hidden_layers=4"):
    checkpoint_import.load_bert(bert_dir, params, 3, 2)
  shutil.copy(os.path.join(bert_dir, "config.json"), tmp_path)
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    checkpoint_import.load_bert(str(tmp_path), params, 2, 2)
  _, params = _split(_model_cfg())
  _, report = checkpoint_import.load_bert(bert_dir, params, 2, 2, ln_eps=1e-6)
  assert any("layer_norm_eps" in w for w in report.warnings)


def test_weights_file_truncation_and_vocabulary_errors_name_the_cause(bert_dir, tmp_path):
  _, params = _split(_model_cfg())
  weights = os.path.join(bert_dir, "model.safetensors")
  # text_init at the weights file, not its directory: say so, not "does not exist".
  with pytest.raises(FileNotFoundError, match=re.escape(repr(weights)) + " is a file.*"
                     + re.escape(repr(bert_dir))):
    checkpoint_import.load_bert(weights, params, 2, 2)
  shutil.copy(os.path.join(bert_dir, "config.json"), tmp_path)
  data = open(weights, "rb").read()
  (tmp_path / "model.safetensors").write_bytes(data[:len(data) // 2])  # a cut download
  truncated = re.escape(repr(str(tmp_path / "model.safetensors")))
  with pytest.raises(ValueError, match=truncated + " as safetensors \\(SafetensorError"):
    checkpoint_import.load_bert(str(tmp_path), params, 2, 2)
  with pytest.raises(ValueError, match=truncated):  # a single file (timm): the same
    checkpoint_import.load_vit(str(tmp_path / "model.safetensors"), params, 32)
  _, params = _split(_model_cfg(vocab_size=len(VOCAB) + 3))
  with pytest.raises(ValueError, match=r"vocab_size=\d+ \(likely another vocabulary: "
                                       r"config\.model\.vocab_size follows config\.data\."
                                       r"vocab_path"):
    checkpoint_import.load_bert(bert_dir, params, 2, 2)


# ----------------------------------------------------------------------------- ViT


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("vit"))
  config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, layer_norm_eps=1e-12,
                                  attn_implementation="eager")
  torch.manual_seed(0)
  model = transformers.ViTModel(config, add_pooling_layer=False)
  _randomise(model, seed=2)
  model.save_pretrained(path)
  return path


def _load_vit(path, image_size=32):
  graphdef, params = _split(_model_cfg(image_size=image_size))
  params, report = checkpoint_import.load_vit(path, params, image_size, num_heads=4,
                                              ln_eps=1e-12)
  return graphdef, params, report


def test_vit_matches_hf(vit_dir):
  hf = transformers.ViTModel.from_pretrained(vit_dir, add_pooling_layer=False,
                                             attn_implementation="eager").eval()
  images = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    ref = hf(pixel_values=torch.tensor(images)).last_hidden_state.numpy()
  graphdef, params, report = _load_vit(vit_dir)
  ours = nnx.merge(graphdef, params).encode_image(jnp.asarray(images.transpose(0, 2, 3, 1)))
  err = _rel_err(ours, ref)
  print(f"ViT rel err {err:.2e}")
  assert err <= RTOL
  # Only the MIM [MASK] embedding has no counterpart in a ViTModel.
  assert report.initialised == ["vision/mask_token"] and report.unused == []


def test_vit_pos_embed_interpolation(vit_dir, tmp_path):
  """Grid 4 -> 6: the [CLS] row is copied as is, and a constant patch table (every
  patch at the same position vector) stays constant after the bicubic resize."""
  tensors = load_file(os.path.join(vit_dir, "model.safetensors"))
  _, params, _ = _load_vit(vit_dir, image_size=48)
  pos = np.asarray(params["vision"]["pos_embed"])
  assert pos.shape == (1, 37, 64)
  np.testing.assert_array_equal(pos[:, 0], tensors["embeddings.position_embeddings"][:, 0])

  table = tensors["embeddings.position_embeddings"].copy()
  table[:, 1:] = table[:, 1:2]
  save_file({**tensors, "embeddings.position_embeddings": table},
            str(tmp_path / "model.safetensors"))
  shutil.copy(os.path.join(vit_dir, "config.json"), tmp_path)
  _, params, _ = _load_vit(str(tmp_path), image_size=48)
  pos = np.asarray(params["vision"]["pos_embed"])
  np.testing.assert_allclose(pos[0, 1:], np.broadcast_to(table[0, 1], (36, 64)), rtol=1e-6,
                             atol=1e-6)


def test_deit_layout_drops_distillation_token(vit_dir, tmp_path):
  """DeiT (`deit.` prefix, distillation token at position row 1, classifier heads)
  loads to exactly what the ViT without those extras gives."""
  tensors = load_file(os.path.join(vit_dir, "model.safetensors"))
  pos = tensors["embeddings.position_embeddings"]
  deit = {f"deit.{k}": v for k, v in tensors.items()}
  deit["deit.embeddings.distillation_token"] = np.ones((1, 1, 64), np.float32)
  deit["deit.embeddings.position_embeddings"] = np.concatenate(
      [pos[:, :1], np.full((1, 1, 64), 7.0, np.float32), pos[:, 1:]], axis=1)
  deit["cls_classifier.weight"] = np.zeros((10, 64), np.float32)
  save_file(deit, str(tmp_path / "model.safetensors"))
  with open(os.path.join(vit_dir, "config.json")) as f:
    config = json.load(f)
  with open(tmp_path / "config.json", "w") as f:
    json.dump({**config, "model_type": "deit"}, f)
  _, ours, report = _load_vit(str(tmp_path))
  _, ref, _ = _load_vit(vit_dir)
  jax.tree.map(np.testing.assert_array_equal, ours["vision"], ref["vision"])
  assert report.unused == ["cls_classifier.weight"]


def test_vit_errors(vit_dir, tmp_path):
  _, params = _split(_model_cfg(vision_mlp_dim=256))
  with pytest.raises(ValueError, match=r"intermediate_size=128.*vision_mlp_dim=256"):
    checkpoint_import.load_vit(vit_dir, params, 32)
  _, params = _split(_model_cfg(patch_size=16))
  with pytest.raises(ValueError, match="patch_size=8"):
    checkpoint_import.load_vit(vit_dir, params, 32)
  _, params = _split(_model_cfg())
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
    checkpoint_import.load_vit(str(tmp_path / "nowhere"), params, 32)


def test_apply_inits(bert_dir, vit_dir, loaded_bert):
  config = config_lib.default_config()
  config.model = _model_cfg()
  _, params = _split(config.model)
  assert checkpoint_import.apply_inits(config, params) is params  # nothing to load
  config.model.text_init, config.model.image_init = bert_dir, vit_dir
  params = checkpoint_import.apply_inits(config, params)
  np.testing.assert_array_equal(params["text"]["layer_0"]["self_attn"]["query"]["kernel"],
                                loaded_bert[1]["text"]["layer_0"]["self_attn"]["query"]["kernel"])
  _, ref, _ = _load_vit(vit_dir)
  np.testing.assert_array_equal(params["vision"]["norm"]["scale"], ref["vision"]["norm"]["scale"])


# ----------------------------------------------------------------------------- timm ViT


def _timm():
  """timm, or a skip. timm imports torchvision, and PyPI's torchvision is a CUDA build
  that does not import beside the CPU torch wheel launch/test.sh installs, so the suite
  runs without timm; the layout itself is tested below on HF weights under timm names."""
  try:
    import timm.models.deit  # pylint: disable=g-import-not-at-top
  except (ImportError, RuntimeError, OSError) as e:
    pytest.skip(f"timm is not usable here: {e}")
  return timm


def _hf_to_timm(hf: dict[str, np.ndarray], depth: int = 2) -> dict[str, np.ndarray]:
  """A Hugging Face ViTModel state dict under timm's names: the inverse of transformers'
  `convert_vit_timm_to_pytorch` (timm's one qkv Linear has output rows [q; k; v])."""
  e = "embeddings."
  out = {"cls_token": hf[e + "cls_token"], "pos_embed": hf[e + "position_embeddings"]}
  for p in ("weight", "bias"):
    out[f"patch_embed.proj.{p}"] = hf[f"{e}patch_embeddings.projection.{p}"]
    out[f"norm.{p}"] = hf[f"layernorm.{p}"]
    for i in range(depth):
      t, h = f"blocks.{i}.", f"encoder.layer.{i}."
      for timm_name, hf_name in (("norm1", "layernorm_before"), ("attn.proj",
                                 "attention.output.dense"), ("norm2", "layernorm_after"),
                                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
        out[f"{t}{timm_name}.{p}"] = hf[f"{h}{hf_name}.{p}"]
      out[f"{t}attn.qkv.{p}"] = np.concatenate(
          [hf[f"{h}attention.attention.{n}.{p}"] for n in ("query", "key", "value")])
  return out


def _save_pth(state, path) -> str:
  """torch.save of {key: array}, dicts nested as in ALBEF's {"model": ...}."""
  def to_torch(v):
    if isinstance(v, dict):
      return {k: to_torch(x) for k, x in v.items()}
    return torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
  torch.save(to_torch(state), str(path))
  return str(path)


@pytest.fixture(scope="module")
def timm_base():
  """(graphdef, params) of the test model with timm's LayerNorm eps, 1e-6."""
  return _split(_model_cfg(vision_ln_eps=1e-6))


@pytest.fixture(scope="module")
def timm_state(vit_dir):
  """The random HF ViT of `vit_dir` in timm's layout, with a 10-way classifier head."""
  state = _hf_to_timm(load_file(os.path.join(vit_dir, "model.safetensors")))
  rng = np.random.default_rng(3)
  state["head.weight"] = rng.normal(size=(10, 64)).astype(np.float32)
  state["head.bias"] = rng.normal(size=(10,)).astype(np.float32)
  return state


@pytest.fixture(scope="module")
def hf_vision(vit_dir):
  """The `vision` params that the Hugging Face import of `vit_dir` gives."""
  return _load_vit(vit_dir)[1]["vision"]


def _load_timm(path, params, image_size=32, ln_eps=1e-6):
  return checkpoint_import.load_vit(path, params, image_size, num_heads=4, ln_eps=ln_eps)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _random_timm(cls, seed, **kwargs):
  """A timm ViT sized to the test model, every parameter random (LN scales around 1)."""
  torch.manual_seed(0)
  model = cls(**{**dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                        mlp_ratio=2.0, qkv_bias=True, num_classes=10), **kwargs})
  _randomise(model, seed=seed)
  return model.eval()


def _load_random_timm(model, path, timm_base):
  """(our encode_image after `load_vit` of `model`'s state dict, the report)."""
  graphdef, params = timm_base
  torch.save(model.state_dict(), path)
  params, report = _load_timm(str(path), params)
  return nnx.merge(graphdef, params).encode_image, report


def _images():
  """(NCHW for torch, NHWC for us) of the same random images."""
  images = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  return torch.tensor(images), jnp.asarray(images.transpose(0, 2, 3, 1))


def test_timm_vit_matches_timm(timm_base, tmp_path):
  """Our forward (final normalised tokens, [CLS] first) is timm's forward_features."""
  timm = _timm()
  model = _random_timm(timm.models.vision_transformer.VisionTransformer, seed=4)
  encode, report = _load_random_timm(model, tmp_path / "vit.pth", timm_base)
  theirs, ours = _images()
  with torch.no_grad():
    ref = model.forward_features(theirs).numpy()
  err = _rel_err(encode(ours), ref)
  print(f"timm ViT rel err {err:.2e}")
  assert err <= RTOL
  assert report.initialised == ["vision/mask_token"] and report.warnings == []
  assert report.unused == ["head.bias", "head.weight"]


def test_timm_deit_distilled_matches_timm(timm_base, tmp_path):
  """timm's forward_features of a distilled DeiT is [CLS], the distillation token, then
  the patches, and the distillation token takes part in every attention: dropping it (as
  ALBEF's ViT has none) changes all tokens. The reference is therefore timm's own modules
  (patch_embed, blocks, norm) on the sequence without it: [CLS] + patches, position
  rows 0 and 2.."""
  timm = _timm()
  model = _random_timm(timm.models.deit.VisionTransformerDistilled, seed=5)
  encode, report = _load_random_timm(model, tmp_path / "deit.pth", timm_base)
  theirs, ours = _images()
  with torch.no_grad():
    x = model.patch_embed(theirs)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    x = x + torch.cat([model.pos_embed[:, :1], model.pos_embed[:, 2:]], dim=1)
    ref = model.norm(model.blocks(x)).numpy()
    with_dist = model.forward_features(theirs).numpy()
  ours = encode(ours)
  err = _rel_err(ours, ref)
  print(f"timm DeiT rel err {err:.2e}")
  assert err <= RTOL
  assert with_dist.shape[1] == ref.shape[1] + 1
  assert _rel_err(ours, np.delete(with_dist, 1, axis=1)) > 1e-2
  assert report.unused == ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"]


def test_timm_layout_matches_hf_import(timm_state, timm_base, hf_vision, tmp_path):
  """The same weights under timm's names load to exactly the HF import (whose forward
  test_vit_matches_hf checks); the eps check uses timm's 1e-6."""
  path = _save_pth(timm_state, tmp_path / "vit.pth")
  params, report = _load_timm(path, timm_base[1], ln_eps=1e-12)
  _assert_same(params["vision"], hf_vision)
  assert report.initialised == ["vision/mask_token"]
  assert report.unused == ["head.bias", "head.weight"]
  assert len(report.warnings) == 1 and "layer_norm_eps=1e-06" in report.warnings[0]


def test_timm_albef_safetensors_and_directory(timm_state, timm_base, tmp_path):
  """An ALBEF checkpoint ({"model": ...}, the ViT under `visual_encoder.`, beside its
  momentum copy and the text side), a `module.`-prefixed .safetensors file and a timm
  hub directory give the plain .pth's params."""
  params = timm_base[1]
  ref, _ = _load_timm(_save_pth(timm_state, tmp_path / "vit.pth"), params)
  model = {f"visual_encoder.{k}": v for k, v in timm_state.items() if not k.startswith("head.")}
  model.update({f"visual_encoder_m.{k}": v + 1 for k, v in timm_state.items()})
  model["text_encoder.bert.embeddings.word_embeddings.weight"] = np.ones((8, 64), np.float32)
  albef = _save_pth({"model": model, "epoch": 3}, tmp_path / "albef.pth")
  got, report = _load_timm(albef, params)
  _assert_same(got, ref)
  assert set(report.unused) == {k for k in model if not k.startswith("visual_encoder.")}

  save_file({f"module.{k}": v for k, v in timm_state.items()},
            str(tmp_path / "vit.safetensors"))
  _assert_same(_load_timm(str(tmp_path / "vit.safetensors"), params)[0], ref)

  hub = tmp_path / "hub"
  hub.mkdir()
  save_file(timm_state, str(hub / "model.safetensors"))
  (hub / "config.json").write_text(json.dumps({"architecture": "vit_test_patch8_32",
                                               "num_classes": 10, "num_features": 64}))
  _assert_same(_load_timm(str(hub), params)[0], ref)


def test_timm_deit_drops_distillation_token(timm_state, timm_base, hf_vision, tmp_path):
  pos = timm_state["pos_embed"]
  deit = {**timm_state, "dist_token": np.ones((1, 1, 64), np.float32),
          "pos_embed": np.concatenate([pos[:, :1], np.full((1, 1, 64), 7.0, np.float32),
                                       pos[:, 1:]], axis=1),
          "head_dist.weight": np.zeros((10, 64), np.float32)}
  params, report = _load_timm(_save_pth(deit, tmp_path / "deit.pth"), timm_base[1])
  _assert_same(params["vision"], hf_vision)
  assert report.unused == ["head.bias", "head.weight", "head_dist.weight"]


def test_timm_without_qkv_bias(timm_state, timm_base, hf_vision, tmp_path):
  """qkv_bias=False: no attn.qkv.bias keys, so our q/k/v biases are zero."""
  state = {k: v for k, v in timm_state.items() if not k.endswith("attn.qkv.bias")}
  params, _ = _load_timm(_save_pth(state, tmp_path / "vit.pth"), timm_base[1])
  attn, ref = params["vision"]["block_1"]["attn"], hf_vision["block_1"]["attn"]
  for name in ("query", "key", "value"):
    np.testing.assert_array_equal(attn[name]["bias"], np.zeros(64, np.float32))
    np.testing.assert_array_equal(attn[name]["kernel"], ref[name]["kernel"])
  np.testing.assert_array_equal(attn["out"]["bias"], ref["out"]["bias"])


def test_timm_deeper_checkpoint_uses_first_blocks(timm_state, hf_vision, tmp_path):
  _, params = _split(_model_cfg(vision_depth=1))
  params, report = _load_timm(_save_pth(timm_state, tmp_path / "vit.pth"), params)
  _assert_same(params["vision"]["block_0"], hf_vision["block_0"])
  _assert_same(params["vision"]["norm"], hf_vision["norm"])
  assert {k.split(".")[1] for k in report.unused if k.startswith("blocks.")} == {"1"}
  assert any("the first 1 are used" in w for w in report.warnings)


def test_timm_pos_embed_interpolation(timm_state, tmp_path):
  """A checkpoint trained at 32 px (grid 4) into a 48 px model (grid 6)."""
  path = _save_pth(timm_state, tmp_path / "vit.pth")
  _, params = _split(_model_cfg(image_size=48))
  params, _ = _load_timm(path, params, image_size=48)
  pos = np.asarray(params["vision"]["pos_embed"])
  assert pos.shape == (1, 37, 64)
  np.testing.assert_array_equal(pos, vit.interpolate_pos_embed(timm_state["pos_embed"], 6))


def test_timm_errors(timm_state, timm_base, tmp_path):
  params = timm_base[1]
  path = _save_pth(timm_state, tmp_path / "vit.pth")

  def raises(path, message, params=params, error=ValueError):
    with pytest.raises(error, match=re.escape(repr(str(path))) + ".*" + message):
      _load_timm(str(path), params)

  raises(_save_pth({"text_encoder.embeddings.word_embeddings.weight": np.ones((8, 64))},
                   tmp_path / "text.pth"), r"no ViT.*'patch_embed\.proj\.weight' \(timm\)")
  raises(path, r"'patch_embed\.proj\.weight' gives patch_size=8 but the model has "
         r"config\.model\.patch_size=16", params=_split(_model_cfg(patch_size=16))[1])
  raises(path, r"'blocks\.\*' gives num_hidden_layers=2, fewer than the model's "
         r"config\.model\.vision_depth=3", params=_split(_model_cfg(vision_depth=3))[1])
  raises(path, r"'patch_embed\.proj\.weight' gives hidden_size=64 but the model has "
         r"config\.model\.vision_width=32", params=_split(_model_cfg(vision_width=32))[1])
  # timm's global_pool="avg" ViT: fc_norm after pooling, no final norm.
  gap = {("fc_" + k if k.startswith("norm.") else k): v for k, v in timm_state.items()}
  raises(_save_pth(gap, tmp_path / "gap.pth"), r"'fc_norm\.bias'.*global-average-pool")
  no_cls = {k: v for k, v in timm_state.items() if k != "cls_token"}
  raises(_save_pth(no_cls, tmp_path / "no_cls.pth"), "no 'cls_token'")
  layer_scale = {**timm_state, "blocks.0.ls1.gamma": np.ones((64,), np.float32)}
  raises(_save_pth(layer_scale, tmp_path / "ls.pth"), r"'blocks\.0\.ls1\.gamma' is not part")
  raises(tmp_path / "nowhere.pth", "does not exist", error=FileNotFoundError)


# ----------------------------------------------------------------------------- BLIP (HF)


def test_hf_blip_caption_directory_matches_transformers(tmp_path):
  """Hugging Face's BlipForConditionalGeneration, saved as a directory (config.json +
  model.safetensors): its vision model's states and its text decoder's LM logits on
  those states, against ours after `checkpoint_import.blip`."""
  from syncmask_jax.checkpoint_import import blip  # pylint: disable=g-import-not-at-top
  from syncmask_jax.tasks import captioning  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  vision = transformers.BlipVisionConfig(hidden_size=48, intermediate_size=192,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         image_size=32, patch_size=8)
  text = transformers.BlipTextConfig(vocab_size=104, hidden_size=32, encoder_hidden_size=48,
                                     intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=40)
  ref = transformers.BlipForConditionalGeneration(transformers.BlipConfig(
      text_config=text.to_dict(), vision_config=vision.to_dict())).eval()
  with torch.no_grad():  # off the init's zeros and ones, so a dropped bias shows
    for p in ref.parameters():
      p.add_(0.1 * torch.randn_like(p))
  ref.save_pretrained(str(tmp_path), safe_serialization=True)

  c = config_lib.default_config()
  c.model = _model_cfg(image_size=32, patch_size=8, vision_width=48, vision_depth=2,
                       vision_heads=4, vision_mlp_dim=192, text_width=32, text_layers=1,
                       fusion_layers=1, text_heads=4, text_mlp_dim=64, max_positions=40,
                       vocab_size=104, type_vocab_size=0, vision_ln_eps=1e-5)
  model = captioning.CaptionModel(c.model, "text+fusion", rngs=nnx.Rngs(params=0))
  graphdef, state = nnx.split(model)
  params, report = blip.import_blip_caption(str(tmp_path), jax.tree.map(
      np.asarray, nnx.to_pure_dict(state)), c)
  assert report.unused == [] and report.initialised == ["vision/mask_token"], report.summary()
  assert report.warnings == []
  model = nnx.merge(graphdef, params)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  ids = np.array([[102, 7, 9, 11, 3, 0], [102, 8, 3, 0, 0, 0]])
  mask = (ids > 0).astype(np.int64)
  with torch.no_grad():
    states = ref.vision_model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    states = states.last_hidden_state
    logits = ref.text_decoder(input_ids=torch.from_numpy(ids),
                              attention_mask=torch.from_numpy(mask),
                              encoder_hidden_states=states).logits
  ours = model.encode_image(jnp.asarray(images))
  assert _rel_err(ours, states.numpy()) < RTOL
  ours_logits = model.text_decoder(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                                   ours)
  assert _rel_err(ours_logits, logits.numpy()) < RTOL
