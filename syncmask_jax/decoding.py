"""Autoregressive decoding for the generative tasks (captioning, VQA answer generation):
beam search and greedy search with fixed shapes under `jax.jit`.

The beam search is the published algorithm of Flax's WMT example (examples/wmt/
decode.py): per example, `beam_size` alive beams and `beam_size` finished ones; each
step expands the alive beams, keeps the best 2 * beam_size expansions (so that
beam_size of them are not EOS), moves those ending in EOS to the finished set scored
with the length penalty, and stops once no alive beam can still beat the worst
finished one. Two choices differ from Flax's and follow Hugging Face's `generate`
(which BLIP uses): a beam that reaches `max_len` without EOS is a finished candidate
(truncated captions are returned, not dropped), and `min_len` forbids EOS by setting
its log-probability to -inf after the softmax (the other tokens keep the model's
probabilities).

The model is a callback `tokens_to_logits(ids, step) -> (N, vocab)`: `ids` (N, P +
max_len) is the whole token buffer of N = batch * beam_size rows, the forced prefix
(P >= 1 tokens: BOS, or BOS and a prompt such as BLIP's "a picture of ") in the first
P columns and the tokens generated so far after it; the callback returns the logits
of the token after position `step` (`TextDecoder.next_token_logits`). Rows are batch-
major (row b * beam_size + k), so encoder states are repeated with `repeat_for_beams`.

No KV cache: every step recomputes the decoder over the whole (P + max_len)-long
buffer, max_len forward passes of a fixed shape, O(max_len * (P + max_len)) token
positions instead of O(P + max_len). For our captions and answers (tens of tokens) this
keeps one compiled shape and the decoder unchanged, at a few times the FLOPs of a
cached decoder.

Scoring given candidates (VQA's answer ranking) is teacher forcing, not search:
`models.decoder.TextDecoder.teacher_forced_nll` (its negation is the log-probability).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
TokensToLogits = Callable[[Array, Array], Array]

# How finished sequences of length n (generated tokens, EOS included) are ranked, from
# their summed log-probability lp: "none" lp; "average" lp / n; "gnmt" lp / ((5 + n)
# / 6) ** alpha (Wu et al. 2016, Flax WMT's brevity penalty).
LENGTH_PENALTIES = ("none", "average", "gnmt")


def length_divisor(kind: str, length: Array | int, alpha: float) -> Array:
  """The divisor of LENGTH_PENALTIES for `length` generated tokens."""
  length = jnp.asarray(length, jnp.float32)
  if kind == "none":
    return jnp.ones_like(length)
  if kind == "average":
    return length
  if kind == "gnmt":
    return ((5.0 + length) / 6.0) ** alpha
  raise ValueError(f"length_penalty={kind!r}: expected one of {LENGTH_PENALTIES}")


def repeat_for_beams(x: Array, beam_size: int) -> Array:
  """(B, ...) -> (B * beam_size, ...), row b * beam_size + k: the callback's row order."""
  return jnp.repeat(x, beam_size, axis=0)


def sequence_lengths(sequences: Array, eos_id: int) -> Array:
  """Generated tokens up to and including the first EOS (all of them if none)."""
  is_eos = sequences == eos_id
  return jnp.where(is_eos.any(-1), jnp.argmax(is_eos, axis=-1) + 1, sequences.shape[-1])


def _check(prefix: Array, max_len: int, min_len: int, eos_id: int) -> None:
  if prefix.ndim != 2 or prefix.shape[1] < 1:
    raise ValueError(f"prefix has shape {prefix.shape}: expected (batch, P) with P >= 1 "
                     "(at least the BOS token)")
  if max_len < 1:
    raise ValueError(f"max_len={max_len}: expected >= 1")
  if not 0 <= min_len <= max_len:
    raise ValueError(f"min_len={min_len}: expected 0 <= min_len <= max_len={max_len}")
  if eos_id < 0:
    raise ValueError(f"eos_id={eos_id}: expected a token id >= 0")


def _next_log_probs(tokens_to_logits: TokensToLogits, ids: Array, prefix_len: int, t: Array,
                    eos_id: int, min_len: int) -> Array:
  """(N, vocab) log-probabilities of generated token t (0-based); EOS -inf while t <
  min_len."""
  logits = tokens_to_logits(ids, prefix_len - 1 + t)
  vocab = logits.shape[-1]
  if not 0 <= eos_id < vocab:
    raise ValueError(f"eos_id={eos_id} is outside the vocabulary of {vocab} logits")
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  forbid = (jnp.arange(vocab) == eos_id) & (t < min_len)
  return jnp.where(forbid, -jnp.inf, log_probs)


def _buffer(prefix: Array, rows: int, max_len: int, pad_id: int) -> Array:
  return jnp.concatenate([jnp.repeat(prefix, rows, axis=0).astype(jnp.int32),
                          jnp.full((prefix.shape[0] * rows, max_len), pad_id, jnp.int32)], 1)


def greedy(tokens_to_logits: TokensToLogits, prefix: Array, *, max_len: int, eos_id: int,
           min_len: int = 0, pad_id: int = 0) -> tuple[Array, Array]:
  """Argmax decoding until EOS or `max_len` tokens: ((B, max_len) tokens after the
  prefix, EOS included, then `pad_id`; (B,) summed log-probabilities).

  Not beam_search(beam_size=1): that keeps an EOS expansion as a finished candidate
  while continuing the best other token, and may return it over the argmax path.
  """
  _check(prefix, max_len, min_len, eos_id)
  b, p = prefix.shape

  def body(state):
    t, ids, done, score = state
    log_probs = _next_log_probs(tokens_to_logits, ids, p, t, eos_id, min_len)
    tok = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    score = score + jnp.where(done, 0.0, jnp.max(log_probs, axis=-1))
    tok = jnp.where(done, pad_id, tok)
    ids = ids.at[:, p + t].set(tok)
    return t + 1, ids, done | (tok == eos_id), score

  state = (jnp.int32(0), _buffer(prefix, 1, max_len, pad_id), jnp.zeros((b,), bool),
           jnp.zeros((b,), jnp.float32))
  _, ids, _, score = jax.lax.while_loop(
      lambda s: (s[0] < max_len) & ~jnp.all(s[2]), body, state)
  return ids[:, p:], score


def beam_search(tokens_to_logits: TokensToLogits, prefix: Array, *, beam_size: int,
                max_len: int, eos_id: int, min_len: int = 0, length_penalty: str = "none",
                alpha: float = 0.6, pad_id: int = 0) -> tuple[Array, Array]:
  """Beam search (module docstring): ((B, beam_size, max_len) sequences, (B, beam_size)
  scores), best first.

  Sequences are the generated tokens only (the prefix is fed, never scored or
  returned), EOS included, then `pad_id`; a sequence without EOS was cut at `max_len`.
  EOS may not be any of the first `min_len` tokens. Scores are summed log-probabilities
  divided by `length_divisor(length_penalty, n, alpha)` (LENGTH_PENALTIES); -inf marks
  slots no sequence filled (beam_size above the number of possible sequences).
  """
  _check(prefix, max_len, min_len, eos_id)
  if beam_size < 1:
    raise ValueError(f"beam_size={beam_size}: expected >= 1")
  if alpha < 0:
    # The stopping bound assumes the penalty grows with length.
    raise ValueError(f"alpha={alpha}: expected >= 0")
  divisor = lambda n: length_divisor(length_penalty, n, alpha)
  divisor(1)  # validates the kind before tracing
  b, p = prefix.shape
  k = beam_size

  def cond(state):
    t, _, alive_lp, _, finished = state
    # Log-probabilities only fall and the penalty only grows: no alive beam can end
    # above its current log-probability over the penalty of the longest sequence.
    best_alive = jnp.max(alive_lp, axis=1) / divisor(max_len)
    done = jnp.min(finished, axis=1) > best_alive
    return (t < max_len) & ~jnp.all(done)

  def body(state):
    t, ids, alive_lp, seqs, finished = state
    log_probs = _next_log_probs(tokens_to_logits, ids.reshape(b * k, -1), p, t, eos_id,
                                min_len)
    vocab = log_probs.shape[-1]
    if vocab < 2:
      raise ValueError(f"beam search needs a vocabulary of >= 2 tokens, got {vocab}")
    expanded = (alive_lp[:, :, None] + log_probs.reshape(b, k, vocab)).reshape(b, k * vocab)
    top_lp, top = jax.lax.top_k(expanded, 2 * k)
    tok = (top % vocab).astype(jnp.int32)
    top_ids = jnp.take_along_axis(ids, (top // vocab)[:, :, None], axis=1)
    top_ids = top_ids.at[:, :, p + t].set(tok)
    is_eos = tok == eos_id

    alive_lp, keep = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, top_lp), k)
    ids = jnp.take_along_axis(top_ids, keep[:, :, None], axis=1)

    ends = is_eos | (t == max_len - 1)
    candidates = jnp.where(ends, top_lp / divisor(t + 1), -jnp.inf)
    finished, keep = jax.lax.top_k(jnp.concatenate([finished, candidates], axis=1), k)
    seqs = jnp.take_along_axis(jnp.concatenate([seqs, top_ids[:, :, p:]], axis=1),
                               keep[:, :, None], axis=1)
    return t + 1, ids, alive_lp, seqs, finished

  # Only beam 0 starts alive: the others would duplicate its expansions.
  alive_lp = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(b, axis=0)
  state = (jnp.int32(0), _buffer(prefix, k, max_len, pad_id).reshape(b, k, -1), alive_lp,
           jnp.full((b, k, max_len), pad_id, jnp.int32), jnp.full((b, k), -jnp.inf))
  _, _, _, seqs, finished = jax.lax.while_loop(cond, body, state)
  return seqs, finished
