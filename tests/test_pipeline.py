"""The Grain pipeline: determinism, process-count invariance, restore, eval coverage."""

import json

import jax
import numpy as np
import pytest

from syncmask_jax import config_lib
from syncmask_jax import tokenizer as tokenizer_lib
from syncmask_jax.data import pipeline
from syncmask_jax.data import synthfashion
from syncmask_jax.data import transforms

import fakes  # pylint: disable=g-bad-import-order


def synth_config(grouping="none", batch=8, **data):
  c = config_lib.default_config()
  c.data.global_batch_size = batch
  c.data.eval_batch_size = batch
  c.data.grouping = grouping
  c.data.subcategories_per_batch = 2
  c.data.read_threads = 2
  c.data.synth_train_products = 30  # about 90 records
  c.data.synth_val_products = 7
  for k, v in data.items():
    c.data[k] = v
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_batches_fields_and_determinism():
  c = synth_config()
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  b = next(it)
  n = (c.model.image_size // c.model.patch_size) ** 2
  T = c.data.max_text_len
  expected = {"image": ((8, 64, 64, 3), np.float32), "text_ids": ((8, T), np.int32),
              "text_mask": ((8, T), np.int32), "product_id": ((8,), np.int32),
              "category": ((8,), np.int32), "subcategory": ((8,), np.int32),
              "index": ((8,), np.int32), "view": ((8,), np.int32),
              "gt_token_visible": ((8, T), np.bool_), "gt_patch_visible": ((8, n), np.bool_),
              "gt_token_part": ((8, T), np.int32), "gt_patch_part": ((8, n), np.int32)}
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == expected
  assert (b["gt_token_visible"] <= b["text_mask"].astype(bool)).all()
  np.testing.assert_array_equal(b["gt_token_part"] >= 1, b["gt_token_visible"])
  np.testing.assert_array_equal(b["gt_patch_part"] > 0, b["gt_patch_visible"])
  assert b["gt_token_visible"].any() and b["gt_patch_visible"].any()
  assert len(np.unique(b["product_id"])) == 8  # views of one product: separate batches
  assert it.tokenizer.vocab_size > 50 and it.num_examples > 80
  assert it.steps_per_epoch == it.num_examples // 8
  again = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  assert_batches_equal([b] + take(it, 3), take(again, 4))
  c.seed = 1
  other = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
  assert not np.array_equal(other["index"], b["index"])


@pytest.mark.parametrize("grouping", ["none", "subcategory"])
def test_two_processes_read_the_same_global_batches(grouping):
  # The second view is cropped and flipped: augmented pixels must match too.
  c = synth_config(grouping, two_views=True)
  one = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  hosts = [pipeline.make_train_iterator(c, process_index=p, process_count=2)
           for p in range(2)]
  assert hosts[0].host_batch_size == 4
  seen_one, seen_two = [], []
  for _ in range(one.steps_per_epoch):
    g = next(one)
    parts = [next(h) for h in hosts]
    for k in g:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), g[k], err_msg=k)
    seen_one += g["index"].tolist()
    seen_two += [i for p in parts for i in p["index"].tolist()]
  assert sorted(seen_one) == sorted(seen_two)
  assert len(set(seen_one)) == len(seen_one)


@pytest.mark.parametrize("grouping", ["none", "subcategory", "embedding"])
def test_restore_mid_epoch_gives_the_same_following_batches(grouping):
  c = synth_config(grouping)
  emb = np.random.RandomState(0).randn(200, 6).astype(np.float32)

  def step(it):
    b = next(it)
    it.record_embeddings(b["index"], emb[b["index"]])  # as the train loop would
    return b

  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  steps = it.steps_per_epoch
  for _ in range(steps + 2):  # into epoch 1, whose order depends on embeddings
    step(it)
  state = json.loads(json.dumps(it.get_state()))  # Grain's handler writes JSON
  after = [step(it) for _ in range(steps)]  # runs into epoch 2
  restored = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  restored.set_state(state)
  assert restored.epoch == 1
  assert_batches_equal([step(restored) for _ in range(steps)], after)
  # Restoring under another process count continues the same global order.
  halves = [pipeline.make_train_iterator(c, process_index=p, process_count=2)
            for p in range(2)]
  for h in halves:
    h.set_state(state)
  b = [next(h) for h in halves]
  np.testing.assert_array_equal(np.concatenate([x["index"] for x in b]), after[0]["index"])


def test_geometric_augmentation_is_refused_with_patch_ground_truth():
  c = synth_config(geometric_aug=True)
  with pytest.raises(ValueError, match="geometric_aug=False"):
    next(pipeline.make_train_iterator(c, process_index=0, process_count=1))


def test_two_views_keep_the_first_view_unaugmented_for_synthfashion():
  c = synth_config(two_views=True)
  b = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
  assert b["image_view2"].shape == b["image"].shape
  assert not np.allclose(b["image_view2"], b["image"])
  src = pipeline.make_source(c, "train")
  eval_t = transforms.from_config(c, tokenizer_lib.Tokenizer.from_file(
      synthfashion.vocab_file()), train=False)
  np.testing.assert_array_equal(b["image"][0], eval_t(src[int(b["index"][0])])["image"])


def test_synthfashion_sources_draw_the_configs_details():
  c = config_lib.default_config()
  c.data.synth_detail_size, c.data.synth_detail_contrast = 1.6, 150.0
  style = synthfashion.DetailStyle(size=1.6, contrast=150.0)
  # The pretraining pairs (and, through them, the twins evaluation) and the captions.
  assert pipeline.make_source(c, "val").style == style
  assert pipeline.make_source(c, "val", "captions").views.style == style


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_sees_every_example_exactly_once(process_count):
  c = synth_config()
  its = [pipeline.make_eval_iterator(c, "val", process_index=p, process_count=process_count)
         for p in range(process_count)]
  n = its[0].num_examples
  assert n % 8 and its[0].steps == -(-n // 8)
  seen = []
  for batches in zip(*its):
    for b in batches:
      assert b["valid"].dtype == np.bool_
      seen += b["index"][b["valid"]].tolist()
  assert sorted(seen) == list(range(n))
  for it in its:
    with pytest.raises(StopIteration):
      next(it)


def test_eval_iterator_restores_its_position():
  c = synth_config()
  it = pipeline.make_eval_iterator(c, "val", process_index=0, process_count=1)
  next(it)
  state = it.get_state()
  rest = list(it)
  again = pipeline.make_eval_iterator(c, "val", process_index=0, process_count=1)
  again.set_state(state)
  assert_batches_equal(list(again), rest)


def test_make_global_batch_shards_the_batch_axis():
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  c = synth_config()
  host = next(pipeline.make_train_iterator(c, process_index=0, process_count=1))
  batch = pipeline.make_global_batch(host, mesh)
  assert batch["image"].shape == host["image"].shape
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert len(batch["text_ids"].addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(batch["text_ids"]), host["text_ids"])


def _real_config(tmp_path, name, **data):
  c = synth_config(**data)
  c.data.name = name
  c.data.root = str(tmp_path)
  c.data.vocab_path = synthfashion.vocab_file()
  c.model.image_size = 32
  return c


def test_fashiongen_pipeline_from_h5(tmp_path):
  fakes.write_fashiongen(tmp_path, n=40, seed=0)
  fakes.write_fashiongen(tmp_path, n=9, seed=1, split="validation")
  c = _real_config(tmp_path, "fashiongen", grouping="subcategory")
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  b = next(it)
  assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.float32
  assert "gt_token_visible" not in b
  assert len(np.unique(b["product_id"])) == 8
  ev = pipeline.make_eval_iterator(c, process_index=0, process_count=1)
  assert ev.num_examples == 9
  assert sum(int(x["valid"].sum()) for x in ev) == 9


def test_missing_vocab_for_real_data_is_an_error(tmp_path):
  c = _real_config(tmp_path, "fashiongen")
  c.data.vocab_path = ""
  with pytest.raises(ValueError, match="vocab_path"):
    pipeline.make_tokenizer(c)


def test_fashioniq_and_coco_pipelines(tmp_path):
  fakes.write_fashioniq(tmp_path / "fiq")
  c = _real_config(tmp_path / "fiq", "fashioniq", fashioniq_gallery="val_union")
  queries = next(pipeline.make_eval_iterator(c, process_index=0, process_count=1,
                                             global_batch_size=4))
  gallery = next(pipeline.make_eval_iterator(c, part="gallery", process_index=0,
                                             process_count=1, global_batch_size=4))
  assert queries["target_image"].shape == (4, 32, 32, 3)
  assert queries["valid"].tolist() == [True] * 3 + [False]
  t = queries["target_index"][0]
  assert gallery["product_id"][t] == queries["product_id"][0]
  fakes.write_karpathy(tmp_path / "coco")
  c = _real_config(tmp_path / "coco", "coco", global_batch_size=2)
  texts = next(pipeline.make_eval_iterator(c, part="texts", process_index=0,
                                           process_count=1, global_batch_size=12))
  assert texts["image_index"][texts["valid"]].tolist() == [0] * 5 + [1] * 6
  assert "image" not in texts
  train = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  assert train.num_examples == 3
  pair = next(train)  # the two captions of image 0 never share a batch
  assert pair["product_id"][0] != pair["product_id"][1]
  assert (pair["category"] == -1).all()


def test_fashiongen_from_array_record_matches_h5(tmp_path):
  fakes.write_fashiongen(tmp_path, n=12, seed=0)
  fakes.write_fashiongen(tmp_path, n=5, seed=1, split="validation")
  pipeline.build_tfds("fashiongen", str(tmp_path), str(tmp_path / "tfds"))
  c = _real_config(tmp_path, "fashiongen", grouping="subcategory")
  t = _real_config(tmp_path, "fashiongen", grouping="subcategory", source_format="tfds",
                   tfds_data_dir=str(tmp_path / "tfds"))
  for split in ("train", "validation"):
    assert_batches_equal(
        list(pipeline.make_eval_iterator(c, split, process_index=0, process_count=1)),
        list(pipeline.make_eval_iterator(t, split, process_index=0, process_count=1)))
  h5, ar = (pipeline.make_train_iterator(x, process_index=0, process_count=1) for x in (c, t))
  assert_batches_equal(take(h5, 2), take(ar, 2))


def test_image_unreadable_past_the_header_check_is_an_error_or_a_counted_replacement(
    tmp_path, caplog):
  images, train, _ = fakes.write_karpathy(tmp_path)
  train += [{"image": images[i % 4], "caption": f"caption {i}"} for i in range(5)]
  fakes.write_karpathy_split(tmp_path, "train", train)
  data = (tmp_path / images[1]).read_bytes()
  (tmp_path / images[1]).write_bytes(data[:-4])  # a cut JPEG whose header still reads
  c = _real_config(tmp_path, "coco", global_batch_size=2)
  it = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  assert it.num_examples == 8 and it.steps_per_epoch == 4  # the header check passed it
  with pytest.raises(ValueError, match=r"img1\.jpg: cannot decode image .*truncated"):
    take(it, 4)
  c.data.skip_bad_records = True
  whole = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  batches = take(whole, 8)  # two epochs: each bad record is met twice, counted once
  bad = {2, 4}  # the records (pairs) of img1.jpg
  report = whole.skip_report()
  assert report["num_skipped"] == 2
  assert [line.split(":")[0] for line in report["skipped"]] == ["record 2", "record 4"]
  assert all("img1.jpg: cannot decode image" in line for line in report["skipped"])
  assert "bad record replaced by the next one that reads: " + report["skipped"][0] in (
      caplog.text)  # the training log
  assert not bad & {int(i) for b in batches for i in b["index"]}
  assert all(b["image"].shape == (2, 32, 32, 3) for b in batches)
  # Resumed after 3 steps: the same stream and the same count as the run above.
  first = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  take(first, 3)
  resumed = pipeline.make_train_iterator(c, process_index=0, process_count=1)
  resumed.set_state(json.loads(json.dumps(first.get_state())))
  assert_batches_equal(take(resumed, 5), batches[3:])
  assert resumed.skip_report() == report
