"""SemMIM recipe: losses by hand, centring/sharpening, text in the targets, text-guided
masks, no collapse while MIM learns, and layout invariance of the sharded step.

The step tests share one compiled 1-device step (module fixture) on SynthFashion
batches. XLA's CPU backend optimisation is off for these compiles: it halves the
compile time of the tiny model and every compared run is compiled the same way.
"""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_no_host_round_trip, toy_batch
from flax import nnx

from syncmask_jax import config_lib, losses, masking, optim, semmim, sharding, train_state
from syncmask_jax import tokenizer, train_step
from syncmask_jax.data import pipeline

K = 64
FAST_COMPILE = {"xla_backend_optimization_level": 0}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def semmim_config():
  c = config_lib.apply_recipe(config_lib.default_config(), "semmim")
  c.semmim.num_prototypes = K
  c.model.vision_depth = 1
  c.model.mim_decoder_layers = 1
  c.model.text_dropout = 0.0
  c.data.global_batch_size = 8
  c.data.max_text_len = 32
  c.data.synth_train_products = 30  # about 90 records: a few distinct batches
  c.data.synth_val_products = 7
  c.data.read_threads = 1
  c.queue_size = 16
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 2  # step 0 has lr 0: the first update is the gradient alone
  c.total_steps = 60
  return c


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _cosine(x, protos):
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  p = protos / np.linalg.norm(protos, axis=-1, keepdims=True)
  return x @ p.T


class Run:
  """The step compiled over `config.mesh` (`devices`: default all 8); `initial` is a
  fresh state, or a host state to place on this layout (no second initialisation)."""

  def __init__(self, config, tokens, batch, devices=None, initial=None):
    mesh = sharding.make_mesh(config.mesh, devices)
    make_tx = lambda p: optim.make_optimizer(config.optim, p, config.total_steps)
    if initial is None:
      state, self.setup = train_state.create_train_state(config, mesh, make_tx)
      initial = jax.device_get(state)
    else:
      _, self.setup = train_state.make_setup(config, mesh, make_tx)
    self.initial = initial
    fn = train_step.make_train_step(config, self.setup, tokens, steps_per_epoch=10)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            initial, self.setup.state_shardings)
    self.step = train_step.jit_train_step(fn, self.setup, config, batch).lower(
        abstract, batch).compile(compiler_options=FAST_COMPILE)

  def __call__(self, host_state, batch):
    state = jax.device_put(host_state, self.setup.state_shardings)
    new_state, metrics = self.step(state, batch)
    return jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def synth():
  c = semmim_config()
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  batches = [next(it) for _ in range(4)]
  tok = it.tokenizer
  c.model.vocab_size = tok.vocab_size
  tokens = tokenizer.token_info(tok)
  return c, tokens, batches


@pytest.fixture(scope="module")
def reference(synth):
  c, tokens, batches = synth
  run = Run(c, tokens, batches[0], jax.devices()[:1])
  s1, m0 = run(run.initial, batches[0])
  s2, m1 = run(s1, batches[1])
  return run, [run.initial, s1, s2], [m0, m1]


# ------------------------------------------------------------------ pure pieces


def test_constant_input_gives_uniform_target_after_centring():
  logits = jnp.tile(jnp.linspace(-0.5, 0.9, K)[None], (6, 1))  # every sample identical
  raw = losses.sharpen_and_center(logits, jnp.zeros(K), 0.04)
  # Sharpened but uncentred: a few prototypes take all, far from uniform (log K nats).
  assert float(losses.entropy(raw[0])) < 0.5 * math.log(K)
  center = jnp.zeros(K)
  for _ in range(250):
    center = losses.update_center(center, jnp.mean(logits, axis=0), 0.9)
  np.testing.assert_allclose(center, logits[0] * (1 - 0.9 ** 250), rtol=1e-5)
  np.testing.assert_allclose(losses.sharpen_and_center(logits, center, 0.04), 1.0 / K,
                             atol=1e-6)


def test_sharpening_lowers_entropy_keeps_order():
  rng = np.random.default_rng(0)
  logits = rng.uniform(-1, 1, (5, K)).astype(np.float32)
  center = rng.normal(0, 0.1, K).astype(np.float32)
  teacher = np.asarray(losses.sharpen_and_center(logits, center, 0.04))
  np.testing.assert_allclose(teacher, _softmax((logits - center) / 0.04), rtol=1e-5,
                             atol=1e-7)
  student = _softmax((logits - center) / 0.1)
  ent = lambda p: -(p * np.log(np.maximum(p, 1e-30))).sum(-1)
  assert (ent(teacher) < ent(student) - 0.5).all()
  np.testing.assert_array_equal(teacher.argmax(-1), student.argmax(-1))


def test_masking_follows_the_text_attention():
  """On a constructed attention map the masked patches are exactly the text-attended ones,
  whatever the draw; [CLS]/[SEP]/[PAD] rows and the image [CLS] column do not vote."""
  c = semmim_config()
  b, t, n, heads = 3, 10, 16, 2
  rng = np.random.default_rng(0)
  attended = [rng.permutation(n)[:8] for _ in range(b)]
  ids = np.full((b, t), 7, np.int32)
  ids[:, 0], ids[:, 7], ids[:, 8:] = 2, 3, 0
  maskable = tokenizer.text_maskable(jnp.asarray(ids), jnp.asarray(ids != 0),
                                     tokenizer.TokenInfo(100, 0, 2, 3, 4, 5))
  probs = np.zeros((1, b, heads, t, 1 + n), np.float32)
  for i in range(b):
    others = np.setdiff1d(np.arange(n), attended[i])
    for w in range(1, 7):  # words: mass on the attended patches and the image [CLS]
      probs[0, i, :, w, 0] = 0.5
      probs[0, i, :, w][:, 1 + attended[i]] = rng.dirichlet(np.ones(8)) * 0.5
    probs[0, i, :, [0, 7, 8, 9], 1 + others[0]] = 1.0  # specials look elsewhere
  for seed in range(4):
    patch_mask, token_mask = masking.masks_from_config(
        jax.random.key(seed), c.masking, jnp.asarray(probs), maskable, n)
    for i in range(b):
      np.testing.assert_array_equal(np.flatnonzero(patch_mask[i]), np.sort(attended[i]))
    assert not np.asarray(token_mask).any()  # text-guided masks patches only
  # The uniform baseline does not find them.
  c.masking.strategy = "random"
  rand, _ = masking.masks_from_config(jax.random.key(0), c.masking, None, maskable, n)
  assert any(set(np.flatnonzero(rand[i])) != set(attended[i]) for i in range(b))


def test_text_changes_the_targets_and_the_predictions(reference):
  run, states, _ = reference
  params = states[0].params
  a, other = toy_batch(seed=0, vocab=60, seq=32), toy_batch(seed=1, vocab=60, seq=32)
  image = a["image"]
  mask = jnp.ones((8, 16), bool)
  half = jnp.tile(jnp.arange(16) < 8, (8, 1))
  cfg = semmim_config().semmim

  @jax.jit
  def patch_outputs(params, ids, tmask):
    model = nnx.merge(run.setup.graphdef, params)
    tokens = model.encode_image(image)
    text = model.encode_text(ids, tmask)
    targets, _, _ = semmim.patch_targets(model, tokens, text, tmask, jnp.zeros(K), mask, cfg)
    pred = model.patch_prototype_logits(model.encode_image(image, half), text, tmask)
    return targets, pred

  t_a, p_a = patch_outputs(params, a["text_ids"], a["text_mask"])
  t_b, p_b = patch_outputs(params, other["text_ids"], other["text_mask"])
  # Same image, other caption: other targets (total variation) and other predictions.
  assert float(0.5 * jnp.abs(t_a - t_b).sum(-1).mean()) > 0.05
  assert float(jnp.abs(p_a - p_b).max()) > 1e-2
  # Padding is not text: changing ids under text_mask = 0 changes nothing.
  padded = a["text_ids"].copy()
  padded[a["text_mask"] == 0] = 9
  t_c, p_c = patch_outputs(params, padded, a["text_mask"])
  np.testing.assert_allclose(t_c, t_a, atol=1e-6)
  np.testing.assert_allclose(p_c, p_a, atol=1e-5)


# ------------------------------------------------------------------ the step


def test_step_losses_match_hand_computation(synth, reference):
  """Step 1 (non-zero centres from step 0) against numpy, from the model's encodings."""
  c, tokens, batches = synth
  run, states, metrics = reference
  s1, s2, m1, batch = states[1], states[2], metrics[1], batches[1]
  assert np.abs(s1.centers["global"]).max() > 0 and np.abs(s1.centers["patch"]).max() > 0

  @jax.jit
  def encodings(params, momentum_params):
    model = nnx.merge(run.setup.graphdef, params)
    teacher = nnx.merge(run.setup.graphdef, momentum_params)
    ids, tmask = batch["text_ids"], batch["text_mask"]
    tok_m = [teacher.encode_image(batch[k]) for k in ("image", "image_view2")]
    text_m = teacher.encode_text(ids, tmask)
    _, cross = teacher.fuse(text_m, tmask, tok_m[0])
    maskable = tokenizer.text_maskable(ids, tmask, tokens)
    # The step's mask key: split 0 of the step's key (`train_step`).
    key = jax.random.fold_in(jax.random.wrap_key_data(s1.rng), s1.step)
    patch_mask, _ = masking.masks_from_config(jax.random.split(key, 4)[0], c.masking, cross,
                                              maskable, tok_m[0].shape[1] - 1)
    text = model.encode_text(ids, tmask)
    return dict(
        teacher_global=[teacher.mim_out(t[:, 0]) for t in tok_m],  # the shared head
        student_global=[model.mim_out(model.encode_image(batch[k])[:, 0])
                        for k in ("image", "image_view2")],
        teacher_patch=teacher.mim_decode(tok_m[0], text_m, tmask),
        student_patch=model.mim_decode(model.encode_image(batch["image"], patch_mask), text,
                                       tmask),
        patch_mask=patch_mask, protos=model.prototypes[...], protos_m=teacher.prototypes[...])

  e = jax.device_get(encodings(s1.params, s1.momentum_params))
  st, tt = c.semmim.student_temp, c.semmim.teacher_temp
  cg, cp = s1.centers["global"], s1.centers["patch"]
  t_cos = [_cosine(x, e["protos_m"]) for x in e["teacher_global"]]
  s_cos = [_cosine(x, e["protos"]) for x in e["student_global"]]
  t_prob = [_softmax((x - cg) / tt) for x in t_cos]
  ce = lambda target, logits: -(target * _log_softmax(logits / st)).sum(-1)
  agreement = 0.5 * (ce(t_prob[1], s_cos[0]).mean() + ce(t_prob[0], s_cos[1]).mean())
  np.testing.assert_allclose(m1["loss_agreement"], agreement, rtol=2e-4)

  mask = e["patch_mask"]
  assert mask.sum() == 8 * 8  # ratio 0.5 of 16 patches
  tp_cos = _cosine(e["teacher_patch"], e["protos_m"])
  target = _softmax((tp_cos - cp) / tt)
  per_patch = ce(target, _cosine(e["student_patch"], e["protos"]))
  np.testing.assert_allclose(m1["loss_mim"], per_patch[mask].mean(), rtol=2e-4)

  # Centres move after use: m * c + (1 - m) * batch mean (both views; every patch).
  np.testing.assert_allclose(s2.centers["global"],
                             0.9 * cg + 0.1 * np.concatenate(t_cos).mean(0), atol=1e-6)
  np.testing.assert_allclose(s2.centers["patch"], 0.9 * cp + 0.1 * tp_cos.mean((0, 1)),
                             atol=1e-6)
  # Diagnostics of the targets actually used.
  usage = target[mask].mean(0)
  np.testing.assert_allclose(m1["semmim/patch_usage_entropy"],
                             -(usage * np.log(usage)).sum(), rtol=1e-4)
  np.testing.assert_allclose(m1["semmim/global_usage_share"],
                             len(set(np.concatenate(t_prob).argmax(-1))) / K)
  # The recipe's total: ITC + ITM + MLM (random 15% tokens: text-guided masks no words)
  # + MIM + agreement, all weights 1.
  assert m1["loss_mlm"] > 0
  parts = ("loss_itc", "loss_itm", "loss_mlm", "loss_mim", "loss_agreement")
  np.testing.assert_allclose(m1["loss"], sum(m1[k] for k in parts), rtol=1e-5)


def test_short_run_mim_falls_without_prototype_collapse(synth, reference):
  c, _, batches = synth
  run, states, _ = reference
  state, history = states[0], []
  for i in range(40):
    state, m = run(state, batches[i % len(batches)])
    history.append(m)
  mean = lambda key, sl: float(np.mean([h[key] for h in history[sl]]))
  first, last = slice(0, 4), slice(-4, None)  # one pass over the 4 batches each
  assert mean("loss_mim", last) < mean("loss_mim", first) - 0.3
  assert mean("loss_agreement", last) < mean("loss_agreement", first) - 0.3
  log_k = math.log(K)
  for h in history:
    # Usage floor: the batch's targets spread over >= e^2 (about 7) prototypes' worth,
    # not one (collapse to a single prototype gives ~0).
    assert h["semmim/patch_usage_entropy"] > 2.0
    assert h["semmim/global_usage_entropy"] > 1.5
    # Sharpness ceiling: targets stay far from uniform (uniform collapse gives log K).
    assert h["semmim/patch_target_entropy"] < 0.6 * log_k
    assert h["semmim/global_target_entropy"] < 0.6 * log_k
    assert h["semmim/patch_usage_share"] >= 4 / K


def test_centres_move_once_per_update_under_grad_accumulation(synth, reference):
  """k = 2 micro-batches: the centres stay put after the first (as the momentum model
  does) and then move once, by the mean of both batch means: one step on both batches."""
  base, tokens, batches = synth
  c = semmim_config()
  c.model.vocab_size = base.model.vocab_size
  c.optim.grad_accum_steps = 2
  run = Run(c, tokens, batches[0], jax.devices()[:1])
  jax.tree.map(np.testing.assert_array_equal, run.initial.momentum_params,
               reference[1][0].momentum_params)

  @jax.jit
  def batch_means(momentum_params, batch):
    teacher = nnx.merge(run.setup.graphdef, momentum_params)
    tokens_m = teacher.encode_image(batch["image"])
    text_m = teacher.encode_text(batch["text_ids"], batch["text_mask"])
    _, g, _ = semmim.global_targets(teacher, tokens_m, teacher.encode_image(
        batch["image_view2"]), jnp.zeros(K), c.semmim)
    every_patch = jnp.ones((tokens_m.shape[0], tokens_m.shape[1] - 1), bool)
    _, p, _ = semmim.patch_targets(teacher, tokens_m, text_m, batch["text_mask"],
                                   jnp.zeros(K), every_patch, c.semmim)
    return {"global": g, "patch": p}

  means = [jax.device_get(batch_means(run.initial.momentum_params, b)) for b in batches[:2]]
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for name in ("global", "patch"):  # without accumulation: one EMA step per batch
    close(reference[1][1].centers[name], 0.1 * means[0][name])
  s1, _ = run(run.initial, batches[0])
  s2, _ = run(s1, batches[1])
  for name in ("global", "patch"):
    np.testing.assert_array_equal(s1.centers[name], np.zeros(K))
    close(s1.centers[name + "_sum"], means[0][name])
    close(s2.centers[name], 0.1 * (means[0][name] + means[1][name]) / 2)
    np.testing.assert_array_equal(s2.centers[name + "_sum"], np.zeros(K))
  assert np.abs(means[0]["global"] - means[1]["global"]).max() > 1e-4  # distinct batches


def test_compiled_step_has_no_host_round_trip(reference):
  assert_no_host_round_trip(reference[0].step.as_text())


@pytest.mark.parametrize("layout", [dict(data=8, fsdp=1), dict(data=1, fsdp=8)])
def test_one_step_equal_across_layouts(synth, reference, layout):
  base, tokens, batches = synth
  _, ref_states, ref_metrics = reference
  c = semmim_config()
  c.model.vocab_size = base.model.vocab_size
  c.mesh.data, c.mesh.fsdp = layout["data"], layout["fsdp"]
  run = Run(c, tokens, batches[0], initial=ref_states[0])
  state, m = run(ref_states[0], batches[0])
  for k, v in ref_metrics[0].items():
    np.testing.assert_allclose(np.asarray(m[k], np.float64), np.asarray(v, np.float64),
                               rtol=5e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state.centers, ref_states[1].centers)
  # The optimizer moments hold the (clipped) gradients: equal gradients, not only norms.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-8),
               state.opt_state, ref_states[1].opt_state)


# ------------------------------------------------------------------ configuration


def test_prototype_heads_shared_or_separate():
  from syncmask_jax.models.vlp import VLP
  cfg = semmim_config().model
  params = lambda **kw: nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: VLP(cfg, num_prototypes=K, rngs=nnx.Rngs(0), **kw))))
  shared = params(mim_head="prototypes")
  assert shared["prototypes"].shape == (K, cfg.embed_dim)
  assert shared["mim_out"]["kernel"].shape == (cfg.vision_width, cfg.embed_dim)
  assert "prototype_proj" not in shared  # the global [CLS] goes through mim_out
  assert "prototype_proj" in params(mim_head="prototypes", shared_prototype_head=False)
  assert "prototype_proj" in params(mim_head="none")  # the loss.mim=0 ablation
  with pytest.raises(ValueError, match="num_prototypes"):
    VLP(cfg, mim_head="prototypes", rngs=nnx.Rngs(0))


def test_recipe_and_validation():
  c = config_lib.apply_recipe(config_lib.default_config(), "semmim")
  assert (c.masking.strategy, c.masking.ratio_img, c.loss.mim_target, c.data.two_views,
          c.negatives.mode) == ("text_guided", 0.5, "prototypes", True, "semi_hard")
  assert (c.semmim.num_prototypes, c.semmim.student_temp, c.semmim.teacher_temp,
          c.semmim.center_momentum) == (1024, 0.1, 0.04, 0.9)
  config_lib.validate(c)
  for field, value, match in [("semmim.teacher_temp", 0.0, "semmim.teacher_temp"),
                              ("semmim.center_momentum", 1.0, "semmim.center_momentum"),
                              ("semmim.patch_center", "cls", "semmim.patch_center"),
                              ("data.two_views", False, "data.two_views"),
                              ("loss.mim_target", "pixels", "loss.mim_target")]:
    bad = config_lib.apply_recipe(config_lib.default_config(), "semmim")
    group, name = field.split(".")
    bad[group][name] = value
    with pytest.raises(ValueError, match=match):
      config_lib.validate(bad)
  wrong = config_lib.default_config()
  wrong.loss.mim_target = "prototypes"
  with pytest.raises(ValueError, match="recipe='semmim'"):
    config_lib.validate(wrong)


def test_coco_config_is_semmim_at_base_size():
  spec = importlib.util.spec_from_file_location("coco_cfg", os.path.join(REPO, "configs",
                                                                         "coco.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(None)
  config_lib.validate(c)
  assert (c.recipe, c.data.name, c.data.karpathy_name, c.model.preset) == (
      "semmim", "coco", "coco", "base")
  with pytest.raises(ValueError, match="vocab_path"):
    pipeline.make_tokenizer(c)  # COCO needs a BERT vocabulary
  assert module.get_config("karpathy=flickr30k").data.karpathy_name == "flickr30k"
