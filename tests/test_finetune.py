"""Fine-tuning tasks on tiny real-format files made here: CR/SCR on FashionGen h5 and TGIR
on FashionIQ JSON + images, from a pretraining checkpoint (retrieval fine-tuning:
test_retrieval.py); loading that checkpoint."""

import json
import os

import flax
import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from syncmask_jax import checkpointing, config_lib, finetune, optim, sharding, train
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import fashiongen, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("red blue green black cotton wool dress shirt top tee hat jeans shoes is are "
         "darker lighter longer shorter with no sleeves print v-neck and a the logo soft "
         "slim fit").split()


def _vocab(path):
  with open(path, "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-"]
                      + WORDS) + "\n")
  return path


def _fashiongen(directory, split, categories, seed):
  """Rows grouped by product, 2 views each, FashionGen's h5 layout (write_h5)."""
  rs = np.random.RandomState(seed)
  cols = {k: [] for k in ("input_description", "input_name", "input_productID",
                          "input_category", "input_subcategory")}
  for p, cat in enumerate(categories):
    for _ in range(2):
      colour = WORDS[p % 4]
      cols["input_description"].append(f"{colour} cotton {cat.lower()}.<br>slim fit")
      cols["input_name"].append(cat.title())
      cols["input_productID"].append(100 * seed + p)
      cols["input_category"].append(cat)
      cols["input_subcategory"].append(f"{cat} SUB{p % 2}")
  # 256 px: the size the file name states (FashionGenH5 checks it).
  images = rs.randint(0, 256, (len(cols["input_productID"]), 256, 256, 3), dtype=np.uint8)
  fashiongen.write_h5(os.path.join(directory, fashiongen.SPLIT_FILES[split]), images, cols)
  return cols


def _fashioniq(root, category, seed):
  for sub in ("captions", "image_splits", "images"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  rs = np.random.RandomState(seed)
  splits = {"train": [f"{category}T{i}" for i in range(8)],
            "val": [f"{category}V{i}" for i in range(6)]}
  captions = {
      "train": [{"candidate": splits["train"][i], "target": splits["train"][(i + 1) % 8],
                 "captions": ["is darker", "with no sleeves"]} for i in range(8)],
      # The last val query's target is in the captions but not in the split list.
      "val": [{"candidate": "%sV%d" % (category, i), "target": "%sV%d" % (category, i + 1),
               "captions": ["is lighter", "longer"]} for i in range(4)]
             + [{"candidate": f"{category}V0", "target": f"{category}X9",
                 "captions": ["a print", "v-neck"]}]}
  for split in splits:
    json.dump(splits[split], open(os.path.join(root, "image_splits",
                                               f"split.{category}.{split}.json"), "w"))
    json.dump(captions[split], open(os.path.join(root, "captions",
                                                 f"cap.{category}.{split}.json"), "w"))
  for asin in splits["train"] + splits["val"] + [f"{category}X9"]:
    Image.fromarray(rs.randint(0, 256, (14, 12, 3), dtype=np.uint8)).save(
        os.path.join(root, "images", f"{asin}.png"))


def _config(task, tmp):
  c = config_lib.default_config()
  c.task = task
  c.model.vision_depth = 1
  c.model.text_dropout = 0.0
  c.data.vocab_path = str(tmp / "vocab.txt")
  c.data.global_batch_size = 8
  c.data.eval_batch_size = 8
  c.data.max_text_len = 16
  c.data.read_threads = 1
  c.queue_size = 16
  c.total_steps = 2
  c.log_every = 1
  c.checkpoint_every = 2
  c.optim.warmup_steps = 1
  c.loss.mim = 0.0
  c.init_checkpoint = str(tmp / "pretrain" / "checkpoints")
  return c


def numpy_params(build, seed=0):
  """Parameters of `build()`'s shapes filled on the host (LayerNorm scales 1, the
  temperature 0.07, the rest small noise): no JAX compilation, so the tests stay fast."""
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(build)))
  rs = np.random.RandomState(seed)
  flat = flax.traverse_util.flatten_dict(abstract, sep="/")
  out = {}
  for k, a in flat.items():
    if k.endswith("scale"):
      out[k] = np.ones(a.shape, a.dtype)
    elif k == "temp":
      out[k] = np.asarray(0.07, a.dtype)
    else:
      out[k] = (rs.randn(*a.shape) * 0.05).astype(a.dtype)
  return flax.traverse_util.unflatten_dict(out, sep="/")


def save_pretraining_checkpoint(directory, config, step=3):
  """A SyncMask model's parameters in a pretraining checkpoint's layout: `params` and
  `momentum_params` (made distinct, to see which one is read) in the `state` item."""
  params = numpy_params(lambda: train_state_lib.build_model(config, config.seed))
  state = {"step": np.int32(step), "params": params,
           "momentum_params": jax.tree.map(lambda x: x + 1.0, params)}
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  ckpt.save(step, state, {"sampler": {}}, force=True)
  ckpt.close()
  return state


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Tiny FashionGen and FashionIQ files, a vocab, and a pretraining checkpoint of a
  SyncMask model (with a MIM head the fine-tuned models do not have), at step 3."""
  tmp = tmp_path_factory.mktemp("finetune")
  _vocab(tmp / "vocab.txt")
  fg = tmp / "fashiongen"
  fg.mkdir()
  _fashiongen(fg, "train", ["TOPS", "JEANS", "SHOES", "TOPS", "JEANS", "SHOES", "TOPS",
                            "JEANS"], seed=0)
  # HATS is unseen in train: its rows get label -1 and must be excluded and counted.
  val = _fashiongen(fg, "validation", ["TOPS", "HATS", "SHOES", "JEANS", "TOPS", "SHOES"],
                    seed=1)
  for cat in ("dress", "shirt"):
    _fashioniq(tmp / "fashioniq", cat, seed=len(cat))
  pre = config_lib.default_config()
  pre.model.vision_depth = 1
  pre.data.vocab_path = str(tmp / "vocab.txt")
  pre.model.vocab_size = pipeline.make_tokenizer(pre).vocab_size
  state = save_pretraining_checkpoint(str(tmp / "pretrain" / "checkpoints"), pre)
  return {"tmp": tmp, "state": state,
          "unseen_rows": sum(c == "HATS" for c in val["input_category"])}


def _json(path):
  with open(path) as f:
    return json.load(f)


def test_category_recognition_few_steps_and_metrics_json(files):
  tmp = files["tmp"]
  c = _config("category", tmp)
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
  assert block["num_excluded_unseen"] == files["unseen_rows"] > 0
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


def test_init_from_pretraining_checkpoint_loads_params_only(files):
  tmp = files["tmp"]
  c = _config("category", tmp)
  c.data.name = "fashiongen"
  c.data.root = str(tmp / "fashiongen")
  c.finetune = ml_collections.ConfigDict(dict(label="subcategory", num_classes=0))
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  n = finetune.num_classes(c)
  fresh = numpy_params(lambda: finetune.CategoryModel(c.model, n, rngs=nnx.Rngs(params=0)),
                       seed=1)
  assert fresh["classifier"]["kernel"].shape[1] == 6  # TOPS/JEANS/SHOES x SUB0/SUB1
  loaded, step = checkpointing.load_pretrained(c.init_checkpoint, fresh,
                                          allow_missing=finetune.NEW_PARAMS["category"])
  pre = files["state"]
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
  other = numpy_params(lambda: finetune.CategoryModel(c.model, 6, rngs=nnx.Rngs(params=0)))
  with pytest.raises(ValueError, match="shape mismatch.*proj"):
    checkpointing.load_pretrained(c.init_checkpoint, other, allow_missing=("classifier",))


def test_pretraining_from_a_checkpoint_takes_params_and_momentum_model_only(files):
  c = _config("pretrain", files["tmp"])
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  mesh = sharding.make_mesh(c.mesh)
  state, setup = train_state_lib.create_train_state(
      c, mesh, lambda p: optim.make_optimizer(c.optim, p, c.total_steps))
  fresh = jax.device_get(state)
  state = jax.device_get(train.init_from_checkpoint(state, setup, c.init_checkpoint))
  pre = files["state"]
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


def test_load_pretrained_from_a_relative_path(files, monkeypatch):
  """Orbax has no metadata for a relative path; the README's init_checkpoint is one."""
  tmp = files["tmp"]
  c = _config("category", tmp)
  c.model.vocab_size = pipeline.make_tokenizer(c).vocab_size
  params = numpy_params(lambda: train_state_lib.build_model(c, 0))
  monkeypatch.chdir(tmp)
  loaded, step = checkpointing.load_pretrained(os.path.join("pretrain", "checkpoints"), params)
  assert step == 3
  np.testing.assert_array_equal(loaded["temp"], files["state"]["params"]["temp"])


def test_tgir_few_steps_both_gallery_protocols(files):
  tmp = files["tmp"]
  c = _config("tgir", tmp)
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


def test_validate_names_the_task_fields(files):
  tmp = files["tmp"]
  c = _config("retrieval", tmp)
  c.data.name = "fashioniq"
  with pytest.raises(ValueError, match="use the tgir task"):
    finetune.validate(c)
  c.data.name = "fashiongen"
  c.data.grouping = "embedding"
  with pytest.raises(ValueError, match="config.data.grouping='embedding'"):
    finetune.validate(c)
  c.task = "segmentation"
  with pytest.raises(ValueError, match="config.task='segmentation'"):
    finetune.validate(c)
