"""Tiny files in the real formats the package reads, made for the tests: each writer once.

Imported as `fakes` (pytest puts tests/ on sys.path, as for conftest). Each writer's
docstring names the format it imitates; a test that needs other content passes it or
edits the files after, next to what it asserts.
"""

import io
import json
import os

import flax
import jax
import numpy as np
from flax import nnx
from PIL import Image

from syncmask_jax import checkpointing, config_lib
from syncmask_jax import train_state as train_state_lib
from syncmask_jax.data import captions, fashiongen, pipeline


def image_bytes(color, size=(12, 10), fmt="PNG", **options) -> bytes:
  """One solid-colour image file's bytes (PIL `size` is width, height; `options` are
  PIL's save options, a JPEG's quality)."""
  buf = io.BytesIO()
  Image.new("RGB", size, color).save(buf, format=fmt, **options)
  return buf.getvalue()


def _write_json(path, value) -> None:
  with open(path, "w") as f:
    json.dump(value, f)


# -- a vocabulary -------------------------------------------------------------------------

WORDS = ("red blue green black cotton wool dress shirt top tee hat jeans shoes is are "
         "darker lighter longer shorter with no sleeves print v-neck and a the logo soft "
         "slim fit").split()


def write_vocab(path):
  """A BERT WordPiece `vocab.txt` (one token a line, [PAD] [UNK] [CLS] [SEP] [MASK]
  first) covering most words of the fake captions."""
  with open(path, "w") as f:
    f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-"]
                      + WORDS) + "\n")
  return path


# -- FashionGen ---------------------------------------------------------------------------

def _fashiongen_products(n, rs, categories):
  """(category, views) per product: 2-3 views of a category drawn from `categories`,
  n rows in all."""
  products, rows = [], 0
  while rows < n:
    category = categories[rs.randint(len(categories))]
    views = min(rs.randint(2, 4), n - rows)
    products.append((category, views))
    rows += views
  return products


def write_fashiongen(directory, n=10, seed=0, size=256, split="train",
                     categories=("TOPS", "JEANS", "SHOES"), products=None):
  """FashionGen's h5 release, `fashiongen_256_256_{train,validation}.h5` in `directory`
  (fashiongen.write_h5 writes its layout: (N, 1) columns of latin-1 bytes, uint8
  images): rows grouped by product in contiguous views, descriptions with the release's
  HTML, entities and latin-1 characters.

  n rows of products of 2-3 views whose categories are drawn from `categories`; or, for
  a test that counts labels or products, `products`: one category per product, 2 views
  each. Returns the file's path, its images and its columns."""
  os.makedirs(directory, exist_ok=True)
  if products is None:
    products = _fashiongen_products(n, np.random.RandomState(seed), categories)
  else:
    products = [(category, 2) for category in products]
  cols = {k: [] for k in ("input_description", "input_name", "input_productID",
                          "input_category", "input_subcategory", "input_pose", "index_2")}
  for k, (category, views) in enumerate(products):
    product = 1001 + 100 * seed + k
    for v in range(views):
      cols["input_description"].append(
          f"Caf\xe9 cotton {category.lower()} n\xb0{product}.<br>Slim fit &amp; soft.<br>")
      cols["input_name"].append(f"Logo {category.title()}")
      cols["input_productID"].append(product)
      cols["input_category"].append(category)
      cols["input_subcategory"].append(f"{category} SUB{product % 2}")
      cols["input_pose"].append(f"id_gridfs_{v + 1}")
      cols["index_2"].append(len(cols["index_2"]))
  rows = len(cols["index_2"])
  images = np.random.RandomState(seed).randint(0, 256, (rows, size, size, 3), dtype=np.uint8)
  path = os.path.join(directory, fashiongen.SPLIT_FILES[split])
  fashiongen.write_h5(path, images, cols)
  return path, images, cols


# -- FashionIQ ----------------------------------------------------------------------------

# 5 train, 6 val (V5, a JPEG, in no caption) and 2 test images; test has no targets.
FASHIONIQ_SPLITS = {"train": ["T0", "T1", "T2", "T3", "T4"],
                    "val": ["V0", "V1", "V2", "V3", "V4", "V5"], "test": ["S0", "S1"]}
FASHIONIQ_CAPTIONS = {
    "train": [{"candidate": "T0", "target": "T1", "captions": ["is red", "shorter"]},
              {"candidate": "T2", "target": "T1", "captions": ["is red ", " longer"]},
              {"candidate": "T3", "target": "T4", "captions": ["has dots", "blue"]}],
    "val": [{"candidate": "V0", "target": "V1", "captions": ["darker", "no sleeves"]},
            {"candidate": "V2", "target": "V3", "captions": ["lighter", "longer"]},
            {"candidate": "V1", "target": "V4", "captions": ["print", "v-neck"]}],
    "test": [{"candidate": "S0", "captions": ["more green", "a belt"]}],
}


def write_fashioniq(root, category="dress", splits=FASHIONIQ_SPLITS,
                    captions=FASHIONIQ_CAPTIONS, jpeg=("V5",)):
  """FashionIQ's release under `root`: `image_splits/split.{category}.{split}.json` (a
  split's asins), `captions/cap.{category}.{split}.json` (candidate, target, two
  captions) and `images/{asin}.png`, or `.jpg` for the asins in `jpeg` (the release
  mixes both): one image for each asin of a split list or a caption, a colour apiece.
  Returns `splits` and `captions`."""
  for sub in ("captions", "image_splits", "images"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
  for split in splits:
    _write_json(os.path.join(root, "image_splits", f"split.{category}.{split}.json"),
                splits[split])
    _write_json(os.path.join(root, "captions", f"cap.{category}.{split}.json"),
                captions[split])
    named = [c[k] for c in captions[split] for k in ("candidate", "target") if k in c]
    for k, asin in enumerate(dict.fromkeys(splits[split] + named)):
      fmt, ext = ("JPEG", "jpg") if asin in jpeg else ("PNG", "png")
      with open(os.path.join(root, "images", f"{asin}.{ext}"), "wb") as fh:
        fh.write(image_bytes((40 * k % 256, 100, 200), fmt=fmt))
  return splits, captions


# -- COCO / Flickr (Karpathy) -------------------------------------------------------------

def write_karpathy_split(root, split, entries, name="coco"):
  """Karpathy's `{name}_{split}.json`: a list of {image (a path under the root),
  caption (train: one string per entry; test: a list)}."""
  _write_json(os.path.join(root, f"{name}_{split}.json"), entries)


def write_karpathy(root, name="coco"):
  """COCO (or Flickr30k) in Karpathy's split files: 4 JPEGs under `val2014/`, 3 train
  pairs (two captions of one image) and 2 test images of 5 and 6 captions. Returns the
  image paths and the train and test entries."""
  images = [f"val2014/img{i}.jpg" for i in range(4)]
  os.makedirs(os.path.join(root, "val2014"), exist_ok=True)
  for i, p in enumerate(images):
    with open(os.path.join(root, p), "wb") as fh:
      fh.write(image_bytes((60 * i, 0, 0), fmt="JPEG"))
  train = [{"image": images[0], "caption": "a cat on a mat", "image_id": "coco_0"},
           {"image": images[0], "caption": "a cat sitting", "image_id": "coco_0"},
           {"image": images[1], "caption": "two dogs", "image_id": "coco_1"}]
  test = [{"image": images[2], "caption": [f"caption {k} of 2" for k in range(5)]},
          {"image": images[3], "caption": [f"caption {k} of 3" for k in range(6)]}]
  write_karpathy_split(root, "train", train, name)
  write_karpathy_split(root, "test", test, name)
  return images, train, test


def write_blip_coco(root):
  """COCO captioning as BLIP ships it: `coco_karpathy_{train,test}.json` (Karpathy's
  format, numeric COCO ids in the image names) and `coco_karpathy_test_gt.json` (COCO's
  caption annotations, captions.write_gt) over four JPEGs. Returns the image paths, the
  train and test entries and the references by image id."""
  ids = (42, 7, 391895, 1000)
  images = [f"val2014/COCO_val2014_{i:012d}.jpg" for i in ids]
  os.makedirs(root / "val2014", exist_ok=True)
  for k, p in enumerate(images):
    (root / p).write_bytes(image_bytes((60 * k,) * 3, fmt="JPEG"))
  train = [{"image": images[0], "caption": "A cat on a mat.", "image_id": "coco_42"},
           {"image": images[0], "caption": "A  cat, sitting!", "image_id": "coco_42"},
           {"image": images[1], "caption": "Two dogs", "image_id": "coco_7"}]
  refs = {391895: ["A man riding a bike.", "A person on a bicycle."],
          1000: ["A red bus.", "A bus on the street.", "Red double decker bus."]}
  test = [{"image": images[2], "caption": refs[391895]},
          {"image": images[3], "caption": refs[1000]}]
  write_karpathy_split(root, "train", train, name="coco_karpathy")
  write_karpathy_split(root, "test", test, name="coco_karpathy")
  captions.write_gt(str(root / "coco_karpathy_test_gt.json"), refs)
  return images, train, test, refs


# -- VQA ----------------------------------------------------------------------------------

def write_vqa(root):
  """VQA v2 and Visual Genome QA in ALBEF's JSON files (`vqa_{train,val,test}.json`,
  `vg_qa.json`, `answer_list.json`) with COCO-style images under root/coco and VG's
  under root/vg. Returns the JSON files' contents by name."""
  images = {"coco/train2014/a.jpg": (200, 0, 0), "coco/val2014/b.jpg": (0, 200, 0),
            "coco/test2015/c.jpg": (0, 0, 200), "vg/1.jpg": (200, 200, 0)}
  for rel, color in images.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    with open(os.path.join(root, rel), "wb") as fh:
      fh.write(image_bytes(color, size=(16, 12), fmt="JPEG", quality=95))
  files = {
      "vqa_train.json": [
          {"question_id": 10, "question": "What color is it?", "image": "train2014/a.jpg",
           "answer": ["red"] * 7 + ["dark red"] * 3, "dataset": "vqa"}],
      "vqa_val.json": [
          {"question_id": 21, "question": "Is it green?", "image": "val2014/b.jpg",
           "answer": ["yes"] * 9 + ["no"], "answer_type": "yes/no"},
          {"question_id": 20, "question": "How many?", "image": "val2014/b.jpg",
           "answer": ["2"] * 5 + ["3"] * 5, "answer_type": "number"}],
      "vg_qa.json": [{"question": "What is yellow?", "image": "1.jpg", "answer": ["sun"],
                      "dataset": "vg"}],
      "vqa_test.json": [{"question_id": 30, "question": "What is blue?",
                         "image": "test2015/c.jpg"}],
      "answer_list.json": ["red", "yes", "no", "2"],
  }
  for name, data in files.items():
    _write_json(os.path.join(root, name), data)
  return files


# -- a pretraining checkpoint -------------------------------------------------------------

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


# -- the fine-tuning tasks' inputs ----------------------------------------------------------

def _fashioniq_chain(category):
  """8 train queries in a ring; 5 val queries, the last one's target (X9) in its caption
  but in no split list."""
  splits = {"train": [f"{category}T{i}" for i in range(8)],
            "val": [f"{category}V{i}" for i in range(6)]}
  captions = {
      "train": [{"candidate": splits["train"][i], "target": splits["train"][(i + 1) % 8],
                 "captions": ["is darker", "with no sleeves"]} for i in range(8)],
      "val": [{"candidate": f"{category}V{i}", "target": f"{category}V{i + 1}",
               "captions": ["is lighter", "longer"]} for i in range(4)]
             + [{"candidate": f"{category}V0", "target": f"{category}X9",
                 "captions": ["a print", "v-neck"]}]}
  return splits, captions


def finetune_files(tmp):
  """Under `tmp`: a vocab, FashionGen (8 products in train over TOPS, JEANS, SHOES; 6 in
  validation, one of HATS, unseen in train), FashionIQ dress and shirt
  (`_fashioniq_chain`), and a pretraining checkpoint of a SyncMask model (with a MIM
  head the fine-tuned models do not have) at step 3. Returns {tmp, state, unseen_rows}."""
  write_vocab(tmp / "vocab.txt")
  write_fashiongen(tmp / "fashiongen", seed=0, products=[
      "TOPS", "JEANS", "SHOES", "TOPS", "JEANS", "SHOES", "TOPS", "JEANS"])
  # HATS is unseen in train: its rows get label -1 and must be excluded and counted.
  _, _, val = write_fashiongen(tmp / "fashiongen", seed=1, split="validation",
                               products=["TOPS", "HATS", "SHOES", "JEANS", "TOPS", "SHOES"])
  for category in ("dress", "shirt"):
    write_fashioniq(tmp / "fashioniq", category, *_fashioniq_chain(category), jpeg=())
  pre = config_lib.default_config()
  pre.model.vision_depth = 1
  pre.data.vocab_path = str(tmp / "vocab.txt")
  pre.model.vocab_size = pipeline.make_tokenizer(pre).vocab_size
  state = save_pretraining_checkpoint(str(tmp / "pretrain" / "checkpoints"), pre)
  return {"tmp": tmp, "state": state,
          "unseen_rows": sum(c == "HATS" for c in val["input_category"])}


def shrink(c):
  """`c`, in place, at test size: one vision layer, batch 8, a log line every step, a
  checkpoint every 2."""
  c.model.vision_depth = 1
  c.model.text_dropout = 0.0
  c.data.global_batch_size = 8
  c.data.eval_batch_size = 8
  c.data.read_threads = 1
  c.log_every = 1
  c.checkpoint_every = 2
  c.optim.warmup_steps = 1
  return c


def finetune_config(task, tmp):
  """A tiny fine-tuning config of `task` over the files of conftest's `finetune_files`
  (its vocab and pretraining checkpoint under `tmp`): 2 steps, batch 8."""
  c = shrink(config_lib.default_config())
  c.task = task
  c.data.vocab_path = str(tmp / "vocab.txt")
  c.data.max_text_len = 16
  c.queue_size = 16
  c.total_steps = 2
  c.loss.mim = 0.0
  c.init_checkpoint = str(tmp / "pretrain" / "checkpoints")
  return c


# -- released ALBEF checkpoints -------------------------------------------------------------

ALBEF_KINDS = ("pretrain", "retrieval", "vqa")


def write_albef_checkpoint(path, model_cfg, kind="pretrain", seed=0):
  """A stand-in of one of ALBEF's released files (the original code's layout: BERT with
  its token-type table, the state dict under "model") for a tiny random model of
  `model_cfg`: `ALBEF.pth` (pretrain: `text_encoder.bert.`, the MLM head, momentum
  copies, queues), `mscoco.pth` (retrieval: `text_encoder.`, idx_queue) or `vqa.pth`
  (`text_encoder.`, the answer decoder `text_decoder.`, no ITC/ITM heads). Written
  through checkpoint_import.albef's own table (held against LAVIS's code by
  tests/test_released_weights.py); needs torch, so run it where torch may be imported."""
  from syncmask_jax.checkpoint_import import albef, files  # pylint: disable=g-import-not-at-top
  from syncmask_jax.models.vlp import VLP  # pylint: disable=g-import-not-at-top
  from syncmask_jax.tasks import vqa  # pylint: disable=g-import-not-at-top
  vqa_kind = kind == "vqa"
  build = ((lambda: vqa.VQAModel(model_cfg, rngs=nnx.Rngs(params=seed))) if vqa_kind
           else (lambda: VLP(model_cfg, rngs=nnx.Rngs(params=seed))))
  params = numpy_params(build, seed)
  momentum = numpy_params(build, seed + 1)
  layout = albef.Layout(
      text="text_encoder.bert." if kind == "pretrain" else "text_encoder.",
      mlm_head=kind == "pretrain", token_type=True, text_layers=model_cfg.text_layers,
      fusion_layers=model_cfg.fusion_layers, vision_depth=model_cfg.vision_depth,
      decoder_layers=model_cfg.fusion_layers if vqa_kind else 0, heads=not vqa_kind,
      momentum=True, queue=not vqa_kind, idx_queue=kind == "retrieval")
  flat = lambda tree: flax.traverse_util.flatten_dict(tree, sep="/")
  state = albef.keymap.export(albef.model_rules(layout), flat(params))
  state.update(albef.keymap.export(albef.model_rules(layout, momentum=True), flat(momentum)))
  if layout.queue:
    rs, size = np.random.RandomState(seed), 16
    for key in ("image_queue", "text_queue"):
      q = rs.randn(model_cfg.embed_dim, size).astype(np.float32)
      state[key] = q / np.linalg.norm(q, axis=0, keepdims=True)
    state["queue_ptr"] = np.zeros((1,), np.int64)
    if layout.idx_queue:
      state["idx_queue"] = np.full((1, size), -100, np.int64)
  files.save_torch(path, state, under="model")
  return path
