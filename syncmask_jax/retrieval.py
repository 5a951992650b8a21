"""One retrieval scorer for every protocol: ranks of the best positive, R@k.

A query may have several positives (any view of the product, any of 5 captions); it
hits at k when its best-scored positive ranks within the top k. Ties are counted
against the query: the rank of the best positive is the number of non-positives
scoring >= it. A model that scores everything equal gets R@1 = 0, not 1.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def best_positive_rank(scores: jax.Array, positives: jax.Array) -> jax.Array:
  """(Q, G) scores and bool positives -> (Q,) 0-based rank of each query's best positive.

  A query without any positive gets rank G (never a hit).
  """
  scores = scores.astype(jnp.float32)
  best = jnp.max(jnp.where(positives, scores, -jnp.inf), axis=1, keepdims=True)
  ahead = jnp.sum((scores >= best) & ~positives, axis=1)
  return jnp.where(jnp.any(positives, axis=1), ahead, scores.shape[1])


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  ranks = np.asarray(ranks)
  return {f"r{k}": float(np.mean(ranks < k) * 100.0) for k in ks}


def bidirectional_recall(sim_i2t: np.ndarray | jax.Array, positives: np.ndarray,
                         ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """i2t and t2i R@k (in %) of an (images, texts) score matrix, and their mean."""
  positives = jnp.asarray(positives, bool)
  i2t = recall_at_k(np.asarray(best_positive_rank(jnp.asarray(sim_i2t), positives)), ks)
  t2i = recall_at_k(np.asarray(best_positive_rank(jnp.asarray(sim_i2t).T, positives.T)), ks)
  out = {f"i2t_{k}": v for k, v in i2t.items()}
  out.update({f"t2i_{k}": v for k, v in t2i.items()})
  out["r_mean"] = float(np.mean(list(i2t.values()) + list(t2i.values())))
  return out
