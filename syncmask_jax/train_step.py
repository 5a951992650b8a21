"""The pretraining step: one pure function (state, batch) -> (state, metrics).

Read top to bottom it is METHOD.md section 3: momentum forward on the unmasked pair ->
masks -> online losses (ITC, ITM with mined negatives, MLM, MIM) -> gradients ->
optimizer -> EMA of the momentum parameters -> enqueue. The recipes (`syncmask`,
`albef`, `semmim`, the ablations) differ only in config: masking strategy,
negative-mining mode, loss weights, MIM target. SemMIM (METHOD.md section 4) adds, from
`semmim.py`, the momentum model's prototype targets (second view, text-injected patch
targets, running centres) and the online agreement and prototype-MIM losses.
Everything runs inside one `jax.jit` over the mesh.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from syncmask_jax import grounding, losses, masking, negatives, optim, semmim
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
      negatives_cfg.get("exclude", "false_negatives"))
  fused_pos, _ = model.fuse(text_hidden, tmask, image_tokens, rngs=rngs)
  fused_neg, _ = model.fuse(
      jnp.concatenate([text_hidden[neg_text], text_hidden]),
      jnp.concatenate([tmask[neg_text], tmask]),
      jnp.concatenate([image_tokens, image_tokens[neg_image]]), rngs=rngs)
  logits = model.itm_logits(jnp.concatenate([fused_pos, fused_neg]))
  return losses.itm_loss(logits, losses.itm_labels(ids.shape[0])), stats


def make_train_step(config: ml_collections.ConfigDict, setup: Setup, tokens: TokenInfo,
                    steps_per_epoch: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The pure step for `config`; `jit_train_step` compiles it over the mesh."""
  graphdef = setup.graphdef
  tx = setup.tx
  lr_schedule = optim.learning_rate_schedule(config.optim, config.total_steps)
  use_mlm = config.loss.mlm > 0
  use_mim = config.loss.mim > 0
  use_itm = config.loss.itm > 0
  use_semmim = config.recipe == "semmim"
  use_agreement = use_semmim and config.loss.agreement > 0
  use_proto_mim = use_mim and config.loss.mim_target == "prototypes"
  if use_proto_mim and not use_semmim:
    raise ValueError("config.loss.mim_target='prototypes' needs config.recipe='semmim'")
  sem_cfg = config.semmim if use_semmim else None
  masking.validate_config(config.masking)
  # Random masks never read the teacher's maps: no Grad-CAM pass for them.
  mask_source = ("attention" if config.masking.strategy == "random"
                 else config.masking.get("source", "attention"))

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_mask, k_mlm, k_neg, k_drop = jax.random.split(rng, 4)
    images, ids, tmask = batch["image"], batch["text_ids"], batch["text_mask"]
    pid = batch["product_id"]
    maskable = text_maskable(ids, tmask, tokens)
    alpha = alpha_at(config, state.step, steps_per_epoch)

    # 1. Momentum (teacher) forward on the unmasked pair; never differentiated.
    teacher = nnx.merge(graphdef, state.momentum_params)
    image_tokens_m = teacher.encode_image(images)
    text_hidden_m = teacher.encode_text(ids, tmask)
    image_feat_m = teacher.image_feature(image_tokens_m)
    text_feat_m = teacher.text_feature(text_hidden_m)
    cross_probs_m, cams_m = masking.teacher_cross_attention(
        teacher, text_hidden_m, tmask, image_tokens_m, mask_source)

    # 2. Masks (random | syncmask | text_guided), from the teacher's cross-attention
    # (or its Grad-CAM); random during `masking.warmup_steps`.
    num_patches = image_tokens_m.shape[1] - 1
    patch_mask, token_mask = masking.masks_from_config(
        k_mask, config.masking, cross_probs_m, maskable, num_patches, cams_m, state.step)
    if config.masking.strategy == "text_guided":
      # Text-guided masking chooses patches only (METHOD.md 2.3); MLM keeps ALBEF's
      # uniform token mask. A key folded from k_mask leaves the other recipes' draws as
      # they were.
      _, token_mask = masking.random_masks(jax.random.fold_in(k_mask, 1), num_patches,
                                           maskable, 0.0, config.masking.ratio_txt)
    mlm_ids, mlm_labels, mlm_weights = masking.mlm_corrupt(
        k_mlm, ids, token_mask, tokens.vocab_size, tokens.mask_id, tokens.min_random_id)
    soft_labels = None
    if use_mlm and config.loss.mlm_distill:
      fused_m, _ = teacher.fuse(teacher.encode_text(mlm_ids, tmask), tmask, image_tokens_m)
      soft_labels = jax.nn.softmax(teacher.mlm_logits(fused_m), axis=-1)
    mim_target_feat = image_tokens_m[:, 1:]
    bank_image = jnp.concatenate([image_feat_m, state.queue["image_feat"]])
    bank_text = jnp.concatenate([text_feat_m, state.queue["text_feat"]])
    bank_pid = jnp.concatenate([pid, state.queue["product_id"]])
    bank_valid = jnp.concatenate([jnp.ones(pid.shape, bool), state.queue["valid"]])

    # SemMIM targets, like the masks from the momentum model (METHOD.md 4): prototype
    # assignments of both views' [CLS] (agreement) and of the text-fused unmasked
    # patches (MIM), sharpened and centred; the running centres move after use (DINO).
    center_means = {}
    global_probs = patch_probs = None
    if use_agreement:
      view2 = semmim.second_view(batch)
      global_probs, center_means["global"], _ = semmim.global_targets(
          teacher, image_tokens_m, teacher.encode_image(view2), state.centers["global"],
          sem_cfg)
    if use_proto_mim:
      patch_probs, center_means["patch"], _ = semmim.patch_targets(
          teacher, image_tokens_m, text_hidden_m, tmask, state.centers["patch"], patch_mask,
          sem_cfg)

    # 3. Online losses.
    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      drop = nnx.Rngs(dropout=k_drop)
      image_tokens = model.encode_image(images, rngs=drop)
      text_hidden = model.encode_text(ids, tmask, rngs=drop)
      image_feat = model.image_feature(image_tokens)
      text_feat = model.text_feature(text_hidden)
      temp = model.temperature()
      aux = {"temp": temp}
      loss_itc, itc_aux = losses.itc_loss(
          image_feat, text_feat, bank_image, bank_text, pid, bank_pid, temp, alpha,
          bank_valid=bank_valid)
      total = config.loss.itc * loss_itc
      aux["loss_itc"] = loss_itc

      if use_itm:
        b = ids.shape[0]
        loss_itm, mine_stats = itm_with_mined_negatives(
            model, k_neg, itc_aux["sim_i2t"][:, :b], pid, ids, text_hidden, tmask,
            image_tokens, config.negatives, drop)
        total += config.loss.itm * loss_itm
        aux["loss_itm"] = loss_itm
        aux.update({f"negatives/{k}": v for k, v in mine_stats.items()})

      if use_mlm:
        # MLM sees the *unmasked* image (SyncMask Fig. 3).
        fused_mlm, _ = model.fuse(model.encode_text(mlm_ids, tmask, rngs=drop), tmask,
                                  image_tokens, rngs=drop)
        loss_mlm = losses.mlm_loss(model.mlm_logits(fused_mlm), mlm_labels, mlm_weights,
                                   soft_labels, alpha if soft_labels is not None else 0.0)
        total += config.loss.mlm * loss_mlm
        aux["loss_mlm"] = loss_mlm

      if use_agreement:
        loss_agree, _ = semmim.agreement(
            model, image_tokens, model.encode_image(view2, rngs=drop), global_probs,
            sem_cfg.student_temp)
        total += config.loss.agreement * loss_agree
        aux["loss_agreement"] = loss_agree

      if use_proto_mim:
        # SemMIM: the masked image tokens cross-attend to the text, then predict the
        # prototype assignment of each masked patch.
        loss_mim, pred_logits = semmim.semantic_mim(
            model, model.encode_image(images, patch_mask, rngs=drop), text_hidden, tmask,
            patch_probs, patch_mask, sem_cfg.student_temp, rngs=drop)
        total += config.loss.mim * loss_mim
        aux["loss_mim"] = loss_mim
        aux["pred_logits"] = jax.lax.stop_gradient(pred_logits)
      elif use_mim:
        # MIM sees the masked image and the *full* text.
        masked_tokens = model.encode_image(images, patch_mask, rngs=drop)
        pred = model.mim_decode(masked_tokens, text_hidden, tmask, rngs=drop)
        if config.loss.mim_target == "pixels":
          loss_mim = losses.mim_pixel_loss(pred, images, patch_mask, config.model.patch_size,
                                           config.loss.mim_norm_pix)
        else:
          loss_mim = losses.mim_feature_loss(pred, mim_target_feat, patch_mask)
        total += config.loss.mim * loss_mim
        aux["loss_mim"] = loss_mim
      return total, aux

    # 4. Gradients, optimizer, temperature clamp, EMA, queue.
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    pred_logits = aux.pop("pred_logits", None)
    params, opt_state, grad_norm = optim.apply_gradients(config, tx, state, grads)
    updated = optim.has_updated(tx, opt_state)
    momentum_params = jax.tree.map(lambda new, old: jnp.where(updated, new, old),
                                   ema(state.momentum_params, params, config.momentum),
                                   state.momentum_params)
    centers = (semmim.next_centers(state.centers, center_means, sem_cfg.center_momentum,
                                   config.optim.grad_accum_steps, updated)
               if center_means else state.centers)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        momentum_params=momentum_params, centers=centers,
        queue=queue_lib.enqueue(state.queue, image_feat_m, text_feat_m, pid))
    new_state, finite = optim.keep_finite(config, new_state, state, loss, grad_norm)

    # 5. Metrics.
    metrics = dict(aux, loss=loss, grad_norm=grad_norm, alpha=alpha, finite=finite,
                   learning_rate=lr_schedule(state.step))
    attn = masking.word_patch_map(config.masking, cross_probs_m, maskable, cams_m,
                                  source=mask_source)
    metrics.update({f"mask/{k}": v for k, v in
                    masking.mask_stats(attn, patch_mask, token_mask, maskable).items()})
    if "gt_token_part" in batch:
      metrics.update({f"grounding/{k}": v for k, v in grounding.batch_ratios({
          **grounding.map_sums(attn, batch["gt_token_part"], maskable,
                               batch["gt_patch_part"]),
          **grounding.score_sums(masking.patch_score(attn, maskable),
                                 masking.token_score(attn, maskable, patch_mask),
                                 batch["gt_patch_visible"], batch["gt_token_visible"],
                                 maskable)}).items()})
    if use_semmim:
      metrics.update({f"semmim/{k}": v for k, v in semmim.diagnostics(
          global_probs, patch_probs, patch_mask, pred_logits, sem_cfg.student_temp).items()})
    if config.data.grouping == "embedding":
      # GRIT-VLP grouping: the next epoch's batches come from these ITC embeddings
      # (mean of the momentum image and text features: [ours]); the loop hands them back.
      metrics["example_index"] = batch["index"]
      metrics["example_embedding"] = image_feat_m + text_feat_m
    if "gt_patch_visible" in batch:
      metrics.update({f"mask/{k}": v for k, v in masking.mask_precision(
          patch_mask, token_mask, batch["gt_patch_visible"],
          batch["gt_token_visible"]).items()})
    return new_state, metrics

  return train_step


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
