"""Text decoder for the generative downstream tasks: ALBEF's VQA answer decoder and
BLIP's caption decoder.

Both are BERT's `BertLMHeadModel`: BERT embeddings, layers whose self-attention is
causal and which cross-attend to an encoder's states (the image tokens for captioning,
the fused question states for VQA), and the BERT LM head tied to the word embeddings.
Here these are our own `BertEmbeddings`, `BertEncoder(causal=True)` and `MLMHead`, so
`init_from_vlp` can copy a pretrained VLP into the decoder tensor for tensor.

Teacher forcing: `logits[:, t]` predicts `ids[:, t + 1]`. `sequence_nll` sums the token
cross-entropy of one sequence; `TextDecoder.teacher_forced_nll` does the shift, and its
negation (without label smoothing) is the candidate score VQA's answer ranking needs.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from syncmask_jax.models import bert, layers

Array = jax.Array
Params = dict[str, Any]

# Which pretrained layers a decoder of `init_from_vlp` starts from: "fusion" (ALBEF's
# VQA: decoder layer i <- fusion layer i, cross-attention included) or "text+fusion"
# (a decoder as deep as the whole BERT, as BLIP's: the text layers' cross-attention has
# no pretrained counterpart and stays initialised).
INIT_LAYERS = ("fusion", "text+fusion")


class TextDecoder(nnx.Module):
  """Causal BERT with cross-attention to `encoder_width`-wide states and a tied LM head.

  Widths, heads, vocabulary, positions, LayerNorm eps and dropout come from the model
  config (config.model), as the fusion encoder's do.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, num_layers: int, encoder_width: int,
               rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f"num_layers={num_layers}: a decoder needs at least one layer")
    dtype = jnp.dtype(cfg.dtype)
    self.embeddings = bert.BertEmbeddings(
        cfg.vocab_size, cfg.text_width, cfg.max_positions, cfg.type_vocab_size, cfg.text_ln_eps,
        cfg.text_dropout, rngs=rngs, dtype=dtype)
    self.decoder = bert.BertEncoder(
        num_layers, width=cfg.text_width, heads=cfg.text_heads, mlp_dim=cfg.text_mlp_dim,
        eps=cfg.text_ln_eps, dropout_rate=cfg.text_dropout, cross_kv_dim=encoder_width,
        causal=True, remat=cfg.remat, rngs=rngs, dtype=dtype)
    self.lm_head = bert.MLMHead(cfg.text_width, cfg.vocab_size, cfg.text_ln_eps, rngs=rngs,
                                dtype=dtype)
    layers.set_implementations(self, cfg.attention, cfg.dense_vjp)

  def __call__(self, ids: Array, mask: Array, encoder_states: Array,
               encoder_mask: Array | None = None, rngs: nnx.Rngs | None = None) -> Array:
    """(B, T) ids and key mask, (B, S, encoder_width) states and (B, S) key mask (None:
    all valid) -> (B, T, vocab) float32 logits; position t sees ids[:, :t + 1] only."""
    h, _ = self.decoder(self.embeddings(ids, rngs), mask, encoder_states, encoder_mask,
                        rngs=rngs)
    return self.lm_head(h, self.embeddings.word[...])

  def next_token_logits(self, ids: Array, step: Array | int, encoder_states: Array,
                        encoder_mask: Array | None = None) -> Array:
    """(N, vocab) logits of the token after position `step` of each row of `ids`: the
    `tokens_to_logits` of `decoding.beam_search` (encoder states repeated per beam).

    Positions after `step` hold whatever the search has not written yet; the causal
    mask hides them, so every key is marked valid. The whole buffer is recomputed
    (no KV cache, decoding.py); the LM head runs at `step` only.
    """
    h, _ = self.decoder(self.embeddings(ids), jnp.ones(ids.shape, jnp.int32), encoder_states,
                        encoder_mask)
    last = jax.lax.dynamic_index_in_dim(h, step, axis=1, keepdims=True)
    return self.lm_head(last, self.embeddings.word[...])[:, 0]

  def teacher_forced_nll(self, ids: Array, mask: Array, target_mask: Array,
                         encoder_states: Array, encoder_mask: Array | None = None, *,
                         label_smoothing: float = 0.0, rngs: nnx.Rngs | None = None) -> Array:
    """(B,) summed cross-entropy of the tokens ids[:, 1:] where `target_mask` (and `mask`)
    is set, each predicted from the tokens before it.

    `target_mask` (B, T) excludes the BOS and prompt tokens (BLIP's "a picture of ")
    and padding. Without label smoothing, minus this is the log-probability of the
    target tokens given the rest: VQA ranks candidate answers by it.
    """
    logits = self(ids, mask, encoder_states, encoder_mask, rngs)
    loss_mask = target_mask[:, 1:].astype(bool) & mask[:, 1:].astype(bool)
    return sequence_nll(logits[:, :-1], ids[:, 1:], loss_mask, label_smoothing)


def sequence_nll(logits: Array, targets: Array, loss_mask: Array,
                 label_smoothing: float = 0.0) -> Array:
  """Per-sequence summed token cross-entropy: (B, T, V) logits, (B, T) targets and mask
  -> (B,).

  Label smoothing as PyTorch's CrossEntropyLoss (BLIP uses 0.1): the target is
  (1 - eps) one-hot + eps uniform over all V classes, so a token costs
  (1 - eps) (-log p_target) + eps mean_v(-log p_v). Callers weight (VQA's per-answer
  weights) or average (captioning) these sums themselves.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing}: expected 0 <= label_smoothing < 1")
  if logits.shape[:-1] != targets.shape or targets.shape != loss_mask.shape:
    raise ValueError(f"logits {logits.shape}, targets {targets.shape} and loss_mask "
                     f"{loss_mask.shape} disagree: expected (B, T, V), (B, T), (B, T)")
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
  return jnp.sum(jnp.where(loss_mask.astype(bool), nll, 0.0), axis=-1)


# ----------------------------------------------------------------------------- init


def _layer_sources(vlp: dict[str, Any], decoder_layers: int, init_layers: str
                   ) -> list[tuple[str, str, bool]]:
  """(decoder layer, VLP layer, copy its cross-attention) for every decoder layer."""
  if init_layers not in INIT_LAYERS:
    raise ValueError(f"init_layers={init_layers!r}: expected one of {INIT_LAYERS}")
  count = lambda root: sum(1 for k in vlp if k.startswith(f"{root}/layer_")
                           and k.endswith("/self_norm/scale"))
  sources = [(f"fusion/layer_{i}", True) for i in range(count("fusion"))]
  if init_layers == "text+fusion":
    sources = [(f"text/layer_{i}", False) for i in range(count("text"))] + sources
  if len(sources) != decoder_layers:
    raise ValueError(f"init_layers={init_layers!r} gives {len(sources)} pretrained layers "
                     f"but the decoder has num_layers={decoder_layers}")
  return [(f"decoder/layer_{i}", src, cross) for i, (src, cross) in enumerate(sources)]


def init_from_vlp(vlp_params: Params, decoder_params: Params, *, init_layers: str = "fusion"
                  ) -> tuple[Params, list[tuple[str, str]]]:
  """A pretrained VLP's pure params copied into a TextDecoder's pure params
  (`nnx.to_pure_dict` layout), as ALBEF and BLIP initialise their decoders.

  Embeddings <- embeddings; LM head <- the MLM head; decoder layer i <- the VLP layer
  `init_layers` (INIT_LAYERS) assigns it: self-attention, FFN and their LayerNorms
  always, cross-attention and its LayerNorm where that layer has one (VQA's decoder
  cross-attends to 768-wide question states through weights pretrained on 768-wide
  image tokens, as in ALBEF). Returns new params (the inputs are not modified) and the
  (decoder path, VLP path) pairs copied; everything else stays as initialised. A shape
  mismatch is an error naming both parameters.
  """
  vlp = flax.traverse_util.flatten_dict(vlp_params, sep="/")
  out = flax.traverse_util.flatten_dict(decoder_params, sep="/")
  decoder_layers = sum(1 for k in out if k.startswith("decoder/layer_")
                       and k.endswith("/self_norm/scale"))
  renames = [("embeddings/", "embeddings/"), ("lm_head/", "mlm_head/")]
  for ours, src, cross in _layer_sources(vlp, decoder_layers, init_layers):
    parts = ("self_attn", "self_norm", "mlp", "mlp_norm")
    parts += ("cross_attn", "cross_norm") if cross else ()
    renames += [(f"{ours}/{p}/", f"{src}/{p}/") for p in parts]
  copied = []
  for ours_prefix, src_prefix in renames:
    for key in [k for k in out if k.startswith(ours_prefix)]:
      src = src_prefix + key[len(ours_prefix):]
      if src not in vlp:
        raise ValueError(f"decoder parameter {key!r}: the pretrained params lack {src!r}")
      old, new = out[key], vlp[src]
      if tuple(new.shape) != tuple(old.shape):
        raise ValueError(f"decoder parameter {key!r} has shape {tuple(old.shape)}, its "
                         f"pretrained source {src!r} {tuple(new.shape)}")
      # A copy: a tensor shared with the VLP's would be donated twice by a train step.
      new = jnp.array(new, old.dtype, copy=True)
      # Keep the placement of the parameter we replace (a sharded init stays sharded).
      out[key] = jax.device_put(new, old.sharding) if isinstance(old, jax.Array) else new
      copied.append((key, src))
  return flax.traverse_util.unflatten_dict(out, sep="/"), copied
