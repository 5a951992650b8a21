"""The captioning task (tasks/captioning.py): BLIP's loss with the prompt left out of the
targets, the decoder initialised from a pretraining checkpoint, detokenisation, config
checks, and a 2-step fine-tune on SynthFashion captions scored with the COCO metrics."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from syncmask_jax import caption_eval, config_lib, evaluate, finetune
from syncmask_jax.checkpoint_import import released
from syncmask_jax.data import captions, pipeline
from syncmask_jax.tasks import captioning

from configs import finetune_captioning
import fakes  # pylint: disable=g-bad-import-order


def _config(tmp=None, **captioning_fields):
  c = fakes.shrink(finetune_captioning.get_config("data=synthfashion,size=tiny,steps=2"))
  c.data.synth_train_products = 4
  c.data.synth_val_products = 2
  c.queue_size = 8
  c.captioning.beam_size = 2
  c.captioning.max_length = 6
  c.captioning.update(captioning_fields)
  if tmp is not None:
    c.init_checkpoint = str(tmp / "pretrain" / "checkpoints")
  pipeline.resolve_vocab(c)
  return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A pretraining checkpoint of the tiny model with the SynthFashion vocabulary."""
  tmp = tmp_path_factory.mktemp("captioning")
  pre = config_lib.default_config()
  pre.model.vision_depth = 1
  pre.model.vocab_size = pipeline.make_tokenizer(pre).vocab_size
  state = fakes.save_pretraining_checkpoint(str(tmp / "pretrain" / "checkpoints"), pre)
  return tmp, state["params"]


def test_with_prompt_by_hand():
  ids = np.array([[2, 5, 6, 3, 0], [2, 9, 3, 0, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  out_ids, out_mask, target = jax.device_get(captioning.with_prompt(ids, mask, (7, 8)))
  np.testing.assert_array_equal(out_ids, [[2, 7, 8, 5, 6, 3, 0], [2, 7, 8, 9, 3, 0, 0]])
  np.testing.assert_array_equal(out_mask, [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(target, [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0]])
  out_ids, out_mask, target = jax.device_get(captioning.with_prompt(ids, mask, ()))
  np.testing.assert_array_equal(out_ids, ids)
  np.testing.assert_array_equal(out_mask, mask)
  np.testing.assert_array_equal(target, mask * [0, 1, 1, 1, 1])


def test_loss_is_the_mean_token_cross_entropy_without_the_prompt():
  c = _config()
  graphdef, params = nnx.split(captioning.CaptionModel(c.model, "fusion",
                                                       rngs=nnx.Rngs(params=0)))
  rs = np.random.RandomState(0)
  ids = np.array([[2, 20, 21, 22, 3, 0], [2, 30, 3, 0, 0, 0]], np.int32)
  batch = {"image": rs.randn(2, 64, 64, 3).astype(np.float32), "text_ids": ids,
           "text_mask": (ids > 0).astype(np.int32)}
  prompt = (40, 41)
  # By hand: the decoder reads [CLS] 40 41 caption [SEP]; the targets are the caption
  # and [SEP] (4 + 2 tokens), each predicted from the logits one position earlier.
  full = np.array([[2, 40, 41, 20, 21, 22, 3, 0], [2, 40, 41, 30, 3, 0, 0, 0]], np.int32)

  @jax.jit
  def logits_fn(params):
    model = nnx.merge(graphdef, params)
    return model.text_decoder(full, (full > 0).astype(np.int32),
                              model.encode_image(batch["image"]))

  logits = np.asarray(logits_fn(params), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  for smoothing in (0.0, 0.1):
    loss, aux = jax.jit(lambda p, s=smoothing: captioning.caption_loss(
        nnx.merge(graphdef, p), batch, prompt, s))(params)
    terms = []
    for row, last in ((0, 6), (1, 4)):
      for t in range(3, last + 1):  # target positions: caption tokens and [SEP]
        lp = logp[row, t - 1]
        terms.append((1 - smoothing) * -lp[full[row, t]] + smoothing * -lp.mean())
    assert int(aux["target_tokens"]) == len(terms) == 6
    np.testing.assert_allclose(float(loss), np.mean(terms), rtol=1e-5)


def test_prompt_tokens_and_caption_text():
  tok = pipeline.make_tokenizer(_config())
  prompt = captioning.prompt_ids(tok, "a picture of ")
  assert [tok.id_to_token(i) for i in prompt] == [
      "a", "p", "##i", "##c", "##t", "##u", "##r", "##e", "of"]
  ids = lambda *tokens: [tok.token_to_id(t) for t in tokens]
  # Cut at the first [SEP], special tokens dropped, "##" pieces joined, prompt removed.
  assert captioning.caption_text(tok, prompt, ids(
      "navy", "hoodie", "##s", "[UNK]", "with", "[SEP]", "navy", "[PAD]")) == "navy hoodies with"
  assert captioning.caption_text(tok, prompt, ids("front", ".", "[SEP]")) == "front."
  assert captioning.caption_text(tok, (), ids("a", "navy", "hoodie")) == "a navy hoodie"
  assert captioning.caption_text(tok, prompt, ids("[SEP]", "navy")) == ""
  assert captioning.prompt_ids(tok, "") == ()


@pytest.mark.parametrize("field,value,message", [
    ("init_layers", "text", "config.captioning.init_layers='text'"),
    ("label_smoothing", 1.0, "config.captioning.label_smoothing=1.0"),
    ("beam_size", 0, "config.captioning.beam_size=0"),
    ("min_length", 7, "config.captioning.min_length=7"),
    ("length_penalty", "brevity", "config.captioning.length_penalty='brevity'"),
    ("prompt", "a q of ", "config.captioning.prompt='a q of '"),
    ("max_length", 60, "config.model.max_positions=64"),
])
def test_bad_config_names_the_field(field, value, message):
  c = _config(**{field: value})
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    captioning.Captioning(c).validate()


@pytest.mark.parametrize("init_layers", ["fusion", "text+fusion"])
def test_decoder_starts_from_the_pretrained_layers(pretrained, init_layers):
  tmp, stored = pretrained
  c = _config(tmp, init_layers=init_layers)
  task = captioning.Captioning(c)
  fresh = nnx.to_pure_dict(nnx.state(task.build_model(), nnx.Param))
  out = task.init_new_params(fresh, released.Pretrained(c, c.init_checkpoint))
  dec, old = out["text_decoder"], fresh["text_decoder"]
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), b)
  same(dec["embeddings"], stored["embeddings"])
  same(dec["lm_head"], stored["mlm_head"])
  layers = ([("text/layer_0", False)] if init_layers == "text+fusion" else []) + [
      ("fusion/layer_0", True)]
  assert len(dec["decoder"]) == len(layers)
  for i, (source, cross) in enumerate(layers):
    mine, theirs = dec["decoder"][f"layer_{i}"], stored[source.split("/")[0]]["layer_0"]
    for part in ("self_attn", "self_norm", "mlp", "mlp_norm"):
      same(mine[part], theirs[part])
    # The text layers have no cross-attention: the decoder's stays initialised.
    same(mine["cross_attn"], jax.device_get(
        theirs["cross_attn"] if cross else old["decoder"][f"layer_{i}"]["cross_attn"]))
  assert out["vision"] is fresh["vision"]  # restored by finetune.init_from, not here


def test_finetune_writes_captions_and_coco_metrics(pretrained, monkeypatch):
  tmp, _ = pretrained
  c = _config(tmp)
  workdir = str(tmp / "run")
  results = finetune.finetune_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "eval", "captioning.json")) as f:
    out = json.load(f)
  assert out == json.loads(json.dumps(results))
  (block,) = out["results"]
  assert block["protocol"] == "captioning" and block["split"] == "val"
  images = captions.SynthFashionCaptionImages("val", num_products=2, image_size=64)
  references = images.references()
  assert block["num_images"] == len(images) == len(references) > 0
  path = os.path.join(workdir, "eval", "captioning_val_results.json")
  assert block["results_file"] == path
  with open(path) as f:
    written = json.load(f)
  assert [r["image_id"] for r in written] == list(range(len(images)))
  pairs = [(r["image_id"], r["caption"]) for r in written]
  assert all(isinstance(caption, str) for _, caption in pairs)
  expected = caption_eval.evaluate(pairs, references)
  assert set(block["skipped"]) == {"SPICE"}  # java is installed here
  assert {m: block[m] for m in caption_eval.METRICS} == pytest.approx(
      {m: 100 * v for m, v in expected["scores"].items()})
  assert evaluate.summary_lines(out)[0].startswith(
      f"captioning synthfashion val ({len(images)} images): Bleu_1 {block['Bleu_1']:.1f}")

  # `python -m syncmask_jax.evaluate` on the fine-tuned run: the same captions are
  # decoded and scored (the Java metrics replaced: they were checked above).
  seen = []
  monkeypatch.setattr(caption_eval, "evaluate",
                      lambda res, refs: seen.append((list(res), refs)) or expected)
  os.remove(path)
  again = finetune.evaluate_checkpoint(_config(tmp), workdir)
  assert seen == [(pairs, references)]
  with open(path) as f:
    assert json.load(f) == written
  assert again["results"] == out["results"] and again["step"] == 2
