"""Tests of syncmask_jax.grounding and the per-word SynthFashion ground truth it reads."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from syncmask_jax import grounding
from syncmask_jax.data import synthfashion as sf
from syncmask_jax.data import transforms


def _ratios(sums):
  return {k: float(v) for k, v in grounding.batch_ratios(sums).items()}


def test_map_measures_match_a_hand_computation():
  # Tokens: [body word, detail-3 word, unshowable word, function word, [PAD]];
  # patches: background, body, detail 3, body.
  token_part = jnp.array([[1, 3, 0, -1, -1]])
  maskable = jnp.array([[True, True, True, True, False]])
  patch_part = jnp.array([[0, 1, 3, 1]])
  a = jnp.array([[[0.0, 0.6, 0.2, 0.2],    # points at the body; garment share 1
                  [0.1, 0.3, 0.2, 0.0],    # points at the body, not its detail: a miss
                  [0.25, 0.25, 0.25, 0.25],  # uniform: ties point at patch 0
                  [0.0, 0.0, 0.0, 0.0],    # no mass: points nowhere, uniform entropy
                  [9.0, 0.0, 0.0, 0.0]]])  # padding never counts
  r = _ratios(grounding.map_sums(a, token_part, maskable, patch_part))
  entropy = lambda p: float(-np.sum([x * np.log(x) for x in p if x > 0]))
  assert r["visible/pointing"] == pytest.approx(0.5)
  assert r["visible/own_share"] == pytest.approx((0.6 + 0.2 + 0.2 + 0.2 / 0.6) / 2)
  assert r["visible/garment_share"] == pytest.approx((1.0 + 0.5 / 0.6) / 2)
  assert r["visible/entropy"] == pytest.approx(
      (entropy([0.6, 0.2, 0.2]) + entropy([1 / 6, 0.5, 1 / 3])) / 2, rel=1e-5)
  assert r["invisible/pointing"] == 0.0 and r["invisible/garment_share"] == pytest.approx(0.75)
  assert r["function/pointing"] == 0.0 and r["function/garment_share"] == 0.0
  assert r["function/entropy"] == pytest.approx(np.log(4), rel=1e-6)
  assert "invisible/own_share" not in r and "function/own_share" not in r


def test_auc_matches_a_brute_force_count_with_ties():
  rng = np.random.default_rng(0)
  s_img = rng.integers(0, 4, (5, 9)).astype(np.float32)  # many ties
  gt_patch = rng.random((5, 9)) < 0.4
  gt_patch[0] = True  # no negatives: row 0 has no AUC
  s_txt = rng.random((5, 7)).astype(np.float32)
  maskable = rng.random((5, 7)) < 0.8
  gt_token = rng.random((5, 7)) < 0.5
  sums = grounding.score_sums(jnp.asarray(s_img), jnp.asarray(s_txt), jnp.asarray(gt_patch),
                              jnp.asarray(gt_token), jnp.asarray(maskable))

  def brute(scores, pos, valid):
    aucs = []
    for s, p, v in zip(scores, pos, valid):
      pairs = [(a, b) for a, b in itertools.product(np.flatnonzero(p & v),
                                                    np.flatnonzero(~p & v))]
      if pairs:
        aucs.append(np.mean([1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0
                             for a, b in pairs]))
    return np.mean(aucs), len(aucs)

  r = _ratios(sums)
  auc, n = brute(s_img, gt_patch, np.ones_like(gt_patch))
  assert r["auc_patch"] == pytest.approx(auc, rel=1e-6) and float(
      jnp.sum(sums["auc_patch_count"])) == n == 4
  auc, n = brute(s_txt, gt_token, maskable)
  assert r["auc_token"] == pytest.approx(auc, rel=1e-6)


def test_mask_sums_split_the_token_mask_by_word_class():
  token_part = jnp.array([[1, 4, 0, -1, -1, 2]])
  maskable = jnp.array([[True, True, True, True, False, True]])
  token_mask = jnp.array([[True, False, True, True, False, True]])
  patch_mask = jnp.array([[True, True, False]])
  r = _ratios(grounding.mask_sums(patch_mask, token_mask, jnp.array([[True, False, True]]),
                                  token_part, maskable))
  assert r["patch_precision"] == 0.5
  assert (r["token_share_visible"], r["token_share_invisible"],
          r["token_share_function"]) == (0.5, 0.25, 0.25)


def test_token_parts_name_what_each_word_shows():
  ds = sf.SynthFashion("val", num_products=30, seed=0, image_size=64, patch_size=8)

  class Words:  # whitespace/punctuation tokenizer with character offsets
    vocab_size = 10

    def encode(self, texts, length):
      import re  # pylint: disable=g-import-not-at-top
      spans = [(m.start(), m.end()) for m in re.finditer(r"[\w'-]+|[^\w\s]", texts[0])]
      spans = [(0, 0)] + spans[:length - 2] + [(0, 0)]
      pad = length - len(spans)
      special = [1] + [0] * (len(spans) - 2) + [1] + [1] * pad
      return dict(ids=[[5] * length], mask=[[1] * len(spans) + [0] * pad],
                  offsets=[spans + [(0, 0)] * pad], special=[special])

  t = transforms.ExampleTransform(Words(), transforms.TransformConfig(
      image_size=64, max_text_len=64, mean=(0, 0, 0), std=(1, 1, 1), train=False,
      geometric_aug=False, two_views=False, crop_scale=(0.5, 1.0), flip=False,
      max_answer_len=0))
  seen_detail = seen_hidden_detail = False
  for i in range(len(ds)):
    r = ds[i]
    out = t(r)
    part, visible = out["gt_token_part"], out["gt_token_visible"]
    np.testing.assert_array_equal(part >= 1, visible)
    np.testing.assert_array_equal(out["gt_patch_part"], r["gt_patch_part"])
    p = ds.product(ds.locate(i)[0])
    offsets = t.tokenizer.encode([r["text"]], 64)["offsets"][0]
    by_span = {tuple(o): int(x) for o, x in zip(offsets, part)}
    for w in p.words:
      got = by_span[(w.start, w.end)] if (w.start, w.end) in by_span else None
      if got is None:
        continue  # a multi-token word ("hooded sweatshirt"): checked by the rule above
      if w.detail >= 0:
        d = p.details[w.detail]
        assert got == (2 + d.kind if d.side == int(r["view"]) else 0)
        seen_detail |= d.side == int(r["view"])
        seen_hidden_detail |= d.side != int(r["view"])
        if d.side == int(r["view"]):
          assert np.any(r["gt_patch_part"] == got)  # its patches are on the grid
      else:
        assert got == (1 if w.role in ("garment", "colour", "pattern") else 0)
    for (s, e), x in by_span.items():
      if r["text"][s:e].lower() in ("with", "and", "a", "."):
        assert x == -1
  assert seen_detail and seen_hidden_detail
