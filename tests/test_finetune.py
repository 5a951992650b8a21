"""Fine-tuning tasks on tiny real-format files (the `finetune_files` fixture): CR/SCR on
FashionGen h5 and TGIR on FashionIQ JSON + images, from a pretraining checkpoint
(retrieval fine-tuning: test_retrieval.py); loading that checkpoint."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from syncmask_jax import checkpointing, finetune, optim, sharding, train
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import pipeline, synthfashion_tgir
from syncmask_jax.tasks import category as category_task

import fakes  # pylint: disable=g-bad-import-order


def _json(path):
  with open(path) as f:
    return json.load(f)


def test_category_recognition_few_steps_and_metrics_json(finetune_files):
  tmp = finetune_files["tmp"]
  c = fakes.finetune_config("category", tmp)
  c.data.name = "fashiongen"
  c.data.root = str(tmp / "fashiongen")
  c.finetune = ml_collections.ConfigDict(dict(label="category", num_classes=0))
  workdir = str(tmp / "category")
  rerun = c.copy_and_resolve_references()  # a new command's config, before resolution
  results = finetune.finetune_and_evaluate(c, workdir)
  out = _json(os.path.join(workdir, "eval", "category.json"))
  assert out == json.loads(json.dumps(results))
  block = out["results"][0]
  assert block["protocol"] == "classification" and block["label"] == "category"
  assert block["num_classes"] == 3  # TOPS, JEANS, SHOES in train
  assert block["num_excluded_unseen"] == finetune_files["unseen_rows"] > 0
  assert block["num_evaluated"] + block["num_excluded_unseen"] == block["num_rows"] == 12
  assert 0.0 <= block["accuracy"] <= 100.0 and 0.0 <= block["macro_f1"] <= 100.0
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))
           if "train/loss" in l]
  assert steps == [1, 2]
  assert checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [2]
  # Rerunning resumes from the run's own checkpoint (init_checkpoint is not read again,
  # and changing it needs the allowance): nothing left to train, the same parameters
  # evaluate to the same numbers.
  rerun.init_checkpoint = str(tmp / "no_such_directory")
  with pytest.raises(ValueError, match="config.init_checkpoint: .*allow_config_change"):
    finetune.finetune_and_evaluate(rerun.copy_and_resolve_references(), workdir)
  rerun.allow_config_change = True
  again = finetune.finetune_and_evaluate(rerun, workdir)
  assert again["results"] == results["results"] and again["step"] == 2


def test_init_from_pretraining_checkpoint_loads_params_only(finetune_files):
  tmp = finetune_files["tmp"]
  c = fakes.finetune_config("category", tmp)
  c.data.name = "fashiongen"
  c.data.root = str(tmp / "fashiongen")
  c.finetune = ml_collections.ConfigDict(dict(label="subcategory", num_classes=0))
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  n = category_task.num_classes(c)
  fresh = fakes.numpy_params(
      lambda: category_task.CategoryModel(c.model, n, rngs=nnx.Rngs(params=0)), seed=1)
  assert fresh["classifier"]["kernel"].shape[1] == 6  # TOPS/JEANS/SHOES x SUB0/SUB1
  loaded, step = checkpointing.load_pretrained(c.init_checkpoint, fresh,
                                          allow_missing=category_task.Category.new_params)
  pre = finetune_files["state"]
  assert step == 3
  np.testing.assert_array_equal(loaded["vision"]["cls_token"], pre["params"]["vision"]["cls_token"])
  np.testing.assert_array_equal(loaded["itm_head"]["kernel"], pre["params"]["itm_head"]["kernel"])
  # The new head keeps its fresh initialisation; the checkpoint's MIM decoder is unused.
  np.testing.assert_array_equal(loaded["classifier"]["kernel"], fresh["classifier"]["kernel"])
  assert "mim_decoder" not in loaded and "mim_decoder" in pre["params"]
  # Another item of the state (the evaluation CLI reads the momentum model this way).
  momentum, _ = checkpointing.load_pretrained(c.init_checkpoint, fresh, item="momentum_params",
                                         allow_missing=("classifier",))
  np.testing.assert_array_equal(momentum["temp"], pre["params"]["temp"] + 1.0)
  # Without the allowance the new head is an error, as is a model the checkpoint does
  # not fit; both name the parameter.
  with pytest.raises(ValueError, match="classifier"):
    checkpointing.load_pretrained(c.init_checkpoint, fresh)
  c.model.embed_dim = 48
  other = fakes.numpy_params(
      lambda: category_task.CategoryModel(c.model, 6, rngs=nnx.Rngs(params=0)))
  with pytest.raises(ValueError, match="shape mismatch.*proj"):
    checkpointing.load_pretrained(c.init_checkpoint, other, allow_missing=("classifier",))


def test_pretraining_from_a_checkpoint_takes_params_and_momentum_model_only(finetune_files):
  c = fakes.finetune_config("pretrain", finetune_files["tmp"])
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  mesh = sharding.make_mesh(c.mesh)
  state, setup = train_state_lib.create_train_state(
      c, mesh, lambda p: optim.make_optimizer(c.optim, p, c.total_steps))
  fresh = jax.device_get(state)
  state = jax.device_get(train.init_from_checkpoint(state, setup, c))
  pre = finetune_files["state"]
  np.testing.assert_array_equal(state.params["temp"], pre["params"]["temp"])
  np.testing.assert_array_equal(state.momentum_params["itm_head"]["kernel"],
                                pre["momentum_params"]["itm_head"]["kernel"])
  # A new run otherwise: step 0, the optimizer and the queue as initialised.
  assert int(state.step) == 0
  jax.tree.map(np.testing.assert_array_equal, state.opt_state, fresh.opt_state)
  jax.tree.map(np.testing.assert_array_equal, state.queue, fresh.queue)


def test_load_pretrained_mismatch_names_the_likely_cause(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  stored = {"embeddings": {"word": np.zeros((10, 4), np.float32)},
            "proj": {"kernel": np.zeros((4, 2), np.float32)}}
  ckpt.save(1, {"params": stored}, {}, force=True)
  ckpt.close()
  other_vocab = {**stored, "embeddings": {"word": np.zeros((12, 4), np.float32)}}
  with pytest.raises(ValueError, match=r"shape mismatch, likely another vocabulary.*"
                                       r"embeddings/word: checkpoint \(10, 4\) vs model "
                                       r"\(12, 4\)"):
    checkpointing.load_pretrained(str(tmp_path), other_vocab)
  wider = {**stored, "proj": {"kernel": np.zeros((4, 3), np.float32)}}
  with pytest.raises(ValueError, match=r"likely another model size.*proj/kernel"):
    checkpointing.load_pretrained(str(tmp_path), wider)


def test_load_pretrained_from_a_relative_path(finetune_files, monkeypatch):
  """Orbax has no metadata for a relative path; the README's init_checkpoint is one."""
  tmp = finetune_files["tmp"]
  c = fakes.finetune_config("category", tmp)
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  params = fakes.numpy_params(lambda: train_state_lib.build_model(c, 0))
  monkeypatch.chdir(tmp)
  loaded, step = checkpointing.load_pretrained(os.path.join("pretrain", "checkpoints"), params)
  assert step == 3
  np.testing.assert_array_equal(loaded["temp"], finetune_files["state"]["params"]["temp"])


def test_tgir_few_steps_both_gallery_protocols(finetune_files):
  tmp = finetune_files["tmp"]
  c = fakes.finetune_config("tgir", tmp)
  c.data.name = "fashioniq"
  c.data.root = str(tmp / "fashioniq")
  c.tgir = ml_collections.ConfigDict(dict(categories=("dress", "shirt"),
                                          gallery_protocols=("split", "val_union"),
                                          ks=(1, 10, 50)))
  workdir = str(tmp / "tgir")
  finetune.finetune_and_evaluate(c, workdir)
  out = _json(os.path.join(workdir, "eval", "tgir.json"))
  blocks = {(b["gallery"], b["category"]): b for b in out["results"]}
  assert set(blocks) == {(g, cat) for g in ("split", "val_union")
                         for cat in ("dress", "shirt", "mean")}
  for (gallery, category), b in blocks.items():
    assert b["protocol"] == "fashioniq_tgir" and b["scoring"] == "itc"
    if category == "mean":
      for k in ("r1", "r10", "r50"):
        assert b[k] == pytest.approx(np.mean([blocks[(gallery, x)][k]
                                              for x in ("dress", "shirt")]))
      continue
    assert b["num_queries"] == 5
    # split: the 6 listed val images; val_union: the 6 caption images (V0..V4 + X9).
    assert b["num_gallery"] == 6
    # X9 is only in the captions: a miss under `split`, a possible hit under val_union.
    assert b["queries_target_not_in_gallery"] == (1 if gallery == "split" else 0)
    # With 6 gallery images every reachable target is within the top 10.
    assert b["r10"] == pytest.approx(100.0 * (4 if gallery == "split" else 5) / 5)


def test_tgir_trains_and_evaluates_on_synthfashion(finetune_files):
  """configs/finetune_tgir.py:data=synthfashion at test size: SynthFashion-TGIR's
  triplets through the tgir task, a block per attribute and their mean."""
  tmp = finetune_files["tmp"]
  c = fakes.finetune_config("tgir", tmp)
  c.data.name = "synthfashion_tgir"
  c.data.synth_train_products = 6
  c.data.synth_val_products = 3
  c.tgir = ml_collections.ConfigDict(dict(categories=("colour", "detail_side"),
                                          gallery_protocols=("split",), ks=(1, 10),
                                          synth_twins=1))
  workdir = str(tmp / "synthfashion_tgir")
  finetune.finetune_and_evaluate(c, workdir)
  out = _json(os.path.join(workdir, "eval", "tgir.json"))
  assert out["dataset"] == "synthfashion_tgir" and out["split"] == "val"
  blocks = {b["category"]: b for b in out["results"]}
  assert set(blocks) == {"colour", "detail_side", "mean"}
  for attribute in ("colour", "detail_side"):
    triplets, gallery = synthfashion_tgir.sources("val", 3, 0, c.model.image_size,
                                                  attribute)
    b = blocks[attribute]
    assert b["protocol"] == "synthfashion_tgir" and b["gallery"] == "split"
    assert b["num_queries"] == len(triplets) > 0 and b["num_gallery"] == len(gallery)
    assert b["queries_target_not_in_gallery"] == 0
    assert 0.0 <= b["r1"] <= b["r10"] <= 100.0
  assert blocks["mean"]["r10"] == pytest.approx(
      np.mean([blocks[a]["r10"] for a in ("colour", "detail_side")]))
  steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))
           if "train/loss" in l]
  assert steps == [1, 2]


def test_a_failed_start_leaves_no_workdir(finetune_files):
  """A missing data root or pretrained run is found before the workdir is made."""
  tmp = finetune_files["tmp"]
  c = fakes.finetune_config("tgir", tmp)
  c.data.name = "fashioniq"
  c.data.root = str(tmp / "no_fashioniq_here")
  c.tgir.categories = ("dress", "shirt")
  workdir = tmp / "failed_start"
  with pytest.raises(FileNotFoundError, match="no_fashioniq_here"):
    finetune.finetune_and_evaluate(c, str(workdir))
  assert not workdir.exists()
  c.data.root = str(tmp / "fashioniq")
  c.init_checkpoint = str(tmp / "no_such_run" / "checkpoints")
  with pytest.raises(FileNotFoundError, match=r"config.init_checkpoint='.*no_such_run"):
    finetune.finetune_and_evaluate(c, str(workdir))
  assert not workdir.exists()


def test_validate_names_the_task_fields(finetune_files):
  tmp = finetune_files["tmp"]
  c = fakes.finetune_config("retrieval", tmp)
  c.data.name = "fashioniq"
  with pytest.raises(ValueError, match="use the tgir task"):
    finetune.validate(c)
  c.data.name = "fashiongen"
  c.data.grouping = "embedding"
  with pytest.raises(ValueError, match="config.data.grouping='embedding'"):
    finetune.validate(c)
  c.task = "tgir"
  c.data.grouping = "none"
  with pytest.raises(ValueError, match="the tgir task reads one of"):
    finetune.validate(c)
  c.data.name = "synthfashion_tgir"
  with pytest.raises(ValueError, match=r"config.tgir.categories=\('dress'"):
    finetune.validate(c)
  c.task = "segmentation"
  with pytest.raises(ValueError, match="config.task='segmentation'"):
    finetune.validate(c)
