"""AdamW with warmup + cosine decay, gradient clipping, regex weight-decay masks, and the
one update every step applies (`apply_gradients`, `keep_finite`)."""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax


def param_paths(tree: Any) -> Any:
  """The same tree with each leaf replaced by its '/'-joined path ('vision/block_0/...')."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return jax.tree_util.tree_map_with_path(name, tree)


def regex_mask(tree: Any, patterns: Sequence[str]) -> Any:
  """True for leaves whose path matches none of `patterns` (big_vision-style policy)."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree.map(lambda p: not any(c.fullmatch(p) for c in compiled), param_paths(tree))


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * 0.01)


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, total_steps: int
                   ) -> optax.GradientTransformation:
  decay_mask = regex_mask(params, cfg.no_decay)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2,
                  weight_decay=cfg.weight_decay, mask=decay_mask))
  if cfg.grad_accum_steps > 1:
    # Each train step then consumes one micro-batch; the parameters (and with them the
    # EMA, see train_step) move once per `grad_accum_steps` steps, on the mean gradient.
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
  return tx


def has_updated(tx: optax.GradientTransformation, opt_state) -> jax.Array | bool:
  """Whether the last `tx.update` moved the parameters (always, without accumulation)."""
  if isinstance(tx, optax.MultiSteps):
    return tx.has_updated(opt_state)
  return True


def apply_gradients(config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                    state: Any, grads: dict) -> tuple[dict, Any, jax.Array]:
  """(params, opt_state, grad_norm) after one `tx` update of `state.params` (clipping and
  accumulation live in `tx`), the temperature clamped. Pretraining and every fine-tuning
  step update through here."""
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # ALBEF clamps the temperature parameter itself, not only its use (a model without
  # ITC, captioning's, has none).
  if "temp" in params:
    params["temp"] = jnp.clip(params["temp"], config.model.temp_min, config.model.temp_max)
  return params, opt_state, grad_norm


def keep_finite(config: ml_collections.ConfigDict, new_state: Any, state: Any,
                loss: jax.Array, grad_norm: jax.Array) -> tuple[Any, jax.Array]:
  """(state, finite): with `config.nonfinite='skip'`, a non-finite loss or gradient keeps
  the old state; the loop stops on `finite` being False under 'stop'."""
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if config.nonfinite == "skip":
    # The update is dropped but the step counter advances, so data order is kept.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             state.replace(step=state.step + 1))
  return new_state, finite
