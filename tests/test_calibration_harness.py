"""docs/study/calibration.py: baselines only, and the target rule."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "docs", "study", "calibration.py")
_spec = importlib.util.spec_from_file_location("calibration", _PATH)
calibration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(calibration)


@pytest.mark.parametrize("variant", ["syncmask", "semmim", "full_subcategory"])
def test_refuses_every_variant_but_the_baselines(variant, tmp_path):
  # Refused before anything runs or is written.
  with pytest.raises(ValueError, match="baselines only"):
    calibration.run_one("today", variant, 0, 10, str(tmp_path))
  assert not list(tmp_path.iterdir())


def test_target_every_detail_attribute_in_range_and_colour_below_100():
  inside = dict(colour=99.0, pattern=40.0, detail_presence=55.0, detail_colour=80.0,
                detail_side=60.0)
  assert calibration.on_target(inside)
  assert not calibration.on_target(dict(inside, colour=100.0))
  assert not calibration.on_target(dict(inside, detail_side=54.9))
  assert not calibration.on_target(dict(inside, detail_presence=80.1))


def test_a_stopped_run_is_told_from_a_failed_one():
  stopped = dict(status="failed", log_tail="...\nstopped at step 125 by SIGTERM, checkpoint "
                 "saved; rerun the same command to resume\n")
  assert calibration.status(stopped) == "stopped"
  assert calibration.status(dict(status="failed", log_tail="Traceback ...")) == "failed"
