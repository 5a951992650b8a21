"""The ITC feature queues (MoCo/ALBEF): momentum features and product ids of past batches.

Unlike ALBEF, which starts from random features, slots start empty and are masked out
of the contrastive softmax until filled (`valid`), so no fake negatives enter early.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_queue(size: int, dim: int) -> dict:
  return {
      "image_feat": jnp.zeros((size, dim), jnp.float32),
      "text_feat": jnp.zeros((size, dim), jnp.float32),
      "product_id": jnp.full((size,), -1, jnp.int32),
      "valid": jnp.zeros((size,), bool),
      "ptr": jnp.zeros((), jnp.int32),
  }


def enqueue(queue: dict, image_feat: jax.Array, text_feat: jax.Array,
            product_id: jax.Array) -> dict:
  """Writes a (global) batch at `ptr`; the oldest batch is overwritten first."""
  ptr = queue["ptr"]
  b = image_feat.shape[0]
  write = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), ptr, 0)
  return {
      "image_feat": write(queue["image_feat"], image_feat),
      "text_feat": write(queue["text_feat"], text_feat),
      "product_id": write(queue["product_id"], product_id),
      "valid": write(queue["valid"], jnp.ones((b,), bool)),
      "ptr": (ptr + b) % queue["valid"].shape[0],
  }
