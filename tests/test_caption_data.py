"""Captioning data (COCO Karpathy as BLIP ships it, SynthFashion views) and the metrics."""

import json
import os

import numpy as np
import pytest

from syncmask_jax import caption_eval
from syncmask_jax.data import captions
from syncmask_jax.data import synthfashion

import fakes  # pylint: disable=g-bad-import-order


def test_pre_caption_as_blip():
  assert (captions.pre_caption("A man (riding) a horse!!  On the beach.\n")
          == "a man riding a horse on the beach")
  # BLIP keeps commas, apostrophes, hyphens and question marks.
  assert captions.pre_caption("The dog's toy, half-red?") == "the dog's toy, half-red?"
  assert captions.pre_caption("One two: three four five", max_words=3) == "one two three"


def test_image_id_from_path():
  assert captions.image_id_from_path("val2014/COCO_val2014_000000391895.jpg") == 391895
  assert captions.image_id_from_path("COCO_train2014_000000000009.jpg") == 9
  with pytest.raises(ValueError, match=r"'val2014/cat\.jpg': no numeric id"):
    captions.image_id_from_path("val2014/cat.jpg")


def test_karpathy_caption_sources(tmp_path):
  images, _, _, refs = fakes.write_blip_coco(tmp_path)
  store = captions.load_store(str(tmp_path))
  pairs = captions.KarpathyCaptionPairs(str(tmp_path), store, "train")
  assert len(pairs) == 3
  assert [pairs[i]["text"] for i in range(3)] == ["a cat on a mat", "a cat, sitting",
                                                  "two dogs"]
  assert [int(pairs[i]["image_id"]) for i in range(3)] == [42, 42, 7]
  np.testing.assert_array_equal(pairs.metadata()["product_id"], [42, 42, 7])
  assert pairs[2]["image"].shape == (10, 12, 3)
  ims = captions.KarpathyCaptionImages(str(tmp_path), store, "test")
  assert len(ims) == 2 and [int(ims[i]["image_id"]) for i in range(2)] == [391895, 1000]
  assert int(ims[1]["index"]) == 1 and ims[1]["image"].shape == (10, 12, 3)
  assert ims.references() == refs


def test_karpathy_caption_bad_input(tmp_path):
  images, train, test, refs = fakes.write_blip_coco(tmp_path)
  store = captions.load_store(str(tmp_path))
  train[1]["image"] = "val2014/cat.jpg"
  fakes.write_karpathy_split(tmp_path, "train", train, name="coco_karpathy")
  with pytest.raises(ValueError, match=r"coco_karpathy_train\.json: record 1, field "
                                       r"'image': .*no numeric id"):
    captions.KarpathyCaptionPairs(str(tmp_path), store)
  skipping = captions.KarpathyCaptionPairs(str(tmp_path), store, skip_bad_records=True)
  assert len(skipping) == 2 and skipping.stats["num_skipped"] == 1
  del train[1]["caption"]
  fakes.write_karpathy_split(tmp_path, "train", train, name="coco_karpathy")
  with pytest.raises(ValueError, match=r"coco_karpathy_train\.json: entry 1: missing "
                                       r"field 'caption'"):
    captions.KarpathyCaptionPairs(str(tmp_path), store)
  # The gt must hold every image of the split.
  captions.write_gt(str(tmp_path / "coco_karpathy_test_gt.json"), {1000: refs[1000]})
  ims = captions.KarpathyCaptionImages(str(tmp_path), store, "test")
  with pytest.raises(ValueError, match=r"test_gt\.json: no captions for 1 images.*391895"):
    ims.references()
  os.remove(tmp_path / "coco_karpathy_test_gt.json")
  with pytest.raises(FileNotFoundError, match=r"coco_karpathy_test_gt\.json: missing"):
    ims.references()


def test_gt_round_trip_and_errors(tmp_path):
  refs = {5: ["a b", "c d"], 9: ["e"]}
  gt = captions.coco_gt(refs)
  assert gt["images"] == [{"id": 5}, {"id": 9}]
  assert [a["id"] for a in gt["annotations"]] == [0, 1, 2]
  path = str(tmp_path / "gt.json")
  captions.write_gt(path, refs)
  assert captions.read_gt(path) == refs
  gt["annotations"].append({"image_id": 11, "caption": "x", "id": 3})
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  with pytest.raises(ValueError, match=r"gt\.json: annotations\[3\]: image_id 11 is not"):
    captions.read_gt(path)


def test_synthfashion_captions_show_only_the_view():
  ims = captions.SynthFashionCaptionImages("val", num_products=4, seed=1, image_size=32,
                                           captions_per_view=3)
  refs = ims.references()
  assert sorted(refs) == list(range(len(ims))) and all(len(r) == 3 for r in refs.values())
  assert refs == captions.SynthFashionCaptionImages(
      "val", num_products=4, seed=1, image_size=32, captions_per_view=3).references()
  for i in range(len(ims)):
    p, view = ims.views.locate(i)
    product = ims.views.product(p)
    record = ims[i]
    assert record["image"].shape == (32, 32, 3) and int(record["image_id"]) == i
    assert int(record["product_id"]) == product.product_id
    shows_detail = any(d.side == view for d in product.details)
    for caption in refs[i]:
      words = set(caption.lower().rstrip(".").replace(",", " ").split())
      assert not words & {"women's", "men's", "women", "men", *synthfashion.FABRICS}
      # A detail phrase names its side: only this view's side, and only if it shows one.
      assert words & set(synthfashion.VIEW_NAMES) == (
          {synthfashion.VIEW_NAMES[view]} if shows_detail else set())
  assert any(len(set(r)) > 1 for r in refs.values())  # references differ in wording

  pairs = captions.SynthFashionCaptionPairs("train", num_products=3, image_size=32,
                                            captions_per_view=2)
  train_views = captions.SynthFashionCaptionImages("train", num_products=3,
                                                   image_size=32, captions_per_view=2)
  assert len(pairs) == 2 * len(train_views)
  train_refs = train_views.references()
  for i in range(len(pairs)):
    r = pairs[i]
    assert int(r["image_id"]) == i // 2
    assert r["text"] == captions.pre_caption(train_refs[i // 2][i % 2])
  np.testing.assert_array_equal(pairs.metadata()["product_id"],
                                np.repeat(train_views.metadata()["product_id"], 2))


def test_results_checks(tmp_path):
  ids = [3, 8, 11]
  ok = [(np.int64(8), "b"), (3, "a"), (11, "c")]
  expected = [{"image_id": 3, "caption": "a"}, {"image_id": 8, "caption": "b"},
              {"image_id": 11, "caption": "c"}]
  assert caption_eval.results_json(ok, ids) == expected  # in the split's order
  with pytest.raises(ValueError, match=r"2 of 3 images without a caption \(3, 11\), 0 "):
    caption_eval.results_json(ok[:1], ids)
  with pytest.raises(ValueError, match=r"1 captioned more than once \(8\), 1 not images "
                                       r"of the split \(4\)"):
    caption_eval.results_json(ok + [(8, "d"), (4, "e")], ids)
  with pytest.raises(ValueError, match=r"image 8: caption None is not a string"):
    caption_eval.results_json([(3, "a"), (8, None)], ids)
  path = str(tmp_path / "results.json")
  assert caption_eval.write_results(path, ok, ids) == expected
  assert json.load(open(path)) == expected


def test_without_java_no_metric_is_reported(monkeypatch):
  monkeypatch.setattr(caption_eval, "java", lambda: None)
  out = caption_eval.evaluate([(1, "a b")], {1: ["a b"]})
  assert out["scores"] == {} and out["num_images"] == 1
  assert set(out["skipped"]) == set(caption_eval.METRICS) | {"SPICE"}
  assert "Java" in out["skipped"]["METEOR"]
  assert "PTB tokenizer" in out["skipped"]["CIDEr"]


# The four-word captions: identical -> every n-gram cosine 1, CIDEr-D 10 per image.
# Image 1 predicted "a b c x": CIDEr-D 10 * mean(3/4, 2/3, 1/2, 0) (every n-gram's idf
# is log 2), BLEU-1 7/8 (matched unigrams over predicted), ROUGE-L (3/4 + 1) / 2.
_REFS = {1: ["a b c d"], 2: ["e f g h"]}


@pytest.mark.skipif(caption_eval.java() is None, reason="needs java")
def test_metrics_by_hand():
  perfect = caption_eval.evaluate([(1, "a b c d"), (2, "e f g h")], _REFS)
  assert set(perfect["scores"]) == set(caption_eval.METRICS)
  assert perfect["scores"]["Bleu_4"] == pytest.approx(1.0, abs=1e-8)
  assert perfect["scores"]["CIDEr"] == pytest.approx(10.0)
  assert perfect["scores"]["METEOR"] == pytest.approx(1.0)
  # PTB tokenization: case and the final period do not count.
  imperfect = caption_eval.evaluate([(1, "A b c x."), (2, "e f g h")], _REFS)
  s = imperfect["scores"]
  assert s["Bleu_1"] == pytest.approx(7 / 8, abs=1e-8)
  assert s["Bleu_2"] == pytest.approx(np.sqrt(7 / 8 * 5 / 6), abs=1e-8)
  assert s["CIDEr"] == pytest.approx((10 * (3 / 4 + 2 / 3 + 1 / 2 + 0) / 4 + 10) / 2)
  assert s["ROUGE_L"] == pytest.approx(0.875)
  assert s["METEOR"] < perfect["scores"]["METEOR"]
