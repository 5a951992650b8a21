"""BERT text encoder and fusion encoder (post-LN layers, as Hugging Face `BertModel`).

ALBEF splits one 12-layer BERT: layers 0..L_t-1 are the text encoder (self-attention
only), layers L_t..L-1 the fusion encoder, whose layers add a cross-attention block
(text queries, image keys/values) between self-attention and the FFN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from syncmask_jax.models import layers

Array = jax.Array


class BertEmbeddings(nnx.Module):

  def __init__(self, vocab_size: int, width: int, max_positions: int, type_vocab_size: int,
               eps: float, dropout_rate: float, *, rngs: nnx.Rngs, dtype):
    init = nnx.initializers.truncated_normal(0.02)
    self.word = layers.param(rngs, init, (vocab_size, width), ("vocab", "embed"))
    self.position = layers.param(rngs, init, (max_positions, width), ("pos", "embed"))
    # type_vocab_size=0: no token-type table, as LAVIS's ALBEF and BLIP (their `med`
    # BERT); BERT and the original ALBEF add row 0 to every token.
    self.token_type = (layers.param(rngs, init, (type_vocab_size, width), (None, "embed"))
                       if type_vocab_size else None)
    self.norm = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)
    self.dropout_rate = dropout_rate
    self.dtype = dtype

  def __call__(self, ids: Array, rngs: nnx.Rngs | None = None) -> Array:
    t = ids.shape[1]
    if t > self.position.shape[0]:
      raise ValueError(f"text length {t} exceeds max_positions {self.position.shape[0]}")
    x = jnp.take(self.word[...], ids, axis=0) + self.position[:t][None]
    if self.token_type is not None:  # token type 0 everywhere: ALBEF feeds single segments
      x = x + self.token_type[0][None, None]
    return layers.dropout(self.norm(x.astype(self.dtype)), self.dropout_rate, rngs)


class BertLayer(nnx.Module):
  """Self-attention -> [cross-attention to the image] -> FFN, each post-LN with residual.

  `causal` makes the self-attention causal (a left-to-right decoder, BLIP's
  BertLMHeadModel): the same parameters as an encoder layer, so one can be initialised
  from the other.
  """

  def __init__(self, width: int, heads: int, mlp_dim: int, eps: float, dropout_rate: float, *,
               cross_kv_dim: int | None = None, causal: bool = False, rngs: nnx.Rngs, dtype):
    self.self_attn = layers.Attention(width, heads, dropout_rate=dropout_rate, rngs=rngs,
                                      dtype=dtype)
    self.self_norm = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)
    self.has_cross = cross_kv_dim is not None
    if self.has_cross:
      self.cross_attn = layers.Attention(width, heads, kv_dim=cross_kv_dim,
                                         dropout_rate=dropout_rate, rngs=rngs, dtype=dtype)
      self.cross_norm = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)
    self.mlp = layers.MLP(width, mlp_dim, rngs=rngs, dtype=dtype)
    self.mlp_norm = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)
    self.dropout_rate = dropout_rate
    self.causal = causal

  def __call__(self, x: Array, mask: Array, image: Array | None = None,
               image_mask: Array | None = None, rngs: nnx.Rngs | None = None,
               cross_offset: Array | None = None) -> tuple[Array, Array | None]:
    y, _ = self.self_attn(x, key_mask=mask, causal=self.causal, rngs=rngs)
    x = self.self_norm(x + layers.dropout(y, self.dropout_rate, rngs))
    probs = None
    if self.has_cross:
      y, probs = self.cross_attn(x, image, key_mask=image_mask, return_probs=True,
                                 probs_offset=cross_offset, rngs=rngs)
      x = self.cross_norm(x + layers.dropout(y, self.dropout_rate, rngs))
    y = self.mlp(x)
    return self.mlp_norm(x + layers.dropout(y, self.dropout_rate, rngs)), probs


class BertEncoder(nnx.Module):
  """A stack of BertLayers; with `cross_kv_dim` it is the fusion encoder, with `causal`
  too the text decoder."""

  def __init__(self, num_layers: int, width: int, heads: int, mlp_dim: int, eps: float,
               dropout_rate: float, *, cross_kv_dim: int | None = None, causal: bool = False,
               remat: bool = False, rngs: nnx.Rngs, dtype):
    self.num_layers = num_layers
    self.remat = remat
    for i in range(num_layers):
      setattr(self, f"layer_{i}", BertLayer(width, heads, mlp_dim, eps, dropout_rate,
                                            cross_kv_dim=cross_kv_dim, causal=causal,
                                            rngs=rngs, dtype=dtype))

  def __call__(self, x: Array, mask: Array, image: Array | None = None,
               image_mask: Array | None = None, rngs: nnx.Rngs | None = None,
               cross_offset: Array | None = None) -> tuple[Array, Array | None]:
    """Returns hidden states and, for fusion, cross-attention probabilities of every
    layer and head, stacked as (L, B, H, T_text, 1+N). `cross_offset` (same shape, zeros)
    is added to those probabilities (`layers.Attention`)."""
    layer_fn = layers.maybe_remat(lambda layer, *a: layer(*a), self.remat)
    all_probs = []
    for i, layer in enumerate(layers.stacked(self, "layer", self.num_layers)):
      offset = None if cross_offset is None else cross_offset[i]
      x, probs = layer_fn(layer, x, mask, image, image_mask, rngs, offset)
      if probs is not None:
        all_probs.append(probs)
    return x, (jnp.stack(all_probs) if all_probs else None)


class MLMHead(nnx.Module):
  """BERT LM head: dense + GELU + LayerNorm, decoder tied to the word embeddings."""

  def __init__(self, width: int, vocab_size: int, eps: float, *, rngs: nnx.Rngs, dtype):
    self.dense = layers.Dense(width, width, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.norm = layers.LayerNorm(width, eps, rngs=rngs, dtype=dtype)
    self.bias = layers.param(rngs, nnx.initializers.zeros, (vocab_size,), ("vocab",))

  def __call__(self, x: Array, word_embeddings: Array) -> Array:
    h = self.norm(layers.gelu(self.dense(x)))
    logits = jnp.dot(h, word_embeddings.astype(h.dtype).T)
    return (logits + self.bias[...].astype(h.dtype)).astype(jnp.float32)
