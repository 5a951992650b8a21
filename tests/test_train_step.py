"""The pretraining step: EMA, queue, sharding invariance, learning, no host round trip."""

import jax
import numpy as np
import pytest
from conftest import assert_no_host_round_trip, make_tiny_config, toy_batch

from flax import nnx

from syncmask_jax import (config_lib, losses, masking, optim, sharding, tokenizer, train_state,
                          train_step)

TOKENS = tokenizer.TokenInfo(vocab_size=100, pad_id=0, cls_id=2, sep_id=3, mask_id=4,
                             min_random_id=5)


def _build(config, devices=None):
  mesh = sharding.make_mesh(config.mesh, devices)
  state, setup = train_state.create_train_state(
      config, mesh, lambda p: optim.make_optimizer(config.optim, p, config.total_steps))
  fn = train_step.make_train_step(config, setup, TOKENS, steps_per_epoch=10)
  return state, setup, fn


def _run(config, batches, devices=None):
  state, setup, fn = _build(config, devices)
  step = train_step.jit_train_step(fn, setup, config, batches[0])
  out = []
  for b in batches:
    state, m = step(state, b)
    out.append(jax.device_get(m))
  return jax.device_get(state), out


def test_ema_moves_by_exactly_one_minus_m(tiny_config):
  tiny_config.momentum = 0.9
  tiny_config.optim.warmup_steps = 0
  state, setup, fn = _build(tiny_config, jax.devices()[:1])
  before = jax.device_get(state)
  after, _ = jax.jit(fn)(state, toy_batch())
  after = jax.device_get(after)
  expect = jax.tree.map(lambda m, p: 0.9 * m + 0.1 * p, before.momentum_params, after.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               after.momentum_params, expect)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), after.params, before.params)
  assert max(jax.tree.leaves(moved)) > 0


def test_queue_holds_last_batches_in_order(tiny_config):
  tiny_config.queue_size = 16  # two batches of 8
  batches = [toy_batch(seed=s) for s in range(3)]
  for i, b in enumerate(batches):
    b["product_id"] = b["product_id"] + 100 * i
  state, _ = _run(tiny_config, batches, jax.devices()[:1])
  q = state.queue
  # Batch 2 overwrote the oldest slot block (batch 0); batch 1 stays in slots 8..15.
  np.testing.assert_array_equal(q["product_id"][:8], batches[2]["product_id"])
  np.testing.assert_array_equal(q["product_id"][8:], batches[1]["product_id"])
  assert int(q["ptr"]) == 8 and q["valid"].all()
  np.testing.assert_allclose(np.linalg.norm(q["image_feat"], axis=1), 1.0, rtol=1e-5)


def test_queue_size_must_divide():
  with pytest.raises(ValueError, match=r"config.queue_size=20 .*global_batch_size=8"):
    config_lib.check_queue_size(20, 8)


@pytest.fixture(scope="module")
def one_device_step():
  """One step of the tiny config on toy_batch() on one device: what every mesh layout
  below must reproduce, computed once for them (once per xdist worker that runs one)."""
  return _run(make_tiny_config(), [toy_batch()], jax.devices()[:1])


@pytest.mark.parametrize("layout", [dict(data=8, fsdp=1), dict(data=1, fsdp=8),
                                    dict(data=2, fsdp=4)])
def test_one_step_equal_across_layouts(tiny_config, layout, one_device_step):
  ref_state, ref_m = one_device_step
  tiny_config.mesh.data, tiny_config.mesh.fsdp = layout["data"], layout["fsdp"]
  state, m = _run(tiny_config, [toy_batch()])
  for k in ("loss", "loss_itc", "loss_itm", "loss_mlm", "loss_mim", "grad_norm"):
    np.testing.assert_allclose(m[0][k], ref_m[0][k], rtol=2e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
               state.params, ref_state.params)


def test_fsdp_state_is_sharded(tiny_config):
  tiny_config.mesh.data, tiny_config.mesh.fsdp = 1, 8
  state, _, _ = _build(tiny_config)
  kernel = state.params["vision"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec[0] == "fsdp"
  assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // 8
  mu = state.opt_state[1][0].mu["vision"]["block_0"]["mlp"]["fc1"]["kernel"]
  assert mu.sharding.spec == kernel.sharding.spec


def test_short_training_lowers_loss(tiny_config):
  tiny_config.optim.lr = 1e-3
  tiny_config.optim.warmup_steps = 2
  tiny_config.total_steps = 40
  batch = toy_batch()
  _, metrics = _run(tiny_config, [batch] * 25, jax.devices()[:1])
  first = np.mean([m["loss_mlm"] + m["loss_mim"] + m["loss_itm"] for m in metrics[:3]])
  last = np.mean([m["loss_mlm"] + m["loss_mim"] + m["loss_itm"] for m in metrics[-3:]])
  # A memorisable batch: MLM, MIM and ITM all fall (ITC rises at first as the queue fills).
  assert last < first - 0.3, (first, last)
  assert metrics[-1]["loss_itm"] < 0.69  # below chance, ln 2


def test_compiled_step_has_no_host_callbacks(tiny_config):
  tiny_config.mesh.data = 8
  state, setup, fn = _build(tiny_config)
  batch = toy_batch()
  assert_no_host_round_trip(train_step.jit_train_step(fn, setup, tiny_config, batch).lower(
      state, batch).compile().as_text())


def test_nonfinite_skip_keeps_params(tiny_config):
  tiny_config.nonfinite = "skip"
  batch = toy_batch()
  batch["image"][0, 0, 0, 0] = np.nan
  state, setup, fn = _build(tiny_config, jax.devices()[:1])
  before = jax.device_get(state)
  after, m = jax.jit(fn)(state, batch)
  assert not bool(m["finite"])
  assert int(after.step) == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), before.params)


@pytest.mark.parametrize("recipe_overrides", [
    dict(strategy="random", mode="hard"), dict(strategy="random", mode="random")])
def test_ablations_run(tiny_config, recipe_overrides):
  tiny_config.masking.strategy = recipe_overrides["strategy"]
  tiny_config.negatives.mode = recipe_overrides["mode"]
  _, m = _run(tiny_config, [toy_batch()], jax.devices()[:1])
  assert np.isfinite(m[0]["loss"])
  assert m[0]["negatives/false_negative_rate"] == 0.0


def test_gradient_accumulation_updates_every_k_steps(tiny_config):
  tiny_config.optim.grad_accum_steps = 2
  tiny_config.optim.warmup_steps = 0
  state, setup, fn = _build(tiny_config, jax.devices()[:1])
  step = jax.jit(fn)
  p0 = jax.device_get(state.params)
  s1, _ = step(state, toy_batch(seed=0))
  s1_host = jax.device_get(s1)
  jax.tree.map(np.testing.assert_array_equal, s1_host.params, p0)
  jax.tree.map(np.testing.assert_array_equal, s1_host.momentum_params, p0)
  s2, _ = step(s1, toy_batch(seed=1))
  s2_host = jax.device_get(s2)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), s2_host.params, p0)
  assert max(jax.tree.leaves(moved)) > 0
  expect = jax.tree.map(lambda m, p: tiny_config.momentum * m + (1 - tiny_config.momentum) * p,
                        p0, s2_host.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               s2_host.momentum_params, expect)


# ------------------------------------------------------------------ the step's stages

def test_plan_enables_the_recipes_loss_terms(tiny_config):
  def terms(recipe, **loss):
    c = config_lib.apply_recipe(config_lib.default_config(), recipe)
    c.loss.update(loss)
    return train_step.plan_step(c, TOKENS, 10).terms
  assert terms("syncmask") == ("itm", "mlm", "pixel_mim")
  assert terms("albef") == ("itm", "mlm")
  assert terms("semmim") == ("itm", "mlm", "agreement", "prototype_mim")
  assert terms("syncmask", itm=0.0, mim_target="momentum_features") == ("mlm", "feature_mim")
  assert train_step.plan_step(config_lib.apply_recipe(tiny_config, "albef"), TOKENS,
                              10).mask_source == "attention"


def _stages(config):
  """A plan, the models on the initial parameters, the teacher pass and the masks."""
  state, setup, _ = _build(config, jax.devices()[:1])
  plan = train_step.plan_step(config, TOKENS, 10)
  teacher = nnx.merge(setup.graphdef, state.momentum_params)
  batch = toy_batch()
  t = train_step.teacher_pass(plan, teacher, batch, state.queue)
  masks = train_step.make_masks(plan, jax.random.key(1), jax.random.key(2), t, batch,
                                state.step)
  return plan, state, setup, teacher, batch, t, masks


def test_teacher_pass_and_masks(tiny_config):
  plan, state, _, teacher, batch, t, masks = _stages(tiny_config)
  feat = teacher.image_feature(teacher.encode_image(batch["image"]))
  np.testing.assert_array_equal(t.image_feat, feat)
  np.testing.assert_array_equal(t.bank_image[:8], feat)
  np.testing.assert_array_equal(t.bank_valid, np.r_[np.ones(8, bool), state.queue["valid"]])
  assert t.cross_probs.shape == (1, 8, 2, 12, 17) and t.cams is None
  maskable = tokenizer.text_maskable(batch["text_ids"], batch["text_mask"], TOKENS)
  np.testing.assert_array_equal(masks.maskable, maskable)
  assert masks.patch.shape == (8, 16) and (masks.patch.sum(1) == 8).all()
  assert not (masks.token & ~maskable).any() and masks.token.any()
  np.testing.assert_array_equal(masks.mlm_labels >= 0, masks.token)


def test_losses_stage_with_one_term_is_that_loss(tiny_config):
  tiny_config.loss.update(itm=0.0, mim=0.0, mlm=2.0, mlm_distill=False)
  plan, state, setup, _, batch, t, masks = _stages(tiny_config)
  assert plan.terms == ("mlm",)
  targets = train_step.teacher_targets(plan, None, batch, t, masks, state.centers)
  assert targets.soft_labels is None and targets.center_means == {}
  total, aux = train_step.online_losses(state.params, plan, setup.graphdef, batch, t, masks,
                                        targets, jax.random.key(3), jax.random.key(4), 0.4)
  model = nnx.merge(setup.graphdef, state.params)
  tokens = model.encode_image(batch["image"])
  text = model.encode_text(batch["text_ids"], batch["text_mask"])
  itc, _ = losses.itc_loss(model.image_feature(tokens), model.text_feature(text),
                           t.bank_image, t.bank_text, batch["product_id"], t.bank_pid,
                           model.temperature(), 0.4, bank_valid=t.bank_valid)
  fused, _ = model.fuse(model.encode_text(masks.mlm_ids, batch["text_mask"]),
                        batch["text_mask"], tokens)
  mlm = losses.mlm_loss(model.mlm_logits(fused), masks.mlm_labels, masks.mlm_weights)
  assert sorted(aux) == ["loss_itc", "loss_mlm", "temp"]
  np.testing.assert_allclose(aux["loss_itc"], itc, rtol=1e-6)
  np.testing.assert_allclose(aux["loss_mlm"], mlm, rtol=1e-6)
  np.testing.assert_allclose(total, itc + 2.0 * mlm, rtol=1e-6)


def test_diagnostics_report_the_masks(tiny_config):
  tiny_config.data.grouping = "embedding"
  plan, state, _, _, batch, t, masks = _stages(tiny_config)
  batch["index"] = np.arange(8)
  targets = train_step.Targets(None, None, None, {})
  m = train_step.diagnostics(plan, batch, t, masks, targets, None)
  assert sorted(m) == ["example_embedding", "example_index", "mask/patch_attn_share",
                       "mask/patch_precision", "mask/sync_attn_share",
                       "mask/token_attn_share", "mask/token_precision"]
  attn = masking.word_patch_map(tiny_config.masking, t.cross_probs, masks.maskable)
  stats = masking.mask_stats(attn, masks.patch, masks.token, masks.maskable)
  for k, v in stats.items():
    np.testing.assert_array_equal(m[f"mask/{k}"], v)
  np.testing.assert_array_equal(m["example_embedding"], t.image_feat + t.text_feat)
