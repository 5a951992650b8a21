"""VQA v2 and Visual Genome QA in ALBEF's JSON format: a random-access question source.

Files (ALBEF's `data/` release; `image` is relative to an image root):
  vqa_train.json, vqa_val.json  list of {question_id, question, answer: [the 10 human
                                answers], image (e.g. "train2014/COCO_train2014_....jpg"
                                under the COCO root), dataset: "vqa"}
  vg_qa.json                    list of {question, answer: [one answer] (a bare string
                                is read too), image (under the Visual Genome root),
                                dataset: "vg"}; question_id optional
  vqa_test.json                 list of {question_id, question, image}: no answers
  answer_list.json              list of the candidate answers the model ranks at test
                                time (`read_answer_list`)
A record without `dataset` takes its file's (vg for vg_qa.json, vqa otherwise).

Splits (`load`): "+"-joined parts of train | val | minival | vg | test. ALBEF trains on
train+val+vg and reports test-dev through the evaluation server, so nothing answered
is left to evaluate on; `minival_size` = N holds out the N largest question ids of
vqa_val.json as `minival` (then `val` is the rest), so "train+val+vg" trains and
"minival" evaluates with the official metric (vqa_eval).

Questions are cleaned as ALBEF's `pre_question`: lower case, the marks ,.'!?"()*#:;~
deleted, "-" and "/" made spaces, trailing spaces stripped, then cut to the first
`max_question_words` space-separated words (ALBEF: 30 in training, 50 at test, "do
not limit question length during test").

Answers stay strings in the record: tokenising them (ALBEF appends the [SEP] eos) is
the VQA task's, which also tokenises answer_list.json with the same tokenizer. Each
distinct answer gets the weight count / len(answers) (count / 10 for VQA's ten humans,
ALBEF's rule); a single-answer dataset (SINGLE_ANSWER_DATASETS, Visual Genome) gives
each of its answers the constant `single_answer_weight` (ALBEF's vqa_dataset.py: 0.5;
BLIP uses 0.2). For static shapes a question keeps at most `max_answers` distinct
answers, the heaviest first (ties: first said first); a cut is counted in
stats["answers_truncated"] and the kept weights are not renormalised.

Record (`VQAQuestions[i]`): image uint8 (H, W, 3); text str (the cleaned question, so
the shared ExampleTransform tokenises it like a caption); question_id int64 (-1 for a
VG question without one); answers list[str] (A = max_answers, "" padding); answer_weight
float32 (A,) (0 on padding); answer_valid bool (A,); product_id int64 (the image's
id: rank of (dataset, image) in the sorted union of every image the source names);
index int64. `annotations()` gives the human answers and types for vqa_eval.

Bad input: a missing field, a question empty after cleaning, a training record without
answers, a non-string answer, or a missing or undecodable image (a header check at
construction) is an error naming the file, the record (entry) and the field; with
`skip_bad_records=True` the question is left out and counted in `stats`. Empty answer
strings are dropped and counted (stats["empty_answers"]); all answers empty is an
empty answer list.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from syncmask_jax import config_lib, paths
from syncmask_jax import vqa_eval
from syncmask_jax.data.image_folder import BadRecords, ImageChecks
from syncmask_jax.data.transforms import ImageFiles

FILES = {"train": "vqa_train.json", "val": "vqa_val.json", "vg": "vg_qa.json",
         "test": "vqa_test.json"}
ANSWER_LIST_FILE = "answer_list.json"
PARTS = ("train", "val", "minival", "vg", "test")
MAX_QUESTION_WORDS = 30  # ALBEF's max_ques_words in training
TEST_MAX_QUESTION_WORDS = 50  # ALBEF at test time
# The library's keyword defaults are the config's (config_lib.default_config).
_DEFAULTS = config_lib.default_config().data
MAX_ANSWERS = _DEFAULTS.max_answers
SINGLE_ANSWER_WEIGHT = _DEFAULTS.single_answer_weight
SINGLE_ANSWER_DATASETS = ("vg",)
_STRIPPED = re.compile(r"""[,.'!?"()*#:;~]""")


def clean_question(question: str, max_words: int = MAX_QUESTION_WORDS) -> str:
  """ALBEF's `pre_question` (leading and inner spaces kept, as there)."""
  question = _STRIPPED.sub("", question.lower()).replace("-", " ").replace("/", " ")
  question = question.rstrip(" ")
  words = question.split(" ")
  return " ".join(words[:max_words]) if len(words) > max_words else question


def answer_weights(answers: Sequence[str]) -> dict[str, float]:
  """Each distinct answer's share of the answers, in first-said order (ALBEF)."""
  counts: dict[str, int] = {}
  for a in answers:
    counts[a] = counts.get(a, 0) + 1
  return {a: c / len(answers) for a, c in counts.items()}


@dataclasses.dataclass(frozen=True)
class Question:
  """One checked question; `origin` and `record` say where it came from."""
  question_id: int
  question: str  # cleaned
  image: str  # key in the image store of `dataset`
  dataset: str
  answers: tuple[str, ...]  # every (non-empty) answer as given; () when unanswered
  answer_type: str
  question_type: str
  origin: str
  record: int


class BadRecordsByFile:
  """One BadRecords per file, merged into one stats dict."""

  def __init__(self, skip: bool):
    self.skip = skip
    self.by_origin: dict[str, BadRecords] = {}
    self.counts = {"empty_answers": 0, "answers_truncated": 0}

  def add(self, origin: str) -> None:
    if origin not in self.by_origin:
      self.by_origin[origin] = BadRecords(origin, self.skip)

  def __call__(self, origin: str, record: int, field: str, reason: str) -> None:
    self.add(origin)
    self.by_origin[origin](record, field, reason)

  def stats(self, num_records: int) -> dict[str, Any]:
    parts = [b.stats for b in self.by_origin.values()]
    return {"origin": "; ".join(self.by_origin), "num_records": num_records,
            "num_skipped": sum(p["num_skipped"] for p in parts),
            "skipped": [line for p in parts for line in p["skipped"]], **self.counts}


def parse_questions(entries: Sequence[Mapping[str, Any]], origin: str, bad: BadRecordsByFile,
                    *, dataset: str = "vqa", answers_required: bool = True,
                    max_question_words: int = MAX_QUESTION_WORDS) -> list[Question]:
  """Checked Questions of ALBEF-format `entries` (`dataset`: the default of records
  without one); bad records raise or are counted by `bad` (see the module doc)."""
  if not isinstance(entries, (list, tuple)):
    raise ValueError(f"{origin}: expected a JSON list of records, got "
                     f"{type(entries).__name__}")
  bad.add(origin)
  out = []
  for i, e in enumerate(entries):
    if not isinstance(e, Mapping):
      bad(origin, i, "record", f"not an object: {e!r}")
      continue
    ds = e.get("dataset", dataset)
    required = ["question", "image"]
    if ds not in SINGLE_ANSWER_DATASETS:
      required.insert(0, "question_id")
    if answers_required:
      required.append("answer")
    missing = [f for f in required if f not in e]
    if missing:
      bad(origin, i, missing[0], "missing field")
      continue
    if not isinstance(e["question"], str):
      bad(origin, i, "question", f"not a string: {e['question']!r}")
      continue
    question = clean_question(e["question"], max_question_words)
    if not question.strip():
      bad(origin, i, "question", f"empty after cleaning: {e['question']!r}")
      continue
    raw = e.get("answer", [])
    raw = [raw] if isinstance(raw, str) else raw
    if not isinstance(raw, (list, tuple)) or not all(isinstance(a, str) for a in raw):
      bad(origin, i, "answer", f"expected a list of strings, got {raw!r}")
      continue
    answers = tuple(a for a in raw if a.strip())
    bad.counts["empty_answers"] += len(raw) - len(answers)
    if answers_required and not answers:
      bad(origin, i, "answer", "empty answer list in a training file")
      continue
    try:
      qid = int(e.get("question_id", -1))
    except (TypeError, ValueError):
      bad(origin, i, "question_id", f"not an integer: {e['question_id']!r}")
      continue
    out.append(Question(qid, question, str(e["image"]), ds, answers,
                        str(e.get("answer_type", "") or ""),
                        str(e.get("question_type", "") or ""), origin, i))
  return out


def read_questions(path: str, bad: BadRecordsByFile, **kwargs: Any) -> list[Question]:
  """`parse_questions` of a JSON file (keyword arguments as there)."""
  try:
    entries = paths.read_json(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: missing") from e
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  return parse_questions(entries, path, bad, **kwargs)


def split_minival(questions: Sequence[Question], size: int
                  ) -> tuple[list[Question], list[Question]]:
  """(the rest, minival): minival holds the `size` largest question ids."""
  if not 0 <= size <= len(questions):
    raise ValueError(f"minival_size={size}: must be in [0, {len(questions)}]")
  held = {q.question_id for q in sorted(questions, key=lambda q: q.question_id)
          [len(questions) - size:]}
  return ([q for q in questions if q.question_id not in held],
          [q for q in questions if q.question_id in held])


def read_answer_list(path: str) -> list[str]:
  """The candidate answers of answer_list.json: a non-empty list of distinct,
  non-empty strings (an error names the file and the entry)."""
  try:
    answers = paths.read_json(path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(answers, list) or not answers:
    raise ValueError(f"{path}: expected a non-empty JSON list of answers")
  first: dict[str, int] = {}
  for i, a in enumerate(answers):
    if not isinstance(a, str) or not a.strip():
      raise ValueError(f"{path}: entry {i}: not a non-empty string: {a!r}")
    if a in first:
      raise ValueError(f"{path}: entry {i}: {a!r} repeats entry {first[a]}")
    first[a] = i
  return answers


class VQAQuestions:
  """Grain random-access source of VQA questions (record fields: module doc).

  `stores` maps a question's `dataset` to its image store (ImageFiles, TfdsImages or
  any object with load / check / __contains__).
  """

  def __init__(self, questions: Sequence[Question], stores: Mapping[str, Any], *,
               max_answers: int = MAX_ANSWERS,
               single_answer_weight: float = SINGLE_ANSWER_WEIGHT,
               skip_bad_records: bool = False, verify_images: bool = True,
               bad: BadRecordsByFile | None = None):
    if max_answers < 1:
      raise ValueError(f"max_answers={max_answers}: must be >= 1")
    self.stores, self.max_answers = stores, max_answers
    self.single_answer_weight = float(single_answer_weight)
    bad = bad or BadRecordsByFile(skip_bad_records)
    checks = {name: ImageChecks(store, verify_images) for name, store in stores.items()}
    seen: dict[int, Question] = {}
    self.questions: list[Question] = []
    for q in questions:
      if q.dataset not in stores:
        raise ValueError(f"{q.origin}: record {q.record}, field 'dataset': {q.dataset!r} "
                         f"has no image store (known: {sorted(stores)})")
      if q.question_id >= 0 and q.question_id in seen:
        first = seen[q.question_id]
        raise ValueError(f"{q.origin}: record {q.record}, field 'question_id': "
                         f"{q.question_id} already used by {first.origin} record "
                         f"{first.record}")
      problem = checks[q.dataset](q.image)
      if problem is not None:
        bad(q.origin, q.record, "image", f"{q.image}: {problem}")
        continue
      if q.question_id >= 0:
        seen[q.question_id] = q
      self.questions.append(q)
    images = sorted({(q.dataset, q.image) for q in self.questions})
    self.image_ids = {key: i for i, key in enumerate(images)}
    self._targets = [self._answer_targets(q, bad) for q in self.questions]
    self.stats = bad.stats(len(self.questions))

  def _answer_targets(self, q: Question, bad: BadRecordsByFile
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    a = self.max_answers
    weights = answer_weights(q.answers)
    if q.dataset in SINGLE_ANSWER_DATASETS:
      weights = {k: self.single_answer_weight for k in weights}
    ranked = sorted(weights.items(), key=lambda kv: -kv[1])  # stable: ties keep order
    if len(ranked) > a:
      bad.counts["answers_truncated"] += 1
      ranked = ranked[:a]
    answers = [k for k, _ in ranked] + [""] * (a - len(ranked))
    weight = np.zeros(a, np.float32)
    weight[:len(ranked)] = [w for _, w in ranked]
    return answers, weight, np.arange(a) < len(ranked)

  def __len__(self) -> int:
    return len(self.questions)

  def __repr__(self) -> str:
    return f"VQAQuestions({len(self)} questions from {self.stats['origin'] or 'memory'})"

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    q = self.questions[i]
    answers, weight, valid = self._targets[i]
    return {"image": self.stores[q.dataset].load(q.image), "text": q.question,
            "question_id": np.int64(q.question_id), "answers": list(answers),
            "answer_weight": weight.copy(), "answer_valid": valid.copy(),
            "product_id": np.int64(self.image_ids[q.dataset, q.image]),
            "index": np.int64(i)}

  def metadata(self) -> dict[str, np.ndarray]:
    return {"product_id": np.array([self.image_ids[q.dataset, q.image]
                                    for q in self.questions], np.int64)}

  def question_ids(self) -> list[int]:
    return [q.question_id for q in self.questions]

  def annotations(self) -> dict[int, vqa_eval.Annotation]:
    """question_id -> the human answers and types, for `vqa_eval.vqa_accuracy`
    (answered questions with an id only)."""
    return {q.question_id: vqa_eval.Annotation(q.answers, q.answer_type, q.question_type)
            for q in self.questions if q.answers and q.question_id >= 0}


def load(root: str, split: str, *, image_root: str = "", vg_image_root: str = "",
         max_question_words: int | None = None, max_answers: int = MAX_ANSWERS,
         single_answer_weight: float = SINGLE_ANSWER_WEIGHT, minival_size: int = 0,
         skip_bad_records: bool = False, verify_images: bool = True) -> VQAQuestions:
  """The questions of `split` ("+"-joined PARTS) from the JSON files under `root`;
  VQA images under `image_root` (default `root`), Visual Genome's under
  `vg_image_root` (needed only with vg). `max_question_words` defaults to ALBEF's
  (50 for test, else 30)."""
  parts = split.split("+")
  unknown = [p for p in parts if p not in PARTS]
  if unknown or len(set(parts)) != len(parts):
    raise ValueError(f"VQA split {split!r}: expected distinct '+'-joined parts of {PARTS}")
  if "test" in parts and len(parts) > 1:
    raise ValueError(f"VQA split {split!r}: test has no answers; it stands alone")
  if max_question_words is None:
    max_question_words = TEST_MAX_QUESTION_WORDS if parts == ["test"] else MAX_QUESTION_WORDS
  bad = BadRecordsByFile(skip_bad_records)
  read = lambda part, **kw: read_questions(  # noqa: E731
      os.path.join(root, FILES[part]), bad, max_question_words=max_question_words, **kw)
  questions: list[Question] = []
  if "train" in parts:
    questions += read("train")
  if "val" in parts or "minival" in parts:
    rest, minival = split_minival(read("val"), minival_size)
    questions += (rest if "val" in parts else []) + (minival if "minival" in parts else [])
  if "vg" in parts:
    if not vg_image_root:
      raise ValueError("VQA split with vg: vg_image_root (the Visual Genome images) is "
                       "empty")
    questions += read("vg", dataset="vg")
  if "test" in parts:
    questions += read("test", answers_required=False)
  stores = {"vqa": ImageFiles(image_root or root)}
  if vg_image_root:
    stores["vg"] = ImageFiles(vg_image_root)
  return VQAQuestions(questions, stores, max_answers=max_answers,
                      single_answer_weight=single_answer_weight,
                      skip_bad_records=skip_bad_records, verify_images=verify_images,
                      bad=bad)
