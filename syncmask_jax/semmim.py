"""SemMIM (Liu et al., LREC-COLING 2024): semantic MIM targets from a shared prototype space.

docs/method.md section 4 as pure functions that the train step composes:

* momentum model -> `global_targets` (agreement targets of the two augmented views)
  and `patch_targets` (MIM targets: momentum patch encodings that cross-attended to the
  momentum text features, projected onto the *same* prototypes), each sharpened and
  centred, with the batch means that `next_centers` moves the running centres by (DINO);
* online model -> `agreement` (each view's global encoding predicts the other view's
  target, symmetrised) and `semantic_mim` (the masked image tokens cross-attend to the
  text, then predict the masked patches' targets);
* `diagnostics` -> collapse guards for the metrics log.

Prototype logits are cosines (`VLP.prototype_logits`), divided by the student or the
teacher temperature here. The patch masks are `masking.text_guided`; ITC, ITM and MLM
are the core's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from syncmask_jax import losses
from syncmask_jax.models.vlp import VLP

Array = jax.Array


def second_view(batch: dict) -> Array:
  """The augmented second view the agreement loss needs (`config.data.two_views`)."""
  if "image_view2" not in batch:
    raise ValueError("SemMIM agreement learning needs batch['image_view2']: set "
                     "config.data.two_views=True (or config.loss.agreement=0)")
  return batch["image_view2"]


def _masked_mean(logits: Array, weights: Array) -> Array:
  """Mean of (..., K) logits over the leading axes where weights (...) are set: (K,)."""
  w = weights.astype(jnp.float32)[..., None]
  total = jnp.sum(w)
  return jnp.sum(logits * w, axis=tuple(range(logits.ndim - 1))) / jnp.where(
      total > 0, total, 1.0)


def global_targets(teacher: VLP, image_tokens_v1: Array, image_tokens_v2: Array,
                   center: Array, cfg: ml_collections.ConfigDict
                   ) -> tuple[tuple[Array, Array], Array, tuple[Array, Array]]:
  """Momentum assignments of both views' [CLS]: ((p1, p2), batch mean, (cos1, cos2)).

  The targets use the centre *before* this batch; `next_centers` then moves it towards
  the batch mean: the mean logits of both views over the global batch (DINO's order).
  """
  logits = (teacher.global_prototype_logits(image_tokens_v1),
            teacher.global_prototype_logits(image_tokens_v2))
  probs = tuple(losses.sharpen_and_center(l, center, cfg.teacher_temp) for l in logits)
  return probs, jnp.mean(jnp.concatenate(logits), axis=0), logits


def patch_targets(teacher: VLP, image_tokens_m: Array, text_hidden_m: Array, text_mask: Array,
                  center: Array, patch_mask: Array, cfg: ml_collections.ConfigDict
                  ) -> tuple[Array, Array, Array]:
  """Text-injected MIM targets (B, N, K), the batch mean for the centre, and the cosines.

  The momentum model's *unmasked* image tokens pass through its MIM decoder, whose
  cross-attention reads the momentum text features, before the projection onto the
  prototypes: the same patch gets a different target under a different caption
  (docs/method.md 4, "text injected into targets").
  """
  logits = teacher.patch_prototype_logits(image_tokens_m, text_hidden_m, text_mask)
  probs = losses.sharpen_and_center(logits, center, cfg.teacher_temp)
  # iBOT centres on every patch; "masked" centres on the targets actually used.
  weights = patch_mask if cfg.patch_center == "masked" else jnp.ones(patch_mask.shape, bool)
  return probs, _masked_mean(logits, weights), logits


def init_centers(num_prototypes: int, accum_steps: int) -> dict:
  """The running centres of the momentum prototype logits, zero at start: `global` for
  the agreement targets, `patch` for the MIM targets; with gradient accumulation also
  the sums of the micro-batch means since the last update (`*_sum`)."""
  names = ("global", "patch") + (("global_sum", "patch_sum") if accum_steps > 1 else ())
  return {name: jnp.zeros((num_prototypes,), jnp.float32) for name in names}


def next_centers(centers: dict, means: dict, momentum: float, accum_steps: int,
                 updated: Array | bool) -> dict:
  """The centres after a step, from its batch means ({name: (K,)}).

  Every step: c <- m c + (1 - m) mean (`losses.update_center`). Under k-step gradient
  accumulation (`updated`: whether this micro-step applied the optimizer update) the
  centres stay fixed over the k micro-batches of one update, as the momentum model
  does, while their means are summed; the update then uses the mean of the k means,
  i.e. the same centre as one step on the whole batch (exactly, when the micro-batches
  weigh the same: always for `global`, for `patch` unless `patch_center="masked"` masks
  differ in size).
  """
  out = dict(centers)
  for name, mean in means.items():
    if accum_steps == 1:
      out[name] = losses.update_center(centers[name], mean, momentum)
      continue
    total = centers[name + "_sum"] + mean
    out[name] = jnp.where(
        updated, losses.update_center(centers[name], total / accum_steps, momentum),
        centers[name])
    out[name + "_sum"] = jnp.where(updated, jnp.zeros_like(total), total)
  return out


def agreement(model: VLP, image_tokens_v1: Array, image_tokens_v2: Array,
              targets: tuple[Array, Array], student_temp: float) -> tuple[Array, Array]:
  """Symmetrised CE: view 1's student assignment predicts view 2's target and vice versa.

  Returns the loss and the student cosines of both views stacked (2, B, K).
  """
  s1 = model.global_prototype_logits(image_tokens_v1)
  s2 = model.global_prototype_logits(image_tokens_v2)
  loss = losses.agreement_loss(s1, s2, targets[0], targets[1], student_temp)
  return loss, jnp.stack([s1, s2])


def semantic_mim(model: VLP, masked_image_tokens: Array, text_hidden: Array, text_mask: Array,
                 targets: Array, patch_mask: Array, student_temp: float,
                 rngs: nnx.Rngs | None = None) -> tuple[Array, Array]:
  """CE between target and predicted prototype distributions, mean over masked patches.

  The student's masked image tokens cross-attend to the (online) text features before
  the prototype head (docs/method.md 4, "text in masked modeling"). Returns the loss and the
  predicted cosines (B, N, K).
  """
  logits = model.patch_prototype_logits(masked_image_tokens, text_hidden, text_mask, rngs)
  return losses.prototype_ce(logits, targets, student_temp, patch_mask), logits


def diagnostics(global_probs: tuple[Array, Array] | None, patch_probs: Array | None,
                patch_mask: Array, pred_logits: Array | None,
                student_temp: float) -> dict[str, Array]:
  """Collapse guards: usage entropy (log K when every prototype is used evenly), mean
  target entropy (0: one-hot targets; log K: uniform collapse), and the share of
  prototypes that are some sample's argmax, for the agreement targets, the patch
  targets (masked patches) and the student's patch predictions."""
  out = {}
  if global_probs is not None:
    out.update({f"global_{k}": v for k, v in
                losses.prototype_stats(jnp.concatenate(global_probs)).items()})
  if patch_probs is not None:
    out.update({f"patch_{k}": v for k, v in
                losses.prototype_stats(patch_probs, patch_mask).items()})
  if pred_logits is not None:
    pred = jax.nn.softmax(pred_logits / student_temp, axis=-1)
    out["pred_usage_entropy"] = losses.prototype_usage_entropy(pred, patch_mask)
  return out
