"""The official VQA accuracy, and the results file for the evaluation server.

The algorithm of the VQA v2 evaluation code (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py, master), written here:

* the predicted answer: newlines and tabs become spaces, the ends are stripped, then
  `process_punctuation` and `process_digit_article` (`normalize_answer`);
* the human answers: `process_punctuation` only, and only when the humans did not all
  give the same string (the official code's asymmetry, kept: the released
  annotations are already normalised, so this rarely matters; an answer list meant
  to be predicted, like SynthFashion-VQA's, is written in normalised form);
* a question's accuracy: for each of the n (10) humans, the other n - 1 answers are a
  subset and the subset's score is min(1, #matches / 3); the question scores the
  mean over the n subsets. So 1 of 10 humans agreeing gives 30%, 2 give 60%, 3 give
  90% and 4 or more give 100%;
* overall, per answer type (yes/no, number, other) and per question type: the mean
  over questions, in PERCENT, rounded to `precision` (2) decimals, as the official
  `setAccuracy` reports them.

Two quirks of the official code are reproduced on purpose, so numbers compare:
the period rule `(?!<=\\d)(\\.)(?!\\d)` is a look-ahead typo for a look-behind, so it
removes every period not followed by a digit ("3.5" stays, "dog." -> "dog"), and
it is applied with count=re.UNICODE (32): at most 32 periods per answer are removed.
The comma rule: when a comma sits between two digits anywhere in the text ("1,000"),
every listed punctuation mark is deleted instead of being replaced by a space.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Iterable, Mapping, Sequence

from syncmask_jax import paths
from syncmask_jax import results_file

ANSWER_TYPES = ("yes/no", "number", "other")
HUMANS_FOR_FULL_CREDIT = 3  # min(1, matches / 3)

# The official contraction table (vqaEval.py `contractions`), complete. Keys with
# capitals ("Im", "Ive") can never match a lower-cased word; kept as published.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd",
    "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
                "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
                "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIODS_REMOVED = re.UNICODE  # the official code passes re.UNICODE (32) as `count`


def process_punctuation(text: str) -> str:
  """Each mark of PUNCTUATION deleted when it touches a space (or a comma sits between
  digits anywhere), else replaced by a space; then periods not before a digit go."""
  delete_all = _COMMA_BETWEEN_DIGITS.search(text) is not None
  out = text
  for p in PUNCTUATION:
    # The official test looks at the original text, not at the text being edited.
    if delete_all or p + " " in text or " " + p in text:
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
  """Lower-cased words; number words 0-10 to digits, articles dropped, contractions
  restored ("dont" -> "don't")."""
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
  """A predicted answer as the official code compares it."""
  answer = answer.replace("\n", " ").replace("\t", " ").strip()
  return process_digit_article(process_punctuation(answer))


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
  """One question's VQA accuracy in [0, 1]: the mean over the leave-one-out subsets of
  the human answers of min(1, matches / 3)."""
  if not human_answers:
    raise ValueError("a question with no human answers cannot be scored")
  pred = normalize_answer(prediction)
  humans = list(human_answers)
  if len(set(humans)) > 1:
    humans = [process_punctuation(h) for h in humans]
  matches = sum(h == pred for h in humans)
  # Leaving out human i removes one match when human i matched: the official loop,
  # counted instead of rebuilt.
  total = sum(min(1.0, (matches - (h == pred)) / HUMANS_FOR_FULL_CREDIT) for h in humans)
  return total / len(humans)


@dataclasses.dataclass(frozen=True)
class Annotation:
  """What the metric needs of a question: its human answers and, when known, types."""
  answers: tuple[str, ...]
  answer_type: str = ""
  question_type: str = ""


def annotations_from_records(records: Iterable[Mapping[str, Any]],
                             origin: str = "annotations") -> dict[int, Annotation]:
  """question_id -> Annotation from ALBEF-format records ({question_id, answer: [str],
  answer_type?, question_type?}) or official v2 annotation entries
  ({question_id, answers: [{answer, ...}], answer_type, question_type})."""
  out = {}
  for i, r in enumerate(records):
    if "question_id" not in r:
      raise ValueError(f"{origin}: record {i}: missing field 'question_id'")
    if "answers" in r:
      answers = [a["answer"] if isinstance(a, Mapping) else a for a in r["answers"]]
    elif "answer" in r:
      answers = [r["answer"]] if isinstance(r["answer"], str) else list(r["answer"])
    else:
      raise ValueError(f"{origin}: record {i}: missing field 'answer' (or 'answers')")
    if not answers or not all(isinstance(a, str) for a in answers):
      raise ValueError(f"{origin}: record {i} (question {r['question_id']}): "
                       f"answers must be a non-empty list of strings, got {answers!r}")
    qid = int(r["question_id"])
    if qid in out:
      raise ValueError(f"{origin}: record {i}: question_id {qid} appears twice")
    out[qid] = Annotation(tuple(answers), str(r.get("answer_type", "") or ""),
                          str(r.get("question_type", "") or ""))
  return out


def load_annotations(path: str) -> dict[int, Annotation]:
  """An official `v2_mscoco_*_annotations.json` ({"annotations": [...]}) or an ALBEF
  `vqa_val.json` (a list), as question_id -> Annotation."""
  try:
    data = paths.read_json(path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  records = data["annotations"] if isinstance(data, dict) and "annotations" in data else data
  if not isinstance(records, list):
    raise ValueError(f"{path}: expected a list of records or {{'annotations': [...]}}")
  return annotations_from_records(records, origin=path)


def _percent(values: Sequence[float], precision: int) -> float:
  return round(100.0 * sum(values) / len(values), precision)


def vqa_accuracy(predictions: Mapping[int, str], annotations: Mapping[int, Annotation],
                 *, precision: int = 2) -> dict[str, Any]:
  """The official report, in percent rounded to `precision` decimals:

  {"overall": float, "per_answer_type": {type: float}, "per_question_type":
  {type: float}, "per_question": {question_id: float}, "num_questions": int}.
  The type tables hold the types the annotations name (empty when they name none).
  As the official `loadRes`, the predictions must answer exactly the annotated
  questions: missing or unknown ids are an error naming them.
  """
  if not annotations:
    raise ValueError("no annotated questions to evaluate")
  missing = set(annotations) - set(predictions)
  unknown = set(predictions) - set(annotations)
  if missing or unknown:
    raise ValueError(f"predictions do not match the annotated questions: missing "
                     f"{len(missing)} ({results_file.ids_text(missing)}), unknown "
                     f"{len(unknown)} ({results_file.ids_text(unknown)})")
  scores, by_answer_type, by_question_type = {}, {}, {}
  for qid, ann in annotations.items():
    acc = question_accuracy(predictions[qid], ann.answers)
    scores[qid] = acc
    if ann.answer_type:
      by_answer_type.setdefault(ann.answer_type, []).append(acc)
    if ann.question_type:
      by_question_type.setdefault(ann.question_type, []).append(acc)
  return {
      "overall": _percent(list(scores.values()), precision),
      "per_answer_type": {t: _percent(v, precision) for t, v in by_answer_type.items()},
      "per_question_type": {t: _percent(v, precision)
                            for t, v in by_question_type.items()},
      "per_question": {q: round(100.0 * a, precision) for q, a in scores.items()},
      "num_questions": len(scores),
  }


def results_json(results: Iterable[tuple[int, str]],
                 question_ids: Sequence[int]) -> list[dict[str, Any]]:
  """[{"question_id", "answer"}] in `question_ids` order, for the evaluation server.

  Every question of `question_ids` (the whole test file) must be answered exactly
  once: a missing, repeated or unknown id is an error naming the ids.
  """
  return results_file.one_per_id(
      results, question_ids, id_field="question_id", text_field="answer",
      item="question", missing="questions without an answer",
      repeated="answered more than once", unknown="not in the question list")


def write_results(path: str, results: Iterable[tuple[int, str]],
                  question_ids: Sequence[int]) -> list[dict[str, Any]]:
  """Checks (`results_json`) and writes the server's results file; returns its list."""
  return results_file.write(path, results_json(results, question_ids))
