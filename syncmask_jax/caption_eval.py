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
every image of the split (`results_json`).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from typing import Any, Iterable, Mapping, Sequence

from absl import logging

from syncmask_jax import results_file

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
NOT_RUN = {"SPICE": "not run: pycocoevalcap downloads Stanford CoreNLP for SPICE at "
                    "first use, and runs download nothing"}
_NEEDS_JAVA = "METEOR is a Java program (meteor-1.5.jar) and no java is on PATH"
_PTB_NEEDS_JAVA = ("scored on PTB-tokenized captions, and the Stanford PTB tokenizer is "
                   "Java (no java on PATH): another tokenizer gives numbers not "
                   "comparable with the papers'")


def java() -> str | None:
  """The java executable the PTB tokenizer and METEOR run, or None."""
  return shutil.which("java")  # paths: ok (a lookup on PATH, no file I/O)


def results_json(results: Iterable[tuple[int, str]],
                 image_ids: Iterable[int]) -> list[dict[str, Any]]:
  """[{"image_id", "caption"}] in `image_ids` order (BLIP's results file).

  Exactly one caption for every image of `image_ids` (the whole split): a missing,
  repeated or unknown id is an error naming the ids.
  """
  image_ids = [int(i) for i in image_ids]
  return results_file.one_per_id(
      results, image_ids, id_field="image_id", text_field="caption", item="image",
      missing=f"of {len(image_ids)} images without a caption",
      repeated="captioned more than once", unknown="not images of the split")


def write_results(path: str, results: Iterable[tuple[int, str]],
                  image_ids: Iterable[int]) -> list[dict[str, Any]]:
  """Checks (`results_json`) and writes BLIP's results file; returns its list."""
  return results_file.write(path, results_json(results, image_ids))


def _ptb_tokenize(captions: Mapping[int, Sequence[str]]) -> dict[int, list[str]]:
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer  # pylint: disable=g-import-not-at-top
  out = PTBTokenizer().tokenize({k: [{"caption": c} for c in cs]
                                 for k, cs in captions.items()})
  if ({k: len(cs) for k, cs in out.items()}
      != {k: len(cs) for k, cs in captions.items()}):
    raise RuntimeError("the PTB tokenizer (java) did not return one line per caption: "
                       "is the Java runtime working?")
  return out


def evaluate(results: Iterable[tuple[int, str]],
             references: Mapping[int, Sequence[str]]) -> dict[str, Any]:
  """Scores the captions of a whole split against its references.

  results: (image_id, caption) pairs, one per image of `references` (`results_json`);
  references: {image_id: [captions]} (raw text, e.g. `captions.read_gt`).
  Returns {"scores": {metric: float}, "skipped": {metric: reason}, "num_images": n}.
  """
  for image_id, refs in references.items():
    if not refs or not all(isinstance(c, str) for c in refs):
      raise ValueError(f"references: image_id {image_id}: expected a non-empty list of "
                       f"strings, got {refs!r}")
  predictions = {r["image_id"]: r["caption"]
                 for r in results_json(results, references.keys())}
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
  # Two tokenizer runs, as COCOEvalCap: a run's last line can tokenize differently
  # ("x y." keeps "y." there), so one run for both sides would move numbers.
  gts = _ptb_tokenize({i: references[i] for i in ids})
  res = _ptb_tokenize({i: [predictions[i]] for i in ids})
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
