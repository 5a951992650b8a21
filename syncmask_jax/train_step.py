"""The pretraining step: one pure function (state, batch) -> (state, metrics).

Read top to bottom it is docs/method.md section 3: momentum forward on the unmasked pair ->
masks -> online losses (ITC, ITM with mined negatives, MLM, MIM) -> gradients ->
optimizer -> EMA of the momentum parameters -> enqueue. The recipes (`syncmask`,
`albef`, `semmim`, the ablations) differ only in config: masking strategy,
negative-mining mode, loss weights, MIM target. SemMIM (docs/method.md section 4) adds, from
`semmim.py`, the momentum model's prototype targets (second view, text-injected patch
targets, running centres) and the online agreement and prototype-MIM losses.
Everything runs inside one `jax.jit` over the mesh.

`train_step` composes named stages, each a module-level pure function: `teacher_pass` ->
`make_masks` -> `teacher_targets` -> `online_losses` (differentiated) -> `apply_update` ->
`diagnostics`. What the config decides (which loss terms, where the masks come from) is
settled once, at build time, in a `StepPlan` (`plan_step`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import flax
import optax
from flax import nnx

from syncmask_jax import config_lib, grounding, losses, masking, negatives, optim, semmim
from syncmask_jax import queue as queue_lib
from syncmask_jax import sharding
from syncmask_jax.tokenizer import TokenInfo, text_maskable
from syncmask_jax.train_state import Setup, TrainState

Array = jax.Array


def alpha_at(config: ml_collections.ConfigDict, step: Array, steps_per_epoch: int) -> Array:
  """ALBEF ramps the distillation weight from 0 over the first epoch."""
  ramp = config.loss.alpha_ramp_steps
  ramp = steps_per_epoch if ramp < 0 else ramp
  if ramp == 0:
    return jnp.asarray(config.loss.alpha, jnp.float32)
  return config.loss.alpha * jnp.minimum(1.0, step.astype(jnp.float32) / ramp)


def ema(momentum_params: Any, params: Any, m: float) -> Any:
  """theta_m <- m * theta_m + (1 - m) * theta."""
  return optax.incremental_update(params, momentum_params, step_size=1.0 - m)


def itm_with_mined_negatives(model, key: Array, sim_i2t: Array, pid: Array, ids: Array,
                             text_hidden: Array, tmask: Array, image_tokens: Array,
                             negatives_cfg: ml_collections.ConfigDict,
                             rngs: nnx.Rngs | None) -> tuple[Array, dict]:
  """ITM on B positives, B (image, mined text) and B (mined image, text) pairs.

  `sim_i2t` (B, B) are the in-batch ITC sims; the miner sees the whole (global) batch:
  under jit these are global arrays.
  """
  neg_text, neg_image, stats = negatives.mine_negatives(
      key, sim_i2t, pid, ids, negatives_cfg.mode, negatives_cfg.margin,
      negatives_cfg.exclude)
  fused_pos, _ = model.fuse(text_hidden, tmask, image_tokens, rngs=rngs)
  fused_neg, _ = model.fuse(
      jnp.concatenate([text_hidden[neg_text], text_hidden]),
      jnp.concatenate([tmask[neg_text], tmask]),
      jnp.concatenate([image_tokens, image_tokens[neg_image]]), rngs=rngs)
  logits = model.itm_logits(jnp.concatenate([fused_pos, fused_neg]))
  return losses.itm_loss(logits, losses.itm_labels(ids.shape[0])), stats


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """What the config decides about the step, settled once when the step is built."""
  config: ml_collections.ConfigDict
  tokens: TokenInfo
  steps_per_epoch: int
  # The online loss terms after ITC, in summation order (names of `LOSS_TERMS`).
  terms: tuple[str, ...]
  # Where the teacher's word->patch map comes from (`config_lib.MASK_SOURCES`).
  mask_source: str
  lr_schedule: optax.Schedule


@flax.struct.dataclass
class TeacherPass:
  """The momentum model on the unmasked pair: what masks, targets and the queue read."""
  image_tokens: Array  # (B, 1+N, D)
  text_hidden: Array  # (B, T, D)
  image_feat: Array  # (B, E) ITC features, also enqueued
  text_feat: Array
  cross_probs: Array  # (L, B, H, T, 1+N) fusion cross-attention
  cams: Array | None  # its Grad-CAM, for the gradcam sources
  # ITC's contrast set: this batch's momentum features, then the queue's.
  bank_image: Array
  bank_text: Array
  bank_pid: Array
  bank_valid: Array


@flax.struct.dataclass
class Masks:
  """The step's masks and the BERT-corrupted caption MLM reads."""
  maskable: Array  # (B, T) tokens MLM may mask
  patch: Array  # (B, N)
  token: Array  # (B, T)
  mlm_ids: Array
  mlm_labels: Array
  mlm_weights: Array


@flax.struct.dataclass
class Targets:
  """Momentum targets that depend on the masks: MLM's distillation labels and SemMIM's
  prototype assignments, with the batch means that move SemMIM's running centres."""
  soft_labels: Array | None
  global_probs: tuple[Array, Array] | None
  patch_probs: Array | None
  center_means: dict


@dataclasses.dataclass(frozen=True)
class Online:
  """What each online loss term reads (`LOSS_TERMS`): the student model and its pass on
  the unmasked pair, the teacher's outputs, the masks and the targets."""
  plan: StepPlan
  model: Any
  rngs: nnx.Rngs
  key_negatives: Array
  batch: dict
  image_tokens: Array
  text_hidden: Array
  sim_i2t: Array  # (B, B) in-batch ITC similarities, for mining ITM negatives
  teacher: TeacherPass
  masks: Masks
  targets: Targets
  alpha: Array


def _itm_term(o: Online) -> tuple[Array, dict]:
  loss, stats = itm_with_mined_negatives(
      o.model, o.key_negatives, o.sim_i2t, o.batch["product_id"], o.batch["text_ids"],
      o.text_hidden, o.batch["text_mask"], o.image_tokens, o.plan.config.negatives, o.rngs)
  return loss, {f"negatives/{k}": v for k, v in stats.items()}


def _mlm_term(o: Online) -> tuple[Array, dict]:
  # MLM sees the *unmasked* image (SyncMask Fig. 3).
  tmask, drop = o.batch["text_mask"], o.rngs
  fused, _ = o.model.fuse(o.model.encode_text(o.masks.mlm_ids, tmask, rngs=drop), tmask,
                          o.image_tokens, rngs=drop)
  soft = o.targets.soft_labels
  return losses.mlm_loss(o.model.mlm_logits(fused), o.masks.mlm_labels, o.masks.mlm_weights,
                         soft, o.alpha if soft is not None else 0.0), {}


def _agreement_term(o: Online) -> tuple[Array, dict]:
  loss, _ = semmim.agreement(
      o.model, o.image_tokens, o.model.encode_image(semmim.second_view(o.batch), rngs=o.rngs),
      o.targets.global_probs, o.plan.config.semmim.student_temp)
  return loss, {}


def _mim_prediction(o: Online) -> Array:
  # MIM sees the masked image and the *full* text.
  masked = o.model.encode_image(o.batch["image"], o.masks.patch, rngs=o.rngs)
  return o.model.mim_decode(masked, o.text_hidden, o.batch["text_mask"], rngs=o.rngs)


def _pixel_mim_term(o: Online) -> tuple[Array, dict]:
  cfg = o.plan.config
  return losses.mim_pixel_loss(_mim_prediction(o), o.batch["image"], o.masks.patch,
                               cfg.model.patch_size, cfg.loss.mim_norm_pix), {}


def _feature_mim_term(o: Online) -> tuple[Array, dict]:
  return losses.mim_feature_loss(_mim_prediction(o), o.teacher.image_tokens[:, 1:],
                                 o.masks.patch), {}


def _prototype_mim_term(o: Online) -> tuple[Array, dict]:
  # SemMIM: the masked image tokens cross-attend to the text, then predict the prototype
  # assignment of each masked patch.
  loss, pred_logits = semmim.semantic_mim(
      o.model, o.model.encode_image(o.batch["image"], o.masks.patch, rngs=o.rngs),
      o.text_hidden, o.batch["text_mask"], o.targets.patch_probs, o.masks.patch,
      o.plan.config.semmim.student_temp, rngs=o.rngs)
  return loss, {"pred_logits": jax.lax.stop_gradient(pred_logits)}


# name -> (the `config.loss` weight it is scaled by and reported as `loss_<weight>`, term).
LOSS_TERMS = {
    "itm": ("itm", _itm_term),
    "mlm": ("mlm", _mlm_term),
    "agreement": ("agreement", _agreement_term),
    "pixel_mim": ("mim", _pixel_mim_term),
    "feature_mim": ("mim", _feature_mim_term),
    "prototype_mim": ("mim", _prototype_mim_term),
}
_MIM_TERMS = {"pixels": "pixel_mim", "momentum_features": "feature_mim",
              "prototypes": "prototype_mim"}


def plan_step(config: ml_collections.ConfigDict, tokens: TokenInfo,
              steps_per_epoch: int) -> StepPlan:
  """The loss terms a config enables (a zero weight drops its term) and where its masks
  come from."""
  w = config.loss
  semmim_recipe = config.recipe == "semmim"
  config_lib.validate_mim_target(config)
  config_lib.validate_masking(config.masking)
  enabled = {"itm": w.itm > 0, "mlm": w.mlm > 0,
             "agreement": semmim_recipe and w.agreement > 0,
             _MIM_TERMS[w.mim_target]: w.mim > 0}
  terms = tuple(name for name, on in enabled.items() if on)
  # Random masks never read the teacher's maps: no Grad-CAM pass for them.
  source = "attention" if config.masking.strategy == "random" else config.masking.source
  return StepPlan(config, tokens, steps_per_epoch, terms, source,
                  optim.learning_rate_schedule(config.optim, config.total_steps))


def teacher_pass(plan: StepPlan, teacher, batch: dict, queue: dict) -> TeacherPass:
  """1. The momentum (teacher) forward on the unmasked pair; never differentiated."""
  images, ids, tmask = batch["image"], batch["text_ids"], batch["text_mask"]
  image_tokens = teacher.encode_image(images)
  text_hidden = teacher.encode_text(ids, tmask)
  image_feat = teacher.image_feature(image_tokens)
  text_feat = teacher.text_feature(text_hidden)
  cross_probs, cams = masking.teacher_cross_attention(teacher, text_hidden, tmask,
                                                      image_tokens, plan.mask_source)
  pid = batch["product_id"]
  return TeacherPass(
      image_tokens, text_hidden, image_feat, text_feat, cross_probs, cams,
      bank_image=jnp.concatenate([image_feat, queue["image_feat"]]),
      bank_text=jnp.concatenate([text_feat, queue["text_feat"]]),
      bank_pid=jnp.concatenate([pid, queue["product_id"]]),
      bank_valid=jnp.concatenate([jnp.ones(pid.shape, bool), queue["valid"]]))


def make_masks(plan: StepPlan, key_mask: Array, key_mlm: Array, teacher: TeacherPass,
               batch: dict, step: Array) -> Masks:
  """2. Masks (random | syncmask | text_guided) from the teacher's cross-attention (or its
  Grad-CAM); random during `masking.warmup_steps`. Then BERT's corruption of the tokens."""
  cfg, tokens, ids = plan.config.masking, plan.tokens, batch["text_ids"]
  maskable = text_maskable(ids, batch["text_mask"], tokens)
  num_patches = teacher.image_tokens.shape[1] - 1
  patch_mask, token_mask = masking.masks_from_config(
      key_mask, cfg, teacher.cross_probs, maskable, num_patches, teacher.cams, step)
  if cfg.strategy == "text_guided":
    # Text-guided masking chooses patches only (docs/method.md 2.3); MLM keeps ALBEF's
    # uniform token mask. A key folded from key_mask leaves the other recipes' draws as
    # they were.
    _, token_mask = masking.random_masks(jax.random.fold_in(key_mask, 1), num_patches,
                                         maskable, 0.0, cfg.ratio_txt)
  mlm = masking.mlm_corrupt(key_mlm, ids, token_mask, tokens.vocab_size, tokens.mask_id,
                            tokens.min_random_id)
  return Masks(maskable, patch_mask, token_mask, *mlm)


def teacher_targets(plan: StepPlan, teacher, batch: dict, t: TeacherPass, masks: Masks,
                    centers: dict) -> Targets:
  """The momentum model's targets that read the masks: MLM's soft labels on the corrupted
  caption, and SemMIM's (docs/method.md 4) prototype assignments of both views' [CLS]
  (agreement) and of the text-fused unmasked patches (MIM), sharpened and centred; the
  running centres move after use (DINO)."""
  cfg, tmask = plan.config, batch["text_mask"]
  soft_labels = global_probs = patch_probs = None
  center_means = {}
  if "mlm" in plan.terms and cfg.loss.mlm_distill:
    fused, _ = teacher.fuse(teacher.encode_text(masks.mlm_ids, tmask), tmask, t.image_tokens)
    soft_labels = jax.nn.softmax(teacher.mlm_logits(fused), axis=-1)
  if "agreement" in plan.terms:
    global_probs, center_means["global"], _ = semmim.global_targets(
        teacher, t.image_tokens, teacher.encode_image(semmim.second_view(batch)),
        centers["global"], cfg.semmim)
  if "prototype_mim" in plan.terms:
    patch_probs, center_means["patch"], _ = semmim.patch_targets(
        teacher, t.image_tokens, t.text_hidden, tmask, centers["patch"], masks.patch,
        cfg.semmim)
  return Targets(soft_labels, global_probs, patch_probs, center_means)


def online_losses(params: Any, plan: StepPlan, graphdef: Any, batch: dict,
                  teacher: TeacherPass, masks: Masks, targets: Targets, key_negatives: Array,
                  key_dropout: Array, alpha: Array) -> tuple[Array, dict]:
  """3. The weighted sum of the online losses, and their values (the step differentiates
  this in `params`). ITC is always on: ITM mines its negatives from ITC's similarities."""
  cfg = plan.config
  model = nnx.merge(graphdef, params)
  drop = nnx.Rngs(dropout=key_dropout)
  image_tokens = model.encode_image(batch["image"], rngs=drop)
  text_hidden = model.encode_text(batch["text_ids"], batch["text_mask"], rngs=drop)
  temp = model.temperature()
  loss_itc, itc_aux = losses.itc_loss(
      model.image_feature(image_tokens), model.text_feature(text_hidden), teacher.bank_image,
      teacher.bank_text, batch["product_id"], teacher.bank_pid, temp, alpha,
      bank_valid=teacher.bank_valid)
  total = cfg.loss.itc * loss_itc
  aux = {"temp": temp, "loss_itc": loss_itc}
  b = batch["text_ids"].shape[0]
  online = Online(plan, model, drop, key_negatives, batch, image_tokens, text_hidden,
                  itc_aux["sim_i2t"][:, :b], teacher, masks, targets, alpha)
  for name in plan.terms:
    weight, term = LOSS_TERMS[name]
    loss, extra = term(online)
    total += cfg.loss[weight] * loss
    aux[f"loss_{weight}"] = loss
    aux.update(extra)
  return total, aux


def apply_update(plan: StepPlan, tx: optax.GradientTransformation, state: TrainState,
                 grads: Any, loss: Array, teacher: TeacherPass, center_means: dict,
                 product_id: Array) -> tuple[TrainState, Array, Array]:
  """4. Optimizer, temperature clamp, EMA of the momentum model, SemMIM centres, enqueue.
  Returns the new state, the gradient norm and whether loss and gradients were finite."""
  config = plan.config
  params, opt_state, grad_norm = optim.apply_gradients(config, tx, state, grads)
  updated = optim.has_updated(tx, opt_state)
  momentum_params = jax.tree.map(lambda new, old: jnp.where(updated, new, old),
                                 ema(state.momentum_params, params, config.momentum),
                                 state.momentum_params)
  centers = (semmim.next_centers(state.centers, center_means, config.semmim.center_momentum,
                                 config.optim.grad_accum_steps, updated)
             if center_means else state.centers)
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state,
      momentum_params=momentum_params, centers=centers,
      queue=queue_lib.enqueue(state.queue, teacher.image_feat, teacher.text_feat, product_id))
  new_state, finite = optim.keep_finite(config, new_state, state, loss, grad_norm)
  return new_state, grad_norm, finite


def diagnostics(plan: StepPlan, batch: dict, teacher: TeacherPass, masks: Masks,
                targets: Targets, pred_logits: Array | None) -> dict:
  """5. What the masks cover, their grounding against SynthFashion's ground truth,
  SemMIM's collapse guards, and the embeddings GRIT-VLP grouping reads."""
  cfg = plan.config
  maskable, patch_mask, token_mask = masks.maskable, masks.patch, masks.token
  attn = masking.word_patch_map(cfg.masking, teacher.cross_probs, maskable, teacher.cams,
                                source=plan.mask_source)
  metrics = {f"mask/{k}": v for k, v in
             masking.mask_stats(attn, patch_mask, token_mask, maskable).items()}
  if "gt_token_part" in batch:
    metrics.update({f"grounding/{k}": v for k, v in grounding.batch_ratios({
        **grounding.map_sums(attn, batch["gt_token_part"], maskable, batch["gt_patch_part"]),
        **grounding.score_sums(masking.patch_score(attn, maskable),
                               masking.token_score(attn, maskable, patch_mask,
                                                   cfg.masking.token_score),
                               batch["gt_patch_visible"], batch["gt_token_visible"],
                               maskable)}).items()})
  if cfg.recipe == "semmim":
    metrics.update({f"semmim/{k}": v for k, v in semmim.diagnostics(
        targets.global_probs, targets.patch_probs, patch_mask, pred_logits,
        cfg.semmim.student_temp).items()})
  if cfg.data.grouping == "embedding":
    # GRIT-VLP grouping: the next epoch's batches come from these ITC embeddings
    # (mean of the momentum image and text features: [ours]); the loop hands them back.
    metrics["example_index"] = batch["index"]
    metrics["example_embedding"] = teacher.image_feat + teacher.text_feat
  if "gt_patch_visible" in batch:
    metrics.update({f"mask/{k}": v for k, v in masking.mask_precision(
        patch_mask, token_mask, batch["gt_patch_visible"], batch["gt_token_visible"]).items()})
  return metrics


def train_step(plan: StepPlan, setup: Setup, state: TrainState,
               batch: dict) -> tuple[TrainState, dict]:
  """The pure step: teacher pass -> masks -> targets -> online losses -> update."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  k_mask, k_mlm, k_neg, k_drop = jax.random.split(rng, 4)
  momentum_model = nnx.merge(setup.graphdef, state.momentum_params)
  teacher = teacher_pass(plan, momentum_model, batch, state.queue)
  masks = make_masks(plan, k_mask, k_mlm, teacher, batch, state.step)
  targets = teacher_targets(plan, momentum_model, batch, teacher, masks, state.centers)
  alpha = alpha_at(plan.config, state.step, plan.steps_per_epoch)
  (loss, aux), grads = jax.value_and_grad(online_losses, has_aux=True)(
      state.params, plan, setup.graphdef, batch, teacher, masks, targets, k_neg, k_drop, alpha)
  pred_logits = aux.pop("pred_logits", None)
  new_state, grad_norm, finite = apply_update(plan, setup.tx, state, grads, loss, teacher,
                                              targets.center_means, batch["product_id"])
  metrics = dict(aux, loss=loss, grad_norm=grad_norm, alpha=alpha, finite=finite,
                 learning_rate=plan.lr_schedule(state.step))
  metrics.update(diagnostics(plan, batch, teacher, masks, targets, pred_logits))
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, setup: Setup, tokens: TokenInfo,
                    steps_per_epoch: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The pure step for `config`; `jit_train_step` compiles it over the mesh."""
  return functools.partial(train_step, plan_step(config, tokens, steps_per_epoch), setup)


def batch_shardings(mesh: jax.sharding.Mesh, rules, batch: dict) -> dict:
  return {k: jax.sharding.NamedSharding(mesh, sharding.batch_spec(rules, v.ndim))
          for k, v in batch.items()}


def jit_train_step(step_fn: Callable, setup: Setup, config: ml_collections.ConfigDict,
                   batch_like: dict) -> Callable:
  """Compiles the step over the mesh; the state buffers are donated."""
  replicated = jax.sharding.NamedSharding(setup.mesh, jax.sharding.PartitionSpec())
  return jax.jit(
      step_fn,
      in_shardings=(setup.state_shardings,
                    batch_shardings(setup.mesh, config.mesh.axis_rules, batch_like)),
      out_shardings=(setup.state_shardings, replicated),
      donate_argnums=0)
