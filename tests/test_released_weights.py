"""Parity of the ALBEF import and export with Salesforce's own code (LAVIS 1.0.2).

The reference is LAVIS's `AlbefPretrain` on a tiny random model: its state dict and its
outputs, written by tests/reference/make_albef_reference.py under LAVIS's own lock
(tests/reference/README.md) into tests/data/lavis_albef/. Here the state dict goes
through `checkpoint_import.albef` into our model, and our outputs must match LAVIS's:

* forward (eval mode, online and momentum model): image and text embeddings, ITC
  features and similarities, ITM logits, MLM logits;
* the ALBEF recipe's losses on one batch, with LAVIS's MLM corruption, ITM negatives and
  queue passed to our step: ITC with momentum distillation, ITM, MLM;
* the gradients of their sum, for every parameter;
* one AdamW step, the EMA and the enqueue: the parameters, the momentum copies and the
  queues after it, exported back to LAVIS's layout, against LAVIS's state dict after its
  step (key set, shapes and values: what `load_state_dict(strict=True)` checks).

Relative error: max |ours - ref| / max |ref| per tensor, bounds 1e-5 (gradients 1e-4):
both sides compute the same float32 graph in another order, so the error is a few ulps
grown over the layers, while a mapping mistake gives errors of order 1 (the planted
errors below show that they are caught).

torch reads the .pth files, so this module runs in tests/test_torch_parity.py's
subprocess, as test_checkpoint_import.py does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

if os.environ.get("SYNCMASK_TORCH_SUBPROCESS") != "1":
  pytest.skip("torch runs in a subprocess: see tests/test_torch_parity.py",
              allow_module_level=True)
torch = pytest.importorskip("torch")

# pylint: disable=g-import-not-at-top,wrong-import-position
from syncmask_jax import config_lib, negatives, optim, train_step
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.checkpoint_import import albef, files, hf_bert, keymap, released, vit
from syncmask_jax.tokenizer import TokenInfo
# pylint: enable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data", "lavis_albef")
RTOL, GRAD_RTOL = 1e-5, 1e-4


def _close(ours, ref, what: str, rtol: float = RTOL, scale: float = 0.0) -> None:
  """`scale`: a floor for max|ref| (gradients that are zero in exact arithmetic)."""
  assert np.shape(ours) == np.shape(ref), (what, np.shape(ours), np.shape(ref))
  err = float(np.abs(np.asarray(ours, np.float64) - ref).max()
              / max(np.abs(ref).max(), scale, 1e-30))
  assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:.0e}"


def tiny_config() -> config_lib.ml_collections.ConfigDict:
  """Our config of the reference's sizes and step settings (its config.json)."""
  ref = json.load(open(os.path.join(DATA, "config.json")))
  c = config_lib.apply_recipe(config_lib.default_config(), "albef")
  m = c.model
  m.update(image_size=ref["IMAGE"], patch_size=ref["PATCH"], vision_width=ref["VISION_WIDTH"],
           vision_depth=ref["VISION_DEPTH"], vision_heads=ref["VISION_HEADS"],
           vision_mlp_dim=ref["VISION_WIDTH"] * ref["MLP_RATIO"], text_width=ref["TEXT_WIDTH"],
           text_layers=ref["FUSION_LAYER"], fusion_layers=ref["TEXT_LAYERS"] - ref["FUSION_LAYER"],
           text_heads=ref["TEXT_HEADS"], text_mlp_dim=ref["INTERMEDIATE"],
           max_positions=ref["MAX_POSITIONS"], embed_dim=ref["EMBED_DIM"],
           vocab_size=ref["vocab_size"], vision_ln_eps=ref["VIT_EPS"],
           text_ln_eps=ref["BERT_EPS"], text_dropout=0.0, vision_dropout=0.0,
           temp_init=ref["TEMP"], type_vocab_size=0)  # LAVIS's BERT has no token types
  c.queue_size = ref["QUEUE_SIZE"]
  c.momentum = ref["MOMENTUM"]
  c.loss.alpha = ref["ALPHA"]
  c.data.global_batch_size = ref["BATCH"]
  # LAVIS's runner: AdamW, no clipping, a constant rate here, no weight decay for 1-D
  # parameters (biases, LayerNorms, the temperature) and for biases.
  adamw = ref["adamw"]
  c.optim.update(lr=adamw["lr"], b1=adamw["betas"][0], b2=adamw["betas"][1],
                 weight_decay=adamw["weight_decay"], grad_clip=0.0, warmup_steps=0,
                 no_decay=(r".*bias$", r".*norm/scale$", r".*temp$", r".*mask_token$"))
  c.total_steps = 10 ** 6
  return c


@dataclasses.dataclass
class Reference:
  inputs: dict
  forward: dict
  step: dict
  config: object
  graphdef: object
  imported: albef.Imported


@pytest.fixture(scope="module")
def ref() -> Reference:
  c = tiny_config()
  graphdef, state = nnx.split(train_state_lib.build_model(c, 0))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  imported = albef.import_albef(os.path.join(DATA, "albef_pretrain.pth"), params, c,
                                momentum=True, queue_size=c.queue_size)
  load = lambda name: dict(np.load(os.path.join(DATA, name)))
  return Reference(load("inputs.npz"), load("forward.npz"), load("step.npz"), c, graphdef,
                   imported)


def _batch(ref: Reference) -> dict:
  x = ref.inputs
  return {"image": jnp.asarray(x["image"].transpose(0, 2, 3, 1)),  # NCHW -> NHWC
          "text_ids": jnp.asarray(x["input_ids"], jnp.int32),
          "text_mask": jnp.asarray(x["attention_mask"], jnp.int32),
          "product_id": jnp.arange(x["image"].shape[0], dtype=jnp.int32)}


def _forward(graphdef, params, batch: dict, mlm_ids) -> dict:
  model = nnx.merge(graphdef, params)
  image = model.encode_image(batch["image"])
  text = model.encode_text(batch["text_ids"], batch["text_mask"])
  image_feat, text_feat = model.image_feature(image), model.text_feature(text)
  fused, _ = model.fuse(text, batch["text_mask"], image)
  masked, _ = model.fuse(model.encode_text(mlm_ids, batch["text_mask"]), batch["text_mask"],
                         image)
  return {"image_embeds": image, "text_embeds": text, "image_feat": image_feat,
          "text_feat": text_feat, "sim_i2t": image_feat @ text_feat.T / model.temperature(),
          "itm_logits": model.itm_logits(fused), "fusion_embeds": fused,
          "mlm_logits": model.mlm_logits(masked)}


def test_import_maps_every_tensor(ref):
  report = ref.imported.report
  assert report.unused == [], report.summary()
  # ALBEF's ViT has no [MASK] embedding (the recipe has no MIM decoder to fill).
  assert report.initialised == ["vision/mask_token"], report.summary()
  assert int(ref.imported.queue["ptr"]) == 4 and ref.imported.queue["valid"].all()


def test_forward_matches_lavis(ref):
  mlm_ids = jnp.asarray(ref.inputs["mlm_input_ids"], jnp.int32)
  for suffix, params in (("", ref.imported.params), ("_m", ref.imported.momentum)):
    ours = _forward(ref.graphdef, params, _batch(ref), mlm_ids)
    for name in ("image_embeds", "text_embeds", "image_feat", "text_feat", "mlm_logits"):
      if name + suffix in ref.forward:
        _close(ours[name], ref.forward[name + suffix], name + suffix)
    if not suffix:
      for name in ("sim_i2t", "itm_logits", "fusion_embeds"):
        _close(ours[name], ref.forward[name], name)


def _train_state(ref: Reference, tx) -> train_state_lib.TrainState:
  imported = ref.imported
  params = jax.tree.map(jnp.asarray, imported.params)
  return train_state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      momentum_params=jax.tree.map(jnp.asarray, imported.momentum), opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(0)),
      queue=jax.tree.map(jnp.asarray, imported.queue), centers={})


def _lavis_step(ref: Reference, monkeypatch):
  """Our step's stages on LAVIS's batch, its MLM corruption and ITM negatives."""
  c, x = ref.config, ref.inputs
  tx = optim.make_optimizer(c.optim, ref.imported.params, c.total_steps)
  state = _train_state(ref, tx)
  batch = _batch(ref)
  neg_text = jnp.asarray(x["itm_neg_text_for_image"], jnp.int32)
  neg_image = jnp.asarray(x["itm_neg_image_for_text"], jnp.int32)
  monkeypatch.setattr(negatives, "mine_negatives",
                      lambda *a, **k: (neg_text, neg_image, {}))
  tokens = TokenInfo(vocab_size=c.model.vocab_size, pad_id=0, cls_id=2, sep_id=3, mask_id=4,
                     min_random_id=5)
  plan = train_step.plan_step(c, tokens, steps_per_epoch=1)
  teacher = train_step.teacher_pass(plan, nnx.merge(ref.graphdef, state.momentum_params), batch,
                                    state.queue)
  labels = jnp.asarray(x["mlm_labels"], jnp.int32)
  masks = train_step.Masks(
      maskable=batch["text_mask"].astype(bool), patch=jnp.zeros((4, 16), bool),
      token=labels != -100, mlm_ids=jnp.asarray(x["mlm_input_ids"], jnp.int32),
      mlm_labels=labels, mlm_weights=(labels != -100).astype(jnp.float32))
  targets = train_step.teacher_targets(plan, nnx.merge(ref.graphdef, state.momentum_params),
                                       batch, teacher, masks, state.centers)
  key = jax.random.key(0)
  (loss, aux), grads = jax.value_and_grad(train_step.online_losses, has_aux=True)(
      state.params, plan, ref.graphdef, batch, teacher, masks, targets, key, key,
      jnp.asarray(float(x["alpha"]), jnp.float32))
  new_state, _, _ = train_step.apply_update(plan, tx, state, grads, loss, teacher, {},
                                            batch["product_id"])
  return aux, grads, new_state


def test_losses_gradients_and_step_match_lavis(ref, monkeypatch, tmp_path):
  aux, grads, new_state = _lavis_step(ref, monkeypatch)
  for name in ("loss_itc", "loss_itm", "loss_mlm"):
    _close(aux[name], ref.step[name], name)

  # Gradients, in LAVIS's names: our tree through the export's own table.
  layout = albef.detect(files.read_torch(os.path.join(DATA, "albef_pretrain.pth")), "ref")
  ours = keymap.export(albef.model_rules(layout, ours_token_type=False),
                       keymap.flatten(jax.tree.map(np.asarray, grads)))
  wanted = {k[len("grad/"):]: v for k, v in ref.step.items() if k.startswith("grad/")}
  assert set(wanted) <= set(ours), sorted(set(wanted) - set(ours))
  # The key projections' bias gets no gradient in exact arithmetic (it shifts every
  # logit of a query alike, and softmax ignores that): both sides hold float32 rounding
  # there, ~1e-8. Their error is measured against 1e-4 of the largest gradient instead.
  floor = 1e-4 * max(np.abs(v).max() for v in wanted.values())
  for key, value in wanted.items():
    _close(ours[key], value, f"grad {key}", GRAD_RTOL, scale=floor)

  # One AdamW step, the EMA and the enqueue, exported: LAVIS's state dict after its step.
  exported = albef.export_albef(new_state.params, new_state.momentum_params, new_state.queue,
                                ref.config)
  after = files.read_torch(os.path.join(DATA, "albef_pretrain_after.pth"))
  assert set(exported) == set(after), set(exported) ^ set(after)
  lr = ref.config.optim.lr
  for key, value in after.items():
    mine = exported[key]
    assert mine.shape == value.shape and mine.dtype == value.dtype, key
    if value.dtype.kind != "f":
      np.testing.assert_array_equal(mine, value, err_msg=key)
      continue
    # AdamW's first step moves a parameter by lr * g / (|g| + eps): for the key biases'
    # rounding-noise gradients (above) that is up to lr either way, on both sides alike.
    noise = np.zeros(value.shape, bool)
    if key.endswith("self.key.bias"):
      noise[:] = True
    elif key.endswith("attn.qkv.bias"):
      noise[value.shape[0] // 3: 2 * value.shape[0] // 3] = True
    assert np.abs(mine - value)[noise].max(initial=0.0) <= 2 * lr, key
    _close(np.where(noise, value, mine), value, f"after step: {key}")

  # Where LAVIS's own environment is at hand (tests/reference/lavis_env.sh), the export
  # of the model trained here is loaded by LAVIS itself, strict=True, and its forward
  # must be ours.
  lavis_python = os.path.join(ROOT, ".venv-lavis", "bin", "python")
  if not os.path.exists(lavis_python):
    pytest.skip("no .venv-lavis: the strict load into LAVIS itself is not run "
                "(tests/reference/lavis_env.sh makes it)")
  files.save_torch(str(tmp_path / "exported.pth"), exported)
  mlm_ids = jnp.asarray(ref.inputs["mlm_input_ids"], jnp.int32)
  ours = {k: np.asarray(v) for k, v in _forward(ref.graphdef, new_state.params, _batch(ref),
                                                 mlm_ids).items()}
  ours.update({k + "_m": np.asarray(v) for k, v in _forward(
      ref.graphdef, new_state.momentum_params, _batch(ref), mlm_ids).items()
               if k + "_m" in ref.forward})
  np.savez(tmp_path / "ours.npz", **ours)
  check = subprocess.run(
      [lavis_python, os.path.join(ROOT, "tests", "reference", "check_albef_export.py"),
       str(tmp_path / "exported.pth"), str(tmp_path / "ours.npz")],
      capture_output=True, text=True, timeout=600, check=False)
  assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]


# ----------------------------------------------------------------------------- retrieval


def test_a_run_starting_from_a_released_file_reads_it_once(ref, monkeypatch):
  # `holds` (which decoder to start) and `load` share one read of the file, and the
  # parameters are the importer's.
  reads = []
  read = files.read_checkpoint
  monkeypatch.setattr(files, "read_checkpoint", lambda *a, **k: reads.append(a) or read(*a, **k))
  c = ref.config
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(
      train_state_lib.build_model(c, 0), nnx.Param)))
  pretrained = released.Pretrained(c, os.path.join(DATA, "albef_pretrain.pth"))
  assert pretrained.holds("fusion") and not pretrained.holds("answer_decoder")
  loaded, step = pretrained.load(params)
  assert step == 0 and len(reads) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), ref.imported.params)


def test_retrieval_checkpoint_matches_lavis(ref):
  """LAVIS's AlbefRetrieval (`text_encoder.` without `.bert`, no MLM head, idx_queue):
  its features, ITM logits of every pair, momentum features; and our export of it in the
  retrieval layout is its own state dict again."""
  extras = os.path.join(HERE, "data", "lavis_extras")
  c = ref.config
  graphdef, state = nnx.split(train_state_lib.build_model(c, 0))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  path = os.path.join(extras, "albef_retrieval.pth")
  imported = albef.import_albef(path, params, c, momentum=True, queue_size=c.queue_size)
  report = imported.report
  assert report.unused == [] and all(p.startswith(("mlm_head/", "vision/mask_token"))
                                     for p in report.initialised), report.summary()
  expected = dict(np.load(os.path.join(extras, "retrieval.npz")))
  batch = _batch(ref)
  ours = _forward(graphdef, imported.params, batch, batch["text_ids"])
  for name in ("image_embeds", "text_embeds", "image_feat", "text_feat", "sim_i2t"):
    _close(ours[name], expected[name], name)
  model = nnx.merge(graphdef, imported.params)
  b = batch["text_ids"].shape[0]
  image = jnp.repeat(ours["image_embeds"], b, axis=0)  # pair (i, j) at row i * b + j
  text = jnp.tile(ours["text_embeds"], (b, 1, 1))
  fused, _ = model.fuse(text, jnp.tile(batch["text_mask"], (b, 1)), image)
  _close(model.itm_logits(fused).reshape(b, b, 2), expected["itm_logits_all"],
         "itm_logits_all")
  momentum = _forward(graphdef, imported.momentum, batch, batch["text_ids"])
  for name in ("image_feat", "text_feat"):
    _close(momentum[name], expected[name + "_m"], name + "_m")

  exported = albef.export_albef(imported.params, imported.momentum, imported.queue, c,
                                layout="retrieval")
  original = files.read_torch(path)
  assert set(exported) == set(original), set(exported) ^ set(original)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


# ----------------------------------------------------------------------------- planted


def _plant_swapped_cross_qk(monkeypatch):
  real = hf_bert._attention  # pylint: disable=protected-access

  def swapped(ours, key):
    rules = real(ours, key)
    if ours != "cross":
      return rules
    flip = {"cross_attn/query": "cross_attn/key", "cross_attn/key": "cross_attn/query"}
    return [dataclasses.replace(r, ours=tuple(
        next((o.replace(a, b) for a, b in flip.items() if o.startswith(a)), o)
        for o in r.ours)) for r in rules]
  monkeypatch.setattr(hf_bert, "_attention", swapped)


def _plant_untransposed_out(monkeypatch):
  real = hf_bert.linear

  def linear(ours, key):
    rules = real(ours, key)
    if ours == "self_attn/out":
      rules[0] = keymap.same(f"{ours}/kernel", f"{key}.weight")
    return rules
  monkeypatch.setattr(hf_bert, "linear", linear)


def _plant_qkv_order(monkeypatch):
  real = keymap.fused_qkv

  def fused(ours, key):
    rules = real(ours, key)
    order = lambda xs: [xs[1], xs[0], xs[2]]  # [k; q; v]
    return [dataclasses.replace(r, to_ours=lambda xs, f=r.to_ours: order(f(xs)))
            for r in rules]
  monkeypatch.setattr(vit, "fused_qkv", fused)


def _plant_momentum_from_online(monkeypatch):
  real = albef.model_rules
  monkeypatch.setattr(albef, "model_rules",
                      lambda layout, momentum=False, **kw: real(layout, False, **kw)
                      if momentum else real(layout, False, **kw))


PLANTED = {"fusion cross-attention query and key swapped": _plant_swapped_cross_qk,
           "text self-attention output kernel not transposed": _plant_untransposed_out,
           "ViT fused qkv split as [k; q; v]": _plant_qkv_order,
           "momentum model read from the online keys": _plant_momentum_from_online}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_a_planted_mapping_error_is_caught(ref, monkeypatch, planted):
  """Each planted mistake must push some forward output far past the bound: the
  comparison above is what catches a broken table, not luck."""
  PLANTED[planted](monkeypatch)
  c = ref.config
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.split(
      train_state_lib.build_model(c, 0))[1]))
  try:
    imported = albef.import_albef(os.path.join(DATA, "albef_pretrain.pth"), params, c,
                                  momentum=True, queue_size=c.queue_size)
  except ValueError:
    return  # caught at import (a shape or a key), which is as good
  mlm_ids = jnp.asarray(ref.inputs["mlm_input_ids"], jnp.int32)
  worst = 0.0
  for suffix, p in (("", imported.params), ("_m", imported.momentum)):
    ours = _forward(ref.graphdef, p, _batch(ref), mlm_ids)
    for name in ("image_embeds", "text_feat", "mlm_logits"):
      want = ref.forward[name + suffix]
      worst = max(worst, float(np.abs(np.asarray(ours[name]) - want).max()
                               / np.abs(want).max()))
  assert worst > 100 * RTOL, f"{planted}: largest relative error only {worst:.1e}"


# ----------------------------------------------------------------------------- VQA


def test_vqa_checkpoint_ranks_answers_as_lavis(ref):
  """LAVIS's AlbefVQA (BertModel text encoder, answer decoder `text_decoder.*` with
  cross-attention to the question states in every layer, momentum copies): the question
  states, the first-token probabilities, the top-k candidates, their scores and the
  chosen answers. LAVIS scores with its decoder's label-smoothed loss (0.1) and counts
  the first token once: `vqa.rank_label_smoothing=0.1`, `vqa.count_first_token_twice=False`
  (configs/finetune_vqa.py)."""
  from syncmask_jax.tasks import vqa as vqa_task  # pylint: disable=g-import-not-at-top
  expected = dict(np.load(os.path.join(HERE, "data", "lavis_extras", "vqa.npz")))
  c = ref.config
  graphdef, state = nnx.split(vqa_task.VQAModel(c.model, rngs=nnx.Rngs(params=0)))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  imported = albef.import_albef(os.path.join(HERE, "data", "lavis_extras", "albef_vqa.pth"),
                                params, c, momentum=True)
  assert imported.report.unused == [], imported.report.summary()
  assert all(p.startswith(("mlm_head/", "vision/mask_token", "vision_proj/", "text_proj/",
                           "itm_head/", "temp")) for p in imported.report.initialised), (
                               imported.report.summary())
  model = nnx.merge(graphdef, imported.params)
  batch = {"image": jnp.asarray(expected["image"].transpose(0, 2, 3, 1)),
           "text_ids": jnp.asarray(expected["question_ids"], jnp.int32),
           "text_mask": jnp.asarray(expected["question_mask"], jnp.int32)}
  states = model.encode_question(batch)
  _close(states, expected["question_states"], "question_states")
  bos = jnp.asarray(expected["answer_ids"][:1, :1].repeat(4, 0), jnp.int32)
  start = model.answer_decoder.next_token_logits(bos, 0, states, batch["text_mask"])
  _close(start, expected["start_logits"], "start_logits")
  answer_ids = jnp.asarray(expected["answer_ids"], jnp.int32)
  answer_mask = jnp.asarray(expected["answer_mask"], jnp.int32)
  chosen, score = vqa_task.rank_answers(
      model.answer_decoder, states, batch["text_mask"], answer_ids, answer_mask, k=3,
      count_first_token_twice=False, label_smoothing=0.1)
  np.testing.assert_array_equal(chosen, expected["chosen"])
  best = expected["answer_scores"].max(axis=1)
  _close(score, best, "chosen answers' scores")
  # Without the smoothing the scores differ from LAVIS's: the setting is what matches.
  _, plain = vqa_task.rank_answers(model.answer_decoder, states, batch["text_mask"],
                                   answer_ids, answer_mask, k=3,
                                   count_first_token_twice=False)
  assert np.abs(np.asarray(plain) - best).max() > 100 * RTOL * np.abs(best).max()


# ----------------------------------------------------------------------------- BLIP


def test_blip_caption_checkpoint_matches_lavis(ref):
  """LAVIS's BlipCaption (timm ViT, BertLMHeadModel decoder cross-attending in every
  layer, [DEC]/[ENC] after the vocabulary): the image states, the teacher-forced LM
  logits, and beam search (3 beams, prompt "a picture of ", 10 tokens in all as
  BLIP's generate counts them) gives LAVIS's tokens."""
  from syncmask_jax import decoding  # pylint: disable=g-import-not-at-top
  from syncmask_jax.checkpoint_import import blip  # pylint: disable=g-import-not-at-top
  from syncmask_jax.tasks import captioning  # pylint: disable=g-import-not-at-top
  extras = os.path.join(HERE, "data", "lavis_extras")
  expected = dict(np.load(os.path.join(extras, "blip_caption.npz")))
  c = tiny_config()
  c.model.vocab_size = expected["lm_logits"].shape[-1]  # + [DEC], [ENC]
  graphdef, state = nnx.split(captioning.CaptionModel(c.model, "text+fusion",
                                                      rngs=nnx.Rngs(params=0)))
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  params, report = blip.import_blip_caption(os.path.join(extras, "blip_caption.pth"), params,
                                            c)
  assert report.unused == [] and report.initialised == ["vision/mask_token"], report.summary()
  model = nnx.merge(graphdef, params)
  images = model.encode_image(jnp.asarray(expected["image"].transpose(0, 2, 3, 1)))
  _close(images, expected["image_embeds"], "image_embeds")
  logits = model.text_decoder(jnp.asarray(expected["lm_input_ids"], jnp.int32),
                              jnp.asarray(expected["lm_attention_mask"], jnp.int32), images)
  _close(logits, expected["lm_logits"], "lm_logits")
  prompt = jnp.asarray(expected["prompt_ids"], jnp.int32)
  beams = 3
  states = decoding.repeat_for_beams(images, beams)
  seqs, scores = decoding.beam_search(
      lambda ids, step: model.text_decoder.next_token_logits(ids, step, states), prompt,
      beam_size=beams, max_len=expected["beam_tokens"].shape[1] - prompt.shape[1],
      eos_id=3, pad_id=0)
  np.testing.assert_array_equal(
      np.concatenate([prompt, seqs[:, 0]], axis=1), expected["beam_tokens"])
  # transformers 4.26 ranks finished beams by summed log-prob / total length (prompt in).
  _close(np.asarray(scores[:, 0]) / expected["beam_tokens"].shape[1],
         expected["beam_scores"], "beam scores")


# ----------------------------------------------------------------------------- layouts


def _original_layout(tmp_path, token_type: np.ndarray) -> str:
  """LAVIS's reference state dict in the original ALBEF code's layout: BERT with a
  token-type table whose row 0 is `token_type[0]` (its positions less that row, so the
  function is LAVIS's), under {"model": ...} as ALBEF's released files."""
  state = files.read_torch(os.path.join(DATA, "albef_pretrain.pth"))
  for text in ("text_encoder.bert.", "text_encoder_m.bert."):
    state[text + "embeddings.token_type_embeddings.weight"] = token_type
    state[text + "embeddings.position_embeddings.weight"] = (
        state[text + "embeddings.position_embeddings.weight"] - token_type[0])
  path = str(tmp_path / "ALBEF.pth")
  files.save_torch(path, state, under="model")
  return path


@pytest.mark.parametrize("type_vocab_size", [2, 0])
def test_original_layout_with_token_types_reads_right(ref, tmp_path, type_vocab_size):
  """The original code's BERT adds token-type row 0 to every token: into a model with
  the table (type_vocab_size 2) it is that table, into one without (0) it moves into the
  positions; either way the forward is LAVIS's."""
  token_type = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
  path = _original_layout(tmp_path, token_type)
  c = tiny_config()
  c.model.type_vocab_size = type_vocab_size
  graphdef, state = nnx.split(train_state_lib.build_model(c, 0))
  imported = albef.import_albef(path, jax.tree.map(np.asarray, nnx.to_pure_dict(state)), c)
  report = imported.report  # no momentum model or queue asked for: those are unused, why
  assert report.unused and set(report.unused) <= set(report.reasons), report.summary()
  assert all(k.startswith(("image_queue", "text_queue", "queue_ptr")) or "_m." in k
             for k in report.unused), report.summary()
  if type_vocab_size:
    np.testing.assert_array_equal(imported.params["embeddings"]["token_type"], token_type)
  ours = _forward(graphdef, imported.params, _batch(ref),
                  jnp.asarray(ref.inputs["mlm_input_ids"], jnp.int32))
  for name in ("text_embeds", "mlm_logits", "itm_logits"):
    _close(ours[name], ref.forward[name], name)


def test_bad_checkpoints_are_refused_naming_the_cause(ref, tmp_path):
  c, path = ref.config, os.path.join(DATA, "albef_pretrain.pth")
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.split(
      train_state_lib.build_model(c, 0))[1]))
  before = jax.tree.map(np.copy, params)

  def refused(checkpoint, message, config=c, error=ValueError):
    with pytest.raises(error, match=message):
      albef.import_albef(checkpoint, params, config, momentum=True, queue_size=8)

  # Another model: BLIP's caption checkpoint, a lone BERT.
  refused(os.path.join(HERE, "data", "lavis_extras", "blip_caption.pth"),
          "not an ALBEF checkpoint")
  bert = {k: v for k, v in files.read_torch(path).items() if k.startswith("text_encoder.")}
  files.save_torch(str(tmp_path / "bert.pth"), bert)
  refused(str(tmp_path / "bert.pth"), "not an ALBEF checkpoint.*no visual_encoder")
  # A truncated download.
  raw = open(path, "rb").read()
  (tmp_path / "cut.pth").write_bytes(raw[:len(raw) // 2])
  refused(str(tmp_path / "cut.pth"), "cannot read .*cut.pth.* truncated")
  # Sizes that differ from the config name the config field.
  for field, value, source in (("text_layers", 1, "before the first crossattention"),
                               ("text_width", 64, "word_embeddings"),
                               ("vision_depth", 3, "visual_encoder.blocks"),
                               ("embed_dim", 16, "vision_proj.weight")):
    other = tiny_config()
    other.model[field] = value
    refused(path, f"{source}.* gives {field}=.* but config.model.{field}={value}", other)
  # Nothing was written into the parameters given.
  jax.tree.map(np.testing.assert_array_equal, params, before)
