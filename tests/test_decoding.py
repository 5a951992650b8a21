"""Beam and greedy search against brute-force enumeration; the text decoder's causality,
loss and initialisation from a pretrained VLP."""

import itertools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from syncmask_jax import config_lib, decoding
from syncmask_jax.models import decoder as decoder_lib
from syncmask_jax.models import layers
from syncmask_jax.models.vlp import VLP

VOCAB, EOS, MAX_LEN = 5, 4, 4


def _toy_model(prefix_len: int, seed: int = 0, eos_bias: float = 0.0):
  """tokens_to_logits whose logits depend non-linearly on the whole prefix up to `step`
  (and on nothing after it)."""
  total = prefix_len + MAX_LEN
  k1, k2 = jax.random.split(jax.random.key(seed))
  w = jax.random.normal(k1, (total, VOCAB, 8))
  u = jax.random.normal(k2, (8, VOCAB)) * 2.0

  def tokens_to_logits(ids, step):
    seen = (jnp.arange(total) <= step)[None, :, None]
    h = jnp.sum(jnp.where(seen, w[jnp.arange(total)[None], ids], 0.0), axis=1)
    return jnp.tanh(h) @ u + jnp.where(jnp.arange(VOCAB) == EOS, eos_bias, 0.0)

  return tokens_to_logits


def _brute_force(tokens_to_logits, prefix, min_len, kind, alpha):
  """Every finished sequence (EOS-terminated, or max_len long) of each prefix row with
  its score, best first: [(tokens, score)] per row."""
  seqs = []
  for n in range(1, MAX_LEN + 1):
    seqs += [s + (EOS,) for s in itertools.product(range(EOS), repeat=n - 1)]
  seqs += list(itertools.product(range(EOS), repeat=MAX_LEN))
  seqs = [s for s in seqs if EOS not in s[:min_len]]
  out = []
  for row in np.asarray(prefix):
    p = len(row)
    buf = np.zeros((len(seqs), p + MAX_LEN), np.int32)
    buf[:, :p] = row
    for i, s in enumerate(seqs):
      buf[i, p:p + len(s)] = s
    lp = np.stack([np.asarray(jax.nn.log_softmax(tokens_to_logits(jnp.asarray(buf), p - 1 + t)))
                   for t in range(MAX_LEN)], axis=1)  # (S, MAX_LEN, V)
    scored = []
    for i, s in enumerate(seqs):
      total = sum(lp[i, t, tok] for t, tok in enumerate(s))
      scored.append((s, float(total / decoding.length_divisor(kind, len(s), alpha))))
    out.append(sorted(scored, key=lambda x: -x[1]))
  return out


def _padded(s):
  return tuple(s) + (0,) * (MAX_LEN - len(s))


@pytest.mark.parametrize("kind,alpha", [("none", 0.0), ("average", 0.0), ("gnmt", 0.6)])
def test_exhaustive_beam_is_the_brute_force_ranking(kind, alpha):
  # Two rows with different forced prefixes (P = 2): the logits depend on them.
  prefix = jnp.array([[1, 2], [3, 0]], jnp.int32)
  fn = _toy_model(prefix.shape[1])
  min_len = 1
  want = _brute_force(fn, prefix, min_len, kind, alpha)
  beam = len(want[0]) + 3  # more slots than sequences: the tail is -inf
  seqs, scores = decoding.beam_search(fn, prefix, beam_size=beam, max_len=MAX_LEN,
                                      eos_id=EOS, min_len=min_len, length_penalty=kind,
                                      alpha=alpha)
  assert seqs.shape == (2, beam, MAX_LEN) and scores.shape == (2, beam)
  for row in range(2):
    n = len(want[row])
    got = [tuple(int(x) for x in s) for s in np.asarray(seqs[row, :n])]
    assert got == [_padded(s) for s, _ in want[row]]
    np.testing.assert_allclose(scores[row, :n], [sc for _, sc in want[row]], rtol=1e-5)
    assert np.all(np.isneginf(np.asarray(scores[row, n:])))
  # The two prefixes lead to different rankings: the prefix is fed.
  assert want[0][0][0] != want[1][0][0] or want[0][1][0] != want[1][1][0]


@pytest.mark.parametrize("kind", decoding.LENGTH_PENALTIES)
def test_small_beam_returns_correctly_scored_sequences_best_first(kind):
  prefix = jnp.array([[1], [2], [3]], jnp.int32)
  fn = _toy_model(1, seed=3)
  seqs, scores = decoding.beam_search(fn, prefix, beam_size=3, max_len=MAX_LEN, eos_id=EOS,
                                      length_penalty=kind, alpha=0.6)
  want = _brute_force(fn, prefix, 0, kind, 0.6)
  for row in range(3):
    table = {_padded(s): sc for s, sc in want[row]}
    got = [tuple(int(x) for x in s) for s in np.asarray(seqs[row])]
    np.testing.assert_allclose(scores[row], [table[s] for s in got], rtol=1e-5)
    assert np.all(np.diff(np.asarray(scores[row])) <= 0)
    assert len(set(got)) == 3
    assert scores[row, 0] <= want[row][0][1] + 1e-5  # never above the true optimum


def test_greedy_is_argmax_unrolling():
  prefix = jnp.array([[1, 2], [0, 3]], jnp.int32)
  fn = _toy_model(2, seed=5, eos_bias=0.5)
  seqs, scores = decoding.greedy(fn, prefix, max_len=MAX_LEN, eos_id=EOS)
  for row in range(2):
    buf = np.zeros((1, 2 + MAX_LEN), np.int32)
    buf[0, :2] = prefix[row]
    want, total = [], 0.0
    for t in range(MAX_LEN):
      lp = np.asarray(jax.nn.log_softmax(fn(jnp.asarray(buf), 1 + t)))[0]
      tok = int(np.argmax(lp))
      want.append(tok)
      total += lp[tok]
      buf[0, 2 + t] = tok
      if tok == EOS:
        break
    assert [int(x) for x in seqs[row]] == list(_padded(want))
    np.testing.assert_allclose(scores[row], total, rtol=1e-5)


def test_min_len_forbids_early_eos():
  fn = _toy_model(1, seed=1, eos_bias=20.0)  # EOS is nearly certain at every step
  prefix = jnp.array([[1]], jnp.int32)
  seqs, _ = decoding.greedy(fn, prefix, max_len=MAX_LEN, eos_id=EOS)
  assert int(seqs[0, 0]) == EOS
  seqs, _ = decoding.greedy(fn, prefix, max_len=MAX_LEN, eos_id=EOS, min_len=2)
  assert int(seqs[0, 2]) == EOS and EOS not in np.asarray(seqs[0, :2])
  seqs, scores = decoding.beam_search(fn, prefix, beam_size=4, max_len=MAX_LEN, eos_id=EOS,
                                      min_len=2)
  assert not np.any(np.asarray(seqs[0, :, :2]) == EOS)
  np.testing.assert_array_equal(decoding.sequence_lengths(seqs, EOS)[0, 0], 3)
  assert np.all(np.isfinite(np.asarray(scores)))


def test_argument_errors_name_the_field():
  fn = _toy_model(1)
  prefix = jnp.array([[1]], jnp.int32)
  with pytest.raises(ValueError, match="length_penalty='brevity'"):
    decoding.beam_search(fn, prefix, beam_size=2, max_len=3, eos_id=EOS,
                         length_penalty="brevity")
  with pytest.raises(ValueError, match="min_len=5"):
    decoding.greedy(fn, prefix, max_len=3, eos_id=EOS, min_len=5)
  with pytest.raises(ValueError, match="eos_id=9"):
    decoding.greedy(fn, prefix, max_len=MAX_LEN, eos_id=9)
  with pytest.raises(ValueError, match="prefix has shape"):
    decoding.greedy(fn, jnp.zeros((1, 0), jnp.int32), max_len=3, eos_id=EOS)


# ----------------------------------------------------------------------------- decoder


def _cfg():
  cfg = config_lib.model_config("tiny", vocab_size=8)
  cfg.text_dropout = 0.0
  cfg.max_positions = 16
  return cfg


@pytest.fixture(scope="module")
def decoder():
  return decoder_lib.TextDecoder(_cfg(), num_layers=1, encoder_width=64, rngs=nnx.Rngs(0))


def _encoder_states(b=2, s=3):
  states = jax.random.normal(jax.random.key(7), (b, s, 64))
  return states, jnp.array([[1, 1, 1], [1, 1, 0]][:b], jnp.int32)


def test_causal_attention_is_attention_over_the_prefix():
  att = layers.Attention(8, 2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 8))
  y, _ = att(x, causal=True)
  for i in range(5):
    row, _ = att(x[:, :i + 1])  # plain attention over positions 0..i
    np.testing.assert_allclose(y[:, i], row[:, i], rtol=1e-5, atol=1e-6)
  att.implementation = "xla"
  fused, _ = att(x, key_mask=jnp.ones((2, 5), jnp.int32), causal=True)
  np.testing.assert_allclose(fused, y, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="causal=True is for self-attention"):
    att(x, x, causal=True)


def test_decoder_is_causal_and_reads_the_encoder(decoder):
  ids = jnp.array([[2, 5, 6, 7, 3], [2, 4, 4, 3, 0]], jnp.int32)
  mask = jnp.ones_like(ids)
  states, states_mask = _encoder_states()
  logits = decoder(ids, mask, states, states_mask)
  assert logits.shape == (2, 5, 8)
  changed = decoder(ids.at[:, 3].set(1), mask, states, states_mask)
  np.testing.assert_array_equal(changed[:, :3], logits[:, :3])
  assert not np.allclose(changed[:, 3:], logits[:, 3:])
  # Masked encoder states are invisible; visible ones matter.
  other = decoder(ids, mask, states.at[1, 2].set(9.0), states_mask)
  np.testing.assert_array_equal(other[1], logits[1])
  assert not np.allclose(decoder(ids, mask, states.at[0, 2].set(9.0), states_mask)[0],
                         logits[0])
  np.testing.assert_allclose(decoder.next_token_logits(ids, 2, states, states_mask),
                             logits[:, 2], rtol=1e-5, atol=1e-6)


def test_sequence_nll_by_hand():
  logits = jnp.array([[[1.0, 2.0, 0.0], [0.5, 0.5, 3.0]]])
  targets = jnp.array([[1, 0]])
  lp = np.log(np.exp([[1, 2, 0], [0.5, 0.5, 3]]) / np.exp([[1, 2, 0], [0.5, 0.5, 3]]).sum(
      -1, keepdims=True))
  got = decoder_lib.sequence_nll(logits, targets, jnp.array([[1, 1]]))
  np.testing.assert_allclose(got, [-(lp[0, 1] + lp[1, 0])], rtol=1e-6)
  got = decoder_lib.sequence_nll(logits, targets, jnp.array([[0, 1]]), label_smoothing=0.1)
  # Only the second token: 0.9 * (-log p_0) + 0.1 * mean_v(-log p_v).
  np.testing.assert_allclose(got, [-0.9 * lp[1, 0] - 0.1 * lp[1].mean()], rtol=1e-6)
  with pytest.raises(ValueError, match="label_smoothing=1.0"):
    decoder_lib.sequence_nll(logits, targets, jnp.array([[1, 1]]), label_smoothing=1.0)


def test_teacher_forced_nll_is_the_beam_search_score(decoder):
  # The decoder as beam search's model, under jit; each returned sequence's score (no
  # length penalty) is minus the teacher-forced loss of its tokens after the prompt.
  states, states_mask = _encoder_states()
  prefix = jnp.array([[2, 5], [2, 6]], jnp.int32)
  beam, eos, max_len = 3, 3, 4

  @jax.jit
  def search(states, states_mask):
    fn = lambda ids, step: decoder.next_token_logits(
        ids, step, decoding.repeat_for_beams(states, beam),
        decoding.repeat_for_beams(states_mask, beam))
    return decoding.beam_search(fn, prefix, beam_size=beam, max_len=max_len, eos_id=eos)

  seqs, scores = search(states, states_mask)
  ids = jnp.concatenate([jnp.repeat(prefix, beam, 0), seqs.reshape(-1, max_len)], 1)
  lengths = decoding.sequence_lengths(seqs.reshape(-1, max_len), eos)
  target = (jnp.arange(ids.shape[1])[None] >= 2) & (
      jnp.arange(ids.shape[1])[None] < 2 + lengths[:, None])
  nll = decoder.teacher_forced_nll(ids, jnp.ones_like(ids), target,
                                   decoding.repeat_for_beams(states, beam),
                                   decoding.repeat_for_beams(states_mask, beam))
  np.testing.assert_allclose(-nll.reshape(2, beam), scores, rtol=1e-4, atol=1e-5)
  greedy_seqs, greedy_scores = jax.jit(lambda s, m: decoding.greedy(
      lambda ids, step: decoder.next_token_logits(ids, step, s, m), prefix, max_len=max_len,
      eos_id=eos))(states, states_mask)
  assert greedy_seqs.shape == (2, max_len)
  assert np.all(np.asarray(greedy_scores) <= np.asarray(scores[:, 0]) + 1e-5)


def test_init_from_vlp_copies_the_pretrained_tensors():
  cfg = _cfg()
  cfg.text_layers, cfg.fusion_layers = 1, 1
  vlp = nnx.to_pure_dict(nnx.state(VLP(cfg, rngs=nnx.Rngs(1))))
  flat_vlp = flax.traverse_util.flatten_dict(vlp, sep="/")
  for init_layers, depth in (("fusion", 1), ("text+fusion", 2)):
    dec = nnx.to_pure_dict(nnx.state(decoder_lib.TextDecoder(
        cfg, num_layers=depth, encoder_width=cfg.vision_width, rngs=nnx.Rngs(2))))
    before = flax.traverse_util.flatten_dict(dec, sep="/")
    new, copied = decoder_lib.init_from_vlp(vlp, dec, init_layers=init_layers)
    new = flax.traverse_util.flatten_dict(new, sep="/")
    copied = dict(copied)
    last = f"decoder/layer_{depth - 1}"
    pairs = {"embeddings/word": "embeddings/word",
             "lm_head/dense/kernel": "mlm_head/dense/kernel", "lm_head/bias": "mlm_head/bias",
             f"{last}/self_attn/query/kernel": "fusion/layer_0/self_attn/query/kernel",
             f"{last}/cross_attn/key/kernel": "fusion/layer_0/cross_attn/key/kernel",
             f"{last}/mlp_norm/scale": "fusion/layer_0/mlp_norm/scale"}
    if depth == 2:
      pairs["decoder/layer_0/mlp/fc1/kernel"] = "text/layer_0/mlp/fc1/kernel"
      # The text layers have no cross-attention: it stays initialised.
      assert "decoder/layer_0/cross_attn/key/kernel" not in copied
      np.testing.assert_array_equal(new["decoder/layer_0/cross_attn/key/kernel"],
                                    before["decoder/layer_0/cross_attn/key/kernel"])
    for ours, src in pairs.items():
      assert copied[ours] == src
      np.testing.assert_array_equal(new[ours], flat_vlp[src])
      assert not np.array_equal(before[ours], flat_vlp[src]) or ours.endswith(
          ("bias", "scale"))
    # Everything else is copied.
    left = {k for k in new if depth == 2 and k.startswith(("decoder/layer_0/cross_attn/",
                                                           "decoder/layer_0/cross_norm/"))}
    assert len(left) == (10 if depth == 2 else 0)
    assert set(copied) == set(new) - left
  narrow = nnx.to_pure_dict(nnx.state(decoder_lib.TextDecoder(
      cfg, num_layers=1, encoder_width=32, rngs=nnx.Rngs(2))))
  with pytest.raises(ValueError, match="decoder/layer_0/cross_attn/key/kernel.*fusion/layer_0"):
    decoder_lib.init_from_vlp(vlp, narrow)
  with pytest.raises(ValueError, match="num_layers=1"):
    decoder_lib.init_from_vlp(vlp, narrow, init_layers="text+fusion")
