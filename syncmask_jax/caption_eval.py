"""Caption metrics as BLIP's `coco_caption_eval` computes them, through pycocoevalcap.

BLEU-1..4, METEOR, ROUGE-L and CIDEr (pycocoevalcap's `Cider` is CIDEr-D: clipped
n-gram counts and a length penalty, sigma 6), keyed by pycocoevalcap's names (Bleu_4,
CIDEr, ...). Every metric reads the captions after the Stanford PTB tokenizer (lower
case, punctuation tokens dropped), as COCOEvalCap.evaluate does, and is computed ONCE
over the whole split: BLEU is a corpus statistic and CIDEr's document frequencies come
from all of the split's references, so per-batch scores averaged are a different number.

Not run: SPICE (COCOEvalCap also runs it, but pycocoevalcap fetches Stanford CoreNLP for
it at first use, and our runs download nothing). Without Java (no `java` on PATH) no
metric runs: METEOR is a Java program, and the PTB tokenizer that feeds every metric is
one too; another tokenizer changes the n-grams and gives BLEU/ROUGE-L/CIDEr numbers no
paper's table can be compared with. `evaluate` then says so in the log and returns the
metrics in `skipped`, each with its reason, instead of numbers.

Results file: BLIP's, a JSON list of {"image_id", "caption"}, exactly one caption for
every image of the split (`check_results`).
"""

from __future__ import annotations

import contextlib
import io
import numbers
import shutil
from typing import Any, Iterable, Mapping, Sequence

from absl import logging

from syncmask_jax import paths

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
NOT_RUN = {"SPICE": "not run: pycocoevalcap downloads Stanford CoreNLP for SPICE at "
                    "first use, and runs download nothing"}
_NEEDS_JAVA = "METEOR is a Java program (meteor-1.5.jar) and no java is on PATH"
_PTB_NEEDS_JAVA = ("scored on PTB-tokenized captions, and the Stanford PTB tokenizer is "
                   "Java (no java on PATH): another tokenizer gives numbers not "
                   "comparable with the papers'")


def java() -> str | None:
  """The java executable the PTB tokenizer and METEOR run, or None."""
  return shutil.which("java")


def _is_id(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_results(results: Sequence[Mapping[str, Any]], image_ids: Iterable[int],
                  origin: str = "results") -> dict[int, str]:
  """[{"image_id", "caption"}] -> {image_id: caption}, exactly one caption for every id
  of `image_ids` and none other; errors name the record or the ids."""
  expected = {int(i) for i in image_ids}
  captions: dict[int, str] = {}
  first: dict[int, int] = {}
  for r, result in enumerate(results):
    if not isinstance(result, Mapping):
      raise ValueError(f"{origin}: record {r}: expected {{'image_id', 'caption'}}, got "
                       f"{result!r}")
    for field, ok in (("image_id", _is_id), ("caption", lambda v: isinstance(v, str))):
      if not ok(result.get(field)):
        raise ValueError(f"{origin}: record {r}: field {field!r} missing or not "
                         f"{'an integer' if field == 'image_id' else 'a string'} "
                         f"(got {result.get(field)!r})")
    image_id = int(result["image_id"])
    if image_id not in expected:
      raise ValueError(f"{origin}: record {r}: image_id {image_id} is not an image of "
                       "the split")
    if image_id in captions:
      raise ValueError(f"{origin}: record {r}: a second caption for image_id {image_id} "
                       f"(first in record {first[image_id]}); one caption per image")
    captions[image_id], first[image_id] = result["caption"], r
  missing = sorted(expected - captions.keys())
  if missing:
    raise ValueError(f"{origin}: no caption for {len(missing)} of {len(expected)} images: "
                     f"image_id {missing[:10]}{' ...' if len(missing) > 10 else ''}")
  return captions


def write_results(path: str, results: Sequence[Mapping[str, Any]],
                  image_ids: Iterable[int]) -> None:
  """Checks `results` (`check_results`) and writes them as BLIP's results JSON."""
  captions = check_results(results, image_ids, origin=path)
  paths.write_json(path, [{"image_id": i, "caption": c} for i, c in captions.items()],
                   indent=None)


def _ptb_tokenize(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  out = PTBTokenizer().tokenize({k: [{"caption": c} for c in cs]
                                 for k, cs in captions.items()})
  if ({k: len(cs) for k, cs in out.items()}
      != {k: len(cs) for k, cs in captions.items()}):
    raise RuntimeError("the PTB tokenizer (java) did not return one line per caption: "
                       "is the Java runtime working?")
  return out


def evaluate(results: Sequence[Mapping[str, Any]],
             references: Mapping[int, Sequence[str]]) -> dict[str, Any]:
  """Scores the captions of a whole split against its references.

  results: [{"image_id", "caption"}], one per image of `references`;
  references: {image_id: [captions]} (raw text, e.g. `captions.read_gt`).
  Returns {"scores": {metric: float}, "skipped": {metric: reason}, "num_images": n}.
  """
  for image_id, refs in references.items():
    if not refs or not all(isinstance(c, str) for c in refs):
      raise ValueError(f"references: image_id {image_id}: expected a non-empty list of "
                       f"strings, got {refs!r}")
  predictions = check_results(results, references.keys())
  skipped = dict(NOT_RUN)
  out: dict[str, Any] = {"scores": {}, "skipped": skipped, "num_images": len(predictions)}
  if java() is None:
    skipped.update({m: _NEEDS_JAVA if m == "METEOR" else _PTB_NEEDS_JAVA for m in METRICS})
    logging.warning("caption metrics: no java on PATH, so no %s (%s)", ", ".join(METRICS),
                    _PTB_NEEDS_JAVA)
    return out

  from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.meteor.meteor import Meteor  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.rouge.rouge import Rouge  # pylint: disable=g-import-not-at-top
  ids = list(predictions)
  # One tokenizer run for both sides (COCOEvalCap starts two): it works line by line.
  tokens = _ptb_tokenize({**{("gt", i): references[i] for i in ids},
                          **{("res", i): [predictions[i]] for i in ids}})
  gts = {i: tokens["gt", i] for i in ids}
  res = {i: tokens["res", i] for i in ids}
  scorers = ((Bleu(4), METRICS[:4]), (Meteor(), ("METEOR",)), (Rouge(), ("ROUGE_L",)),
             (Cider(), ("CIDEr",)))
  for scorer, names in scorers:
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
      score, _ = scorer.compute_score(gts, res)
    for name, value in zip(names, score if len(names) > 1 else [score]):
      out["scores"][name] = float(value)
  logging.info("caption metrics over %d images: %s", len(ids),
               ", ".join(f"{m} {v:.4f}" for m, v in out["scores"].items()))
  return out
