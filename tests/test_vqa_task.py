"""The VQA task (tasks/vqa.py): ALBEF's weighted answer loss and its momentum
distillation, its answer ranking on a decoder whose probabilities are known, the
decoder's init from the fusion layers, the momentum copy's start and EMA, and a few
fine-tuning steps on SynthFashion-VQA from a pretraining checkpoint."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from syncmask_jax import config_lib, finetune, sharding, vqa_eval
from syncmask_jax.checkpoint_import import released
from syncmask_jax.data import pipeline, synthfashion_vqa, transforms
from syncmask_jax.models import decoder as decoder_lib
from syncmask_jax.tasks import vqa as vqa_task

import conftest  # pylint: disable=g-bad-import-order
import fakes  # pylint: disable=g-bad-import-order


def _model_config(vocab_size):
  m = config_lib.model_config("tiny", vocab_size)
  m.vision_depth = 1
  m.text_dropout = 0.0
  return m


def _loss_batch(b=2, a=3, length=5, t=6):
  """Two questions of three answer slots: a short answer, a padding slot (weight 0)."""
  rs = np.random.RandomState(0)
  ids = rs.randint(5, 20, (b, a, length)).astype(np.int32)
  ids[..., 0] = 2
  mask = np.ones((b, a, length), np.int32)
  mask[0, 1, 3:] = 0  # a short answer
  mask[1, 2] = 0  # a padding slot (weight 0)
  weight = np.array([[0.6, 0.3, 0.1], [1.0, 0.5, 0.0]], np.float32)
  batch = {"image": rs.randn(b, 64, 64, 3).astype(np.float32),
           "text_ids": rs.randint(5, 20, (b, t)).astype(np.int32),
           "text_mask": np.array([[1] * t, [1] * 4 + [0] * 2], np.int32),
           "answer_ids": ids, "answer_mask": mask, "answer_weight": weight}
  return batch


def test_answer_loss_is_the_weighted_sum_of_teacher_forced_nll():
  model = vqa_task.VQAModel(_model_config(20), rngs=nnx.Rngs(params=0))
  batch = _loss_batch()
  ids, mask, weight = batch["answer_ids"], batch["answer_mask"], batch["answer_weight"]
  b, a = weight.shape
  loss = vqa_task.answer_loss(model, batch)
  states = model.encode_question(batch)
  # Every (question, answer) row against its own question's states, by hand.
  rows = [(i, j) for i in range(b) for j in range(a)]
  nll = model.answer_decoder.teacher_forced_nll(
      np.stack([ids[i, j] for i, j in rows]), np.stack([mask[i, j] for i, j in rows]),
      np.stack([mask[i, j] for i, j in rows]), jnp.stack([states[i] for i, _ in rows]),
      np.stack([batch["text_mask"][i] for i, _ in rows]))
  expected = sum(weight[i, j] * float(n) for (i, j), n in zip(rows, nll))
  np.testing.assert_allclose(float(loss), expected / b, rtol=1e-5)
  assert float(nll[rows.index((0, 1))]) != float(nll[rows.index((0, 0))])


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_distilled_answer_loss_mixes_hard_and_soft_token_cross_entropy():
  cfg = _model_config(20)
  model = vqa_task.VQAModel(cfg, rngs=nnx.Rngs(params=0))
  momentum = vqa_task.VQAModel(cfg, rngs=nnx.Rngs(params=1))
  batch = _loss_batch()
  soft = vqa_task.answer_logits(momentum, batch)
  # alpha 0: exactly the plain loss.
  assert (float(vqa_task.answer_loss(model, batch, momentum_logits=soft, alpha=0.0))
          == float(vqa_task.answer_loss(model, batch)))
  # alpha 0.4 by hand: per answer token (1 - a) CE(target) + a CE(softmax(momentum)),
  # summed over the answer's tokens (after [CLS]), weighted, summed, / questions.
  lp = _log_softmax(np.asarray(vqa_task.answer_logits(model, batch), np.float64))
  q = np.exp(_log_softmax(np.asarray(soft, np.float64)))
  b, a = batch["answer_weight"].shape
  ids = batch["answer_ids"].reshape(b * a, -1)
  mask = batch["answer_mask"].reshape(b * a, -1)
  expected = 0.0
  for r in range(b * a):
    for t in range(1, ids.shape[1]):
      if mask[r, t]:
        hard = -lp[r, t - 1, ids[r, t]]
        distill = -np.sum(q[r, t - 1] * lp[r, t - 1])
        expected += batch["answer_weight"].reshape(-1)[r] * (0.6 * hard + 0.4 * distill)
  loss = vqa_task.answer_loss(model, batch, momentum_logits=soft, alpha=0.4)
  np.testing.assert_allclose(float(loss), expected / b, rtol=1e-5)
  assert abs(float(loss) - float(vqa_task.answer_loss(model, batch))) > 1e-3


class BigramDecoder(decoder_lib.TextDecoder):
  """A decoder whose next-token distribution depends on the last token only: `table`
  (V, V) probabilities. It ignores the question states, so scores are hand-computable."""

  def __init__(self, table):  # pylint: disable=super-init-not-called
    self.table = jnp.log(jnp.asarray(table, jnp.float32))

  def __call__(self, ids, mask, encoder_states, encoder_mask=None, rngs=None):
    return self.table[ids]

  def next_token_logits(self, ids, step, encoder_states, encoder_mask=None):
    return self.table[ids[:, step]]


# Tokens: 0 [PAD], 1 [CLS], 2 [SEP], 3 a, 4 b, 5 c, 6 d.
ANSWERS = np.array([[1, 3, 2, 0], [1, 4, 5, 2], [1, 6, 2, 0]], np.int32)  # a | b c | d


def _bigram(p_first, p_a_end=1.0):
  """After [CLS]: `p_first` over (a, b, d); b -> c 0.55 (else [SEP]); a -> [SEP]
  `p_a_end` (else c); c, d -> [SEP]."""
  table = np.full((7, 7), 1e-9)
  table[1, [3, 4, 6]] = p_first
  table[4, 5], table[4, 2] = 0.55, 0.45
  table[3, 2], table[3, 5] = p_a_end, 1.0 - p_a_end
  table[5, 2] = table[6, 2] = 1.0
  table[0, 0] = table[2, 0] = 1.0
  return table / table.sum(1, keepdims=True)


def _rank(decoder, k, twice):
  states = jnp.zeros((1, 2, 8))
  return vqa_task.rank_answers(decoder, states, jnp.ones((1, 2), jnp.int32),
                               jnp.asarray(ANSWERS), jnp.asarray((ANSWERS > 0).astype(np.int32)),
                               k=k, count_first_token_twice=twice)


def test_rank_answers_scores_the_top_k_by_first_token():
  decoder = BigramDecoder(_bigram([0.3, 0.5, 0.2]))
  # By hand: log P(a) = log .3; log P(b c) = log .5 + log .55; log P(d) = log .2.
  once = {0: np.log(0.3), 1: np.log(0.5) + np.log(0.55), 2: np.log(0.2)}
  twice = {0: 2 * np.log(0.3), 1: 2 * np.log(0.5) + np.log(0.55), 2: 2 * np.log(0.2)}
  # k=2 keeps b (0.5) and a (0.3); once: a wins (-1.20 > -1.29); twice: b c (-1.98 >
  # -2.41): the switch changes the answer.
  for is_twice, table, best in ((False, once, 0), (True, twice, 1)):
    index, score = _rank(decoder, 2, is_twice)
    assert int(index[0]) == best
    np.testing.assert_allclose(float(score[0]), table[best], rtol=1e-4)
  # k=1 only scores b c, whatever the rest would score.
  index, _ = _rank(decoder, 1, False)
  assert int(index[0]) == 1
  # An answer outside the top k is never chosen even when it would win: d's first
  # token is the least likely (.25) but d scores best (.25 > a .4 x .5 > b c .35 x .55).
  decoder = BigramDecoder(_bigram([0.4, 0.35, 0.25], p_a_end=0.5))
  assert int(_rank(decoder, 3, False)[0][0]) == 2
  assert int(_rank(decoder, 2, False)[0][0]) == 0
  with pytest.raises(ValueError, match="k_test=4"):
    _rank(decoder, 4, False)


def test_decoder_starts_from_the_pretrained_fusion_layer(finetune_files):
  tmp = finetune_files["tmp"]
  c = _vqa_config(tmp)
  task = vqa_task.VQA(c)
  fresh = fakes.numpy_params(task.build_model, seed=1)
  pre = finetune_files["state"]["params"]
  params = {**pre, "answer_decoder": fresh["answer_decoder"]}
  out = task.init_new_params(params, released.Pretrained(c, c.init_checkpoint))
  np.testing.assert_array_equal(
      out["answer_decoder"]["decoder"]["layer_0"]["cross_attn"]["query"]["kernel"],
      pre["fusion"]["layer_0"]["cross_attn"]["query"]["kernel"])
  np.testing.assert_array_equal(out["answer_decoder"]["lm_head"]["bias"],
                                pre["mlm_head"]["bias"])
  assert not np.array_equal(fresh["answer_decoder"]["lm_head"]["bias"],
                            pre["mlm_head"]["bias"])


def _vqa_config(tmp):
  c = fakes.finetune_config("vqa", tmp)
  c.data.name = "synthfashion_vqa"
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  c.data.max_answer_len = 6
  c.data.max_answers = 1
  c.data.synth_train_products = 2
  c.data.synth_val_products = 2
  c.vqa = config_lib.ml_collections.ConfigDict(dict(
      train_split="train", eval_splits=("val",), answer_list="", inference="rank",
      k_test=4, count_first_token_twice=True, rank_label_smoothing=0.0, beam_size=1,
      distill=True))
  c.queue_size = 8
  return c


def test_finetune_on_synthfashion_vqa_writes_accuracy_and_results(finetune_files):
  tmp = finetune_files["tmp"]
  c = _vqa_config(tmp)
  workdir = str(tmp / "vqa")
  results = finetune.finetune_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "eval", "vqa.json")) as f:
    out = json.load(f)
  assert out == json.loads(json.dumps(results))
  [block] = out["results"]
  assert block["protocol"] == "vqa" and block["split"] == "val"
  assert block["answer_list_size"] == len(synthfashion_vqa.answer_list())
  source = synthfashion_vqa.source("val", 2, max_answers=1)
  assert block["num_questions"] == block["num_scored"] == len(source)
  with open(block["results_file"]) as f:
    written = json.load(f)
  assert [r["question_id"] for r in written] == source.question_ids()
  assert {r["answer"] for r in written} <= set(synthfashion_vqa.answer_list())
  acc = vqa_eval.vqa_accuracy({r["question_id"]: r["answer"] for r in written},
                              source.annotations())
  assert 0.0 <= block["overall"] <= 100.0
  assert block["overall"] == acc["overall"]
  assert {t: block[t] for t in acc["per_answer_type"]} == acc["per_answer_type"]
  assert "yes/no" in acc["per_answer_type"] and "other" in acc["per_answer_type"]
  # Free generation answers the same questions (strings, maybe outside the list).
  c2 = _vqa_config(tmp)
  c2.vqa.inference = "generate"
  c2.vqa.beam_size = 2
  again = finetune.evaluate_checkpoint(c2, workdir)
  [gen] = again["results"]
  assert gen["scoring"] == "generate" and gen["num_questions"] == len(source)
  assert 0.0 <= gen["overall"] <= 100.0
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))
           if "train/loss" in l]
  assert steps == [1, 2]
  # The momentum model is checkpointed with the parameters (a resume restores it).
  saved = conftest.saved_state(workdir, 2)
  assert (jax.tree.map(np.shape, saved["momentum_params"])
          == jax.tree.map(np.shape, saved["params"]))


def test_albef_files_reach_the_batch_as_weighted_answer_tokens(tmp_path):
  fakes.write_vqa(tmp_path)
  fakes.write_vocab(tmp_path / "vocab.txt")
  c = config_lib.default_config()
  c.data.name, c.data.root = "vqa", str(tmp_path)
  c.data.image_root, c.data.vg_image_root = str(tmp_path / "coco"), str(tmp_path / "vg")
  c.data.vocab_path = str(tmp_path / "vocab.txt")
  c.data.max_answers, c.data.max_answer_len, c.data.max_text_len = 3, 5, 12
  tokenizer = pipeline.make_tokenizer(c)
  source = pipeline.make_source(c, "train+val+vg")
  transform = transforms.from_config(c, tokenizer, train=False)
  first = transform(source[0])  # "red" x 7, "dark red" x 3
  assert first["question_id"] == 10
  np.testing.assert_allclose(first["answer_weight"], [0.7, 0.3, 0.0])
  expected = tokenizer.encode(["red", "dark red"], 5)
  np.testing.assert_array_equal(first["answer_ids"][:2], expected["ids"])
  np.testing.assert_array_equal(first["answer_mask"][:2], expected["mask"])
  assert not first["answer_mask"][2].any()  # the padding slot carries no token
  vg = transform(source[len(source) - 1])
  assert vg["question_id"] == -1 and vg["answer_weight"][0] == 0.5
  test = pipeline.make_source(c, "test")
  assert test.question_ids() == [30] and not test.annotations()
  c.data.max_answer_len = 0
  with pytest.raises(ValueError, match="config.data.max_answer_len=0"):
    transforms.from_config(c, tokenizer, train=False)(source[0])


def _one_step(c):
  """(task, state after init_from, state after one jitted step, its metrics, setup); no
  warm-up, so that first step moves the parameters."""
  c.optim.warmup_steps = 0
  task = vqa_task.VQA(c)
  init, _, setup = finetune.create_state(task, sharding.make_mesh(c.mesh))
  start = finetune.init_from(task, init(), c.init_checkpoint)
  batch = next(pipeline.make_train_iterator(c, source=task.train_source()))
  state, metrics = jax.jit(task.make_step(setup))(start, batch)
  return task, jax.device_get(start), jax.device_get(state), metrics, setup


def test_momentum_copy_starts_at_the_loaded_params_and_follows_by_ema(finetune_files):
  tmp = finetune_files["tmp"]
  c = _vqa_config(tmp)
  c.momentum = 0.75  # a visible EMA step
  _, start, state, metrics, setup = _one_step(c)
  assert isinstance(start, vqa_task.DistillState)
  assert setup.state_shardings.momentum_params == setup.state_shardings.params
  # The copy is taken after the pretrained params and the decoder's init from them.
  pre = finetune_files["state"]["params"]
  jax.tree.map(np.testing.assert_array_equal, start.momentum_params, start.params)
  np.testing.assert_array_equal(start.params["fusion"]["layer_0"]["cross_attn"]["query"]
                                ["kernel"], pre["fusion"]["layer_0"]["cross_attn"]["query"]
                                ["kernel"])
  np.testing.assert_array_equal(start.momentum_params["answer_decoder"]["lm_head"]["bias"],
                                pre["mlm_head"]["bias"])
  assert int(state.step) == 1 and bool(metrics["finite"])
  moved = jax.tree.map(lambda new, old: not np.array_equal(new, old), state.params,
                       start.params)
  assert any(jax.tree.leaves(moved))
  jax.tree.map(lambda m, m0, p: np.testing.assert_allclose(
      m, 0.75 * m0 + 0.25 * p, rtol=1e-6, atol=1e-7), state.momentum_params,
               start.momentum_params, state.params)
  # vqa.distill=False: the plain state, and at alpha 0 (the ramp's step 0) distillation
  # takes the very same step.
  assert float(metrics["alpha"]) == 0.0
  off = _vqa_config(tmp)
  off.vqa.distill = False
  _, start_off, state_off, metrics_off, setup_off = _one_step(off)
  assert type(start_off).__name__ == "FinetuneState"
  assert not hasattr(state_off, "momentum_params") and "alpha" not in metrics_off
  assert not hasattr(setup_off.state_shardings, "momentum_params")
  np.testing.assert_allclose(float(metrics_off["loss"]), float(metrics["loss"]), rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
               state_off.params, state.params)


def test_distill_config_checks_and_alpha_ramp(finetune_files):
  c = _vqa_config(finetune_files["tmp"])
  c.vqa = config_lib.ml_collections.ConfigDict(dict(c.vqa, distill="yes"))
  with pytest.raises(ValueError, match="config.vqa.distill='yes'"):
    vqa_task.VQA(c).validate()
  c = _vqa_config(finetune_files["tmp"])
  c.loss.alpha_ramp_steps = -2
  with pytest.raises(ValueError, match="config.loss.alpha_ramp_steps=-2"):
    vqa_task.VQA(c).validate()
  # One epoch of SynthFashion-VQA's 2 train products at batch 8, the ramp's length.
  task = vqa_task.VQA(_vqa_config(finetune_files["tmp"]))
  assert task.steps_per_epoch() == len(task.train_source()) // 8 > 0
