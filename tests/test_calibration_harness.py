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


def test_the_split_prediction_reads_each_half_as_the_mean_of_i2t_and_t2i():
  half = lambda i2t, t2i: dict(i2t=i2t, t2i=t2i, chance=50.0, queries=10)  # noqa: E731
  record = dict(twins_split=dict(
      detail_side_in_product=half(70.0, 80.0), detail_side_in_twin=half(20.0, 30.0),
      detail_presence_in_product=half(90.0, 90.0), detail_presence_in_twin=half(75.0, 65.0)))
  assert calibration.split_holds(record)  # 75 / 25 / a 20-point gap: on every line
  side_twin = dict(record["twins_split"], detail_side_in_twin=half(20.0, 31.0))
  assert not calibration.split_holds(dict(twins_split=side_twin))
  gap = dict(record["twins_split"], detail_presence_in_twin=half(75.0, 66.0))
  assert not calibration.split_holds(dict(twins_split=gap))


def test_the_itm_prediction_needs_both_side_and_detail_colour_to_gain():
  itc = dict(colour=98.0, pattern=40.0, detail_presence=58.0, detail_colour=52.0,
             detail_side=49.0)
  both = lambda v: dict(i2t=v, t2i=v)  # noqa: E731
  itm = {a: both(v) for a, v in itc.items()}
  record = dict(twins_r1={a: both(v) for a, v in itc.items()}, twins_itm=dict(r1=itm))
  assert not calibration.itm_holds(record)
  gained = dict(itm, detail_colour=both(57.0), detail_side=dict(i2t=50.0, t2i=58.0))
  assert calibration.itm_holds(dict(record, twins_itm=dict(r1=gained)))  # +5 and +5
  short = dict(gained, detail_side=dict(i2t=50.0, t2i=57.9))
  assert not calibration.itm_holds(dict(record, twins_itm=dict(r1=short)))


def test_side_readable_only_front_and_back_of_a_garment_with_a_neck_opening():
  sf = calibration.synthfashion
  tee, trousers = (next(i for i, g in enumerate(sf.GARMENTS) if g.name == n)
                   for n in ("t-shirt", "trousers"))
  category = [tee, tee, tee, tee, trousers, trousers]
  view = [sf.FRONT, sf.BACK, sf.LEFT, sf.RIGHT, sf.FRONT, sf.BACK]
  assert calibration.side_readable(category, view).tolist() == [True, True, False, False,
                                                                  False, False]


def test_the_facing_prediction_needs_the_side_above_chance_and_the_rest_kept():
  r1 = lambda **v: dict(twins_r1={a: dict(i2t=x, t2i=x) for a, x in v.items()})  # noqa: E731
  chance = dict(detail_side=49.4)
  reference = r1(detail_presence=60.0, detail_colour=59.0, detail_side=50.0)
  assert calibration.facing_holds(
      r1(detail_presence=57.0, detail_colour=62.0, detail_side=54.4), reference, chance)
  assert not calibration.facing_holds(
      r1(detail_presence=57.0, detail_colour=62.0, detail_side=54.3), reference, chance)
  assert not calibration.facing_holds(
      r1(detail_presence=55.9, detail_colour=59.0, detail_side=70.0), reference, chance)


@pytest.mark.parametrize("variant", calibration.BASELINES)
def test_the_facing_setting_is_the_named_details_testbed_flag_for_flag(variant):
  # So a baseline's calibration run on the chosen set stands in for the study's run.
  spec = importlib.util.spec_from_file_location(
      "study_config", os.path.join(calibration.ROOT, calibration.study.PRETRAIN))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  named = module.get_config(f"variant={variant},seed=2,steps=3000,testbed=details")
  assert calibration.study_config("facing", variant, 2, 3000).to_dict() == named.to_dict()
  assert calibration.study_config("today", variant, 2, 3000, "details").to_dict() == (
      named.to_dict())
  assert calibration.study.STUDIES["details"].testbed == "details"


def test_adopt_copies_a_run_of_the_study_config_and_refuses_another(tmp_path):
  config = calibration.study_config("facing", "albef", 1, 3000)
  calibration.pipeline.resolve_vocab(config)  # as a run writes its config.json
  run = tmp_path / "calibration" / "albef" / "seed1"
  (run / "eval").mkdir(parents=True)
  (run / "eval" / "pretrain.json").write_text("{}")
  record = dict(variant="albef", seed=1, directory=str(run), wall_seconds=812.5,
                command="python -m syncmask_jax.main --config=configs/study.py:variant=albef")
  study_dir = tmp_path / "study"
  for field, value in (("data.synth_facing_marks", False), ("loss.itm", 0.5)):
    group, name = field.split(".")
    other = calibration.json.loads(config.to_json_best_effort())
    other[group][name] = value
    (run / "config.json").write_text(calibration.json.dumps(other))
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
      calibration.adopt(record, str(study_dir))
    assert not study_dir.exists()
  (run / "config.json").write_text(config.to_json_best_effort())
  target = calibration.adopt(record, str(study_dir))
  assert target == str(study_dir / "albef" / "seed1")
  assert (study_dir / "albef" / "seed1" / "eval" / "pretrain.json").read_text() == "{}"
  info = calibration.json.loads((study_dir / "albef" / "seed1" / "run.json").read_text())
  # The report reads a run's wall time and command from run.json (report.read_run).
  assert info == {"pretrain": {"seconds": 812.5,
                               "command": "-m syncmask_jax.main --config=configs/study.py:variant=albef"}}
  assert calibration.adopt(record, str(study_dir)) is None  # there already
