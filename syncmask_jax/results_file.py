"""Results files of the generative tasks: one prediction per id, every id of the split.

VQA's evaluation server ({"question_id", "answer"}) and BLIP's caption evaluation
({"image_id", "caption"}) read a JSON list with exactly one entry for every question or
image of the split; this checks that, naming the ids that break it, before anything is
written or scored.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

from syncmask_jax import paths


def ids_text(ids: Iterable[int], limit: int = 10) -> str:
  """"3, 8, 11 and 5 more": sorted, the first `limit`."""
  ids = sorted(ids)
  more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
  return ", ".join(str(i) for i in ids[:limit]) + more


def one_per_id(results: Iterable[tuple[int, str]], ids: Iterable[int], *, id_field: str,
               text_field: str, item: str, missing: str, repeated: str,
               unknown: str) -> list[dict[str, Any]]:
  """[{id_field: id, text_field: text}] in `ids` order from (id, text) pairs.

  A missing, repeated or unknown id is one error naming them all (`missing`,
  `repeated`, `unknown` word the three counts: "questions without an answer"); a
  non-integer id or non-string text names its `item` ("question 5: answer ...").
  """
  wanted = [int(i) for i in ids]
  texts: dict[int, str] = {}
  seen_twice = set()
  for i, text in results:
    if isinstance(i, bool) or not isinstance(i, numbers.Integral):
      raise ValueError(f"results: {id_field} {i!r} is not an integer")
    i = int(i)
    if not isinstance(text, str):
      raise ValueError(f"{item} {i}: {text_field} {text!r} is not a string")
    if i in texts:
      seen_twice.add(i)
    texts[i] = text
  absent = set(wanted) - set(texts)
  extra = set(texts) - set(wanted)
  if seen_twice or absent or extra:
    raise ValueError(f"results: {len(absent)} {missing} ({ids_text(absent)}), "
                     f"{len(seen_twice)} {repeated} ({ids_text(seen_twice)}), "
                     f"{len(extra)} {unknown} ({ids_text(extra)})")
  return [{id_field: i, text_field: texts[i]} for i in wanted]


def write(path: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
  paths.write_json(path, records, indent=None)
  return records
