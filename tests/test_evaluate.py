"""Evaluation: classification metrics against brute force, the model-backed ITM scorer,
the retrieval pass with an ITM head that copies ITC, and the evaluate CLI on a tiny
pretraining checkpoint."""

import glob
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from syncmask_jax import checkpointing, config_lib, evaluate, optim, retrieval
from syncmask_jax import sharding, train
from syncmask_jax import tokenizer as tokenizer_lib
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import pipeline, synthfashion
from syncmask_jax.models.vlp import VLP
from syncmask_jax.tasks import category

import fakes  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("seed", range(3))
def test_classification_metrics_match_brute_force(seed):
  rs = np.random.RandomState(seed)
  label = rs.randint(-1, 5, 60)  # -1: unseen in train
  pred = np.where(rs.rand(60) < 0.5, label, rs.randint(0, 7, 60))  # 5, 6: predicted only
  pred[label < 0] = rs.randint(0, 7, (label < 0).sum())
  out = category.classification_metrics(pred, label)
  known = label >= 0
  p, y = pred[known], label[known]
  f1s = []
  for c in sorted(set(p) | set(y)):
    tp = sum(1 for a, b in zip(p, y) if a == c and b == c)
    precision = tp / max(sum(1 for a in p if a == c), 1)
    recall = tp / max(sum(1 for b in y if b == c), 1)
    f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
  assert out["accuracy"] == pytest.approx(100 * np.mean([a == b for a, b in zip(p, y)]))
  assert out["macro_f1"] == pytest.approx(100 * np.mean(f1s))
  assert out["num_excluded_unseen"] == (~known).sum() > 0
  assert out["num_evaluated"] + out["num_excluded_unseen"] == out["num_rows"] == 60
  assert out["num_classes_in_macro_f1"] == len(f1s)


def _tiny_model():
  c = config_lib.model_config("tiny", vocab_size=50)
  c.vision_depth = 1
  c.text_dropout = 0.0
  build = lambda: VLP(c, rngs=nnx.Rngs(params=0))
  graphdef, _ = nnx.split(nnx.eval_shape(build))
  return c, graphdef, fakes.numpy_params(build)


def test_itm_pairs_match_the_model():
  cfg, graphdef, params = _tiny_model()
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
  rs = np.random.RandomState(0)
  image_tokens = rs.randn(5, 17, cfg.vision_width).astype(np.float32)
  text_hidden = rs.randn(4, 6, cfg.text_width).astype(np.float32)
  text_mask = np.ones((4, 6), np.int32)
  text_mask[1, 3:] = 0
  pairs = retrieval.ItmPairs(graphdef, params, mesh, image_tokens, text_hidden, text_mask,
                             batch_size=8)
  ii, tt = rs.randint(0, 5, 13), rs.randint(0, 4, 13)  # 13 pairs: two padded batches
  got = pairs(ii, tt)
  model = nnx.merge(graphdef, params)
  fused, _ = model.fuse(text_hidden[tt], text_mask[tt], image_tokens[ii])
  np.testing.assert_allclose(got, np.asarray(model.itm_logits(fused)[:, 1]), rtol=1e-4,
                             atol=1e-5)


def _synth_config():
  c = config_lib.default_config()
  c.model.vision_depth = 1
  c.data.global_batch_size = 8
  c.data.eval_batch_size = 8
  c.data.synth_val_products = 10
  c.data.read_threads = 1
  c.queue_size = 16
  return c


def test_retrieval_pass_with_an_itm_copying_itc_ranks_like_itc(monkeypatch):
  c = _synth_config()
  c.eval.update(dict(
      scoring=("itc", "itc+itm"), itm_k=4, itm_batch_size=8,
      one_plus_100=dict(num_queries=6, num_negatives=4, rounds=2, seed=0),
      twins=dict(num_products=12, num_twins=1)))  # more products than the gallery's 10
  tokens = tokenizer_lib.token_info(pipeline.make_tokenizer(c))
  c.model.vocab_size = tokens.vocab_size
  build = lambda: train_state_lib.build_model(c, 0)
  graphdef, _ = nnx.split(nnx.eval_shape(build))
  params = fakes.numpy_params(build)
  mesh = sharding.make_mesh(c.mesh)
  real_scorer = evaluate._scorer  # pylint: disable=protected-access
  built = []

  def cosine_itm(scoring, ev, graphdef, params, mesh, images, texts):
    scorer = real_scorer(scoring, ev, graphdef, params, mesh, images, texts)
    if scoring == "itc+itm":
      built.append(scorer.itm)
      scorer.itm = lambda i, t: np.sum(images["image_feat"][i] * texts["text_feat"][t], -1)
    return scorer

  monkeypatch.setattr(evaluate, "_scorer", cosine_itm)
  blocks, counts = evaluate.fashion_retrieval(c, graphdef, params, mesh)
  assert not counts  # no momentum model given: no mask precision
  assert isinstance(built[0], retrieval.ItmPairs)  # the real pair scorer was set up
  by = {(b["protocol"], b["scoring"]): b for b in blocks}
  assert set(by) == {(p, s) for p in ("full_gallery", "one_plus_100", "twins")
                     for s in ("itc", "itc+itm")}
  # The twins: every view of the split's first 12 products (past the gallery's 10)
  # against one twin per attribute.
  twins = by[("twins", "itc")]
  assert twins["num_products"] == 12 and twins["twin_slots"] == 5
  gallery = pipeline.make_eval_source(c)
  assert len(np.unique(pipeline.source_metadata(gallery)["product_id"])) == 10
  split12 = synthfashion.SynthFashion(gallery.split, 12, gallery.seed, gallery.image_size,
                                      gallery.patch_size)
  np.testing.assert_array_equal(split12.product_ids[:10], gallery.product_ids)
  assert twins["num_queries"] == len(split12)  # every view of the 12 products
  assert 0.0 <= twins["i2t_r1"] <= 100.0
  for protocol in ("full_gallery", "one_plus_100", "twins"):
    itc, rerank = dict(by[(protocol, "itc")]), dict(by[(protocol, "itc+itm")])
    assert rerank.pop("itm_k") == 4
    itc.pop("scoring"), rerank.pop("scoring")
    if protocol == "twins":  # identical images tie under ITC (ties count against the
      # query) but not always after ITM's top-k cut, which breaks them by position
      itc = {k: v for k, v in itc.items() if "invisible" not in k}
      rerank = {k: v for k, v in rerank.items() if "invisible" not in k}
    assert itc == rerank
  assert by[("full_gallery", "itc")]["num_texts"] == 10


def test_nan_features_are_an_error_naming_the_array_and_the_step(monkeypatch, tmp_path):
  def collapsed(config, graphdef, params, mesh, **kwargs):
    nan = np.full((4, 8), np.nan, np.float32)
    return [retrieval.bidirectional(nan, np.arange(4), nan, np.arange(4),
                                    retrieval.Scorer("itc"))], {}

  monkeypatch.setattr(evaluate, "fashion_retrieval", collapsed)
  setup = train_state_lib.Setup(graphdef=None, state_shardings=None, mesh=None, tx=None)
  with pytest.raises(retrieval.NonFiniteError,
                     match=r"evaluation at step 7: image_feat: 32 non-finite values"):
    evaluate.evaluate_pretraining(_synth_config(), setup, train.EvalState(None, None),
                                  None, str(tmp_path), step=7)
  assert not os.path.exists(tmp_path / "eval" / "pretrain.json")  # no 100% written


def test_eval_settings_name_the_field():
  for field, value in (("scoring", ("itm",)), ("protocols", ("one_plus_1000",)),
                       ("twins.num_products", 0), ("twins.num_twins", 0)):
    c = _synth_config()
    *parent, name = field.split(".")
    (c.eval[parent[0]] if parent else c.eval)[name] = value
    with pytest.raises(ValueError, match=f"config.eval.{field}"):
      config_lib.validate(c)
  c = _synth_config()
  c.eval.itm_batch_size = 12  # 8 devices
  with pytest.raises(ValueError, match="config.eval.itm_batch_size=12"):
    evaluate.eval_settings(c)
  c.eval.itm_batch_size = 8
  assert evaluate.eval_settings(c).protocols == config_lib.DEFAULT_PROTOCOLS["synthfashion"]
  assert c.eval.protocols == ()  # resolved on a copy


@pytest.mark.parametrize("recipe,token_count,kinds", [
    ("syncmask", 12.0, ["patch", "token"]),
    ("albef", 12.0, ["token"]),  # no MIM: its patch masks train nothing
    ("semmim", 0.0, ["patch"]),  # text-guided masks pick no tokens
])
def test_mask_precision_is_summarised_only_for_masks_the_recipe_trains(recipe, token_count,
                                                                       kinds):
  c = config_lib.apply_recipe(config_lib.default_config(), recipe)
  assert evaluate.masks_trained(
      c, {"masks/method/token_share_visible_count": token_count}) == kinds
  results = {"mask_strategy": c.masking.strategy, "masks_trained": kinds,
             "mask_precision_patch_method": 0.5, "mask_precision_patch_random": 0.25,
             "mask_precision_token_method": 0.0, "mask_precision_token_random": 0.125}
  line, = evaluate.summary_lines(results)
  shown = {"patch": "patches 0.500 vs 0.250", "token": "tokens 0.000 vs 0.125"}
  assert line == (f"mask precision ({c.masking.strategy} vs random): "
                  + ", ".join(shown[k] for k in kinds))


def test_twins_summary_prints_each_attribute_beside_its_chance():
  block = {"protocol": "twins", "scoring": "itc", "num_products": 200, "twin_slots": 15,
           "attributes": ["colour", "detail_side"], "i2t_r1": 70.04, "t2i_r1": 71.96,
           "i2t_r1_colour": 94.2, "t2i_r1_colour": 98.0, "r1_chance_colour": 26.7,
           "i2t_r1_detail_side": 43.4, "t2i_r1_detail_side": 41.0,
           "r1_chance_detail_side": 45.2}
  line, = evaluate.summary_lines({"results": [block]})
  assert line == ("retrieval twins/itc (200 products x 1+15 twins, visible changes): i2t "
                  "R@1 70.0  t2i R@1 72.0; per attribute, i2t/t2i [by chance]: colour "
                  "94/98 [27]  detail_side 43/41 [45]")


def test_evaluate_cli_on_a_pretraining_checkpoint(tmp_path):
  """A real TrainState checkpoint (8-device layout) at steps 1 and 2, evaluated at the
  named step 1 on 2 devices: parameters only, resharded on restore."""
  # The default's model at configs/synthfashion.py's size except a 4x4 grid and 2 heads
  # (cheaper); the run has no config.json, so the flags must say so.
  overrides = {"model.vision_depth": 1, "model.patch_size": 16, "model.fusion_layers": 2,
               "model.text_heads": 2, "data.global_batch_size": 8,
               "data.eval_batch_size": 8, "data.synth_val_products": 10, "queue_size": 16}
  c = config_lib.default_config()
  for k, v in overrides.items():
    node, _, leaf = k.rpartition(".")
    (c[node] if node else c)[leaf] = v
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  mesh = sharding.make_mesh(c.mesh)
  state, _ = train_state_lib.create_train_state(
      c, mesh, lambda p: optim.make_optimizer(c.optim, p, 10))
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  ckpt.save(1, state, {"sampler": {}}, force=True)
  ckpt.save(2, state.replace(step=state.step + 2), {"sampler": {}}, force=True)
  ckpt.close()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  run = subprocess.run(
      [sys.executable, "-m", "syncmask_jax.evaluate",
       f"--config={os.path.join(ROOT, 'configs', 'synthfashion.py')}",
       f"--workdir={tmp_path}", "--step=1"]
      + [f"--config.{k}={v}" for k, v in overrides.items()],
      env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.load(open(tmp_path / "eval" / "pretrain.json"))
  assert out["task"] == "pretrain" and out["step"] == 1
  assert [(b["protocol"], b["scoring"]) for b in out["results"]] == [
      ("full_gallery", "itc"), ("one_plus_100", "itc"), ("twins", "itc")]
  assert out["protocol"] == "full_gallery" and out["num_texts"] == 10  # the headline
  assert out["results"][1]["num_queries"] == 10 and out["results"][1]["num_negatives"] == 9
  for kind in ("patch", "token"):
    for masks in ("method", "random"):
      assert 0.0 <= out[f"mask_precision_{kind}_{masks}"] <= 1.0
  assert out["masks_trained"] == ["patch", "token"]  # SyncMask trains with both
  g = out["grounding"]
  assert set(g) == {"attention", "attention_centered", "gradcam", "gradcam_centered", "heads"}
  assert np.shape(g["heads"]["attention"]["visible/pointing"]) == (2, 2)  # (layers, heads)
  # Grad-CAM per layer leaves out the last, zero for every word.
  assert np.shape(g["heads"]["gradcam"]["visible/pointing"]) == (1, 2)
  for source in ("attention", "attention_centered", "gradcam", "gradcam_centered"):
    for measure in ("auc_patch", "auc_token", "visible/pointing", "function/garment_share",
                    "patch_precision", "token_share_visible"):
      assert 0.0 <= g[source][measure] <= 1.0, (source, measure)
  # The map of the run's own source (the SynthFashion default's) gives the run's masks.
  assert out["mask_source"] == "gradcam_centered"
  assert g["gradcam_centered"]["patch_precision"] == out["mask_precision_patch_method"]
  assert g["gradcam_centered"]["token_share_visible"] == out["mask_precision_token_method"]
  assert len(out["pictures"]) == 4
  for path in out["pictures"]:
    assert os.path.getsize(path) > 0 and Image.open(path).size[0] > 0
  assert "retrieval full_gallery/itc (" in run.stdout and "mask precision" in run.stdout
  assert "grounding (gradcam_centered, momentum model): visible words' pointing" in run.stdout
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert any(r["step"] == 1 and "eval/pretrain/one_plus_100/itc/r_mean" in r for r in rows)
  assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
  # A step that is not there is an error naming it.
  with pytest.raises(FileNotFoundError, match="no complete checkpoint of step 5"):
    checkpointing.load_pretrained(str(tmp_path / "checkpoints"), {}, step=5)


def test_karpathy_pass_images_against_all_captions(tmp_path, caplog):
  """COCO layout: 2 test images with 5 and 6 captions, and a third that does not decode
  (skipped: in the log and the JSON); both scorings through the model."""
  _, _, test = fakes.write_karpathy(tmp_path)
  (tmp_path / "val2014" / "img4.jpg").write_bytes(b"not a jpeg")
  fakes.write_karpathy_split(tmp_path, "test", test + [
      {"image": "val2014/img4.jpg", "caption": ["a blue shirt"] * 5}])
  c = _synth_config()
  c.data.name = "coco"
  c.data.root = str(tmp_path)
  c.data.skip_bad_records = True
  c.eval.update(dict(scoring=("itc", "itc+itm"), itm_k=4, itm_batch_size=8))
  c.data.vocab_path = synthfashion.vocab_file()
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  build = lambda: train_state_lib.build_model(c, 0)
  graphdef, _ = nnx.split(nnx.eval_shape(build))
  mesh = sharding.make_mesh(c.mesh)
  blocks = evaluate.retrieval_blocks(c, graphdef, fakes.numpy_params(build), mesh)
  assert [(b["protocol"], b["scoring"]) for b in blocks] == [("karpathy", "itc"),
                                                             ("karpathy", "itc+itm")]
  for b in blocks:
    assert b["num_images"] == 2 and b["num_texts"] == 11 and b["split"] == "test"
    # An image has >= 5 of the 11 captions: its best ranks at most 6th. A caption has
    # 2 images to choose from.
    assert b["i2t_r10"] == 100.0 and b["t2i_r5"] == 100.0
    skipped = b["skipped_records"]["images"]
    assert skipped["num_skipped"] == 1 and "img4.jpg: cannot decode" in skipped["skipped"][0]
  assert "1 bad records skipped\n  " + skipped["skipped"][0] in caplog.text  # the eval log
