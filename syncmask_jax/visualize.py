"""Pictures of what SyncMask masks: patch mask, word cross-attention, masked words.

For a few held-out pairs, one PNG each (`stepN_pairI.png`): the image with the patch
mask overlaid, the word->patch map the masks came from (`masking.source`: the momentum
model's fusion cross-attention or its Grad-CAM) of chosen words (the masked words the
patch mask took the most of that map from), and the text with the masked words
highlighted. Beside it `stepN_pairI_mask.png` holds the overlay alone at exact
pixels (nearest-neighbour upscaled), so a test or a script can read the mask back.

The map and the masks are the ones the train step uses (docs/method.md 2): the
momentum model on the unmasked pair, `masking.masks_from_config` with the run's
masking config. Matplotlib draws through the Agg canvas directly (no pyplot, no global
backend switch).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from matplotlib import image as mpl_image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from syncmask_jax import masking, paths
from syncmask_jax import tokenizer as tokenizer_lib
from syncmask_jax.data import pipeline

MASK_COLOR = (255, 40, 40)
_SCALE = 4  # upscale factor of the exact mask PNG


def to_uint8(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Undoes the pipeline's normalisation: float (H, W, 3) -> uint8."""
  x = (np.asarray(image, np.float32) * np.asarray(std) + np.asarray(mean)) * 255.0
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def patch_grid(values: np.ndarray, image_size: int) -> np.ndarray:
  """(N,) per-patch values -> (S, S) per pixel (row-major patches, as the ViT)."""
  g = int(round(np.sqrt(len(values))))
  if g * g != len(values) or image_size % g:
    raise ValueError(f"{len(values)} patches do not tile a {image_size}px image")
  p = image_size // g
  return np.kron(np.asarray(values).reshape(g, g), np.ones((p, p), values.dtype))


def overlay_patch_mask(image: np.ndarray, patch_mask: np.ndarray, alpha: float = 0.55,
                       color: Sequence[int] = MASK_COLOR) -> np.ndarray:
  """uint8 image with the masked patches blended towards `color`; others unchanged."""
  inside = patch_grid(np.asarray(patch_mask, bool), image.shape[0])[..., None]
  blend = (1 - alpha) * image.astype(np.float32) + alpha * np.asarray(color, np.float32)
  return np.where(inside, np.round(blend), image).astype(np.uint8)


def chosen_words(attn: np.ndarray, token_mask: np.ndarray, maskable: np.ndarray,
                 count: int) -> list[int]:
  """Token positions to show: masked tokens by attention mass on the image, then (if
  fewer are masked) maskable ones."""
  mass = np.asarray(attn).sum(axis=-1)
  order = np.argsort(-mass, kind="stable")
  masked = [int(t) for t in order if token_mask[t]]
  rest = [int(t) for t in order if maskable[t] and not token_mask[t]]
  return (masked + rest)[:count]


def draw_pair(path: str, image: np.ndarray, patch_mask: np.ndarray, words: Sequence[str],
              token_mask: np.ndarray, attn: np.ndarray, chosen: Sequence[int],
              title: str = "", map_name: str = "attention") -> list[str]:
  """Writes `path` (figure) and its `_mask.png` (exact overlay); returns both paths.

  image uint8 (S, S, 3); patch_mask (N,); words (T,) strings of the valid tokens;
  token_mask (T,) bool; attn (T, N) word -> patch attention.
  """
  overlay = overlay_patch_mask(image, patch_mask)
  mask_path = path[:-len(".png")] + "_mask.png"
  # Through file objects: matplotlib opens only local files by name.
  with paths.path(mask_path).open("wb") as f:
    mpl_image.imsave(f, np.kron(overlay, np.ones((_SCALE, _SCALE, 1), np.uint8)),
                     format="png")

  panels = 2 + len(chosen)
  fig = Figure(figsize=(2.6 * panels, 3.6))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, panels)
  axes[0].imshow(image)
  axes[0].set_title("image", fontsize=9)
  axes[1].imshow(overlay)
  axes[1].set_title(f"patch mask ({int(np.sum(patch_mask))}/{len(patch_mask)})", fontsize=9)
  gray = image.astype(np.float32).mean(axis=-1)
  for ax, t in zip(axes[2:], chosen):
    heat = patch_grid(np.asarray(attn[t], np.float32), image.shape[0])
    ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
    ax.imshow(heat, cmap="inferno", alpha=0.6)
    ax.set_title(f"{map_name} of '{words[t]}'", fontsize=9)
  for ax in axes:
    ax.set_axis_off()
  # The text: masked words on a gold box, the shown words in bold, wrapped by hand
  # (a character of an 8 pt font is about 0.6 x 8 pt wide).
  char = 0.6 * 8 / 72 / fig.get_figwidth()
  x, y = 0.01, 0.2
  for t, w in enumerate(words):
    if x + char * len(w) > 0.99 and x > 0.01:
      x, y = 0.01, y - 0.06
    fig.text(x, y, w, fontsize=8, fontweight="bold" if t in chosen else "normal",
             bbox=dict(facecolor="gold", edgecolor="none", pad=1) if token_mask[t] else None)
    x += char * (len(w) + 1)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(bottom=0.28, top=0.85, wspace=0.05)
  with paths.path(path).open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  return [path, mask_path]


@functools.lru_cache(maxsize=8)
def _picture_fn(graphdef: Any, masking_json: str, seed: int, tokens: tokenizer_lib.TokenInfo,
                mesh: jax.sharding.Mesh) -> Callable:
  """Jitted (momentum params, batch) -> cross-attention, masks, maskable tokens; cached so
  periodic evaluations compile it once."""
  cfg = ml_collections.ConfigDict(json.loads(masking_json))
  key = jax.random.key(seed + 2)
  source = "attention" if cfg.strategy == "random" else cfg.source

  def fn(params, batch):
    teacher = nnx.merge(graphdef, params)
    image_tokens = teacher.encode_image(batch["image"])
    text_hidden = teacher.encode_text(batch["text_ids"], batch["text_mask"])
    probs, cams = masking.teacher_cross_attention(teacher, text_hidden, batch["text_mask"],
                                                  image_tokens, source)
    maskable = tokenizer_lib.text_maskable(batch["text_ids"], batch["text_mask"], tokens)
    patch_mask, token_mask = masking.masks_from_config(
        key, cfg, probs, maskable, image_tokens.shape[1] - 1, cams)
    # The map the masks were chosen from.
    attn = masking.word_patch_map(cfg, probs, maskable, cams, source=source)
    return dict(patch_mask=patch_mask, token_mask=token_mask, maskable=maskable, attn=attn)

  return jax.jit(fn, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))


def pair_arrays(config: ml_collections.ConfigDict, graphdef: Any, momentum_params: Any,
                mesh: jax.sharding.Mesh, tokens: tokenizer_lib.TokenInfo,
                host_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Momentum cross-attention (B, T, N), masks and maskable tokens of one eval batch."""
  fn = _picture_fn(graphdef, config.masking.to_json(), int(config.seed), tokens, mesh)
  return jax.device_get(fn(momentum_params, pipeline.make_global_batch(host_batch, mesh)))


def pretraining_pictures(config: ml_collections.ConfigDict, graphdef: Any,
                         momentum_params: Any, mesh: jax.sharding.Mesh,
                         tokens: tokenizer_lib.TokenInfo, directory: str, *, step: int = 0,
                         num: int = 4, words: int = 2) -> list[str]:
  """Pictures of the first `num` pairs of the eval split; returns the figure paths.

  Every process computes (the batch is global); process 0 draws.
  """
  iterator = pipeline.make_eval_iterator(config)
  try:
    host_batch = next(iterator)
  finally:
    iterator.close()
  out = pair_arrays(config, graphdef, momentum_params, mesh, tokens, host_batch)
  if jax.process_index() != 0:
    return []
  paths.path(directory).mkdir(parents=True, exist_ok=True)
  tokenizer = iterator.tokenizer
  written = []
  for i in range(min(num, int(np.sum(host_batch["valid"])))):
    valid = np.asarray(host_batch["text_mask"][i], bool)
    ids = np.asarray(host_batch["text_ids"][i])[valid]
    names = [tokenizer.id_to_token(int(t)) or "?" for t in ids]
    attn = np.asarray(out["attn"][i])[valid]
    token_mask = np.asarray(out["token_mask"][i])[valid]
    chosen = chosen_words(attn, token_mask, np.asarray(out["maskable"][i])[valid], words)
    image = to_uint8(host_batch["image"][i], config.data.mean, config.data.std)
    path = os.path.join(directory, f"step{step}_pair{i}.png")
    draw_pair(path, image, np.asarray(out["patch_mask"][i]), names, token_mask, attn, chosen,
              title=f"step {step}, {config.masking.strategy} masks (momentum model), "
                    f"product {int(host_batch['product_id'][i])}",
              map_name=("attention" if config.masking.strategy == "random"
                        else config.masking.source))
    written.append(path)
  return written
