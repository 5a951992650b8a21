"""Where the masks come from: one module, three strategies (docs/method.md section 2).

* `random_masks` — uniform patches and tokens (the ALBEF/MAE baseline).
* `syncmask` — patches the words attend to most, then the words whose attention falls
  on those patches, from the momentum model's fusion cross-attention (SyncMask).
* `text_guided` — patches chosen by the text's attention only (SemMIM).

Everything here is a pure function of arrays (jit-able, static shapes, no Python loop
over examples), so masks are computed inside the train step from that step's
momentum forward.

Mask counts (static shapes, data-dependent counts):
* patches: exactly `round(ratio_img * N)` per example (N is fixed), fewer only where a
  row has fewer valid patches than that (then all valid patches are masked);
* tokens: `k_i = min(T_i, max(1, round(ratio_txt * T_i)))` per example, where `T_i`
  is the number of maskable tokens of example i (no [CLS]/[SEP]/[PAD]). This keeps
  BERT's 15%-per-caption semantics; 15% of the *padded* length would over-mask short
  captions. At least one token so every caption gives the MLM loss a target (0 when
  `ratio_txt == 0` or the caption has no maskable token). The arrays stay (B, T); the
  count is enforced by a rank threshold per row, capped by the static
  `round(ratio_txt * T)`.
Rounding is half-up (`floor(x + 0.5)`) everywhere, static and traced alike.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from syncmask_jax.config_lib import (MASK_HEAD_REDUCES, MASK_SCORES, MASK_SELECTIONS,
                                     MASK_SOURCES, MASK_TOKEN_SCORES, validate_masking)

Array = jax.Array

# Floor for log attention mass: an all-zero row (no maskable token) still ranks finitely.
_LOG_EPS = 1e-9


def _round_half_up(x: float) -> int:
  # Python's round() is banker's rounding; half-up matches the traced per-row counts.
  return int(math.floor(x + 0.5))


def static_token_count(ratio_txt: float, seq_len: int) -> int:
  """Upper bound of the per-row token count (the static count passed to `select`)."""
  if ratio_txt <= 0.0 or seq_len == 0:
    return 0
  return min(seq_len, max(1, _round_half_up(ratio_txt * seq_len)))


def token_counts(ratio_txt: float, text_maskable: Array) -> Array:
  """Per-row token count `min(T_i, max(1, round(ratio_txt * T_i)))`, int32 (B,)."""
  n_valid = jnp.sum(text_maskable, axis=-1).astype(jnp.int32)
  if ratio_txt <= 0.0:
    return jnp.zeros_like(n_valid)
  k = jnp.floor(ratio_txt * n_valid.astype(jnp.float32) + 0.5).astype(jnp.int32)
  k = jnp.minimum(jnp.maximum(k, 1), n_valid)
  # float32 vs float64 rounding at exact halves must never exceed the static count.
  return jnp.minimum(k, static_token_count(ratio_txt, text_maskable.shape[-1]))


def aggregate_cross_attention(cross_probs: Array, layers: Sequence[int] = (-1,),
                              head_reduce: str = "mean") -> Array:
  """Word->patch attention (B, T, N) from fusion cross-attention (L, B, H, T, 1+N).

  Averages the chosen layers, reduces heads by mean or max, drops the image [CLS]
  column (column 0): a word attending to [CLS] says nothing about where in the image
  it is.
  """
  if cross_probs.ndim != 5:
    raise ValueError(f"cross_probs must be (L, B, H, T, 1+N), got shape {cross_probs.shape}")
  num_layers = cross_probs.shape[0]
  layers = tuple(int(l) for l in layers)
  if not layers or any(not -num_layers <= l < num_layers for l in layers):
    raise ValueError(f"config.masking.layers={layers}: need indices into {num_layers} fusion "
                     "layers")
  a = jnp.mean(cross_probs[jnp.asarray(layers)].astype(jnp.float32), axis=0)
  if head_reduce == "mean":
    a = jnp.mean(a, axis=1)
  elif head_reduce == "max":
    a = jnp.max(a, axis=1)
  else:
    raise ValueError(f"config.masking.head_reduce={head_reduce!r}: expected one of "
                     f"{MASK_HEAD_REDUCES}")
  return a[..., 1:]


def teacher_cross_attention(teacher, text_hidden: Array, text_mask: Array,
                            image_tokens: Array, source: str) -> tuple[Array, Array | None]:
  """The momentum model's fusion cross-attention (L, B, H, T, 1+N) on the unmasked pair
  and, for the `gradcam` sources, its Grad-CAM maps of the same shape (else None)."""
  if source.startswith("gradcam"):
    cams, probs = teacher.itm_gradcam(text_hidden, text_mask, image_tokens)
    return probs, jax.lax.stop_gradient(cams)
  _, probs = teacher.fuse(text_hidden, text_mask, image_tokens)
  return probs, None


def gradcam_layer(num_fusion_layers: int) -> int:
  """The fusion layer whose Grad-CAM reads words by default: ALBEF takes the 3rd of its 6
  (the last is zero for every word: the ITM logit reads only its [CLS] row)."""
  return max(num_fusion_layers // 2 - 1, 0)


def word_patch_map(cfg: ml_collections.ConfigDict, cross_probs: Array, text_maskable: Array,
                   cams: Array | None = None, source: str | None = None) -> Array:
  """The word->patch map (B, T, N) the masks are chosen from, per `source` (default
  `cfg.source`).

  * `attention`: the cross-attention (`aggregate_cross_attention`);
  * `gradcam`: ALBEF's Grad-CAM (`VLP.itm_gradcam`), layers and heads reduced as the
    attention;
  * `<map>_centered` [ours]: each word's map minus the caption's mean on that patch
    (maskable words), positive part: a patch every word attends to (an attention sink,
    or the garment as a whole) stops outvoting the patches one word singles out.
  """
  source = source or cfg.source
  if source not in MASK_SOURCES:
    raise ValueError(f"config.masking.source={source!r}: expected one of {MASK_SOURCES}")
  base = source.removesuffix("_centered")
  layers = (cfg.layers,) if isinstance(cfg.layers, int) else tuple(cfg.layers)
  if base == "gradcam":
    if cams is None:
      raise ValueError(f"config.masking.source={source!r} needs the Grad-CAM maps "
                       "(masking.teacher_cross_attention)")
    num_layers = cams.shape[0]
    if all(l % num_layers == num_layers - 1 for l in layers):
      # The ITM logit reads only the [CLS] row of the last layer, so every word's
      # gradient there is zero (ALBEF takes the 3rd of its 6 fusion layers).
      raise ValueError(f"config.masking.layers={layers} with source={source!r}: the last "
                       f"fusion layer's Grad-CAM is zero for every word; choose an earlier "
                       f"one of the {num_layers} fusion layers")
    a = aggregate_cross_attention(cams, layers, cfg.head_reduce)
  else:
    a = aggregate_cross_attention(cross_probs, layers, cfg.head_reduce)
  if base == source:
    return a
  w = text_maskable[..., None].astype(jnp.float32)
  mean = jnp.sum(a * w, axis=1, keepdims=True) / jnp.maximum(
      jnp.sum(w, axis=1, keepdims=True), 1.0)
  return jax.nn.relu(a - mean)


def _top_count(keys: Array, valid: Array, k: int, row_count: Array | None) -> Array:
  """Boolean mask of the `row_count` (<= k) largest valid keys per row."""
  if k == 0:
    return jnp.zeros(keys.shape, bool)
  # -inf is only compared, never used in arithmetic, so it cannot produce NaN.
  keys = jnp.where(valid, keys, -jnp.inf)
  # Rank by a stable sort along the row (ties: lower index first) rather than scatter
  # top_k indices: sorts partition along a sharded batch axis with no communication.
  order = jnp.argsort(keys, axis=-1, descending=True, stable=True)
  rank = jnp.argsort(order, axis=-1)
  count = k if row_count is None else jnp.minimum(row_count, k)[:, None]
  # Rows with fewer valid entries than the count: the rest of the ranks are invalid.
  return (rank < count) & valid


def select(key: Array, scores: Array, valid: Array, count: int, selection: str = "gumbel",
           tau: float | Array = 1.0, random_fraction: float = 0.0,
           row_count: Array | None = None) -> Array:
  """Chooses `count` valid entries per row of `scores` (B, K); returns a bool mask (B, K).

  `topk`: the largest scores, ties broken by lower index. `gumbel`: sampling without
  replacement from softmax(scores / tau) by the Gumbel-top-k trick (Kool et al. 2019);
  tau -> 0 recovers `topk`. `round(count * random_fraction)` of the count is drawn
  uniformly among the valid entries not already chosen.

  Invalid entries are never chosen: a row with fewer valid entries than its count
  gets all its valid entries and nothing else. `row_count` (B,) int, each <= `count`,
  lowers the count per row (data-dependent counts, static shapes).
  """
  if selection not in MASK_SELECTIONS:
    raise ValueError(f"config.masking.selection={selection!r}: expected one of "
                     f"{MASK_SELECTIONS}")
  count = int(count)
  if count < 0 or count > scores.shape[-1]:
    raise ValueError(f"count={count} outside [0, {scores.shape[-1]}]")
  valid = jnp.broadcast_to(valid, scores.shape)
  n_rand = _round_half_up(count * random_fraction)
  n_score = count - n_rand
  rand_rows = score_rows = None
  if row_count is not None:
    row_count = jnp.minimum(row_count.astype(jnp.int32), count)
    rand_rows = jnp.floor(row_count.astype(jnp.float32) * random_fraction + 0.5)
    rand_rows = jnp.minimum(rand_rows.astype(jnp.int32), jnp.minimum(n_rand, row_count))
    score_rows = jnp.minimum(row_count - rand_rows, n_score)
  key_score, key_rand = jax.random.split(key)
  keys = scores.astype(jnp.float32)
  if selection == "gumbel":
    keys = keys / tau + jax.random.gumbel(key_score, keys.shape, jnp.float32)
  chosen = _top_count(keys, valid, n_score, score_rows)
  if n_rand:
    uniform = jax.random.uniform(key_rand, keys.shape)
    chosen = chosen | _top_count(uniform, valid & ~chosen, n_rand, rand_rows)
  return chosen


def _patch_count(ratio_img: float, num_patches: int) -> int:
  return _round_half_up(ratio_img * num_patches)


def random_masks(key: Array, patch_valid_or_n: Array | int, text_valid: Array,
                 ratio_img: float, ratio_txt: float) -> tuple[Array, Array]:
  """Uniform patch mask (B, N) and token mask (B, T), counts as the module docstring.

  `patch_valid_or_n`: the number of patches N (all valid) or a bool (B, N) array.
  `text_valid`: bool (B, T), the maskable tokens.
  """
  batch, seq_len = text_valid.shape
  if jnp.ndim(patch_valid_or_n) == 0:
    patch_valid = jnp.ones((batch, int(patch_valid_or_n)), bool)
  else:
    patch_valid = jnp.asarray(patch_valid_or_n, bool)
  key_img, key_txt = jax.random.split(key)
  # Top-k of i.i.d. uniform keys is a uniform draw without replacement.
  patch_mask = _top_count(jax.random.uniform(key_img, patch_valid.shape), patch_valid,
                          _patch_count(ratio_img, patch_valid.shape[-1]), None)
  token_mask = _top_count(jax.random.uniform(key_txt, (batch, seq_len)), text_valid,
                          static_token_count(ratio_txt, seq_len),
                          token_counts(ratio_txt, text_valid))
  return patch_mask, token_mask


def _scores(mass: Array, score: str) -> Array:
  if score == "mass":
    return mass
  if score == "log_mass":
    # softmax(log s / tau) samples proportionally to s^(1/tau): invariant to the scale of
    # the attention mass, which grows with caption length and shrinks with N.
    return jnp.log(mass + _LOG_EPS)
  raise ValueError(f"config.masking.score={score!r}: expected one of {MASK_SCORES}")


def patch_score(attn: Array, text_maskable: Array) -> Array:
  """s_img (B, N): the attention mass the maskable words put on each patch. Rows of
  [CLS]/[SEP]/[PAD] carry no word, so they must not vote for patches."""
  a = attn.astype(jnp.float32) * text_maskable[..., None].astype(jnp.float32)
  return jnp.sum(a, axis=1)


def token_score(attn: Array, text_maskable: Array, patch_mask: Array,
                kind: str = "mass") -> Array:
  """s_txt (B, T): how much of each maskable word's map falls on masked patches.

  `kind` (config.masking.token_score): "mass", SyncMask's sum of the word's map over the
  masked patches; "share" [ours], that sum over the word's whole map, so a word that
  attends strongly everywhere (as the words no image shows can, under Grad-CAM) counts
  no more than one that attends weakly to the masked patches alone; "focus" [ours], the
  share times 1 - H(p) / log N, p the word's map normalised over the N patches: a word
  counts for attending to few patches, not for attending strongly.
  """
  a = attn.astype(jnp.float32) * text_maskable[..., None].astype(jnp.float32)
  mass = jnp.sum(a * patch_mask[:, None, :].astype(jnp.float32), axis=-1)
  if kind == "mass":
    return mass
  if kind not in MASK_TOKEN_SCORES:
    raise ValueError(f"config.masking.token_score={kind!r}: expected one of "
                     f"{MASK_TOKEN_SCORES}")
  total = jnp.sum(a, axis=-1)
  share = _safe_div(mass, total)
  if kind == "share":
    return share
  p = _safe_div(a, total[..., None])
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return share * (1.0 - entropy / jnp.log(attn.shape[-1]))


def _text_guided_patches(key: Array, attn: Array, text_maskable: Array, ratio_img: float,
                         selection: str, tau: float | Array, random_fraction: float,
                         score: str) -> Array:
  s_img = patch_score(attn, text_maskable)
  return select(key, _scores(s_img, score), jnp.ones(s_img.shape, bool),
                _patch_count(ratio_img, attn.shape[-1]), selection, tau, random_fraction)


def syncmask(key: Array, attn: Array, text_maskable: Array, ratio_img: float = 0.5,
             ratio_txt: float = 0.15, selection: str = "gumbel", tau: float | Array = 1.0,
             random_fraction: float = 0.0, score: str = "mass", token_kind: str = "mass"
             ) -> tuple[Array, Array]:
  """SyncMask: synchronized patch (B, N) and token (B, T) masks from attention (B, T, N).

  s_img[n] = sum_t A[t, n] over maskable words -> patch mask M_img; then
  s_txt[t] = sum_{n in M_img} A[t, n] -> token mask among maskable tokens, so masked
  words are those whose visual evidence is masked too. `score="log_mass"` ranks by
  log of the mass instead (see `_scores`); identical under `topk`. `token_kind`: what
  s_txt is (`token_score`).
  """
  key_img, key_txt = jax.random.split(key)
  patch_mask = _text_guided_patches(key_img, attn, text_maskable, ratio_img, selection, tau,
                                    random_fraction, score)
  s_txt = token_score(attn, text_maskable, patch_mask, token_kind)
  token_mask = select(key_txt, _scores(s_txt, score), text_maskable,
                      static_token_count(ratio_txt, attn.shape[1]), selection, tau,
                      random_fraction, row_count=token_counts(ratio_txt, text_maskable))
  return patch_mask, token_mask


def text_guided(key: Array, attn: Array, text_maskable: Array, ratio_img: float = 0.5,
                selection: str = "gumbel", tau: float | Array = 1.0,
                random_fraction: float = 0.0, score: str = "mass") -> tuple[Array, Array]:
  """SemMIM text-guided masking: patches by s_img only; the token mask is all False."""
  patch_mask = _text_guided_patches(key, attn, text_maskable, ratio_img, selection, tau,
                                    random_fraction, score)
  return patch_mask, jnp.zeros(text_maskable.shape, bool)


def masks_from_config(key: Array, cfg: ml_collections.ConfigDict, cross_probs: Array | None,
                      text_maskable: Array, num_patches: int, cams: Array | None = None,
                      step: Array | None = None) -> tuple[Array, Array]:
  """(patch_mask (B, N), token_mask (B, T)) for `config.masking`.

  `cross_probs` (L, B, H, T, 1+N) from the momentum fusion encoder on the unmasked pair
  (and `cams`, its Grad-CAM, for `source="gradcam"`: `teacher_cross_attention`);
  unused (may be None) for `random`. `text_maskable` (B, T) bool excludes
  [CLS]/[SEP]/[PAD]. With `step` (the train step), steps before `cfg.warmup_steps` get
  random masks: a teacher trained from scratch is not grounded yet [ours]. `cfg` is
  checked here (config_lib.validate_masking); the functions above take its values as given.
  """
  validate_masking(cfg)
  if cfg.strategy == "random":
    return random_masks(key, num_patches, text_maskable, cfg.ratio_img, cfg.ratio_txt)
  if cross_probs is None:
    raise ValueError(f"config.masking.strategy={cfg.strategy!r} needs cross-attention")
  masks = _method_masks(key, cfg, cross_probs, text_maskable, num_patches, cams)
  warmup = cfg.warmup_steps
  if step is None or not warmup:
    return masks
  # The random draw is the one `strategy="random"` would make with this key.
  rand = random_masks(key, num_patches, text_maskable, cfg.ratio_img, cfg.ratio_txt)
  if cfg.strategy == "text_guided":
    rand = (rand[0], masks[1])
  use_random = jnp.asarray(step) < warmup
  return tuple(jnp.where(use_random, r, m) for r, m in zip(rand, masks))


def _method_masks(key: Array, cfg: ml_collections.ConfigDict, cross_probs: Array,
                  text_maskable: Array, num_patches: int, cams: Array | None
                  ) -> tuple[Array, Array]:
  attn = word_patch_map(cfg, cross_probs, text_maskable, cams)
  if attn.shape[-1] != num_patches:
    raise ValueError(f"cross-attention has {attn.shape[-1]} patch columns, model has "
                     f"{num_patches} patches")
  if cfg.strategy == "syncmask":
    return syncmask(key, attn, text_maskable, cfg.ratio_img, cfg.ratio_txt, cfg.selection,
                    cfg.tau, cfg.random_fraction, cfg.score, cfg.token_score)
  return text_guided(key, attn, text_maskable, cfg.ratio_img, cfg.selection, cfg.tau,
                     cfg.random_fraction, cfg.score)


def mlm_corrupt(key: Array, ids: Array, token_mask: Array, vocab_size: int, mask_id: int,
                min_random_id: int) -> tuple[Array, Array, Array]:
  """BERT corruption of the positions in `token_mask`: 80% [MASK], 10% random, 10% kept.

  Random tokens are drawn uniformly from [min_random_id, vocab_size), so never a
  special token (BERT vocabularies put [PAD]/[UNK]/[CLS]/[SEP]/[MASK] first; pass the
  first ordinary id). Returns (corrupted ids, labels, weights): labels are the original
  ids at masked positions and -100 elsewhere (Hugging Face convention), weights the
  float32 token mask.
  """
  if not 0 <= min_random_id < vocab_size:
    raise ValueError(f"min_random_id={min_random_id} outside [0, vocab_size={vocab_size})")
  key_u, key_tok = jax.random.split(key)
  u = jax.random.uniform(key_u, ids.shape)
  random_ids = jax.random.randint(key_tok, ids.shape, min_random_id, vocab_size, ids.dtype)
  corrupted = jnp.where(token_mask & (u < 0.8), jnp.asarray(mask_id, ids.dtype), ids)
  corrupted = jnp.where(token_mask & (u >= 0.8) & (u < 0.9), random_ids, corrupted)
  labels = jnp.where(token_mask, ids, jnp.asarray(-100, ids.dtype))
  return corrupted, labels, token_mask.astype(jnp.float32)


def _safe_div(num: Array, den: Array) -> Array:
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def mask_stats(attn: Array, patch_mask: Array, token_mask: Array,
               text_maskable: Array | None = None) -> dict[str, Array]:
  """How much word->patch attention the masks cover, batch means of per-example shares.

  * `patch_attn_share`: share of the words' attention that falls on masked patches;
  * `token_attn_share`: share of the attention carried by masked tokens;
  * `sync_attn_share`: share of the masked tokens' attention that falls on masked
    patches (how synchronized the two masks are; ratio_img for independent masks).
  """
  a = attn.astype(jnp.float32)
  if text_maskable is not None:
    a = a * text_maskable[..., None].astype(jnp.float32)
  pm = patch_mask[:, None, :].astype(jnp.float32)
  tm = token_mask[:, :, None].astype(jnp.float32)
  total = jnp.sum(a, axis=(1, 2))
  on_patches = jnp.sum(a * pm, axis=(1, 2))
  by_tokens = jnp.sum(a * tm, axis=(1, 2))
  both = jnp.sum(a * pm * tm, axis=(1, 2))
  return dict(patch_attn_share=jnp.mean(_safe_div(on_patches, total)),
              token_attn_share=jnp.mean(_safe_div(by_tokens, total)),
              sync_attn_share=jnp.mean(_safe_div(both, by_tokens)))


def mask_precision(patch_mask: Array, token_mask: Array, gt_patch_visible: Array,
                   gt_token_visible: Array) -> dict[str, Array]:
  """Share of masked patches/tokens that truly co-occur (SynthFashion ground truth).

  Pooled over the batch (sum of hits / sum of masked), 0 when nothing is masked.
  """
  def precision(mask: Array, gt: Array) -> Array:
    hits = jnp.sum(mask & gt).astype(jnp.float32)
    return _safe_div(hits, jnp.sum(mask).astype(jnp.float32))
  return dict(patch_precision=precision(patch_mask, gt_patch_visible),
              token_precision=precision(token_mask, gt_token_visible))

