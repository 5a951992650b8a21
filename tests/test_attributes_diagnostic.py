"""docs/study/attributes.py: paired per-attribute twins differences from a summary.json."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "docs", "study", "attributes.py")
_spec = importlib.util.spec_from_file_location("attributes", _PATH)
attributes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attributes)


def _run(all_visible, pattern):
  return {"twins/r1": all_visible, "twins/r1_pattern": pattern,
          "twins_attributes": ["pattern"]}


def test_paired_per_attribute_differences_against_hand_computation():
  # Both ungrouped: the same batches for a seed, so paired.
  summary = {"syncmask": {"0": _run(30.0, 90.0), "1": _run(32.0, 91.0),
                          "2": _run(31.0, 95.0)},
             "random_masks": {"0": _run(29.0, 90.0), "1": _run(31.0, 93.0),
                              "2": _run(30.0, 94.0)}}
  rows = attributes.attribute_claims(summary, "syncmask", "random_masks", [0, 1, 2])
  assert all(r["paired"] for r in rows)
  assert [r["attribute"] for r in rows] == ["all visible", "pattern"]
  # All visible: +1 on every seed, no spread: held.
  assert rows[0]["per_seed"] == [1.0, 1.0, 1.0]
  assert rows[0]["difference"] == 1.0 and rows[0]["verdict"] == "held"
  # Pattern: 0, -2, +1 -> mean -1/3, sample std sqrt(7/3).
  assert rows[1]["per_seed"] == [0.0, -2.0, 1.0]
  assert rows[1]["difference"] == pytest.approx(-1 / 3)
  assert rows[1]["spread"] == pytest.approx((7 / 3) ** 0.5)
  assert rows[1]["verdict"] == "within the seed spread"
  assert rows[1]["better"] == pytest.approx(92.0)  # the sides' means
  assert rows[1]["worse"] == pytest.approx(92.0 + 1 / 3)
  # Grouped against ungrouped: different batches, so unpaired (Welch), as in the report.
  summary["full_subcategory"] = summary.pop("random_masks")
  rows = attributes.attribute_claims(summary, "syncmask", "full_subcategory", [0, 1, 2])
  assert not any(r["paired"] for r in rows)
  # Pooled seed spread: pattern variances 7 (90, 91, 95) and 13/3 (90, 93, 94).
  assert rows[1]["spread"] == pytest.approx(((7 + 13 / 3) / 2) ** 0.5)


def test_missing_seed_or_measure_is_named():
  summary = {"syncmask": {"0": _run(30.0, 90.0), "1": _run(32.0, 91.0)},
             "albef": {"0": _run(29.0, 90.0)}}
  with pytest.raises(ValueError, match=r"albef: no run for seeds \[1\]"):
    attributes.attribute_claims(summary, "syncmask", "albef", [0, 1])
  summary["albef"]["1"] = {"twins/r1": 31.0}
  with pytest.raises(ValueError, match="albef seed 1: no 'twins/r1_pattern'"):
    attributes.attribute_claims(summary, "syncmask", "albef", [0, 1])
  with pytest.raises(ValueError, match="no variant 'semmim'"):
    attributes.attribute_claims(summary, "syncmask", "semmim", [0])
