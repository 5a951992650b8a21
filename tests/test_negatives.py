"""Tests of syncmask_jax.negatives: false negatives, semi-hard rule, fallbacks, NaN safety."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from syncmask_jax import config_lib, negatives


def _texts(b: int, duplicates=()) -> jnp.ndarray:
  t = np.arange(b * 4).reshape(b, 4)
  for i, j in duplicates:
    t[j] = t[i]
  return jnp.asarray(t, jnp.int32)


def test_false_negative_mask():
  pids = jnp.array([0, 0, 1, 2])
  fn = negatives.false_negative_mask(pids, _texts(4, duplicates=[(2, 3)]))
  want = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(fn, want)


def test_albef_rule_excludes_only_the_pair_and_counts_false_negatives():
  # ALBEF's rule (exclude="self"): the other view of the product is allowed, and being
  # the most similar it is what semi-hard mining picks; the stats count it.
  pids = jnp.array([0, 0, 1, 2])
  texts = _texts(4, duplicates=[(0, 1)])
  np.testing.assert_array_equal(negatives.false_negative_mask(pids, texts, "self"),
                                np.eye(4, dtype=bool))
  sim = jnp.array([[0.9, 0.8, 0.1, 0.2], [0.8, 0.9, 0.2, 0.1], [0.1, 0.3, 0.9, 0.2],
                   [0.2, 0.1, 0.4, 0.9]])
  neg_txt, neg_img, stats = negatives.mine_negatives(jax.random.key(0), sim, pids, texts,
                                                     exclude="self")
  np.testing.assert_array_equal(neg_txt, [1, 0, 1, 2])
  np.testing.assert_array_equal(neg_img, [1, 0, 3, 0])
  assert float(stats["false_negative_rate"]) == pytest.approx(4 / 8)
  neg_txt, _, stats = negatives.mine_negatives(jax.random.key(0), sim, pids, texts)
  np.testing.assert_array_equal(neg_txt, [3, 2, 1, 2])
  assert float(stats["false_negative_rate"]) == 0.0
  with pytest.raises(ValueError, match="config.negatives.exclude='none'"):
    negatives.false_negative_mask(pids, texts, "none")


def test_semi_hard_picks_most_similar_valid_candidate():
  # Anchors 0 and 1 are the same product; 3 and 4 share a caption.
  pids = jnp.array([0, 0, 1, 2, 3])
  texts = _texts(5, duplicates=[(3, 4)])
  sim = jnp.array([
      [0.50, 0.90, 0.25, 0.35, 0.10],  # 1 same product (most similar) -> 3 (0.35 < 0.5)
      [0.95, 0.80, 0.70, 0.85, 0.20],  # 0 same product, 3 not semi-hard (0.85) -> 2
      [0.30, 0.20, 0.60, 0.65, 0.55],  # 3 above the positive -> 4 (0.55)
      [0.10, 0.20, 0.30, 0.40, 0.39],  # 4 duplicate caption of 3 -> 2 (0.30)
      [0.10, 0.35, 0.28, 0.45, 0.40],  # 3 duplicate caption -> 1 (0.35)
  ])
  neg_txt, neg_img, stats = negatives.mine_negatives(jax.random.key(0), sim, pids, texts)
  np.testing.assert_array_equal(neg_txt, [3, 2, 4, 2, 1])
  # Text anchors mine the columns of the same matrix with the same rule.
  np.testing.assert_array_equal(neg_img, [2, 4, 3, 0, 1])
  assert float(stats["fallback_rate"]) == 0.0
  assert float(stats["false_negative_rate"]) == 0.0
  assert float(stats["semi_hard_rate"]) == 1.0


def test_margin_is_respected():
  sim = jnp.array([[0.5, 0.45, 0.3], [0.1, 0.5, 0.0], [0.1, 0.0, 0.5]])
  pids, texts = jnp.arange(3), _texts(3)
  neg, _, _ = negatives.mine_negatives(jax.random.key(0), sim, pids, texts, margin=0.0)
  assert int(neg[0]) == 1
  neg, _, _ = negatives.mine_negatives(jax.random.key(0), sim, pids, texts, margin=0.1)
  assert int(neg[0]) == 2  # 0.45 is not below 0.5 - 0.1


def test_fallback_when_no_semi_hard_candidate():
  # Row 0's positive is the least similar of all: no semi-hard candidate.
  sim = jnp.array([[0.0, 0.9, 0.8, 0.7], [-0.1, 0.9, 0.0, 0.0], [0.1, 0.0, 0.9, 0.0],
                   [0.1, 0.0, 0.0, 0.9]])
  pids = jnp.array([0, 1, 0, 2])  # 2 is row 0's product; every column has a candidate
  seen = set()
  for seed in range(30):
    neg, _, stats = negatives.mine_negatives(jax.random.key(seed), sim, pids, _texts(4))
    seen.add(int(neg[0]))
    np.testing.assert_allclose(stats["fallback_rate"], 1 / 8)
    assert float(stats["false_negative_rate"]) == 0.0
  assert seen == {1, 3}  # uniform over the non-false-negatives


def test_all_one_product_is_forced_and_finite():
  b = 4
  sim = jnp.full((b, b), jnp.nan).at[0].set(1e4)  # even garbage sims give valid indices
  pids = jnp.zeros((b,), jnp.int32)
  for mode in config_lib.NEGATIVE_MODES:
    neg_t, neg_i, stats = jax.jit(functools.partial(negatives.mine_negatives, mode=mode))(
        jax.random.key(0), sim, pids, _texts(b))
    for idx in (np.asarray(neg_t), np.asarray(neg_i)):
      assert np.all((idx >= 0) & (idx < b)) and np.all(idx != np.arange(b))
    assert all(np.isfinite(float(v)) for v in stats.values())
    assert float(stats["forced_rate"]) == 1.0 and float(stats["false_negative_rate"]) == 1.0


@pytest.mark.parametrize("mode", config_lib.NEGATIVE_MODES)
def test_never_false_negative_on_random_batches(mode):
  rng = np.random.default_rng(0)
  fn_jit = jax.jit(functools.partial(negatives.mine_negatives, mode=mode))
  for seed in range(5):
    b = 12
    pids = jnp.asarray(rng.integers(0, 6, size=b))
    texts = jnp.asarray(rng.integers(0, 3, size=(b, 2)))  # many duplicate captions
    sim = jnp.asarray(rng.normal(size=(b, b)) * 1e4, jnp.float32)  # extreme logits
    fn = np.asarray(negatives.false_negative_mask(pids, texts))
    neg_t, neg_i, stats = fn_jit(jax.random.key(seed), sim, pids, texts)
    forced = ~(~fn).any(1)
    rows = np.arange(b)
    assert not np.any(fn[rows, neg_t] & ~forced)
    assert not np.any(fn.T[rows, neg_i] & ~forced)
    assert all(np.isfinite(float(v)) for v in stats.values())


def test_hard_mode_samples_softmax_over_non_positives():
  sim = jnp.log(jnp.array([[0.9, 0.1, 0.3, 0.6]]))  # positive on the diagonal, excluded
  sim = jnp.tile(sim, (4, 1))
  pids, texts = jnp.arange(4), _texts(4)
  keys = jax.random.split(jax.random.key(0), 4000)
  neg = jax.vmap(lambda k: negatives.mine_negatives(k, sim, pids, texts, mode="hard")[0][0])(keys)
  freq = np.bincount(np.asarray(neg), minlength=4) / 4000
  np.testing.assert_allclose(freq, [0.0, 0.1, 0.3, 0.6], atol=0.03)


def test_hard_mode_extreme_sims_never_nan():
  sim = jnp.array([[1e4, -1e4, 1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, 1e4]], jnp.float32)
  neg_t, neg_i, stats = jax.jit(functools.partial(negatives.mine_negatives, mode="hard"))(
      jax.random.key(0), sim, jnp.arange(3), _texts(3))
  assert int(neg_t[0]) == 2  # the only admissible entry with the overwhelming weight
  assert np.all(np.asarray(neg_t) != np.arange(3)) and np.all(np.asarray(neg_i) != np.arange(3))
  assert all(np.isfinite(float(v)) for v in stats.values())


def test_rejects_bad_mode():
  with pytest.raises(ValueError, match="config.negatives.mode"):
    negatives.mine_negatives(jax.random.key(0), jnp.zeros((2, 2)), jnp.arange(2), _texts(2),
                             mode="hardest")
