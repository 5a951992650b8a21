"""VQA: ALBEF-format files (tiny, real JPEGs), the official accuracy, SynthFashion-VQA."""

import json

import numpy as np
import pytest

from syncmask_jax import vqa_eval
from syncmask_jax.data import synthfashion as sf
from syncmask_jax.data import synthfashion_vqa
from syncmask_jax.data import transforms
from syncmask_jax.data import vqa

import fakes  # pylint: disable=g-bad-import-order


# -- question cleaning and answer weights ------------------------------------------------

def test_clean_question_as_albef_pre_question():
  assert (vqa.clean_question("What's the man's T-shirt color? (left/right)")
          == "whats the mans t shirt color left right")
  # Inner runs of spaces are kept and only trailing ones stripped, as pre_question.
  assert vqa.clean_question("Is it  RED?! ") == "is it  red"
  assert vqa.clean_question("Done: #1 ~ *ok*;") == "done 1  ok"
  assert vqa.clean_question("one two three four", max_words=3) == "one two three"


def test_answer_weights_by_hand():
  assert vqa.answer_weights(["red"] * 7 + ["dark red"] * 3) == {"red": 0.7, "dark red": 0.3}
  assert vqa.answer_weights(["no", "yes", "no", "no"]) == {"no": 0.75, "yes": 0.25}


# -- the official accuracy ------------------------------------------------------------------

@pytest.mark.parametrize("agreeing, percent", [(0, 0.0), (1, 30.0), (2, 60.0), (3, 90.0),
                                               (4, 100.0), (10, 100.0)])
def test_accuracy_leave_one_out(agreeing, percent):
  # 2 of 10: leaving out either of the 2 leaves 1 match (1/3), leaving out any of the
  # other 8 leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
  humans = ["red"] * agreeing + ["blue"] * (10 - agreeing)
  assert vqa_eval.question_accuracy("red", humans) == pytest.approx(percent / 100)


@pytest.mark.parametrize("prediction, humans", [
    ("Two", ["2"] * 10), ("the dog", ["dog"] * 10), ("dont", ["don't"] * 10),
    ("A Dog.", ["dog"] * 10), ("\tyes\n", ["yes"] * 10), ("3.5", ["3.5"] * 10),
    ("1,000", ["1,000"] * 4 + ["many"] * 6),  # humans differ: "1,000" -> "1000"
])
def test_accuracy_normalisation(prediction, humans):
  assert vqa_eval.question_accuracy(prediction, humans) == 1.0


def test_normalisation_rules():
  assert vqa_eval.normalize_answer("t-shirt") == "t shirt"  # "-" not touching a space
  assert vqa_eval.normalize_answer("black - white") == "black white"  # touching: deleted
  assert vqa_eval.normalize_answer("1,000 (approx)") == "1000 approx"  # comma rule
  assert vqa_eval.normalize_answer("Zero") == "0" and vqa_eval.normalize_answer("an") == ""
  # The official asymmetry: ten identical human answers are not normalised, so a
  # prediction of the same string that normalisation changes scores 0.
  assert vqa_eval.question_accuracy("t-shirt", ["t-shirt"] * 10) == 0.0
  assert vqa_eval.question_accuracy("t-shirt", ["t-shirt"] * 9 + ["tee"]) == 1.0


def test_accuracy_per_answer_type_in_percent():
  ann = {1: vqa_eval.Annotation(("yes",) * 10, "yes/no", "is the"),
         2: vqa_eval.Annotation(("2",) + ("3",) * 9, "number", "how many"),
         3: vqa_eval.Annotation(("no",) * 2 + ("yes",) * 8, "yes/no", "is the")}
  out = vqa_eval.vqa_accuracy({1: "yes", 2: "two", 3: "no"}, ann)
  assert out["per_question"] == {1: 100.0, 2: 30.0, 3: 60.0}
  assert out["overall"] == 63.33  # (100 + 30 + 60) / 3, rounded to 2 places
  assert out["per_answer_type"] == {"yes/no": 80.0, "number": 30.0}
  assert out["per_question_type"] == {"is the": 80.0, "how many": 30.0}
  with pytest.raises(ValueError, match=r"missing 1 \(3\), unknown 1 \(9\)"):
    vqa_eval.vqa_accuracy({1: "yes", 2: "2", 9: "x"}, ann)


def test_results_file(tmp_path):
  path = tmp_path / "results.json"
  vqa_eval.write_results(str(path), [(5, "yes"), (3, "2")], question_ids=[3, 5])
  assert json.load(open(path)) == [{"question_id": 3, "answer": "2"},
                                   {"question_id": 5, "answer": "yes"}]
  with pytest.raises(ValueError, match=r"1 questions without an answer \(7\), 1 answered "
                                       r"more than once \(5\), 1 not in the question "
                                       r"list \(8\)"):
    vqa_eval.results_json([(5, "a"), (5, "b"), (3, "c"), (8, "d")], [3, 5, 7])


# -- ALBEF-format files ---------------------------------------------------------------------

def _load(root, split, **kw):
  return vqa.load(str(root), split, image_root=str(root / "coco"),
                  vg_image_root=str(root / "vg"), **kw)


def test_albef_files_train_minival_test(tmp_path):
  fakes.write_vqa(tmp_path)
  train = _load(tmp_path, "train+val+vg", minival_size=1, max_answers=3)
  assert train.question_ids() == [10, 20, -1]  # 21, the largest val id, is minival
  r = train[0]
  assert r["text"] == "what color is it" and r["question_id"] == 10
  assert r["answers"] == ["red", "dark red", ""]
  np.testing.assert_allclose(r["answer_weight"], [0.7, 0.3, 0.0])
  np.testing.assert_array_equal(r["answer_valid"], [True, True, False])
  assert r["image"].shape == (12, 16, 3) and r["image"].dtype == np.uint8
  assert abs(int(r["image"][..., 0].mean()) - 200) < 8  # the red JPEG
  assert train[1]["answers"][:2] == ["2", "3"]  # a 5/5 tie keeps first-said order
  vg = train[2]
  assert vg["answers"][0] == "sun" and vg["answer_weight"][0] == vqa.SINGLE_ANSWER_WEIGHT
  assert train[1]["product_id"] != train[0]["product_id"]
  minival = _load(tmp_path, "minival", minival_size=1)
  assert minival.question_ids() == [21]
  ann = minival.annotations()
  assert vqa_eval.vqa_accuracy({21: "Yes"}, ann)["per_answer_type"] == {"yes/no": 100.0}
  test = _load(tmp_path, "test")
  t = test[0]
  assert t["question_id"] == 30 and not t["answer_valid"].any() and test.annotations() == {}
  assert vqa.read_answer_list(str(tmp_path / "answer_list.json")) == ["red", "yes", "no", "2"]


def test_answers_beyond_max_answers_keep_the_heaviest(tmp_path):
  fakes.write_vqa(tmp_path)
  entries = [{"question_id": 1, "question": "q", "image": "train2014/a.jpg",
              "answer": ["a"] * 2 + ["b"] * 3 + ["c"] * 3 + ["d"] * 2}]
  bad = vqa.BadRecordsByFile(skip=False)
  qs = vqa.parse_questions(entries, "mem", bad)
  src = vqa.VQAQuestions(qs, {"vqa": transforms.ImageFiles(str(tmp_path / "coco"))},
                         max_answers=2, bad=bad)
  assert src[0]["answers"] == ["b", "c"] and src.stats["answers_truncated"] == 1
  np.testing.assert_allclose(src[0]["answer_weight"], [0.3, 0.3])


@pytest.mark.parametrize("change, field", [
    (lambda e: e.pop("question"), "question"),
    (lambda e: e.update(question=" ?!..."), "question"),
    (lambda e: e.update(answer=[]), "answer"),
    (lambda e: e.update(answer=["", " "]), "answer"),
    (lambda e: e.update(answer=[3]), "answer"),
    (lambda e: e.pop("question_id"), "question_id"),
    (lambda e: e.update(image="train2014/missing.jpg"), "image"),
])
def test_bad_records_name_file_record_field(tmp_path, change, field):
  files = fakes.write_vqa(tmp_path)
  train = files["vqa_train.json"]
  train.append(dict(train[0], question_id=11))
  change(train[1])
  json.dump(train, open(tmp_path / "vqa_train.json", "w"))
  with pytest.raises(ValueError, match=rf"vqa_train\.json: record 1, field '{field}'"):
    _load(tmp_path, "train")
  kept = _load(tmp_path, "train", skip_bad_records=True)
  assert kept.question_ids() == [10] and kept.stats["num_skipped"] == 1


def test_undecodable_image_and_bad_answer_list(tmp_path):
  fakes.write_vqa(tmp_path)
  (tmp_path / "coco/train2014/a.jpg").write_bytes(b"\xff\xd8 truncated")
  with pytest.raises(ValueError, match=r"record 0, field 'image'.*a\.jpg: cannot decode"):
    _load(tmp_path, "train")
  json.dump(["yes", "no", "yes"], open(tmp_path / "answer_list.json", "w"))
  with pytest.raises(ValueError, match=r"answer_list\.json: entry 2: 'yes' repeats entry 0"):
    vqa.read_answer_list(str(tmp_path / "answer_list.json"))


# -- SynthFashion-VQA -----------------------------------------------------------------------

_NOUN_KIND = {w: k for k, (sing, plur) in sf.DETAIL_NOUNS.items() for w in sing + plur}


def _named_detail(product, view, question):
  kinds = {_NOUN_KIND[w] for w in question.rstrip("?").split() if w in _NOUN_KIND}
  assert len(kinds) == 1, question
  kind = kinds.pop()
  return kind, [d for d in product.details if d.kind == kind and d.side == view]


def test_synthfashion_vqa_answers_are_true_of_the_view():
  records = synthfashion_vqa.questions("val", num_products=12, seed=3)
  assert records == synthfashion_vqa.questions("val", num_products=12, seed=3)
  assert records[:20] == synthfashion_vqa.questions("val", num_products=5, seed=3)[:20]
  answers = set(synthfashion_vqa.answer_list())
  assert all(vqa_eval.normalize_answer(a) == a for a in answers)
  seen_types = set()
  for r in records:
    pid, view_name = r["image"].split("/")
    product, view = sf.make_product(3, int(pid)), sf.VIEW_NAMES.index(view_name)
    assert view in product.views and len(r["answer"]) == 10 and len(set(r["answer"])) == 1
    answer, qtype = r["answer"][0], r["question_type"]
    assert answer in answers
    seen_types.add(qtype)
    if qtype == "colour":
      assert answer == sf.COLOURS[product.colour][0]
    elif qtype == "pattern":
      assert answer == sf.PATTERNS[product.pattern][0]
    elif qtype == "garment":
      assert answer == sf.GARMENTS[product.category].name.replace("-", " ")
    elif qtype == "side":
      drawn = [d for d in product.details if d.side == view]
      assert len(drawn) == 1 and _NOUN_KIND[answer] == drawn[0].kind
    else:
      kind, here = _named_detail(product, view, r["question"])
      if qtype == "presence":
        # The rendered part map agrees: the detail's pixels are there iff "yes".
        parts = sf.render(product, view, 64, 3)[1]
        assert (answer == "yes") == bool(here) == bool((parts == 2 + kind).any())
        assert r["answer_type"] == "yes/no"
      elif qtype == "count":
        assert int(answer) == here[0].count and r["answer_type"] == "number"
      else:
        assert qtype == "detail colour" and answer == sf.COLOURS[here[0].colour][0]
  assert seen_types == {"colour", "pattern", "garment", "presence", "count", "side",
                        "detail colour"}
  yes_no = [r["answer"][0] for r in records if r["answer_type"] == "yes/no"]
  assert yes_no.count("yes") == yes_no.count("no") > 0


def test_synthfashion_vqa_source_reads_like_albef():
  src = synthfashion_vqa.source("test", num_products=3, seed=1, image_size=32)
  r = src[0]
  pid, view_name = src.questions[0].image.split("/")
  expected = sf.render(sf.make_product(1, int(pid)), sf.VIEW_NAMES.index(view_name), 32, 1)
  np.testing.assert_array_equal(r["image"], expected[0])
  assert r["answer_weight"][0] == 1.0 and r["answer_valid"].sum() == 1
  assert r["question_id"] == synthfashion_vqa.SPLIT_QUESTION_BASE["test"]
  assert not r["text"].endswith("?")
  assert set(src.annotations()) == set(src.question_ids())
  store = synthfashion_vqa.ViewImages(seed=1)
  views = sf.make_product(1, int(pid)).views
  assert [f"{pid}/{v}" in store for v in sf.VIEW_NAMES] == [v in views for v in range(4)]
