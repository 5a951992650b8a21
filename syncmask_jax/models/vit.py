"""ViT image encoder (pre-LN), as ALBEF's ViT-B/16 and Hugging Face `ViTModel`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from syncmask_jax.models import layers

Array = jax.Array


def patchify(images: Array, patch: int) -> Array:
  """(B, H, W, C) -> (B, N, patch*patch*C), row-major patches, vectors laid out (ph, pw, C).

  The same layout serves the patch embedding and the MAE pixel targets of MIM.
  """
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def interpolate_pos_embed(pos_embed: np.ndarray | Array, grid: int) -> Array:
  """Resize a (1, 1+n*n, D) position table to a (1, 1+grid*grid, D) one.

  The [CLS] row is kept; the patch rows are resized bicubically as a 2D map (timm/ALBEF
  `interpolate_pos_embed`; jax's cubic kernel is Keys a=-0.5 where torch's is a=-0.75,
  so the values differ slightly from a PyTorch-resized table).
  """
  pos_embed = jnp.asarray(pos_embed)
  n = pos_embed.shape[1] - 1
  old = int(round(n ** 0.5))
  if old * old != n:
    raise ValueError(f"position table of {n} patches is not a square grid")
  if old == grid:
    return pos_embed
  d = pos_embed.shape[-1]
  patch_pos = pos_embed[0, 1:].reshape(old, old, d)
  patch_pos = jax.image.resize(patch_pos, (grid, grid, d), method="bicubic")
  return jnp.concatenate([pos_embed[:, :1], patch_pos.reshape(1, grid * grid, d)], axis=1)


class ViTBlock(nnx.Module):

  def __init__(self, width: int, heads: int, mlp_dim: int, eps: float, dropout_rate: float, *,
               rngs: nnx.Rngs, dtype):
    self.norm1 = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)
    self.attn = layers.Attention(width, heads, dropout_rate=dropout_rate, rngs=rngs, dtype=dtype)
    self.norm2 = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)
    self.mlp = layers.MLP(width, mlp_dim, rngs=rngs, dtype=dtype)
    self.dropout_rate = dropout_rate

  def __call__(self, x: Array, rngs: nnx.Rngs | None = None) -> Array:
    y, _ = self.attn(self.norm1(x), rngs=rngs)
    x = x + layers.dropout(y, self.dropout_rate, rngs)
    return x + layers.dropout(self.mlp(self.norm2(x)), self.dropout_rate, rngs)


class ViT(nnx.Module):
  """Patch embedding, [CLS], learned positions, pre-LN blocks, final LayerNorm.

  `patch_mask` (B, N) replaces the masked patch embeddings by a learned [MASK]
  embedding before the position embedding is added (BEiT/SimMIM style: static shapes).
  """

  def __init__(self, *, image_size: int, patch_size: int, width: int, depth: int, heads: int,
               mlp_dim: int, eps: float = 1e-6, dropout_rate: float = 0.0, remat: bool = False,
               rngs: nnx.Rngs, dtype=jnp.float32):
    self.patch_size = patch_size
    self.grid = image_size // patch_size
    self.depth = depth
    self.remat = remat
    self.dtype = dtype
    self.patch_embed = layers.Dense(patch_size * patch_size * 3, width, ("patch", "embed"),
                                    rngs=rngs, dtype=dtype)
    init = nnx.initializers.truncated_normal(0.02)
    self.cls_token = layers.param(rngs, init, (1, 1, width), (None, None, "embed"))
    self.pos_embed = layers.param(rngs, init, (1, 1 + self.grid ** 2, width),
                                  (None, "pos", "embed"))
    self.mask_token = layers.param(rngs, init, (width,), ("embed",))
    for i in range(depth):
      setattr(self, f"block_{i}", ViTBlock(width, heads, mlp_dim, eps, dropout_rate, rngs=rngs,
                                           dtype=dtype))
    self.norm = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid

  def __call__(self, images: Array, patch_mask: Array | None = None,
               rngs: nnx.Rngs | None = None) -> Array:
    """(B, H, W, 3) normalised images -> (B, 1+N, width) tokens, [CLS] first."""
    x = self.patch_embed(patchify(images, self.patch_size))
    if patch_mask is not None:
      x = jnp.where(patch_mask[..., None], self.mask_token[...].astype(x.dtype), x)
    cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    block_fn = layers.maybe_remat(lambda block, h, r: block(h, r), self.remat)
    for block in layers.stacked(self, "block", self.depth):
      x = block_fn(block, x, rngs)
    return self.norm(x)
