"""Parity of syncmask_jax.checkpoint_import with the PyTorch reference (transformers).

Small random BERT/ViT models are built in-process and saved to a temporary directory;
nothing is downloaded. Every comparison is float32 on CPU with dropout off (our model
called without rngs, HF in eval()). The error measure is max|ours - hf| / max|hf|, bound
1e-5: both sides compute the same float32 graph with different summation orders, so the
expected error is a few ulps (~1e-7) grown over a few layers, two orders below the bound,
while any mapping mistake (a transposed kernel, a swapped LayerNorm, a dropped bias, a
mis-masked pad) gives errors of order 1.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top

from syncmask_jax import checkpoint_import, config_lib  # pylint: disable=g-import-not-at-top
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
      if "LayerNorm.weight" in name or "layernorm" in name and name.endswith("weight"):
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
  out = checkpoint_import._read_safetensors(str(tmp_path / "t.safetensors"))
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
