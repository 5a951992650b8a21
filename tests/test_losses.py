"""Tests of syncmask_jax.losses against hand computations on toy batches."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from syncmask_jax import losses

# ---------------------------------------------------------------- ITC toy batch
# B = 2 anchors, bank M = 4 (2 batch rows + 2 queue slots); slot 2 is the same product
# as anchor 0 (a second positive), slot 3 is an unfilled queue slot that carries the
# same product id as anchor 0 too and must not count.
IMG = np.array([[1.0, 0.0], [0.0, 1.0]])
TXT = np.array([[0.6, 0.8], [0.8, -0.6]])
TXT_BANK = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
IMG_BANK = np.array([[0.6, 0.8], [0.8, -0.6], [1.0, 0.0], [0.0, -1.0]])
PID = np.array([7, 8])
PID_BANK = np.array([7, 8, 7, 7])
VALID = np.array([True, True, True, False])
TEMP = 0.5


def _itc_reference(alpha: float) -> float:
  """Row by row, over the valid slots only, as ALBEF's loss reads."""
  def direction(query, query_m, bank):
    total = 0.0
    for i in range(2):
      cols = [j for j in range(4) if VALID[j]]
      logits = np.array([query[i] @ bank[j] / TEMP for j in cols])
      logits_m = np.array([query_m[i] @ bank[j] / TEMP for j in cols])
      logp = logits - np.log(np.sum(np.exp(logits)))
      soft = np.exp(logits_m) / np.sum(np.exp(logits_m))
      hard = np.array([float(PID[i] == PID_BANK[j]) for j in cols])
      hard /= hard.sum()
      total += -np.sum((alpha * soft + (1 - alpha) * hard) * logp)
    return total / 2
  return (direction(IMG, IMG_BANK[:2], TXT_BANK) + direction(TXT, TXT_BANK[:2], IMG_BANK)) / 2


def _itc(alpha, **kw):
  args = dict(image_feat=jnp.asarray(IMG), text_feat=jnp.asarray(TXT),
              image_bank=jnp.asarray(IMG_BANK), text_bank=jnp.asarray(TXT_BANK),
              pid=jnp.asarray(PID), pid_bank=jnp.asarray(PID_BANK), temp=TEMP, alpha=alpha,
              bank_valid=jnp.asarray(VALID))
  args.update(kw)
  return losses.itc_loss(**args)


def test_itc_hard_targets_closed_form():
  loss, aux = _itc(0.0)
  # i2t row 0: sims/temp over valid slots (2, 0, 1.2), positives slots 0 and 2 (1/2 each).
  i2t0 = math.log(math.exp(2) + 1 + math.exp(1.2)) - 0.5 * (2 + 1.2)
  # i2t row 1: (0, 2, 1.6), one positive (slot 1).
  i2t1 = math.log(1 + math.exp(2) + math.exp(1.6)) - 2
  np.testing.assert_allclose(aux["loss_i2t"], (i2t0 + i2t1) / 2, rtol=1e-6)
  np.testing.assert_allclose(loss, _itc_reference(0.0), rtol=1e-6)
  assert aux["sim_i2t"].shape == (2, 4)


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_itc_distillation_matches_reference(alpha):
  loss, _ = jax.jit(_itc)(alpha)
  np.testing.assert_allclose(loss, _itc_reference(alpha), rtol=1e-6)


def test_itc_invalid_slot_is_ignored_and_gradients_finite():
  # Whatever an unfilled slot holds (here garbage at 1e6) must not change the loss.
  bank = jnp.asarray(TXT_BANK).at[3].set(1e6)
  loss, _ = _itc(0.4, text_bank=bank)
  np.testing.assert_allclose(loss, _itc_reference(0.4), rtol=1e-6)

  def f(img, txt, temp, text_bank):
    return _itc(0.4, image_feat=img, text_feat=txt, temp=temp, text_bank=text_bank)[0]
  grads = jax.grad(f, argnums=(0, 1, 2, 3))(jnp.asarray(IMG), jnp.asarray(TXT),
                                             jnp.asarray(TEMP), bank)
  assert all(np.all(np.isfinite(g)) for g in grads)
  assert float(grads[2]) != 0.0  # the temperature learns through the online sims
  assert not np.any(grads[3])  # the bank is the momentum model's: no gradient


def test_itc_defaults_take_momentum_features_from_the_bank():
  a, _ = _itc(0.4)
  b, _ = _itc(0.4, image_feat_m=jnp.asarray(IMG_BANK[:2]), text_feat_m=jnp.asarray(TXT_BANK[:2]))
  np.testing.assert_allclose(a, b)


# ---------------------------------------------------------------- ITM / MLM


def test_itm_loss_and_labels():
  np.testing.assert_array_equal(losses.itm_labels(2), [1, 1, 0, 0, 0, 0])
  logits = jnp.array([[0.0, math.log(3)], [math.log(3), 0.0], [0.0, 0.0]])
  want = (2 * -math.log(0.75) + math.log(2)) / 3
  np.testing.assert_allclose(jax.jit(losses.itm_loss)(logits, jnp.array([1, 0, 0])), want,
                             rtol=1e-6)


def test_mlm_loss_hand_computed():
  logits = jnp.array([[[0.0, math.log(3), 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, math.log(2)]]])
  labels = jnp.array([[1, -100, 2]])
  ce = [-math.log(3 / 5), -math.log(2 / 4)]
  np.testing.assert_allclose(losses.mlm_loss(logits, labels), np.mean(ce), rtol=1e-6)
  soft = jnp.array([[[1.0, 0.0, 0.0], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]]])
  distill = [-math.log(1 / 5), -0.5 * (math.log(1 / 4) + math.log(1 / 4))]
  want = np.mean([0.6 * c + 0.4 * d for c, d in zip(ce, distill)])
  out = jax.jit(losses.mlm_loss)(logits, labels, None, soft, 0.4)
  np.testing.assert_allclose(out, want, rtol=1e-6)
  # Explicit weights agree with the -100 convention.
  np.testing.assert_allclose(losses.mlm_loss(logits, labels, labels >= 0), np.mean(ce),
                             rtol=1e-6)


def test_mlm_loss_no_masked_token_is_zero_with_finite_grad():
  logits = jnp.zeros((2, 3, 5))
  labels = jnp.full((2, 3), -100)
  loss, grad = jax.value_and_grad(losses.mlm_loss)(logits, labels)
  assert float(loss) == 0.0 and np.all(np.isfinite(grad))


# ---------------------------------------------------------------- MIM


def test_patchify_layout():
  images = jnp.arange(1 * 4 * 6 * 2, dtype=jnp.float32).reshape(1, 4, 6, 2)
  p = losses.patchify(images, 2)
  assert p.shape == (1, 6, 8)
  np.testing.assert_array_equal(p[0, 1], images[0, 0:2, 2:4, :].reshape(-1))  # row 0, col 1
  np.testing.assert_array_equal(p[0, 3], images[0, 2:4, 0:2, :].reshape(-1))  # row 1, col 0


def test_mim_pixel_loss_reference_and_masking():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, 4, 4, 3)).astype(np.float32)
  pred = rng.normal(size=(2, 4, 12)).astype(np.float32)
  mask = np.array([[1, 0, 0, 1], [0, 0, 1, 0]], bool)
  target = np.stack([images[:, r:r + 2, c:c + 2].reshape(2, 12) for r in (0, 2) for c in (0, 2)],
                    axis=1)
  norm = (target - target.mean(-1, keepdims=True)) / np.sqrt(
      target.var(-1, ddof=1, keepdims=True) + 1e-6)
  for norm_pix, t in ((True, norm), (False, target)):
    fn = jax.jit(functools.partial(losses.mim_pixel_loss, patch=2, norm_pix=norm_pix))
    want = ((pred - t) ** 2).mean(-1)[mask].mean()
    np.testing.assert_allclose(fn(pred, images, mask), want, rtol=1e-5)
  fn = jax.jit(functools.partial(losses.mim_pixel_loss, patch=2))
  moved = pred.copy()
  moved[~mask] += 100.0  # predictions of visible patches do not count
  np.testing.assert_allclose(fn(moved, images, mask), fn(pred, images, mask), rtol=1e-6)
  assert float(fn(pred, images, np.zeros_like(mask))) == 0.0


def test_mim_feature_loss_is_two_minus_two_cosine():
  pred = jnp.array([[[3.0, 4.0], [1.0, 1.0]]])
  target = jnp.array([[[2.0, 0.0], [5.0, 5.0]]])
  mask = jnp.array([[True, False]])
  np.testing.assert_allclose(losses.mim_feature_loss(pred, target, mask), 2 - 2 * 0.6, rtol=1e-6)
  np.testing.assert_allclose(losses.mim_feature_loss(pred, target, ~mask), 0.0, atol=1e-6)


# ---------------------------------------------------------------- SemMIM


def test_soft_cross_entropy_and_sharpen_center():
  ce = losses.soft_cross_entropy(jnp.array([[0.0, math.log(2)]]), jnp.array([[0.5, 0.5]]))
  np.testing.assert_allclose(ce, [-0.5 * (math.log(1 / 3) + math.log(2 / 3))], rtol=1e-6)
  probs = losses.sharpen_and_center(jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0]), 0.5)
  np.testing.assert_allclose(probs, [1 / (1 + math.e ** 4), math.e ** 4 / (1 + math.e ** 4)],
                             rtol=1e-6)
  center = losses.update_center(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 0.9)
  np.testing.assert_allclose(center, [0.9, 0.1], rtol=1e-6)


def test_prototype_ce_weights_and_agreement_symmetry():
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
  t = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32))
  w = jnp.array([[1, 0, 0], [0, 0, 1]], bool)
  per = -np.sum(np.asarray(t) * np.asarray(jax.nn.log_softmax(s / 0.1)), -1)
  np.testing.assert_allclose(losses.prototype_ce(s, t, 0.1, w), (per[0, 0] + per[1, 2]) / 2,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.prototype_ce(s, t, 0.1, jnp.zeros_like(w)), 0.0)
  s2, t2 = s[::-1], t[::-1]
  a = jax.jit(losses.agreement_loss)(s, s2, t, t2, 0.1)
  want = 0.5 * (losses.prototype_ce(s, t2, 0.1) + losses.prototype_ce(s2, t, 0.1))
  np.testing.assert_allclose(a, want, rtol=1e-6)
  np.testing.assert_allclose(losses.agreement_loss(s2, s, t2, t, 0.1), a, rtol=1e-6)


def test_prototype_diagnostics():
  k = 4
  uniform = jnp.full((6, k), 1 / k)
  np.testing.assert_allclose(losses.prototype_usage_entropy(uniform), math.log(k), rtol=1e-6)
  np.testing.assert_allclose(losses.mean_target_entropy(uniform), math.log(k), rtol=1e-6)
  onehot = jax.nn.one_hot(jnp.array([0, 0, 1, 1]), k)
  np.testing.assert_allclose(losses.mean_target_entropy(onehot), 0.0, atol=1e-7)
  np.testing.assert_allclose(losses.prototype_usage_entropy(onehot), math.log(2), rtol=1e-6)
  np.testing.assert_allclose(losses.prototype_usage_share(onehot), 0.5)
  # Weights drop the samples that use prototype 1.
  stats = jax.jit(losses.prototype_stats)(onehot, jnp.array([1, 1, 0, 0]))
  np.testing.assert_allclose(stats["usage_share"], 0.25)
  np.testing.assert_allclose(stats["usage_entropy"], 0.0, atol=1e-7)
