"""The model family: attention semantics, masking inputs, position interpolation, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from syncmask_jax import config_lib, sharding
from syncmask_jax.models import layers, vit
from syncmask_jax.models.vlp import VLP


def _tiny_model(**fields) -> VLP:
  cfg = config_lib.model_config("tiny", vocab_size=100)
  cfg.text_dropout = 0.0
  cfg.update(fields)
  return VLP(cfg, mim_head="pixels", rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def model():
  return _tiny_model()


def _inputs(b=2, t=10, s=64, seed=0):
  rs = np.random.RandomState(seed)
  ids = rs.randint(5, 100, (b, t)).astype(np.int32)
  mask = np.ones((b, t), np.int32)
  mask[0, 6:] = 0
  ids[0, 6:] = 0
  return jnp.asarray(rs.randn(b, s, s, 3), jnp.float32), jnp.asarray(ids), jnp.asarray(mask)


def test_fusion_returns_cross_attention_of_every_layer_and_head(model):
  img, ids, mask = _inputs()
  tokens = model.encode_image(img)
  fused, probs = model.fuse(model.encode_text(ids, mask), mask, tokens)
  assert tokens.shape == (2, 17, 64)
  assert fused.shape == (2, 10, 64)
  assert probs.shape == (1, 2, 2, 10, 17)  # (L, B, H, T, 1+N)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_padding_is_invisible_to_real_tokens(model):
  img, ids, mask = _inputs()
  other = ids.at[0, 6:].set(77)  # change only padded positions
  h1 = model.encode_text(ids, mask)
  h2 = model.encode_text(other, mask)
  np.testing.assert_allclose(h1[0, :6], h2[0, :6], rtol=1e-5, atol=1e-6)
  assert not np.allclose(h1[0, 6:], h2[0, 6:])


def test_attention_gives_zero_probability_to_masked_keys():
  att = layers.Attention(8, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (1, 5, 8))
  key_mask = jnp.array([[1, 1, 1, 0, 0]])
  _, probs = att(x, key_mask=key_mask, return_probs=True)
  assert float(jnp.abs(probs[..., 3:]).max()) < 1e-12
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def test_fused_attention_matches_einsum_on_padded_odd_lengths():
  # 257 keys (ViT-B/16's 256 patches + [CLS]): padded to 320 for the fused call; rows with
  # prefix key masks of different lengths.
  att = layers.Attention(16, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (3, 257, 16))
  key_mask = (jnp.arange(257)[None, :] < jnp.array([[257], [100], [1]])).astype(jnp.int32)
  want, _ = att(x, key_mask=key_mask)
  att.implementation = "xla"
  got, probs = att(x, key_mask=key_mask)
  assert probs is None
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Asking for probabilities takes the einsum path whatever the implementation.
  y, probs = att(x, key_mask=key_mask, return_probs=True)
  np.testing.assert_allclose(y, want, rtol=1e-6)
  assert probs.shape == (3, 2, 257, 257)


def test_attention_config_reaches_every_layer(model):
  img, ids, mask = _inputs()
  fused_model = _tiny_model(attention="xla")
  impls = {n.implementation for _, n in nnx.iter_graph(fused_model)
           if isinstance(n, layers.Attention)}
  assert impls == {"xla"}
  np.testing.assert_allclose(fused_model.encode_text(ids, mask), model.encode_text(ids, mask),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fused_model.encode_image(img), model.encode_image(img),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="config.model.attention='flash'"):
    layers.set_implementations(fused_model, "flash")
  with pytest.raises(ValueError, match="config.model.dense_vjp='x'"):
    layers.set_implementations(fused_model, "xla", "x")
  c = config_lib.default_config()
  c.model.attention = "cudnn"
  with pytest.raises(ValueError, match="config.model.attention='cudnn': cuDNN attention "
                                       "needs model.dtype='bfloat16'"):
    config_lib.validate(c)


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)])
def test_custom_vjps_match_autodiff(shape):
  # layers.dense / layer_norm carry hand-written backwards (XLA:CPU speed, RESULTS.md
  # attempts 4 and 6): their gradients must equal autodiff of the plain formulas.
  ks = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(ks[0], shape)
  kernel, bias = jax.random.normal(ks[1], (5, 4)), jax.random.normal(ks[2], (4,))
  scale, shift = jax.random.normal(ks[3], (5,)), jax.random.normal(ks[4], (5,))
  cot = jax.random.normal(ks[0], shape[:-1] + (4,))

  def plain_ln(x, s, b):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * s + b

  for fast, plain, args in (
      (layers.dense, layers.dense_autodiff, (x, kernel, bias)),
      (lambda *a: layers.dense(layers.layer_norm(*a, 1e-6), kernel, bias),
       lambda *a: layers.dense_autodiff(plain_ln(*a), kernel, bias), (x, scale, shift))):
    loss = lambda f: lambda *a: jnp.sum(f(*a) * cot)
    np.testing.assert_allclose(fast(*args), plain(*args), rtol=1e-5, atol=1e-6)
    for g_fast, g_plain in zip(jax.grad(loss(fast), argnums=(0, 1, 2))(*args),
                               jax.grad(loss(plain), argnums=(0, 1, 2))(*args)):
      assert g_fast.shape == g_plain.shape
      np.testing.assert_allclose(g_fast, g_plain, rtol=1e-4, atol=1e-5)


def test_dense_vjp_config_reaches_every_dense_and_keeps_gradients(model):
  img, ids, mask = _inputs()
  plain = _tiny_model(dense_vjp="autodiff")
  assert {n.vjp for _, n in nnx.iter_graph(plain) if isinstance(n, layers.Dense)} == {
      "autodiff"}
  assert {n.vjp for _, n in nnx.iter_graph(model) if isinstance(n, layers.Dense)} == {
      "custom"}

  def grads(m):
    graphdef, state = nnx.split(m)

    def loss(state):
      mm = nnx.merge(graphdef, state)
      image = mm.encode_image(img)
      return jnp.sum(mm.fuse(mm.encode_text(ids, mask), mask, image)[0] ** 2)

    return jax.grad(loss)(state)

  got, want = nnx.to_pure_dict(grads(plain)), nnx.to_pure_dict(grads(model))
  flat_got, flat_want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(flat_got) == len(flat_want) > 50
  for a, b in zip(flat_got, flat_want):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


def test_mask_token_replaces_masked_patches(model):
  img, _, _ = _inputs()
  patch_mask = jnp.zeros((2, 16), bool).at[:, 5].set(True)
  # Pixels of a masked patch (row 1, col 1 of the 4x4 grid) must not matter.
  img2 = img.at[:, 16:32, 16:32].set(9.0)
  out1 = model.encode_image(img, patch_mask)
  out2 = model.encode_image(img2, patch_mask)
  np.testing.assert_allclose(out1, out2, rtol=1e-5, atol=1e-6)
  assert not np.allclose(model.encode_image(img), model.encode_image(img2))
  np.testing.assert_allclose(model.encode_image(img, jnp.zeros((2, 16), bool)),
                             model.encode_image(img), rtol=1e-6)


def test_patchify_layout():
  img = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
  p = vit.patchify(img, 2)
  assert p.shape == (2, 4, 12)
  # Patch 1 is row 0, columns 2..3; its vector is laid out (ph, pw, C).
  np.testing.assert_array_equal(p[0, 1], np.asarray(img[0, 0:2, 2:4]).reshape(-1))
  np.testing.assert_array_equal(p[1, 2], np.asarray(img[1, 2:4, 0:2]).reshape(-1))


def test_pos_embed_interpolation():
  table = jax.random.normal(jax.random.key(0), (1, 17, 8))
  same = vit.interpolate_pos_embed(table, 4)
  np.testing.assert_array_equal(same, table)
  big = vit.interpolate_pos_embed(table, 6)
  assert big.shape == (1, 37, 8)
  np.testing.assert_array_equal(big[:, 0], table[:, 0])
  const = jnp.concatenate([table[:, :1], jnp.full((1, 16, 8), 0.25)], 1)
  np.testing.assert_allclose(vit.interpolate_pos_embed(const, 6)[:, 1:], 0.25, rtol=1e-5)


def test_heads_and_temperature(model):
  img, ids, mask = _inputs()
  tokens = model.encode_image(img)
  text = model.encode_text(ids, mask)
  np.testing.assert_allclose(jnp.linalg.norm(model.image_feature(tokens), axis=-1), 1, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(model.text_feature(text), axis=-1), 1, rtol=1e-5)
  fused, _ = model.fuse(text, mask, tokens)
  assert model.itm_logits(fused).shape == (2, 2)
  logits = model.mlm_logits(fused)
  assert logits.shape == (2, 10, 100)
  # The MLM decoder is tied to the word embeddings.
  h = model.mlm_head.norm(layers.gelu(model.mlm_head.dense(fused)))
  np.testing.assert_allclose(
      logits, h @ model.embeddings.word[...].T + model.mlm_head.bias[...], rtol=1e-4, atol=1e-5)
  assert model.mim_decode(tokens, text, mask).shape == (2, 16, 16 * 16 * 3)
  assert float(model.temperature()) == pytest.approx(0.07)
  model.temp[...] = 5.0
  assert float(model.temperature()) == pytest.approx(0.5)
  model.temp[...] = 0.07


def test_bf16_and_remat_options():
  cfg = config_lib.model_config("tiny", vocab_size=100)
  cfg.text_dropout = 0.0
  img, ids, mask = _inputs()
  ref = VLP(cfg, rngs=nnx.Rngs(0))
  out = ref.fuse(ref.encode_text(ids, mask), mask, ref.encode_image(img))[0]
  cfg.remat = True
  rem = VLP(cfg, rngs=nnx.Rngs(0))
  out_r = rem.fuse(rem.encode_text(ids, mask), mask, rem.encode_image(img))[0]
  np.testing.assert_allclose(out_r, out, rtol=1e-5, atol=1e-6)
  cfg.remat = False
  cfg.dtype = "bfloat16"
  half = VLP(cfg, rngs=nnx.Rngs(0))
  assert half.vision.patch_embed.kernel[...].dtype == jnp.float32  # params stay fp32
  out_h = half.fuse(half.encode_text(ids, mask), mask, half.encode_image(img))[0]
  assert out_h.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out_h, np.float32), out, atol=0.1)


def test_every_param_has_logical_axes_and_fsdp_shards_embed():
  c = config_lib.default_config()
  c.mesh.data, c.mesh.fsdp = 1, 8
  mesh = sharding.make_mesh(c.mesh)
  abstract = nnx.eval_shape(lambda: VLP(c.model, mim_head="pixels", rngs=nnx.Rngs(0)))
  specs = sharding.param_specs(nnx.split(abstract)[1], c.mesh.axis_rules, mesh)
  assert specs["vision"]["block_0"]["attn"]["query"]["kernel"] == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  assert specs["embeddings"]["word"] == jax.sharding.PartitionSpec("tensor", "fsdp")
  # The 2-way ITM output cannot be split 8 ways: replicated, not an error.
  assert specs["itm_head"]["bias"] == jax.sharding.PartitionSpec(None)


def test_mesh_config_errors():
  c = config_lib.default_config()
  c.mesh.fsdp = 3
  with pytest.raises(ValueError, match="config.mesh"):
    sharding.make_mesh(c.mesh)


def test_base_preset_matches_albef_size():
  # ViT-B/16 (86M) + BERT-base (110M) + six new cross-attention blocks: ALBEF's ~210M.
  cfg = config_lib.model_config("base")
  abstract = nnx.eval_shape(lambda: VLP(cfg, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract))
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert 209e6 < total < 211e6, total
  assert params["vision"]["pos_embed"].shape == (1, 257, 768)
  assert params["fusion"]["layer_5"]["cross_attn"]["key"]["kernel"].shape == (768, 768)
