"""The losses of the ALBEF core, SyncMask and SemMIM, each a pure function found by name.

* `itc_loss` — ALBEF image-text contrastive loss against momentum features of the
  batch and the queue, momentum distillation, product-aware hard targets;
* `itm_loss`, `itm_labels` — image-text matching on B positives and 2B negatives;
* `mlm_loss` — masked language modeling with optional distillation (ALBEF);
* `patchify`, `mim_pixel_loss`, `mim_feature_loss` — SyncMask MIM (MAE-style targets);
* `soft_cross_entropy`, `sharpen_and_center`, `update_center`, `prototype_ce`,
  `agreement_loss` and the prototype diagnostics — SemMIM.

All losses compute in float32 (bfloat16 logits are upcast) and reduce to a scalar
mean over the entries that count; a mean over zero entries is 0, never NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from syncmask_jax.models.vit import patchify  # the patch layout of the ViT input

Array = jax.Array

# Finite logit for empty queue slots: exp(-1e9 - max) is exactly 0, and unlike -inf it
# never meets another infinity (-inf - -inf = NaN) in log_softmax or in 0 * logit.
_EXCLUDED = -1e9


def _weighted_mean(values: Array, weights: Array) -> Array:
  weights = weights.astype(jnp.float32)
  total = jnp.sum(weights)
  return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0)


def soft_cross_entropy(logits: Array, target_probs: Array) -> Array:
  """-sum_k p_k log softmax(logits)_k over the last axis, unreduced (leading shape)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(target_probs.astype(jnp.float32) * logp, axis=-1)


# ---------------------------------------------------------------------------- ITC


def itc_loss(image_feat: Array, text_feat: Array, image_bank: Array, text_bank: Array,
             pid: Array, pid_bank: Array, temp: Array | float, alpha: Array | float = 0.4,
             bank_valid: Array | None = None, image_feat_m: Array | None = None,
             text_feat_m: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """ALBEF ITC with momentum distillation and product-aware hard targets.

  Args:
    image_feat, text_feat: (B, D) L2-normalised online projections.
    image_bank, text_bank: (M, D) L2-normalised momentum features: the momentum
      features of this batch in rows [0, B), then the queue.
    pid, pid_bank: (B,) and (M,) product ids; every bank entry of the same product is
      a positive, the hard target normalised per row (FashionSAP; ALBEF uses only the
      diagonal).
    temp: learnable temperature (gradients flow through the online sims only).
    alpha: distillation weight: targets = alpha * softmax(momentum sims / temp) +
      (1 - alpha) * hard.
    bank_valid: (M,) bool; False for queue slots not filled yet, which are neither
      targets nor part of any softmax. Default: all valid.
    image_feat_m, text_feat_m: (B, D) momentum features of the batch; default the
      first B bank rows.

  Returns:
    (loss, aux): loss = (CE_i2t + CE_t2i) / 2 as ALBEF; aux holds `sim_i2t`,
    `sim_t2i` (B, M) online logits (already / temp, invalid slots filled), whose
    first B columns are the in-batch similarities for the negative miner, and
    `loss_i2t`, `loss_t2i`.
  """
  batch = image_feat.shape[0]
  num_bank = image_bank.shape[0]
  if bank_valid is None:
    bank_valid = jnp.ones((num_bank,), bool)
  # The bank is the momentum model's output: never differentiated.
  image_bank = jax.lax.stop_gradient(image_bank.astype(jnp.float32))
  text_bank = jax.lax.stop_gradient(text_bank.astype(jnp.float32))
  if image_feat_m is None:
    image_feat_m = image_bank[:batch]
  if text_feat_m is None:
    text_feat_m = text_bank[:batch]
  image_feat_m = jax.lax.stop_gradient(image_feat_m.astype(jnp.float32))
  text_feat_m = jax.lax.stop_gradient(text_feat_m.astype(jnp.float32))
  image_feat = image_feat.astype(jnp.float32)
  text_feat = text_feat.astype(jnp.float32)
  temp = jnp.asarray(temp, jnp.float32)

  def masked(logits: Array) -> Array:
    return jnp.where(bank_valid[None, :], logits, _EXCLUDED)

  hard = ((pid[:, None] == pid_bank[None, :]) & bank_valid[None, :]).astype(jnp.float32)
  hard = hard / jnp.maximum(jnp.sum(hard, axis=1, keepdims=True), 1.0)
  # ALBEF computes the momentum sims under no_grad, temperature included.
  temp_m = jax.lax.stop_gradient(temp)
  target_i2t = jax.lax.stop_gradient(
      alpha * jax.nn.softmax(masked(image_feat_m @ text_bank.T / temp_m), axis=1)
      + (1.0 - alpha) * hard)
  target_t2i = jax.lax.stop_gradient(
      alpha * jax.nn.softmax(masked(text_feat_m @ image_bank.T / temp_m), axis=1)
      + (1.0 - alpha) * hard)
  sim_i2t = masked(image_feat @ text_bank.T / temp)
  sim_t2i = masked(text_feat @ image_bank.T / temp)
  loss_i2t = jnp.mean(soft_cross_entropy(sim_i2t, target_i2t))
  loss_t2i = jnp.mean(soft_cross_entropy(sim_t2i, target_t2i))
  loss = (loss_i2t + loss_t2i) / 2
  return loss, dict(sim_i2t=sim_i2t, sim_t2i=sim_t2i, loss_i2t=loss_i2t, loss_t2i=loss_t2i)


# ---------------------------------------------------------------------------- ITM


def itm_labels(batch: int) -> Array:
  """ITM labels for [B positives, B (image, negative text), B (negative image, text)]."""
  return jnp.concatenate([jnp.ones((batch,), jnp.int32), jnp.zeros((2 * batch,), jnp.int32)])


def itm_loss(logits: Array, labels: Array) -> Array:
  """Mean cross-entropy of the ITM head's logits (3B, 2) against labels (3B,)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


# ---------------------------------------------------------------------------- MLM


def mlm_loss(logits: Array, labels: Array, weights: Array | None = None,
             soft_labels: Array | None = None, alpha: Array | float = 0.0) -> Array:
  """Mean over masked tokens of (1 - alpha) * CE(labels) + alpha * CE(soft_labels).

  logits (B, T, V); labels (B, T) int, -100 (or anything) where not masked; weights
  (B, T) bool/float, default `labels != -100`; soft_labels (B, T, V) probabilities of
  the momentum model (ALBEF's MLM distillation), or None for plain MLM. 0 when no
  token is masked.
  """
  if weights is None:
    weights = labels != -100
  weights = weights.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  # -100 would gather out of range; those positions carry weight 0 anyway.
  safe_labels = jnp.where(weights > 0, labels, 0).astype(jnp.int32)
  per_token = -jnp.take_along_axis(logp, safe_labels[..., None], axis=-1)[..., 0]
  if soft_labels is not None:
    distill = -jnp.sum(jax.lax.stop_gradient(soft_labels.astype(jnp.float32)) * logp, axis=-1)
    per_token = (1.0 - alpha) * per_token + alpha * distill
  return _weighted_mean(per_token, weights)


# ---------------------------------------------------------------------------- MIM


def mim_pixel_loss(pred: Array, images: Array, patch_mask: Array, patch: int,
                   norm_pix: bool = True) -> Array:
  """MAE loss: MSE between pred (B, N, P) and the pixels of the masked patches.

  With `norm_pix` each target patch is normalised by its own mean and variance, eps
  1e-6, as MAE's `norm_pix_loss`; the variance is unbiased (ddof=1) because MAE uses
  torch's default `Tensor.var`. Averaged over masked patches only; 0 if none.
  """
  target = patchify(images.astype(jnp.float32), patch)
  if norm_pix:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  return _weighted_mean(per_patch, patch_mask)


def mim_feature_loss(pred: Array, target: Array, patch_mask: Array) -> Array:
  """MIM against momentum patch features: MSE of L2-normalised vectors, masked mean.

  ||p/|p| - t/|t|||^2 = 2 - 2 cos(p, t) (BYOL's loss): insensitive to the feature
  scale, which drifts as the momentum encoder trains. The target gets no gradient.
  """
  def normalize(x: Array) -> Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)

  target = jax.lax.stop_gradient(normalize(target))
  per_patch = jnp.sum((normalize(pred) - target) ** 2, axis=-1)
  return _weighted_mean(per_patch, patch_mask)


# ---------------------------------------------------------------------------- SemMIM


def sharpen_and_center(logits: Array, center: Array, temp: float | Array = 0.04) -> Array:
  """Teacher prototype assignment softmax((logits - center) / temp), no gradient (DINO).

  Centring stops one prototype from dominating, the low temperature stops the uniform
  collapse; together they keep the K-way encoding space in use.
  """
  z = (logits.astype(jnp.float32) - center.astype(jnp.float32)) / temp
  return jax.lax.stop_gradient(jax.nn.softmax(z, axis=-1))


def update_center(center: Array, batch_logits_mean: Array,
                  momentum: float | Array = 0.9) -> Array:
  """EMA of the teacher's mean logits (K,): center * m + mean * (1 - m).

  `batch_logits_mean` must be the mean over the *global* batch (inside a sharded jit a
  plain mean of the global array is).
  """
  new = center * momentum + batch_logits_mean.astype(center.dtype) * (1.0 - momentum)
  return jax.lax.stop_gradient(new)


def prototype_ce(student_logits: Array, teacher_probs: Array, student_temp: float = 0.1,
                 weights: Array | None = None) -> Array:
  """CE(teacher_probs, softmax(student_logits / student_temp)), (weighted) mean.

  student_logits (..., K), teacher_probs (..., K); `weights` (...) selects e.g. the
  masked patches of (B, N, K) predictions.
  """
  ce = soft_cross_entropy(student_logits.astype(jnp.float32) / student_temp,
                          jax.lax.stop_gradient(teacher_probs))
  if weights is None:
    return jnp.mean(ce)
  return _weighted_mean(ce, weights)


def agreement_loss(student_logits_v1: Array, student_logits_v2: Array,
                   teacher_probs_v1: Array, teacher_probs_v2: Array,
                   temp: float = 0.1) -> Array:
  """SemMIM agreement learning, symmetrised: each view predicts the other's teacher."""
  return 0.5 * (prototype_ce(student_logits_v1, teacher_probs_v2, temp)
                + prototype_ce(student_logits_v2, teacher_probs_v1, temp))


def _flatten(probs: Array, weights: Array | None) -> tuple[Array, Array]:
  probs = probs.reshape(-1, probs.shape[-1]).astype(jnp.float32)
  if weights is None:
    return probs, jnp.ones((probs.shape[0],), jnp.float32)
  return probs, weights.reshape(-1).astype(jnp.float32)


def entropy(probs: Array, axis: int = -1) -> Array:
  """Shannon entropy in nats; 0 * log 0 = 0."""
  return -jnp.sum(xlogy(probs, probs), axis=axis)


def prototype_usage_entropy(probs: Array, weights: Array | None = None) -> Array:
  """Entropy of the batch-mean assignment: log K when all prototypes are used evenly."""
  p, w = _flatten(probs, weights)
  mean = jnp.sum(p * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1e-12)
  return entropy(mean)


def mean_target_entropy(probs: Array, weights: Array | None = None) -> Array:
  """Mean per-sample entropy: near 0 for sharp targets, log K for uniform collapse."""
  p, w = _flatten(probs, weights)
  return _weighted_mean(entropy(p), w)


def prototype_usage_share(probs: Array, weights: Array | None = None) -> Array:
  """Share of the K prototypes that are the argmax of at least one (weighted-in) sample."""
  p, w = _flatten(probs, weights)
  hits = jax.nn.one_hot(jnp.argmax(p, axis=-1), p.shape[-1]) * (w > 0)[:, None]
  return jnp.mean((jnp.sum(hits, axis=0) > 0).astype(jnp.float32))


def prototype_stats(probs: Array, weights: Array | None = None) -> dict[str, Array]:
  """The three collapse diagnostics of a prototype assignment, for the metrics log."""
  return dict(usage_entropy=prototype_usage_entropy(probs, weights),
              target_entropy=mean_target_entropy(probs, weights),
              usage_share=prototype_usage_share(probs, weights))
