"""Does the teacher find what co-occurs? Grounding of a word->patch map against
SynthFashion's per-word ground truth (docs/method.md, grounding).

A token's ground truth is `gt_token_part` (`data.transforms.token_parts`): >= 1 names
the part whose patches show it (1: the garment, i.e. every patch of part >= 1; 2 + d:
the patches of detail type d), 0 a content word this view cannot show, -1 a function
word. Tokens fall into three classes (`WORD_CLASSES`):

* `visible`: content words the view shows;
* `invisible`: content words it cannot show (gender, fabric, another side's details);
* `function`: every other maskable token (determiners, "with", punctuation, ...).

Per class, over the tokens of that class (a map row renormalised over the patches):

* `pointing`: the pointing game, the share of tokens whose most-attended patch shows
  their part (`visible`) or, for the other classes which show nothing, the garment;
* `own_share`: the share of the row's mass on the token's own patches (`visible`);
* `garment_share`: the share on the garment (every class: what a grounded teacher
  gives a visible word and should not give the others);
* `entropy`: of the row, in nats (log N is uniform).

And the ranking quality of the mask scores, the mean over examples of the AUC of
`s_img` against the co-occurring patches (`gt_patch_visible`) and of `s_txt` against
the visible tokens (`auc_patch`, `auc_token`; 0.5 is chance).

Everything is a per-example sum (`*_sum`, `*_count`, shape (B,)), so evaluation can
drop padded rows and add batches, and `ratios` turns the summed sums into the figures;
pure jnp, so the train step computes the same figures for TensorBoard inside its jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

WORD_CLASSES = ("visible", "invisible", "function")
_MEASURES = ("pointing", "own_share", "garment_share", "entropy")


def word_classes(token_part: Array, text_maskable: Array) -> dict[str, Array]:
  """bool (B, T) per class of `WORD_CLASSES`."""
  return dict(visible=text_maskable & (token_part >= 1),
              invisible=text_maskable & (token_part == 0),
              function=text_maskable & (token_part < 0))


def word_targets(token_part: Array, patch_part: Array) -> Array:
  """bool (B, T, N): the patches that show what token t names (none for classes other
  than `visible`)."""
  tp = token_part[:, :, None]
  pp = patch_part[:, None, :]
  return jnp.where(tp == 1, pp >= 1, (tp >= 2) & (pp == tp))


def _auc_rows(scores: Array, positive: Array, valid: Array) -> tuple[Array, Array]:
  """Per-row AUC (Mann-Whitney, ties count half) of `scores` (B, K) for `positive` among
  `valid`: (AUC, 0 where undefined), (1.0 where defined), both (B,)."""
  pos = positive & valid
  neg = ~positive & valid
  s = scores.astype(jnp.float32)
  greater = (s[:, :, None] > s[:, None, :]).astype(jnp.float32)
  ties = (s[:, :, None] == s[:, None, :]).astype(jnp.float32)
  pairs = pos[:, :, None] & neg[:, None, :]
  wins = jnp.sum(jnp.where(pairs, greater + 0.5 * ties, 0.0), axis=(1, 2))
  n_pairs = jnp.sum(pairs, axis=(1, 2)).astype(jnp.float32)
  defined = n_pairs > 0
  auc = jnp.where(defined, wins / jnp.where(defined, n_pairs, 1.0), 0.0)
  return auc, defined.astype(jnp.float32)


def map_sums(word_patch: Array, token_part: Array, text_maskable: Array,
             patch_part: Array) -> dict[str, Array]:
  """Per-example sums (B,) over the tokens of each class of the measures of a
  non-negative map (B, T, N): `{class}/{measure}_sum` and `{class}/count`."""
  a = jnp.maximum(word_patch.astype(jnp.float32), 0.0)
  total = jnp.sum(a, axis=-1, keepdims=True)
  has_mass = total[..., 0] > 0
  # A row with no mass on any patch points nowhere and counts as uniform.
  p = jnp.where(total > 0, a / jnp.where(total > 0, total, 1.0), 1.0 / a.shape[-1])
  entropy = -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1)
  classes = word_classes(token_part, text_maskable)
  own = word_targets(token_part, patch_part)
  garment = jnp.broadcast_to((patch_part >= 1)[:, None, :], a.shape)
  pointing_target = jnp.where(classes["visible"][..., None], own, garment)
  top = jnp.argmax(a, axis=-1)[..., None]
  per_token = dict(
      pointing=jnp.take_along_axis(pointing_target, top, axis=-1)[..., 0] & has_mass,
      own_share=jnp.sum(p * own, axis=-1) * has_mass,
      garment_share=jnp.sum(p * garment, axis=-1) * has_mass,
      entropy=entropy)
  out = {}
  for name, members in classes.items():
    w = members.astype(jnp.float32)
    out[f"{name}/count"] = jnp.sum(w, axis=-1)
    for measure, value in per_token.items():
      if measure == "own_share" and name != "visible":
        continue  # only visible words have patches of their own
      out[f"{name}/{measure}_sum"] = jnp.sum(value.astype(jnp.float32) * w, axis=-1)
  return out


def score_sums(s_img: Array, s_txt: Array, gt_patch_visible: Array, gt_token_visible: Array,
               text_maskable: Array) -> dict[str, Array]:
  """Per-example AUCs of the mask scores (`auc_patch_sum`/`_count`,
  `auc_token_sum`/`_count`, (B,))."""
  patch_sum, patch_n = _auc_rows(s_img, gt_patch_visible, jnp.ones_like(gt_patch_visible))
  token_sum, token_n = _auc_rows(s_txt, gt_token_visible & text_maskable, text_maskable)
  return {"auc_patch_sum": patch_sum, "auc_patch_count": patch_n,
          "auc_token_sum": token_sum, "auc_token_count": token_n}


def mask_sums(patch_mask: Array, token_mask: Array, gt_patch_visible: Array,
              token_part: Array, text_maskable: Array) -> dict[str, Array]:
  """Per-example counts of what a SyncMask pair of masks hits: `patch_precision` (masked
  patches that show something named) and, per word class, the share of the masked
  tokens in that class (`token_share_visible` is the token precision)."""
  out = {"patch_precision_sum": jnp.sum(patch_mask & gt_patch_visible, axis=-1),
         "patch_precision_count": jnp.sum(patch_mask, axis=-1)}
  for name, members in word_classes(token_part, text_maskable).items():
    out[f"token_share_{name}_sum"] = jnp.sum(token_mask & members, axis=-1)
    out[f"token_share_{name}_count"] = jnp.sum(token_mask, axis=-1)
  return {k: v.astype(jnp.float32) for k, v in out.items()}


def batch_ratios(sums: dict) -> dict[str, Array]:
  """`ratios` of per-example sums (B, ...) added over the batch."""
  return ratios({k: jnp.sum(v, axis=0) for k, v in sums.items()})


def ratios(sums: dict) -> dict[str, Array]:
  """`x_sum / x_count`, or for per-class measures `{class}/m_sum / {class}/count`; NaN
  where nothing was counted; other axes (layers, heads) are kept."""
  out = {}
  for key, value in sums.items():
    if key.endswith("_sum"):
      base = key[:-len("_sum")]
      count = sums[f"{base}_count" if f"{base}_count" in sums else
                   f"{base.split('/')[0]}/count"]
      count = jnp.asarray(count, jnp.float32)
      out[base] = jnp.where(count > 0, value / jnp.maximum(count, 1.0), jnp.nan)
  return out
