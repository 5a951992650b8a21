"""Tokenizer: encoding values, text cleaning, file formats, the SynthFashion vocab."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import implementations

from syncmask_jax import tokenizer as tokenizer_lib
from syncmask_jax.data import synthfashion

_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "dress", "with", "a",
          "pocket", "##s", "cafe", "on", "the", "back", ".", "'", "s", "women", "中"]


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("".join(t + "\n" for t in _VOCAB), encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def tok(vocab_path) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.Tokenizer.from_file(vocab_path)


def _id(token: str) -> int:
  return _VOCAB.index(token)


def test_special_ids(tok):
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == len(_VOCAB)


def test_encode_ids_mask_special_and_padding(tok):
  text = "Red dress with pockets."
  out = tok.encode([text, "Zebra"], max_len=10)
  assert {k: v.dtype for k, v in out.items()} == dict(
      ids=np.int32, mask=np.int32, offsets=np.int32, special=np.bool_)
  want = [_id(t) for t in ("[CLS]", "red", "dress", "with", "pocket", "##s", ".", "[SEP]")]
  np.testing.assert_array_equal(out["ids"][0], want + [0, 0])
  np.testing.assert_array_equal(out["mask"][0], [1] * 8 + [0, 0])
  np.testing.assert_array_equal(out["special"][0], [1, 0, 0, 0, 0, 0, 0, 1, 1, 1])
  # An unknown word is one [UNK], not dropped.
  np.testing.assert_array_equal(out["ids"][1], [2, 1, 3] + [0] * 7)
  np.testing.assert_array_equal(out["mask"][1], [1, 1, 1] + [0] * 7)


def test_offsets_map_to_substrings(tok):
  text = "Women's red DRESS with a pocket on the back."
  out = tok.encode([text], max_len=20)
  ids, offsets, special = out["ids"][0], out["offsets"][0], out["special"][0]
  got = [text[s:e] for (s, e), sp in zip(offsets, special) if not sp]
  assert got == ["Women", "'", "s", "red", "DRESS", "with", "a", "pocket", "on", "the",
                 "back", "."]
  assert ids[0] == 2 and ids[13] == 3 and np.all(ids[14:] == 0)
  assert np.all(offsets[special] == 0)
  # "pockets": the ## piece maps to the trailing "s" only.
  out = tok.encode(["pockets"], max_len=5)
  np.testing.assert_array_equal(out["offsets"][0, 1:3], [[0, 6], [6, 7]])


def test_accents_and_chinese_chars_as_bert_uncased(tok):
  text = "CAFÉ中red"
  out = tok.encode([text], max_len=6)
  np.testing.assert_array_equal(out["ids"][0], [2, _id("cafe"), _id("中"), _id("red"), 3, 0])
  np.testing.assert_array_equal(out["offsets"][0, 1:4], [[0, 4], [4, 5], [5, 8]])


def test_truncation_keeps_sep_last(tok):
  out = tok.encode(["red dress with a pocket on the back", "red"], max_len=5)
  np.testing.assert_array_equal(
      out["ids"][0], [2, _id("red"), _id("dress"), _id("with"), 3])
  np.testing.assert_array_equal(out["mask"][0], [1] * 5)
  np.testing.assert_array_equal(out["special"][0], [1, 0, 0, 0, 1])
  np.testing.assert_array_equal(out["ids"][1], [2, _id("red"), 3, 0, 0])
  # A different max_len on the same tokenizer is independent of the first.
  assert tok.encode(["red dress with a pocket"], max_len=9)["ids"].shape == (1, 9)


def test_empty_batch_and_bad_max_len(tok):
  out = tok.encode([], max_len=4)
  assert out["ids"].shape == (0, 4) and out["offsets"].shape == (0, 4, 2)
  with pytest.raises(ValueError, match="max_len"):
    tok.encode(["red"], max_len=1)


def test_clean_text_latin1_bytes_and_html():
  raw = "Caf\xe9 dress<br>with a pocket&amp;belt.<br/><p>Size &lt; 5</p>\n\t".encode("latin-1")
  assert tokenizer_lib.clean_text(raw) == "Café dress with a pocket&belt. Size < 5"
  assert tokenizer_lib.clean_text("  a <BR />  b &nbsp; c ") == "a b c"
  assert tokenizer_lib.clean_text("i <3 it") == "i <3 it"


@pytest.mark.parametrize("text", ["", "   ", b"<br>", b" <br/> &nbsp; <p></p>"])
def test_clean_text_empty_raises(text):
  with pytest.raises(ValueError, match="empty"):
    tokenizer_lib.clean_text(text)


def test_tokenizer_json_matches_vocab_txt(vocab_path, tok, tmp_path):
  # The reference BERT pipeline of the tokenizers library, saved as tokenizer.json.
  json_path = str(tmp_path / "tokenizer.json")
  implementations.BertWordPieceTokenizer(vocab_path, lowercase=True).save(json_path)
  from_json = tokenizer_lib.Tokenizer.from_file(json_path)
  texts = ["Women's red CAFÉ dress with pockets.", "a 中 zebra on the back"]
  a, b = tok.encode(texts, max_len=12), from_json.encode(texts, max_len=12)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert from_json.mask_id == 4 and from_json.vocab_size == len(_VOCAB)


def test_missing_special_token_raises(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nred\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"\[MASK\]"):
    tokenizer_lib.Tokenizer.from_file(str(path))


def test_synthfashion_vocab_covers_every_word_and_is_deterministic(tmp_path):
  path = synthfashion.vocab_file(str(tmp_path / "a"))
  assert os.path.basename(path) == "vocab.txt"
  content = open(path, "rb").read()
  assert synthfashion.vocab_file(str(tmp_path / "a")) == path
  assert content.decode().split("\n")[:5] == list(tokenizer_lib.SPECIAL_TOKENS)
  # The trainer's merge order depends on a per-process hash seed: train again in a
  # fresh process and require the same bytes.
  code = ("import sys; from syncmask_jax.data import synthfashion as sf; "
          "print(sf.vocab_file(sys.argv[1]))")
  other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True,
                         capture_output=True, text=True).stdout.strip()
  assert other != path and open(other, "rb").read() == content

  tok = tokenizer_lib.Tokenizer.from_file(path)
  words = synthfashion.vocabulary()
  out = tok.encode(words, max_len=8)
  assert not np.any(out["ids"] == tok.unk_id)
  # Each word's pre-tokens ("women's" -> women ' s) are single tokens.
  for word, ids, mask in zip(words, out["ids"], out["mask"]):
    pieces = [tok.id_to_token(i) for i in ids[1:mask.sum() - 1]]
    assert not any(p.startswith("##") for p in pieces), (word, pieces)
  texts = synthfashion.descriptions(40, seed=3, split="val")
  assert not np.any(tok.encode(texts, max_len=64)["ids"] == tok.unk_id)
