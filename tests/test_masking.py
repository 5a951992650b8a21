"""Tests of syncmask_jax.masking: the three strategies, selection, MLM corruption, stats."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from syncmask_jax import config_lib, masking

# Token layout of the constructed example: [CLS] a b c d [SEP] [PAD] [PAD].
MASKABLE = np.array([0, 1, 1, 1, 1, 0, 0, 0], bool)


def _constructed_attn() -> np.ndarray:
  """(T=8, N=8) word->patch attention with a known answer.

  s_img over maskable rows: p3 = 1.1 + 1/8, p6 = 1.3 + 1/8 are the top two; [CLS],
  [SEP] and [PAD] put all their mass on p0, which would win if they voted.
  Given {p3, p6}: s_txt(a) = 1.0, s_txt(b) = 0.5, s_txt(c) = 0.9, s_txt(d) = 0.25.
  """
  a = np.zeros((8, 8), np.float32)
  a[0, 0] = 1.0  # [CLS]
  a[1, 3], a[1, 6] = 0.6, 0.4  # a
  a[2, 3], a[2, 1] = 0.5, 0.5  # b
  a[3, 6], a[3, 0] = 0.9, 0.1  # c
  a[4, :] = 1.0 / 8  # d
  a[5:, 0] = 1.0  # [SEP], [PAD]
  return a


def _cfg(**kw) -> ml_collections.ConfigDict:
  """The default masking block (SyncMask, ratios 0.5 / 0.15, gumbel at tau 1) with `kw`."""
  c = config_lib.default_config().masking
  c.update(kw)
  return c


def _random_inputs(seed: int, b: int = 4, t: int = 12, n: int = 16, layers: int = 2,
                   heads: int = 2):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(layers, b, heads, t, 1 + n)) * 2
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  lengths = rng.integers(1, t - 1, size=b)  # words between [CLS] and [SEP]
  maskable = np.zeros((b, t), bool)
  for i, length in enumerate(lengths):
    maskable[i, 1:1 + length] = True
  return jnp.asarray(probs, jnp.float32), jnp.asarray(maskable)


# ---------------------------------------------------------------- aggregation


def test_aggregate_cross_attention_mean_and_max():
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(3, 2, 4, 5, 7)).astype(np.float32)  # L, B, H, T, 1+N
  out = masking.aggregate_cross_attention(jnp.asarray(probs), layers=(0, -1), head_reduce="mean")
  ref = ((probs[0] + probs[2]) / 2).mean(axis=1)[..., 1:]
  np.testing.assert_allclose(out, ref, rtol=1e-6)
  out = masking.aggregate_cross_attention(jnp.asarray(probs), layers=(1,), head_reduce="max")
  np.testing.assert_allclose(out, probs[1].max(axis=1)[..., 1:], rtol=1e-6)
  assert out.shape == (2, 5, 6)


def test_aggregate_cross_attention_rejects_bad_values():
  probs = jnp.ones((2, 1, 1, 3, 5))
  with pytest.raises(ValueError, match="config.masking.layers"):
    masking.aggregate_cross_attention(probs, layers=(2,))
  with pytest.raises(ValueError, match="config.masking.head_reduce"):
    masking.aggregate_cross_attention(probs, head_reduce="median")


# ---------------------------------------------------------------- select


def test_select_topk_exact_and_ties_by_lower_index():
  scores = jnp.array([[0.1, 0.9, 0.5, 0.9, 0.2, 0.9]])
  mask = masking.select(jax.random.key(0), scores, jnp.ones_like(scores, bool), 2, "topk")
  np.testing.assert_array_equal(mask[0], [0, 1, 0, 1, 0, 0])


def test_select_never_chooses_invalid_and_takes_all_valid_when_short():
  scores = jnp.array([[5.0, 4.0, 3.0, 2.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
  valid = jnp.array([[0, 1, 0, 1, 1], [0, 0, 0, 1, 0]], bool)
  for selection in ("topk", "gumbel"):
    mask = masking.select(jax.random.key(1), scores, valid, 3, selection)
    np.testing.assert_array_equal(mask, valid)  # row 0 exactly 3 valid, row 1 only one
    mask = masking.select(jax.random.key(1), scores, valid, 2, selection, random_fraction=0.5)
    assert not np.any(mask & ~valid)
    np.testing.assert_array_equal(mask.sum(-1), [2, 1])


def test_select_row_count():
  scores = jnp.tile(jnp.arange(6.0)[None], (3, 1))
  valid = jnp.ones((3, 6), bool)
  mask = masking.select(jax.random.key(0), scores, valid, 3, "topk",
                        row_count=jnp.array([0, 1, 3]))
  np.testing.assert_array_equal(mask, [[0] * 6, [0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 1, 1]])


def test_gumbel_low_tau_equals_topk():
  rng = np.random.default_rng(0)
  # Distinct scores 0.01 apart: at tau = 1e-4 the gaps are 100, far above Gumbel noise.
  scores = jnp.asarray(np.stack([rng.permutation(20) * 0.01 for _ in range(8)]), jnp.float32)
  valid = jnp.asarray(rng.uniform(size=(8, 20)) < 0.7)
  topk = masking.select(jax.random.key(0), scores, valid, 5, "topk")
  for seed in range(3):
    gumbel = masking.select(jax.random.key(seed), scores, valid, 5, "gumbel", tau=1e-4)
    np.testing.assert_array_equal(gumbel, topk)


def test_gumbel_samples_softmax_and_only_valid():
  # One pick per row from softmax(s / tau): the Gumbel-max trick's first draw.
  scores = jnp.tile(jnp.log(jnp.array([[0.6, 0.3, 0.1, 5.0]])), (20000, 1))
  valid = jnp.tile(jnp.array([[True, True, True, False]]), (20000, 1))
  mask = masking.select(jax.random.key(3), scores, valid, 1, "gumbel", tau=1.0)
  assert not np.any(mask[:, 3])
  np.testing.assert_array_equal(mask.sum(-1), 1)
  np.testing.assert_allclose(mask.mean(0)[:3], [0.6, 0.3, 0.1], atol=0.015)


def test_select_random_fraction_keeps_top_scored_part():
  scores = jnp.tile(jnp.arange(10.0)[None], (50, 1))
  valid = jnp.ones((50, 10), bool)
  mask = masking.select(jax.random.key(0), scores, valid, 4, "topk", random_fraction=0.5)
  np.testing.assert_array_equal(mask.sum(-1), 4)
  assert np.all(mask[:, 8:])  # round(4 * 0.5) = 2 by score: the top two
  assert mask[:, :8].any(0).sum() > 2  # the other two are spread uniformly


# ---------------------------------------------------------------- strategies


@pytest.mark.parametrize("score", ["mass", "log_mass"])
def test_syncmask_topk_on_constructed_attention(score):
  a = _constructed_attn()
  # Row 1: the same pair with patches permuted and one more word (e, attends to p4).
  perm = np.array([7, 5, 0, 2, 4, 1, 3, 6])  # new patch j holds old patch perm[j]
  a2 = a[:, perm].copy()
  maskable2 = MASKABLE.copy()
  a2[5], maskable2[5] = 0.0, True
  a2[5, np.where(perm == 4)[0][0]] = 1.0
  attn = jnp.asarray(np.stack([a, a2]))
  maskable = jnp.asarray(np.stack([MASKABLE, maskable2]))
  patch_mask, token_mask = masking.syncmask(jax.random.key(0), attn, maskable, ratio_img=0.25,
                                            ratio_txt=0.5, selection="topk", score=score)
  want0 = np.zeros(8, bool)
  want0[[3, 6]] = True
  np.testing.assert_array_equal(patch_mask[0], want0)
  np.testing.assert_array_equal(patch_mask[1], want0[perm])
  # Row 0: 4 maskable tokens -> 2 masked: a (1.0) and c (0.9).
  np.testing.assert_array_equal(token_mask[0], [0, 1, 0, 1, 0, 0, 0, 0])
  # Row 1: 5 maskable tokens -> round(2.5) = 3 (half up): a, c, b (0.5); e has 0.
  np.testing.assert_array_equal(token_mask[1], [0, 1, 1, 1, 0, 0, 0, 0])


def test_syncmask_counts_and_special_tokens_never_masked():
  probs, maskable = _random_inputs(0, b=6, t=12, n=16)
  attn = masking.aggregate_cross_attention(probs)
  fn = jax.jit(functools.partial(masking.syncmask, ratio_img=0.5, ratio_txt=0.3,
                                 selection="gumbel", tau=0.5, random_fraction=0.25))
  want_tokens = np.minimum(maskable.sum(-1), np.maximum(1, np.floor(0.3 * maskable.sum(-1) + 0.5)))
  for seed in range(4):
    patch_mask, token_mask = fn(jax.random.key(seed), attn, maskable)
    assert patch_mask.dtype == jnp.bool_ and token_mask.shape == maskable.shape
    np.testing.assert_array_equal(patch_mask.sum(-1), 8)
    np.testing.assert_array_equal(token_mask.sum(-1), want_tokens)
    assert not np.any(token_mask & ~maskable)


def test_token_scores_by_hand():
  # word 0 attends strongly to every patch, word 1 weakly to patch 0 alone; [CLS] is not
  # maskable. Patch 0 is masked.
  attn = jnp.asarray([[[0.4, 0.4, 0.1, 0.1], [0.05, 0.0, 0.0, 0.0], [0.3, 0.3, 0.2, 0.2]]])
  maskable = jnp.asarray([[True, True, False]])
  patch = jnp.asarray([[True, False, False, False]])
  score = functools.partial(masking.token_score, attn, maskable, patch)
  np.testing.assert_allclose(score("mass"), [[0.4, 0.05, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(score("share"), [[0.4, 1.0, 0.0]], rtol=1e-6)
  entropy = -(2 * 0.4 * np.log(0.4) + 2 * 0.1 * np.log(0.1))  # word 0's normalised map
  np.testing.assert_allclose(score("focus"), [[0.4 * (1 - entropy / np.log(4)), 1.0, 0.0]],
                             rtol=1e-5)
  # SyncMask's token mask follows the score: one word of two, patches by top-k.
  cfg = config_lib.default_config().masking
  cfg.selection, cfg.ratio_img, cfg.ratio_txt = "topk", 0.25, 0.5
  for kind, word in (("mass", 0), ("share", 1), ("focus", 1)):
    cfg.token_score = kind
    probs = jnp.pad(attn, ((0, 0), (0, 0), (1, 0)))[None, :, None]  # + [CLS] column
    _, token = masking._method_masks(jax.random.key(0), cfg, probs, maskable, 4, None)  # pylint: disable=protected-access
    assert token[0].tolist() == [word == 0, word == 1, False], kind


def test_token_counts_rule():
  maskable = jnp.asarray(np.arange(41)[:, None] > np.arange(40)[None, :])  # 0..40 valid
  counts = np.asarray(masking.token_counts(0.15, maskable))
  n = np.arange(41)
  np.testing.assert_array_equal(counts, np.minimum(n, np.maximum(1, np.floor(0.15 * n + 0.5))))
  assert counts.max() <= masking.static_token_count(0.15, 40) == 6
  np.testing.assert_array_equal(masking.token_counts(0.0, maskable), 0)


def test_text_guided_matches_syncmask_patches_and_masks_no_token():
  probs, maskable = _random_inputs(1)
  attn = masking.aggregate_cross_attention(probs)
  key = jax.random.key(0)
  pm_sync, _ = masking.syncmask(key, attn, maskable, 0.5, 0.15, "topk")
  pm, tm = masking.text_guided(key, attn, maskable, 0.5, "topk")
  np.testing.assert_array_equal(pm, pm_sync)
  assert not np.any(tm)


def test_random_masks_counts_and_validity():
  _, maskable = _random_inputs(2, b=8, t=12)
  patch_valid = jnp.ones((8, 16), bool).at[0, :10].set(False)
  pm, tm = masking.random_masks(jax.random.key(0), patch_valid, maskable, 0.5, 0.15)
  np.testing.assert_array_equal(pm.sum(-1), [6] + [8] * 7)  # row 0: only 6 valid
  assert not np.any(pm & ~patch_valid) and not np.any(tm & ~maskable)
  np.testing.assert_array_equal(tm.sum(-1), masking.token_counts(0.15, maskable))
  pm, _ = masking.random_masks(jax.random.key(1), 16, maskable, 0.25, 0.15)
  np.testing.assert_array_equal(pm.sum(-1), 4)


@pytest.mark.parametrize("strategy", ["random", "syncmask", "text_guided"])
def test_masks_from_config_under_jit(strategy):
  probs, maskable = _random_inputs(3)
  cfg = _cfg(strategy=strategy, layers=(0, 1), head_reduce="max")
  fn = jax.jit(lambda k, p, m: masking.masks_from_config(k, cfg, p, m, 16))
  pm, tm = fn(jax.random.key(0), probs, maskable)
  np.testing.assert_array_equal(pm.sum(-1), 8)
  assert not np.any(tm & ~maskable)
  if strategy == "text_guided":
    assert not np.any(tm)
  else:
    np.testing.assert_array_equal(tm.sum(-1), masking.token_counts(0.15, maskable))


@pytest.mark.parametrize("field,value", [("strategy", "blocks"), ("selection", "nucleus"),
                                         ("head_reduce", "sum"), ("ratio_img", 1.5),
                                         ("ratio_txt", -0.1), ("tau", 0.0),
                                         ("random_fraction", 2.0), ("layers", ()),
                                         ("token_score", "peak")])
def test_masks_from_config_rejects_bad_values(field, value):
  probs, maskable = _random_inputs(4)
  with pytest.raises(ValueError, match=f"config.masking.{field}"):
    masking.masks_from_config(jax.random.key(0), _cfg(**{field: value}), probs, maskable, 16)


# ---------------------------------------------------------------- MLM corruption


def test_mlm_corrupt_80_10_10():
  vocab, mask_id, first = 5000, 103, 999
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(first, vocab, size=(256, 64)), jnp.int32)
  token_mask = jnp.asarray(rng.uniform(size=ids.shape) < 0.5)
  fn = jax.jit(functools.partial(masking.mlm_corrupt, vocab_size=vocab, mask_id=mask_id,
                                 min_random_id=first))
  out, labels, weights = fn(jax.random.key(0), ids, token_mask)
  out, labels, ids, m = map(np.asarray, (out, labels, ids, token_mask))
  np.testing.assert_array_equal(out[~m], ids[~m])
  np.testing.assert_array_equal(labels, np.where(m, ids, -100))
  np.testing.assert_array_equal(weights, m.astype(np.float32))
  n = m.sum()
  masked = (out == mask_id) & m
  kept = (out == ids) & m
  replaced = m & ~masked & ~kept
  # ~8k masked positions: binomial std of the 10% shares is ~0.003.
  assert abs(masked.sum() / n - 0.8) < 0.015
  assert abs(kept.sum() / n - 0.1) < 0.012
  assert abs(replaced.sum() / n - 0.1) < 0.012
  assert np.all(out[replaced] >= first) and np.all(out[replaced] < vocab)


def test_mlm_corrupt_never_special_random_ids():
  ids = jnp.full((64, 64), 500, jnp.int32)
  out, _, _ = masking.mlm_corrupt(jax.random.key(1), ids, jnp.ones(ids.shape, bool), 1000, 3, 5)
  out = np.asarray(out)
  assert np.all((out == 3) | (out >= 5))


# ---------------------------------------------------------------- diagnostics


def test_mask_stats_hand_computed():
  a = _constructed_attn()
  patch_mask = np.zeros(8, bool)
  patch_mask[[3, 6]] = True
  token_mask = np.zeros(8, bool)
  token_mask[[1, 3]] = True  # a, c
  stats = masking.mask_stats(jnp.asarray(a[None]), jnp.asarray(patch_mask[None]),
                             jnp.asarray(token_mask[None]), jnp.asarray(MASKABLE[None]))
  # Maskable rows a, b, c, d each carry mass 1: total 4; on p3/p6: 1.0+0.5+0.9+0.25.
  np.testing.assert_allclose(stats["patch_attn_share"], 2.65 / 4, rtol=1e-6)
  np.testing.assert_allclose(stats["token_attn_share"], 2 / 4, rtol=1e-6)
  np.testing.assert_allclose(stats["sync_attn_share"], 1.9 / 2, rtol=1e-6)
  empty = masking.mask_stats(jnp.zeros((1, 8, 8)), jnp.zeros((1, 8), bool),
                             jnp.zeros((1, 8), bool))
  assert all(float(v) == 0.0 for v in empty.values())


def test_mask_precision_pooled_and_safe():
  pm = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
  gt_p = jnp.array([[1, 0, 1, 0], [1, 1, 1, 1]], bool)
  tm = jnp.zeros((2, 3), bool)
  out = jax.jit(masking.mask_precision)(pm, tm, gt_p, jnp.ones((2, 3), bool))
  np.testing.assert_allclose(out["patch_precision"], 2 / 3)  # pooled, not mean(1/2, 1)
  assert float(out["token_precision"]) == 0.0


# ---------------------------------------------------------------- mask sources


def test_attention_centered_discounts_what_every_word_attends_to():
  # Every word puts 0.5 on patch 0 (a sink) and 0.5 on a patch of its own; [CLS] sits
  # on patch 7. Raw attention ranks the sink first; centred, each word's own patch.
  attn = np.zeros((1, 5, 8), np.float32)
  attn[0, 0, 7] = 1.0
  for t, own in zip((1, 2, 3), (2, 4, 5)):
    attn[0, t, 0], attn[0, t, own] = 0.5, 0.5
  maskable = jnp.asarray([[False, True, True, True, False]])
  probs = jnp.asarray(np.concatenate([np.zeros((1, 5, 1)), attn], -1))[None, :, None]
  cfg = _cfg(selection="topk", ratio_img=3 / 8)
  raw = masking.word_patch_map(_cfg(source="attention"), probs, maskable)
  centred = masking.word_patch_map(_cfg(source="attention_centered"), probs, maskable)
  np.testing.assert_allclose(raw, attn)
  np.testing.assert_allclose(centred[0, 1], [0, 0, 1 / 3, 0, 0, 0, 0, 0], atol=1e-6)
  for source, chosen in (("attention", {0, 2, 4}), ("attention_centered", {2, 4, 5})):
    cfg.source = source
    pm, _ = masking.masks_from_config(jax.random.key(0), cfg, probs, maskable, 8)
    assert set(np.flatnonzero(pm[0])) == chosen


def test_gradcam_masks_the_patch_the_itm_logit_reads():
  """Image tokens are zero except one patch per example, and the fusion value biases are
  zero (their init), so the ITM logit depends on no other patch's attention: Grad-CAM is
  zero elsewhere and SyncMask with source=gradcam masks exactly that patch."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from syncmask_jax.models.vlp import VLP  # pylint: disable=g-import-not-at-top
  cfg = config_lib.model_config("tiny", vocab_size=50)
  cfg.update(fusion_layers=2, text_heads=4, text_dropout=0.0)
  model = VLP(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  b, t, n = 4, 9, model.num_patches
  carrier = np.array([3, 7, 1, 12])
  image = np.zeros((b, 1 + n, cfg.vision_width), np.float32)
  image[np.arange(b), 1 + carrier] = rng.normal(size=(b, cfg.vision_width)) * 3
  ids = jnp.asarray(rng.integers(5, 50, (b, t)), jnp.int32)
  mask = jnp.ones((b, t), jnp.int32)
  text = model.encode_text(ids, mask)
  cams, probs = jax.jit(model.itm_gradcam)(text, mask, jnp.asarray(image))
  _, probs_plain = model.fuse(text, mask, jnp.asarray(image))
  np.testing.assert_allclose(probs, probs_plain, rtol=1e-5, atol=1e-6)
  assert cams.shape == probs.shape == (2, b, 4, t, 1 + n)
  cams = np.asarray(cams)
  assert np.all(cams >= 0)
  # The last layer: the logit reads only [CLS], so no word has a gradient.
  assert np.all(cams[1, :, :, 1:] == 0) and np.any(cams[1, :, :, 0] > 0)
  others = np.ones((b, 1 + n), bool)
  others[np.arange(b), 1 + carrier] = False
  assert np.all(cams[0].transpose(0, 2, 1, 3)[others[:, None, None].repeat(t, 1).repeat(
      4, 2)] == 0)
  maskable = jnp.ones((b, t), bool).at[:, 0].set(False)
  c = _cfg(source="gradcam", layers=(0,), selection="topk", ratio_img=1 / n)
  pm, tm = masking.masks_from_config(jax.random.key(0), c, probs, maskable, n,
                                     jnp.asarray(cams))
  np.testing.assert_array_equal(np.argmax(pm, -1), carrier)
  assert np.all(pm.sum(-1) == 1) and not np.any(tm & ~maskable)
  with pytest.raises(ValueError, match="last fusion layer's Grad-CAM is zero"):
    masking.masks_from_config(jax.random.key(0), _cfg(source="gradcam"), probs, maskable, n,
                              jnp.asarray(cams))
  with pytest.raises(ValueError, match="needs the Grad-CAM maps"):
    masking.masks_from_config(jax.random.key(0), c, probs, maskable, n)


def test_warmup_gives_random_masks_then_the_method_under_jit():
  probs, maskable = _random_inputs(5)
  cfg = _cfg(selection="topk", warmup_steps=10)
  fn = jax.jit(lambda step: masking.masks_from_config(jax.random.key(3), cfg, probs, maskable,
                                                      16, step=step))
  rand = masking.random_masks(jax.random.key(3), 16, maskable, 0.5, 0.15)
  method = masking.masks_from_config(jax.random.key(3), _cfg(selection="topk"), probs,
                                     maskable, 16)
  assert not np.array_equal(rand[0], method[0])
  for step, want in ((0, rand), (9, rand), (10, method), (500, method)):
    for got, expected in zip(fn(step), want):
      np.testing.assert_array_equal(got, expected)
  with pytest.raises(ValueError, match="config.masking.warmup_steps"):
    masking.masks_from_config(jax.random.key(0), _cfg(warmup_steps=-1), probs, maskable, 16)
  with pytest.raises(ValueError, match="config.masking.source"):
    masking.masks_from_config(jax.random.key(0), _cfg(source="saliency"), probs, maskable, 16)
