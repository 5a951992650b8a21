"""Visual question answering (docs/method.md 7), `config.task='vqa'`: ALBEF's answer decoder.

Model (ALBEF's model_vqa.py): the question is encoded by the text encoder and fused
with the image by the fusion layers; an answer decoder (`models.decoder.TextDecoder`,
as many layers as the fusion) cross-attends to those fused question states. The
decoder starts as a copy of the pretrained fusion layers, embeddings and MLM head
(`init_new_params`, `decoder.init_from_vlp(init_layers="fusion")`).

Loss (ALBEF's): for every answer a of a question, the summed token cross-entropy of
"[CLS] a [SEP]" given the question states, weighted by a's weight (its share of the
human answers; data/vqa.py), summed over the question's answers and averaged over the
batch. Static shapes: each question carries A = data.max_answers answer slots of
data.max_answer_len tokens, padding slots with weight 0.

Momentum distillation (ALBEF's `distill`, `vqa.distill`, default True as its VQA
config): the state (`DistillState`) holds a momentum copy of the parameters, equal to
them at the start (after the pretrained ones and `init_new_params`: `start_from`) and
moved by EMA (`config.momentum`, 0.995) after every optimizer update. It answers every
(question, answer) without dropout and each answer token's cross-entropy becomes
(1 - alpha) x itself + alpha x the soft cross-entropy against the momentum model's
softmax; alpha (`loss.alpha`, 0.4) ramps from 0 over the first epoch
(`loss.alpha_ramp_steps` -1, ALBEF's alpha * min(1, i / len(data_loader))).

Inference (`vqa.inference`):
  rank      ALBEF's `rank_answer` over the answer list (`rank_answers`): the log-prob
            of every answer's first token after [CLS]; the k = vqa.k_test answers with
            the highest are teacher-forced and scored by their summed token log-prob;
            ALBEF adds the first token's log-prob once more (`vqa.count_first_token_twice`,
            default True as the reference); the best score answers.
  generate  free decoding from [CLS] (decoding.greedy, or beam_search with
            vqa.beam_size > 1) up to [SEP]; the answer is the decoded text.
Differences from ALBEF [ours]: answers are "[CLS] a [SEP]" (ALBEF appends an eos
"[SEP]" before BERT's tokenizer adds its own, so its answers end in two [SEP]); the
unused pretraining heads (ITC projections, ITM, MLM) stay in the parameters (and in the
momentum copy). Evaluation answers with the online parameters, as ALBEF's.

Evaluation on each of `vqa.eval_splits`: every question's answer goes to
DIR/eval/vqa_<split>_results.json in the evaluation server's format
([{question_id, answer}], vqa_eval.write_results); a split with answers (VQA minival,
SynthFashion-VQA val) also gets the official accuracy (vqa_eval.vqa_accuracy): overall
and per answer type in the block, per question type beside them.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from syncmask_jax import decoding, evaluate, paths, train_step, vqa_eval
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import pipeline, synthfashion_vqa
from syncmask_jax.data import vqa as vqa_data
from syncmask_jax.models import decoder as decoder_lib
from syncmask_jax.models.vlp import VLP
from syncmask_jax.tasks import base

INFERENCE = ("rank", "generate")  # config.vqa.inference
DATASETS = ("vqa", "synthfashion_vqa")


@flax.struct.dataclass
class DistillState:
  """The VQA state with ALBEF's momentum model (`vqa.distill`): FinetuneState's fields
  and the momentum parameters, an EMA of the parameters (checkpointed with them)."""
  step: jax.Array
  params: dict
  momentum_params: dict
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, as FinetuneState's


class VQAModel(VLP):
  """The pretrained VLP and ALBEF's answer decoder over the fused question states."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.answer_decoder = decoder_lib.TextDecoder(
        cfg, num_layers=cfg.fusion_layers, encoder_width=cfg.text_width, rngs=rngs)

  def encode_question(self, batch: dict, rngs: nnx.Rngs | None = None) -> jax.Array:
    """(B, T, D) fused states of (image, question): what the decoder attends to."""
    image_tokens = self.encode_image(batch["image"], rngs=rngs)
    text_hidden = self.encode_text(batch["text_ids"], batch["text_mask"], rngs=rngs)
    fused, _ = self.fuse(text_hidden, batch["text_mask"], image_tokens, rngs=rngs)
    return fused


def answer_logits(model: VQAModel, batch: dict, rngs: nnx.Rngs | None = None) -> jax.Array:
  """(B * A, L, V) float32 decoder logits of every answer slot, "[CLS] a [SEP]"
  teacher-forced on its question's fused states: row i * A + j is slot j of question i
  (position t predicts token t + 1)."""
  states = model.encode_question(batch, rngs)
  b, a, length = batch["answer_ids"].shape
  # Answer slot j of question i is row i * a + j: the question's states repeated.
  return model.answer_decoder(
      batch["answer_ids"].reshape(b * a, length), batch["answer_mask"].reshape(b * a, length),
      decoding.repeat_for_beams(states, a), decoding.repeat_for_beams(batch["text_mask"], a),
      rngs)


def answer_loss(model: VQAModel, batch: dict, rngs: nnx.Rngs | None = None, *,
                momentum_logits: jax.Array | None = None, alpha: jax.Array | float = 0.0
                ) -> jax.Array:
  """ALBEF's VQA loss: sum over a question's answers of weight x the answer's summed
  token cross-entropy, averaged over the questions of the batch.

  With `momentum_logits` (the momentum model's `answer_logits`, ALBEF's `distill`), each
  answer token costs (1 - alpha) x its cross-entropy + alpha x the soft cross-entropy
  against softmax(momentum logits) (ALBEF's BertLMHeadModel with soft_labels); alpha 0
  is the plain loss.
  """
  b, a, length = batch["answer_ids"].shape
  ids = batch["answer_ids"].reshape(b * a, length)
  mask = batch["answer_mask"].reshape(b * a, length)[:, 1:].astype(bool)
  logits = answer_logits(model, batch, rngs)[:, :-1]
  nll = decoder_lib.sequence_nll(logits, ids[:, 1:], mask)
  if momentum_logits is not None:
    soft = jax.nn.softmax(jax.lax.stop_gradient(momentum_logits[:, :-1]).astype(jnp.float32))
    soft_ce = -jnp.sum(soft * jax.nn.log_softmax(logits.astype(jnp.float32)), -1)
    nll = (1.0 - alpha) * nll + alpha * jnp.sum(jnp.where(mask, soft_ce, 0.0), -1)
  return jnp.sum(batch["answer_weight"] * nll.reshape(b, a)) / b


def rank_answers(decoder: decoder_lib.TextDecoder, states: jax.Array, states_mask: jax.Array,
                 answer_ids: jax.Array, answer_mask: jax.Array, *, k: int,
                 count_first_token_twice: bool = True, label_smoothing: float = 0.0
                 ) -> tuple[jax.Array, jax.Array]:
  """ALBEF's `rank_answer`: ((B,) index of the chosen answer in the list, (B,) its score).

  `answer_ids` / `answer_mask` (N, L): the answer list as "[CLS] a [SEP]". The k answers
  whose first token is likeliest after [CLS] are teacher-forced; each scores its summed
  token log-prob, plus its first token's log-prob again with `count_first_token_twice`
  (the reference's sum of topk_probs.log() and -answer_loss, whose loss includes the
  first token). `label_smoothing` smooths that loss as LAVIS's decoder always does
  (0.1; `vqa.rank_label_smoothing`); LAVIS also counts the first token once only.
  """
  n = answer_ids.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"config.vqa.k_test={k}: must be in [1, {n}] (the answer list)")
  b = states.shape[0]
  bos = jnp.broadcast_to(answer_ids[:1, :1], (b, 1))
  first = jax.nn.log_softmax(
      decoder.next_token_logits(bos, 0, states, states_mask).astype(jnp.float32), -1)
  first = first[:, answer_ids[:, 1]]  # (B, N)
  top_lp, top = jax.lax.top_k(first, k)  # (B, k)
  ids = answer_ids[top].reshape(b * k, -1)
  mask = answer_mask[top].reshape(b * k, -1)
  nll = decoder.teacher_forced_nll(ids, mask, mask, decoding.repeat_for_beams(states, k),
                                   decoding.repeat_for_beams(states_mask, k),
                                   label_smoothing=label_smoothing)
  score = -nll.reshape(b, k) + (top_lp if count_first_token_twice else 0.0)
  best = jnp.argmax(score, axis=1)
  return (jnp.take_along_axis(top, best[:, None], 1)[:, 0],
          jnp.take_along_axis(score, best[:, None], 1)[:, 0])


def generate_answers(decoder: decoder_lib.TextDecoder, states: jax.Array,
                     states_mask: jax.Array, *, bos_id: int, eos_id: int, pad_id: int,
                     max_len: int, beam_size: int) -> jax.Array:
  """(B, max_len) answer tokens decoded from [CLS] (EOS included, then `pad_id`):
  greedy for beam_size 1, else the best beam."""
  bos = jnp.full((states.shape[0], 1), bos_id, jnp.int32)
  kw = dict(max_len=max_len, eos_id=eos_id, pad_id=pad_id)
  if beam_size == 1:
    return decoding.greedy(lambda ids, t: decoder.next_token_logits(ids, t, states,
                                                                    states_mask), bos, **kw)[0]
  beams = (decoding.repeat_for_beams(states, beam_size),
           decoding.repeat_for_beams(states_mask, beam_size))
  seqs, _ = decoding.beam_search(lambda ids, t: decoder.next_token_logits(ids, t, *beams),
                                 bos, beam_size=beam_size, **kw)
  return seqs[:, 0]


@functools.lru_cache(maxsize=16)
def _answer_fn(graphdef: Any, inference: str, k: int, count_first_token_twice: bool,
               label_smoothing: float, tokens: tuple[int, int, int], max_len: int,
               beam_size: int) -> Callable:
  """({"params", "answer_ids", "answer_mask"}, batch) -> each question's answer: its
  index in the list (rank) or its tokens (generate), and its question_id."""

  def fn(inputs, batch):
    model = nnx.merge(graphdef, inputs["params"])
    states, smask = model.encode_question(batch), batch["text_mask"]
    out = {"question_id": batch["question_id"]}
    if inference == "rank":
      out["answer_index"], _ = rank_answers(
          model.answer_decoder, states, smask, inputs["answer_ids"], inputs["answer_mask"],
          k=k, count_first_token_twice=count_first_token_twice,
          label_smoothing=label_smoothing)
    else:
      bos, eos, pad = tokens
      out["answer_tokens"] = generate_answers(model.answer_decoder, states, smask,
                                              bos_id=bos, eos_id=eos, pad_id=pad,
                                              max_len=max_len, beam_size=beam_size)
    return out

  return fn


def answer_text(tokenizer: Any, tokens: np.ndarray) -> str:
  """A generated answer's text: the tokens before the first [SEP], specials dropped."""
  special = {tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id}
  out = []
  for t in tokens.tolist():
    if t == tokenizer.sep_id:
      break
    if t not in special:
      out.append(t)
  return tokenizer.decode(out)


class VQA(base.Task):
  name = "vqa"
  new_params = ("answer_decoder",)

  def validate(self) -> None:
    c = self.config
    if c.data.name not in DATASETS:
      raise ValueError(f"config.data.name={c.data.name!r}: the vqa task reads {DATASETS}")
    v = c.vqa
    if v.inference not in INFERENCE:
      raise ValueError(f"config.vqa.inference={v.inference!r}: expected one of {INFERENCE}")
    if v.k_test < 1:
      raise ValueError(f"config.vqa.k_test={v.k_test}: must be >= 1")
    if v.beam_size < 1:
      raise ValueError(f"config.vqa.beam_size={v.beam_size}: must be >= 1")
    if not 0.0 <= v.rank_label_smoothing < 1.0:
      raise ValueError(f"config.vqa.rank_label_smoothing={v.rank_label_smoothing}: expected "
                       "0 <= value < 1")
    if c.data.max_answer_len < 3:
      raise ValueError(f"config.data.max_answer_len={c.data.max_answer_len}: needs room "
                       "for [CLS], one answer token and [SEP]")
    if not v.eval_splits:
      raise ValueError("config.vqa.eval_splits is empty: which splits to answer?")
    if not isinstance(v.distill, bool):
      raise ValueError(f"config.vqa.distill={v.distill!r}: expected True | False")
    if v.distill and c.loss.alpha_ramp_steps < -1:
      raise ValueError(f"config.loss.alpha_ramp_steps={c.loss.alpha_ramp_steps}: expected "
                       ">= 0 steps, or -1 (one epoch)")

  def build_model(self) -> VQAModel:
    return VQAModel(self.config.model, rngs=nnx.Rngs(params=self.config.seed))

  def new_state(self, params: dict, opt_state: Any, rng: jax.Array) -> Any:
    if not self.config.vqa.distill:
      return super().new_state(params, opt_state, rng)
    # The momentum model starts as an exact copy, as in ALBEF (again after the
    # pretrained parameters: `start_from`).
    return DistillState(step=jnp.zeros((), jnp.int32), params=params, momentum_params=params,
                        opt_state=opt_state, rng=rng)

  def param_fields(self) -> tuple[str, ...]:
    return ("params", "momentum_params") if self.config.vqa.distill else ("params",)

  def start_from(self, state: Any, params: dict) -> Any:
    state = state.replace(params=params)
    if self.config.vqa.distill:
      state = state.replace(momentum_params=jax.tree.map(jnp.copy, params))
    return state

  def init_new_params(self, params: dict, pretrained: Any) -> dict:
    if pretrained.holds("answer_decoder"):
      # A VQA checkpoint (ALBEF's released ones, or a VQA run's): its decoder as it is.
      logging.info("vqa: answer decoder from %s", pretrained.source)
      return params
    decoder, copied = decoder_lib.init_from_vlp(params, params["answer_decoder"],
                                                init_layers="fusion")
    logging.info("vqa: answer decoder from the pretrained model (%d tensors: fusion "
                 "layers, embeddings, MLM head)", len(copied))
    return {**params, "answer_decoder": decoder}

  def train_source(self) -> Any:
    return pipeline.make_source(self.config, self.config.vqa.train_split)

  def steps_per_epoch(self) -> int:
    """Full global batches in one pass over the training split (the sampler's)."""
    return len(self.train_source()) // self.config.data.global_batch_size

  def make_step(self, setup: train_state_lib.Setup) -> base.Step:
    config = self.config
    distill = config.vqa.distill
    # ALBEF's alpha * min(1, i / len(data_loader)) in the first epoch: the pretraining
    # ramp (loss.alpha, loss.alpha_ramp_steps; -1 is one epoch, read from the data).
    epoch = (self.steps_per_epoch() if distill and config.loss.alpha_ramp_steps < 0 else 0)

    def step(state, batch):
      rng = base.step_rng(state)
      kw = {}
      if distill:
        # The momentum model without dropout, never differentiated.
        momentum = nnx.merge(setup.graphdef, state.momentum_params)
        kw = dict(momentum_logits=jax.lax.stop_gradient(answer_logits(momentum, batch)),
                  alpha=train_step.alpha_at(config, state.step, epoch))

      def loss_fn(params):
        model = nnx.merge(setup.graphdef, params)
        return answer_loss(model, batch, nnx.Rngs(dropout=rng), **kw), {}

      state, metrics = base.update(config, setup, state, loss_fn,
                                   momentum=config.momentum if distill else None)
      if distill:
        metrics["alpha"] = kw["alpha"]
      return state, metrics

    return step

  def answer_list(self) -> list[str]:
    """`vqa.answer_list`, or the dataset's: root/answer_list.json (ALBEF) or every
    answer SynthFashion-VQA can give."""
    c = self.config
    path = c.vqa.answer_list
    if not path and c.data.name == "synthfashion_vqa":
      return synthfashion_vqa.answer_list()
    return vqa_data.read_answer_list(path or os.path.join(c.data.root,
                                                          vqa_data.ANSWER_LIST_FILE))

  def evaluate(self, graphdef: Any, params: dict, mesh: jax.sharding.Mesh) -> list[dict]:
    c, v = self.config, self.config.vqa
    tokenizer = pipeline.make_tokenizer(c)
    answers = self.answer_list()
    enc = tokenizer.encode(answers, int(c.data.max_answer_len))
    # Candidates longer than max_answer_len are ranked cut (their [SEP] kept): counted.
    lengths = tokenizer.encode(answers, c.model.max_positions)["mask"].sum(1)
    truncated = int(np.sum(lengths > c.data.max_answer_len))
    fn = _answer_fn(graphdef, v.inference, int(v.k_test), bool(v.count_first_token_twice),
                    float(v.rank_label_smoothing),
                    (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id),
                    int(c.data.max_answer_len) - 1, int(v.beam_size))
    inputs = {"params": params, "answer_ids": enc["ids"], "answer_mask": enc["mask"]}
    blocks = []
    for split in v.eval_splits:
      source = pipeline.make_eval_source(c, split)
      rows = evaluate.Rows(len(source))
      for r in evaluate.eval_rows(fn, inputs, pipeline.make_eval_iterator(
          c, source=source), mesh):
        rows.add(r)
      rows = rows.result()
      if v.inference == "rank":
        predicted = [answers[i] for i in rows["answer_index"]]
      else:
        predicted = [answer_text(tokenizer, t) for t in rows["answer_tokens"]]
      block = self._split_block(split, source, rows["question_id"], predicted)
      if v.inference == "rank":
        block.update(k_test=int(v.k_test), count_first_token_twice=bool(
            v.count_first_token_twice), answer_list_size=len(answers),
                     answer_list_truncated=truncated)
      blocks.append(block)
    return blocks

  def _split_block(self, split: str, source: Any, question_ids: np.ndarray,
                   predicted: list[str]) -> dict[str, Any]:
    """Writes the split's server results; the accuracy where it has answers."""
    v = self.config.vqa
    if not self.eval_dir:
      raise RuntimeError("VQA.evaluate writes its results under eval_dir: unset")
    path = os.path.join(self.eval_dir, f"vqa_{split}_results.json")
    results = list(zip(question_ids.tolist(), predicted))
    if jax.process_index() == 0:
      paths.path(self.eval_dir).mkdir(parents=True, exist_ok=True)
      vqa_eval.write_results(path, results, source.question_ids())
    block = {"protocol": "vqa", "split": split, "scoring": v.inference,
             "dataset": self.config.data.name, "num_questions": len(results),
             "results_file": path, "skipped_records": pipeline.skipped_records(source)}
    annotations = source.annotations()
    if annotations:
      # Only annotated questions are scored (VG questions without an id are not).
      acc = vqa_eval.vqa_accuracy({q: a for q, a in results if q in annotations},
                                  annotations)
      block.update(overall=acc["overall"], **acc["per_answer_type"],
                   per_question_type=acc["per_question_type"],
                   num_scored=acc["num_questions"])
    return block
