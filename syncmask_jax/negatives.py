"""The negative miner for ITM: semi-hard negatives without false negatives (docs/method.md 5).

Runs inside the train step on the in-batch ITC similarity matrix of the *global* batch
(the caller all-gathers features; here it is just arrays). For each image a negative
text and for each text a negative image, never one of the same product or with an
identical caption (the false negatives that fashion data is full of).

Modes: `semi_hard` (SyncMask; FaceNet's rule s(i, j) < s(i, i) - margin, the most
similar such j), `hard` (ALBEF: multinomial over non-positives weighted by
softmax(sim)) and `random` (uniform). Sampling uses `jax.random.categorical` on
logits masked with a finite fill, never a normalised weight vector: ALBEF's
`torch.multinomial(softmax(sim) with positives zeroed)` fails or yields NaN when a row
has no admissible entry or the sims overflow (ALBEF issues 18 and 131).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from syncmask_jax.config_lib import NEGATIVE_EXCLUDES, NEGATIVE_MODES

Array = jax.Array

# Finite "excluded" logit, far below any sim/temp: categorical is argmax(logits + Gumbel),
# and a finite fill keeps even an all-excluded row a valid distribution (no -inf - -inf).
_EXCLUDED = -1e30


def false_negative_mask(product_ids: Array, text_ids: Array,
                        exclude: str = "false_negatives") -> Array:
  """(B, B) bool, True where j must not be a negative for i.

  `false_negatives`: same product id, identical token sequence (duplicate caption,
  padding included) or j == i. The (B, B, T) comparison is fused with its reduction by
  XLA, so it is not materialised. `self`: only j == i, ALBEF's pretraining rule
  (`weights.fill_diagonal_(0)`), which lets a product's other view be its negative.
  """
  if exclude not in NEGATIVE_EXCLUDES:
    raise ValueError(f"config.negatives.exclude={exclude!r}: expected one of "
                     f"{NEGATIVE_EXCLUDES}")
  batch = product_ids.shape[0]
  if exclude == "self":
    return jnp.eye(batch, dtype=bool)
  same_product = product_ids[:, None] == product_ids[None, :]
  same_text = jnp.all(text_ids[:, None, :] == text_ids[None, :, :], axis=-1)
  return same_product | same_text | jnp.eye(batch, dtype=bool)


def _uniform(key: Array, allowed: Array) -> Array:
  return jax.random.categorical(key, jnp.where(allowed, 0.0, _EXCLUDED), axis=-1)


def _mine_rows(key: Array, sim: Array, false_neg: Array, mode: str,
               margin: float | Array) -> tuple[Array, dict[str, Array]]:
  """One negative column per anchor row of `sim` (anchor i's positive is sim[i, i])."""
  batch = sim.shape[0]
  allowed = ~false_neg
  semi_hard = allowed & (sim < jnp.diagonal(sim)[:, None] - margin)
  key_mode, key_fallback, key_forced = jax.random.split(key, 3)
  if mode == "semi_hard":
    candidates = semi_hard
    # -inf is only compared here; rows without a candidate take the fallback below.
    choice = jnp.argmax(jnp.where(semi_hard, sim, -jnp.inf), axis=-1)
  elif mode == "hard":
    candidates = allowed
    choice = jax.random.categorical(key_mode, jnp.where(allowed, sim, _EXCLUDED), axis=-1)
  else:
    candidates = allowed
    choice = _uniform(key_mode, allowed)
  has_candidate = jnp.any(candidates, axis=-1)
  has_allowed = jnp.any(allowed, axis=-1)
  fallback = _uniform(key_fallback, allowed)
  # Whole batch one product (or duplicates only): any j != i, counted as forced.
  forced = _uniform(key_forced, ~jnp.eye(batch, dtype=bool))
  idx = jnp.where(has_candidate, choice, jnp.where(has_allowed, fallback, forced))
  rows = jnp.arange(batch)
  info = dict(fallback=~has_candidate, forced=~has_allowed, semi_hard=semi_hard[rows, idx])
  return idx, info


def mine_negatives(key: Array, sim_i2t: Array, product_ids: Array, text_ids: Array,
                   mode: str = "semi_hard",
                   margin: float | Array = 0.0, exclude: str = "false_negatives"
                   ) -> tuple[Array, Array, dict[str, Array]]:
  """Negative text per image and negative image per text from sim_i2t (B, B).

  `sim_i2t[i, j]` = similarity of image i and text j with pairs on the diagonal; for
  `hard` it must already be divided by the ITC temperature (ALBEF samples from
  softmax(sim / temp)), and `margin` is in the same units as `sim_i2t`. `exclude` is
  the rule of `false_negative_mask`. Text-to-image mining uses `sim_i2t.T`. No
  gradient flows through the sims.

  Returns (neg_text_idx (B,), neg_image_idx (B,), stats), stats over the 2B anchors:
  `fallback_rate` (rows without a candidate of the mode, which took a uniform
  non-false-negative), `forced_rate` (rows without any non-false-negative, which took
  any j != i), `false_negative_rate` (chosen negatives sharing the anchor's product id:
  0 unless forced or `exclude="self"`), `semi_hard_rate` (chosen negatives that are
  semi-hard).
  """
  if mode not in NEGATIVE_MODES:
    raise ValueError(f"config.negatives.mode={mode!r}: expected one of {NEGATIVE_MODES}")
  batch = sim_i2t.shape[0]
  if sim_i2t.shape != (batch, batch) or batch < 2:
    raise ValueError(f"sim_i2t must be square (B, B) with B >= 2, got {sim_i2t.shape}")
  sim = jax.lax.stop_gradient(sim_i2t).astype(jnp.float32)
  false_neg = false_negative_mask(product_ids, text_ids, exclude)
  key_i2t, key_t2i = jax.random.split(key)
  neg_text_idx, info_i = _mine_rows(key_i2t, sim, false_neg, mode, margin)
  neg_image_idx, info_t = _mine_rows(key_t2i, sim.T, false_neg.T, mode, margin)
  same_product = jnp.concatenate([product_ids[neg_text_idx] == product_ids,
                                  product_ids[neg_image_idx] == product_ids])

  def rate(name: str) -> Array:
    return jnp.mean(jnp.concatenate([info_i[name], info_t[name]]).astype(jnp.float32))

  stats = dict(fallback_rate=rate("fallback"), forced_rate=rate("forced"),
               false_negative_rate=jnp.mean(same_product.astype(jnp.float32)),
               semi_hard_rate=rate("semi_hard"))
  return neg_text_idx, neg_image_idx, stats
