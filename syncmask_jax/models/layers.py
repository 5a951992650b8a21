"""Building blocks shared by the ViT, BERT and fusion encoders.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata; `sharding.py` maps
these names to mesh axes through the config's rules table. Compute runs in `dtype`
(float32 or bfloat16); parameters stay float32.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from syncmask_jax.config_lib import ATTENTION_IMPLEMENTATIONS, DENSE_VJPS

Array = jax.Array


def param(rngs: nnx.Rngs | None, init: Callable, shape: tuple[int, ...],
          axes: tuple[str | None, ...]) -> nnx.Param:
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(init(key, shape, jnp.float32), logical_axes=axes)


def dropout(x: Array, rate: float, rngs: nnx.Rngs | None) -> Array:
  """Inverted dropout; deterministic when `rngs` is None (evaluation, momentum model)."""
  if rngs is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def gelu(x: Array) -> Array:
  # BERT and ViT checkpoints use the exact erf GELU, not the tanh approximation. Written
  # with erf as PyTorch does: jax.nn.gelu's erfc form lowers on CPU to piecewise exp
  # code that keeps extra (B, T, mlp) buffers alive (benchmarks/RESULTS.md: -11% peak
  # memory on `small`).
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def dense_autodiff(x: Array, kernel: Array, bias: Array) -> Array:
  """x @ kernel + bias over the last axis of x (any leading shape)."""
  return jnp.dot(x, kernel) + bias


@jax.custom_vjp
def dense(x: Array, kernel: Array, bias: Array) -> Array:
  """`dense_autodiff` with the backward below (config.model.dense_vjp="custom")."""
  return dense_autodiff(x, kernel, bias)


def _dense_fwd(x: Array, kernel: Array, bias: Array):
  # The kernel gradient contracts the token axes: kept as x^T (din, N), it is a plain
  # GEMM with the incoming gradient. Left to autodiff, XLA:CPU instead transposes the
  # gradient, and fuses into every transposing copy the whole elementwise chain that
  # produced it (the residual stream's gradient through all later blocks): -13% step
  # time on `small` (benchmarks/RESULTS.md).
  return dense(x, kernel, bias), (x.reshape(-1, x.shape[-1]).T, kernel)


def _dense_bwd(res, g: Array):
  x_t, kernel = res
  g2 = g.reshape(-1, g.shape[-1])
  return jnp.dot(g, kernel.T), jnp.dot(x_t, g2), jnp.sum(g2, axis=0)


dense.defvjp(_dense_fwd, _dense_bwd)

# config.model.dense_vjp (config_lib.DENSE_VJPS says why each) -> its implementation.
_DENSE_FNS = {"custom": dense, "autodiff": dense_autodiff}


class Dense(nnx.Module):

  def __init__(self, din: int, dout: int, axes: tuple[str | None, str | None], *,
               rngs: nnx.Rngs, dtype=jnp.float32, std: float | None = None):
    # Default: LeCun fan-in scaling (Flax's default). BERT's fixed 0.02 leaves a small
    # model trained from scratch with near-uniform attention, so [CLS] sees nothing of
    # the caption and every caption gets the same ITC feature for hundreds of steps.
    # Pretrained checkpoints overwrite this init anyway.
    std = din ** -0.5 if std is None else std
    self.kernel = param(rngs, nnx.initializers.truncated_normal(std), (din, dout), axes)
    self.bias = param(rngs, nnx.initializers.zeros, (dout,), (axes[1],))
    self.dtype = dtype
    self.vjp = "custom"  # DENSE_VJPS; set_implementations

  def __call__(self, x: Array) -> Array:
    return _DENSE_FNS[self.vjp](x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                               self.bias[...].astype(self.dtype))


def _layer_norm_stats(x: Array, eps: float) -> tuple[Array, Array]:
  x_c = x - x.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(x_c).mean(-1, keepdims=True) + eps)
  return x_c * rstd, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis (float32 inputs)."""
  x_hat, _ = _layer_norm_stats(x, eps)
  return x_hat * scale + bias


def _layer_norm_fwd(x: Array, scale: Array, bias: Array, eps: float):
  x_hat, rstd = _layer_norm_stats(x, eps)
  return x_hat * scale + bias, (x_hat, rstd, scale)


def _layer_norm_bwd(eps: float, res, dy: Array):
  # The closed form, two row reductions. Autodiff of the two-pass statistics keeps more
  # (B, T, D) intermediates: -10% bytes accessed, -7% peak memory, -5% fused kernels on
  # `small` (benchmarks/RESULTS.md).
  del eps
  x_hat, rstd, scale = res
  g = dy * scale
  dx = rstd * (g - g.mean(-1, keepdims=True) - x_hat * (g * x_hat).mean(-1, keepdims=True))
  rows = tuple(range(dy.ndim - 1))
  return dx, jnp.sum(dy * x_hat, axis=rows), jnp.sum(dy, axis=rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",))
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("norm",))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: Array) -> Array:
    # Statistics in float32 even under bf16 compute: LN variance underflows in bf16.
    y = layer_norm(x.astype(jnp.float32), self.scale[...], self.bias[...], self.eps)
    return y.astype(self.dtype)


_FUSED_BLOCK = 64  # sequences are zero-padded to a multiple of this for the fused call


def _check_implementation(implementation: str) -> str:
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"config.model.attention={implementation!r}: expected one of "
                     f"{ATTENTION_IMPLEMENTATIONS}")
  return implementation


def fused_attention(q: Array, k: Array, v: Array, key_mask: Array | None,
                    implementation: str, causal: bool = False) -> Array:
  """(B, Tq, H, D) attention through `jax.nn.dot_product_attention`.

  Key padding goes in as lengths, so `key_mask` must be a prefix mask (padding at the
  end), as every key mask of this model is (BERT padding). Queries and keys are
  zero-padded to a multiple of 64 and given their real lengths: cuDNN refuses odd
  lengths such as ViT's 257 tokens. The causal mask survives that padding: padding
  comes after every real position, so a real query never sees it.
  """
  b, tq, tk = q.shape[0], q.shape[1], k.shape[1]
  kv_len = (jnp.full((b,), tk, jnp.int32) if key_mask is None
            else jnp.sum(key_mask.astype(jnp.int32), axis=-1))
  pad = lambda a: jnp.pad(a, ((0, 0), (0, -a.shape[1] % _FUSED_BLOCK), (0, 0), (0, 0)))
  y = jax.nn.dot_product_attention(
      pad(q), pad(k), pad(v), query_seq_lengths=jnp.full((b,), tq, jnp.int32),
      key_value_seq_lengths=kv_len, is_causal=causal, implementation=implementation)
  return y[:, :tq]


class Attention(nnx.Module):
  """Multi-head attention; one implementation for self- and cross-attention.

  `context=None` is self-attention; otherwise queries come from `x` and keys/values
  from `context` (whose width `kv_dim` may differ, e.g. text queries on ViT tokens).
  Returns the output and, when asked, the attention probabilities (B, H, Tq, Tk):
  SyncMask and SemMIM read the fusion encoder's cross-attention from here. Calls
  without probabilities or dropout use `implementation` (ATTENTION_IMPLEMENTATIONS).
  `causal=True` (self-attention only: the text decoder) lets query i see keys <= i.
  """

  def __init__(self, dim: int, num_heads: int, *, kv_dim: int | None = None,
               dropout_rate: float = 0.0, rngs: nnx.Rngs, dtype=jnp.float32,
               implementation: str = "einsum"):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
    kv_dim = kv_dim or dim
    self.query = Dense(dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
    self.key = Dense(kv_dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
    self.value = Dense(kv_dim, dim, ("embed", "heads"), rngs=rngs, dtype=dtype)
    self.out = Dense(dim, dim, ("heads", "embed"), rngs=rngs, dtype=dtype)
    self.num_heads = num_heads
    self.dropout_rate = dropout_rate
    self.dtype = dtype
    self.implementation = _check_implementation(implementation)

  def __call__(self, x: Array, context: Array | None = None, key_mask: Array | None = None,
               *, return_probs: bool = False, probs_offset: Array | None = None,
               causal: bool = False, rngs: nnx.Rngs | None = None
               ) -> tuple[Array, Array | None]:
    """`probs_offset` (B, H, Tq, Tk), zeros, is added to the probabilities: the gradient
    with respect to it is the gradient with respect to the probabilities (Grad-CAM)."""
    if causal and context is not None:
      raise ValueError("causal=True is for self-attention; cross-attention (context) has "
                       "no common time axis")
    context = x if context is None else context
    b, tq, d = x.shape
    h = self.num_heads
    q = self.query(x).reshape(b, tq, h, d // h)
    k = self.key(context).reshape(b, context.shape[1], h, d // h)
    v = self.value(context).reshape(b, context.shape[1], h, d // h)
    dropout_on = rngs is not None and self.dropout_rate > 0.0
    if (self.implementation != "einsum" and not return_probs and not dropout_on
        and probs_offset is None):
      y = fused_attention(q, k, v, key_mask, self.implementation, causal)
      return self.out(y.reshape(b, tq, d)), None
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(d // h)
    if key_mask is not None:
      # A large finite bias, not -inf: a fully padded row must give finite values.
      logits = jnp.where(key_mask[:, None, None, :].astype(bool), logits, -1e9)
    if causal:
      logits = jnp.where(jnp.tril(jnp.ones((tq, tq), bool)), logits, -1e9)
    probs = jax.nn.softmax(logits, axis=-1)
    if probs_offset is not None:
      probs = probs + probs_offset
    attn = dropout(probs, self.dropout_rate, rngs).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, tq, d)
    return self.out(y), (probs if return_probs else None)


class MLP(nnx.Module):

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.fc1 = Dense(dim, hidden, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.fc2 = Dense(hidden, dim, ("mlp", "embed"), rngs=rngs, dtype=dtype)

  def __call__(self, x: Array) -> Array:
    return self.fc2(gelu(self.fc1(x)))


def set_implementations(module: nnx.Module, attention: str = "einsum",
                        dense_vjp: str = "custom") -> None:
  """Sets `attention` (config.model.attention) on every Attention inside `module` and
  `dense_vjp` (config.model.dense_vjp) on every Dense."""
  _check_implementation(attention)
  if dense_vjp not in DENSE_VJPS:
    raise ValueError(f"config.model.dense_vjp={dense_vjp!r}: expected one of "
                     f"{tuple(DENSE_VJPS)}")
  for _, node in nnx.iter_graph(module):
    if isinstance(node, Attention):
      node.implementation = attention
    elif isinstance(node, Dense):
      node.vjp = dense_vjp


def stacked(module: nnx.Module, prefix: str, count: int) -> list[nnx.Module]:
  """The `prefix_0..prefix_{count-1}` children: layers live as named attributes (not
  lists) so parameter paths are strings (`text/layer_3/...`) for regex policies and
  checkpoints."""
  return [getattr(module, f"{prefix}_{i}") for i in range(count)]


def maybe_remat(fn: Callable, enabled: bool) -> Callable:
  return nnx.remat(fn) if enabled else fn
