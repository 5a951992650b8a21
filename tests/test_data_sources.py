"""Real-format sources on tiny files (fakes.py): FashionGen h5, FashionIQ, Karpathy JSON."""

import json

import h5py
import numpy as np
import pytest

from syncmask_jax.data import coco
from syncmask_jax.data import fashiongen
from syncmask_jax.data import fashioniq
from syncmask_jax.data import transforms

import fakes  # pylint: disable=g-bad-import-order


# -- FashionGen ---------------------------------------------------------------------------

def test_fashiongen_h5_records(tmp_path):
  path, images, cols = fakes.write_fashiongen(tmp_path, n=10)
  with h5py.File(path) as f:  # the release layout: (N, 1) columns of latin-1 bytes
    assert f["input_description"].shape == (10, 1)
    assert f["input_description"].dtype.kind == "S"
  src = fashiongen.FashionGenH5(path)
  assert len(src) == 10
  r = src[3]
  np.testing.assert_array_equal(r["image"], images[3])
  assert r["text"].startswith("Caf\xe9 cotton") and "<br>" not in r["text"]
  assert "&amp;" not in r["text"] and "& soft" in r["text"]
  assert r["product_id"] == cols["input_productID"][3]
  labels = json.load(open(tmp_path / fashiongen.LABELS_FILE))
  assert labels["category"] == sorted(set(cols["input_category"]))
  assert labels["category"][r["category"]] == cols["input_category"][3]
  assert labels["subcategory"][r["subcategory"]] == cols["input_subcategory"][3]
  # View = rank among the product's contiguous rows.
  meta = src.metadata()
  expected_view = [sum(p == q for q in cols["input_productID"][:i])
                   for i, p in enumerate(cols["input_productID"])]
  assert [src[i]["view"] for i in range(10)] == expected_view
  np.testing.assert_array_equal(meta["product_id"], cols["input_productID"])


def test_fashiongen_validation_uses_train_labels_and_counts_unseen(tmp_path):
  fakes.write_fashiongen(tmp_path, n=8, seed=0)
  path, _, cols = fakes.write_fashiongen(tmp_path, n=9, seed=1, split="validation",
                                         categories=("TOPS", "HATS"))
  src = fashiongen.source(str(tmp_path), "validation")
  labels = src.labels
  assert "HATS" not in labels["category"]
  hats = [c == "HATS" for c in cols["input_category"]]
  assert src.stats["unseen_category"] == sum(hats) > 0
  assert all((src[i]["category"] == -1) == hats[i] for i in range(len(src)))


def test_fashiongen_label_cache_is_rebuilt_when_the_train_rows_change(tmp_path):
  fakes.write_fashiongen(tmp_path, n=8, seed=0, categories=("TOPS", "JEANS"))
  assert fashiongen.load_labels(str(tmp_path))["category"] == ["JEANS", "TOPS"]
  fakes.write_fashiongen(tmp_path, n=9, seed=0, categories=("TOPS", "HATS"))  # new train rows
  fakes.write_fashiongen(tmp_path, n=6, seed=1, split="validation", categories=("HATS",))
  src = fashiongen.source(str(tmp_path), "validation")
  assert src.labels["category"] == ["HATS", "TOPS"]
  assert src.stats["unseen_category"] == 0 and (src.category >= 0).all()
  cache = json.load(open(tmp_path / fashiongen.LABELS_FILE))
  assert cache["train"]["rows"]["input_image"] == 9  # keyed to the file it was built from


def _rewrite(path, key, data):
  with h5py.File(path, "a") as f:
    del f[key]
    if data is not None:
      f.create_dataset(key, data=data)


def test_fashiongen_missing_key_and_wrong_shape(tmp_path):
  path, _, _ = fakes.write_fashiongen(tmp_path, n=6)
  fashiongen.load_labels(str(tmp_path))
  _rewrite(path, "input_category", None)
  with pytest.raises(ValueError, match=r"fashiongen_256_256_train\.h5.*'input_category'"):
    fashiongen.FashionGenH5(path)
  path, _, cols = fakes.write_fashiongen(tmp_path / "b", n=6)
  _rewrite(path, "input_description",
           np.array([[d.encode("latin-1")] * 2 for d in cols["input_description"]]))
  with pytest.raises(ValueError, match=r"'input_description' has shape \(6, 2\)"):
    fashiongen.FashionGenH5(path)


def test_fashiongen_images_of_another_size_than_the_file_name_are_refused(tmp_path):
  path, _, _ = fakes.write_fashiongen(tmp_path, n=4, size=128)  # in a *_256_256_* file
  with pytest.raises(ValueError, match=r"fashiongen_256_256_train\.h5: field 'input_image' "
                                       r"holds 128x128 images but the file name says 256x256"):
    fashiongen.FashionGenH5(path, skip_bad_records=True)  # a whole file: never skipped


def test_fashiongen_bad_records_error_or_counted_skip(tmp_path):
  path, _, cols = fakes.write_fashiongen(tmp_path, n=8)
  desc = [d.encode("latin-1") for d in cols["input_description"]]
  desc[2] = b"  <br> <p></p> "  # empty once cleaned
  _rewrite(path, "input_description", np.array(desc).reshape(-1, 1))
  with pytest.raises(ValueError, match=r"train\.h5: record 2, field 'input_description'"):
    fashiongen.FashionGenH5(path)
  ids = np.array(cols["input_productID"])[:7].reshape(-1, 1)  # one row short
  _rewrite(path, "input_productID", ids)
  with pytest.raises(ValueError, match=r"record 7, field 'input_productID': missing"):
    fashiongen.FashionGenH5(path)
  src = fashiongen.FashionGenH5(path, skip_bad_records=True)
  assert len(src) == 6 and src.stats["num_skipped"] == 2
  assert {(s["row"], s["field"]) for s in src.stats["skipped"]} == {
      (2, "input_description"), (7, "input_productID")}
  assert [src[i]["row"] for i in range(6)] == [0, 1, 3, 4, 5, 6]
  assert "2 skipped" in src.report()


def test_fashiongen_tfds_builder_round_trip(tmp_path):
  import tensorflow_datasets as tfds
  manual = tmp_path / "manual"
  _, images, cols = fakes.write_fashiongen(manual, n=6, seed=0)
  fakes.write_fashiongen(manual, n=4, seed=1, split="validation")
  data_dir = tmp_path / "tfds"
  builder = fashiongen.Fashiongen(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  assert builder.info.file_format.value == "array_record"
  ds = tfds.data_source("fashiongen", split="train", data_dir=str(data_dir))
  assert len(ds) == 6
  np.testing.assert_array_equal(ds[4]["image"], images[4])  # PNG: lossless
  src = fashiongen.FashionGenTfds(str(data_dir), "validation")
  h5 = fashiongen.FashionGenH5(str(manual / fashiongen.SPLIT_FILES["validation"]))
  assert len(src) == len(h5) == 4
  for i in range(4):
    a, b = src[i], h5[i]
    assert a["text"] == b["text"] and a["product_id"] == b["product_id"]
    np.testing.assert_array_equal(transforms.decode_image(a["image"]), b["image"])
  for key, value in h5.metadata().items():
    np.testing.assert_array_equal(src.metadata()[key], value)


# -- FashionIQ ----------------------------------------------------------------------------

def test_fashioniq_triplets_and_both_gallery_protocols(tmp_path):
  fakes.write_fashioniq(tmp_path)
  triplets, gallery = fashioniq.sources(str(tmp_path), "dress", "val",
                                        gallery_protocol="split")
  assert len(triplets) == 3 and len(gallery) == 6
  r = triplets[0]
  assert r["text"] == "darker and no sleeves"
  assert r["image"].shape == (10, 12, 3) and r["target_image"].dtype == np.uint8
  assert gallery.asins[r["target_index"]] == "V1"
  g = gallery[r["target_index"]]
  assert g["product_id"] == r["product_id"]
  np.testing.assert_array_equal(g["image"], r["target_image"])
  _, union = fashioniq.sources(str(tmp_path), "dress", "val", gallery_protocol="val_union")
  assert union.asins == ["V0", "V1", "V2", "V3", "V4"]  # V5 is in no caption
  assert len(fashioniq.sources(str(tmp_path), "dress", "train")[0]) == 3
  # Two queries with one target are one "product": never in-batch negatives.
  train, _ = fashioniq.sources(str(tmp_path), "dress", "train")
  pid = train.metadata()["product_id"]
  assert pid[0] == pid[1] != pid[2]
  test, _ = fashioniq.sources(str(tmp_path), "dress", "test")
  t = test[0]
  assert "target_image" not in t and t["target_index"] == -1 and t["product_id"] == -1


def test_fashioniq_undecodable_image_errors_or_counts(tmp_path):
  fakes.write_fashioniq(tmp_path)
  bad = tmp_path / "images" / "V3.png"
  bad.write_bytes(b"not a png at all")
  with pytest.raises(ValueError, match=r"V3\.png.*cannot decode"):
    fashioniq.sources(str(tmp_path), "dress", "val")
  triplets, gallery = fashioniq.sources(str(tmp_path), "dress", "val",
                                        skip_bad_records=True)
  assert len(gallery) == 5 and gallery.stats["num_skipped"] == 1
  assert len(triplets) == 2 and triplets.stats["num_skipped"] == 1
  assert "cap.dress.val.json: record 1, field 'target'" in triplets.stats["skipped"][0]
  # Without the header check, the failure at read time still names the file.
  store = fashioniq.image_files(str(tmp_path))
  with pytest.raises(ValueError, match=r"V3\.png: cannot decode"):
    store.load("V3")


def test_fashioniq_tfds_builder_round_trip(tmp_path):
  import tensorflow_datasets as tfds
  fakes.write_fashioniq(tmp_path / "manual")
  builder = fashioniq.FashionIq(config="dress", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  files = fashioniq.sources(str(tmp_path / "manual"), "dress", "val")
  stored = fashioniq.sources("", "dress", "val", tfds_data_dir=str(tmp_path / "tfds"))
  for a, b in zip(files, stored):
    assert len(a) == len(b)
    for i in range(len(a)):
      x, y = a[i], b[i]
      assert x.get("text") == y.get("text") and x["product_id"] == y["product_id"]
      np.testing.assert_array_equal(x["image"], y["image"])


# -- COCO / Flickr (Karpathy) -------------------------------------------------------------

def test_karpathy_pairs_images_texts(tmp_path):
  images, train, test = fakes.write_karpathy(tmp_path)
  index, store = coco.load(str(tmp_path), "coco")
  pairs = coco.KarpathyPairs(index, store, "train")
  assert len(pairs) == 3 and pairs[1]["text"] == "a cat sitting"
  assert pairs[0]["product_id"] == pairs[1]["product_id"] != pairs[2]["product_id"]
  assert pairs[0]["image"].shape == (10, 12, 3)
  ims = coco.KarpathyImages(index, store, "test")
  texts = coco.KarpathyTexts(ims)
  assert len(ims) == 2 and len(texts) == 11  # 5 + 6 captions, all kept
  assert [texts[i]["image_index"] for i in range(len(texts))] == [0] * 5 + [1] * 6
  assert texts[7]["text"] == "caption 2 of 3"
  assert texts[7]["product_id"] == ims[1]["product_id"]


def test_albef_pre_caption_by_hand(tmp_path):
  # ALBEF's pre_caption: ,.'!?"()*#:;~ removed, - and / to spaces, <person> to person.
  assert (coco.pre_caption("A Man's bike, parked-on the STREET!  <person> rides/walks.\n", 30)
          == "a mans bike parked on the street person rides walks")
  assert coco.pre_caption("one two three four", 2) == "one two"
  images, train, test = fakes.write_karpathy(tmp_path)
  test[1]["caption"][0] = "Caption?? (2) of 3!"
  test[1]["caption"][1] = "?!"  # nothing left: a bad record, named
  fakes.write_karpathy_split(tmp_path, "test", test)
  index, store = coco.load(str(tmp_path), "coco")
  with pytest.raises(ValueError, match=r"record 1, field 'caption'.*pre_caption"):
    coco.KarpathyImages(index, store, "test")
  ims = coco.KarpathyImages(index, store, "test", skip_bad_records=True, max_words=2)
  assert ims.captions[1][0] == "caption 2" and len(ims.captions[1]) == 5  # one dropped


def test_karpathy_bad_image_and_empty_caption(tmp_path):
  images, train, test = fakes.write_karpathy(tmp_path)
  (tmp_path / images[3]).write_bytes(b"\xff\xd8 truncated")
  test[0]["caption"][1] = "   "
  fakes.write_karpathy_split(tmp_path, "test", test)
  index, store = coco.load(str(tmp_path), "coco")
  with pytest.raises(ValueError, match=r"coco_test\.json: record 0, field 'caption'"):
    coco.KarpathyImages(index, store, "test")
  ims = coco.KarpathyImages(index, store, "test", skip_bad_records=True)
  assert len(ims) == 1 and ims.stats["num_skipped"] == 2
  assert any("img3.jpg" in m for m in ims.stats["skipped"])
  assert len(coco.KarpathyTexts(ims)) == 4


def test_karpathy_tfds_builder_round_trip(tmp_path):
  import tensorflow_datasets as tfds
  fakes.write_karpathy(tmp_path / "manual")
  builder = coco.KarpathyRetrieval(config="coco", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
  files = coco.load(str(tmp_path / "manual"), "coco")
  stored = coco.load("", "coco", tfds_data_dir=str(tmp_path / "tfds"))
  a, b = (coco.KarpathyImages(*x, "test") for x in (files, stored))
  assert len(a) == len(b) == 2
  np.testing.assert_array_equal(a[1]["image"], b[1]["image"])
  assert coco.KarpathyTexts(b)[6]["text"] == "caption 1 of 3"
