"""The study report: the verdict rule, aggregation from run files, and one real sweep."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from syncmask_jax import report


def test_judge_against_hand_computation():
  better, worse = [1.0, 2.0, 3.0], [0.0, 0.5, 1.0]
  # Unpaired (Welch): means 2.0 and 0.5, stds 1.0 and 0.5: d = 1.5,
  # s = sqrt((1 + 0.25) / 2), SE = sqrt(1/3 + 0.25/3), df = SE^4 / ((1/3)^2/2 + (0.25/3)^2/2).
  j = report.judge(better, worse)
  se = np.sqrt(1 / 3 + 0.25 / 3)
  df = se**4 / ((1 / 3)**2 / 2 + (0.25 / 3)**2 / 2)
  assert j["difference"] == pytest.approx(1.5)
  assert j["spread"] == pytest.approx(np.sqrt(0.625))
  assert j["se"] == pytest.approx(se) and j["ratio"] == pytest.approx(1.5 / se)
  assert j["threshold"] == pytest.approx(stats.t.ppf(0.975, df))
  assert j["verdict"] == "within the seed spread"  # 2.32 < t(0.975, 2.94) = 3.2
  # Paired over the same seeds: differences 1, 1.5, 2 (s = 0.5, SE = 0.5 / sqrt(3)), t = 5.2
  # beats t(0.975, 2) = 4.30: the same numbers settle the claim once paired.
  j = report.judge(better, worse, paired=True)
  assert j["spread"] == pytest.approx(0.5) and j["se"] == pytest.approx(0.5 / np.sqrt(3))
  assert j["threshold"] == pytest.approx(4.302653) and j["verdict"] == "held"
  assert j["detectable"] == pytest.approx((4.302653 + 1.060660) * 0.5 / np.sqrt(3))
  # Seeds to detect d = 1.5 at s = 0.5, paired: 3 gives (4.30 + 1.06) * 0.289 = 1.55 > 1.5,
  # 4 gives (3.18 + 0.98) * 0.25 = 1.04.
  assert j["seeds_needed"] == 4
  assert report.judge([5.0, 5.2, 5.4], [1.0, 1.1, 1.2])["verdict"] == "held"
  assert report.judge([1.0, 1.1, 1.2], [5.0, 5.2, 5.4])["verdict"] == "the other way"
  assert report.judge([5.0], [1.0, 1.1])["verdict"] == "no verdict (one seed)"
  # Lower is better: 0.0 against 0.3 rates held.
  j = report.judge([0.0, 0.0, 0.0], [0.3, 0.31, 0.29], lower=True)
  assert j["difference"] == pytest.approx(0.3) and j["verdict"] == "held"
  with pytest.raises(ValueError, match="paired"):
    report.judge([1.0, 2.0], [1.0, 2.0, 3.0], paired=True)


def test_claims_pair_only_variants_that_share_their_batches():
  claims = {(c.better, c.worse): c for c in report.CLAIMS}
  assert claims[("syncmask", "random_masks")].paired()  # both ungrouped: same data order
  assert claims[("full_subcategory", "negatives_hard")].paired()  # both subcategory-grouped
  assert not claims[("full_subcategory", "syncmask")].paired()  # grouped vs not
  assert all(c.paired() for c in report.CLAIMS if c.worse is None)  # inside one run


def test_wall_time_leaves_out_the_pauses_between_invocations():
  # Two runs at once from 0 s, one inside another, then a pause and one run more: the
  # union is [0, 20] and [30, 40].
  assert report.busy_seconds([(30.0, 40.0), (0.0, 10.0), (5.0, 20.0), (6.0, 8.0)]) == 30.0
  assert report.busy_seconds([(0.0, 10.0), (10.0, 12.0)]) == 12.0


def test_sweep_eta_counts_what_is_left_on_the_workers():
  assert report.sweep_eta([], queued=3, running=[], workers=2) is None  # nothing timed
  # Two jobs of 100 s queued, one running for 40 s, two at a time: (200 + 60) / 2.
  assert report.sweep_eta([100.0], queued=2, running=[40.0], workers=2) == 130.0
  # The last job in flight, begun with the one that ended: about nothing left.
  assert report.sweep_eta([700.0], queued=0, running=[699.0], workers=2) == 1.0


def test_a_sweep_with_nothing_to_run_prints_no_eta(monkeypatch, capsys):
  monkeypatch.setattr(report, "run_one", lambda variant, seed, args: False)
  report.run_sweep({"syncmask": [0], "random_masks": [0]}, report.parse_args(["--jobs=2"]))
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 and all("already done" in l and "ETA" not in l for l in lines)


@pytest.mark.parametrize("code,says", [
    (0, "pretrain stopped before it finished (exit 0, no "),
    (1, "pretrain failed (exit 1)")])
def test_a_run_that_stops_early_is_told_from_one_that_fails(monkeypatch, tmp_path, code,
                                                            says):
  # A SIGTERM'd run saves its step and exits 0 without its result file: resumable.
  monkeypatch.setattr(report, "_run_logged", lambda argv, log: subprocess.CompletedProcess(
      argv, code))
  with pytest.raises(RuntimeError, match=re.escape(f"albef seed 0: {says}")):
    report.run_one("albef", 0, report.parse_args([f"--workdir={tmp_path}"]))
  assert not (tmp_path / "albef" / "seed0" / "run.json").exists()


def _fake_run(directory, *, r_mean, patch, patch_random, fn_rate, accuracy, seconds,
              twins_products=200):
  os.makedirs(os.path.join(directory, "eval"))
  os.makedirs(os.path.join(directory, "finetune", "eval"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({}, f)
  blocks = [dict(protocol=p, scoring="itc", **{k: r_mean + i for i, k in
                                                enumerate(report.RECALLS)})
            for p, _ in report.PROTOCOLS]
  blocks.append(dict(protocol="twins", scoring="itc", attributes=["colour", "side"],
                     num_products=twins_products, num_queries=3 * twins_products,
                     i2t_r1=r_mean, t2i_r1=r_mean + 2, i2t_r1_colour=90.0, t2i_r1_colour=80.0,
                     i2t_r1_side=r_mean, t2i_r1_side=r_mean, i2t_r1_invisible=25.0,
                     t2i_r1_invisible=27.0))
  pretrain = dict(step=10, results=blocks, mask_precision_patch_method=patch,
                  mask_token_share_invisible_method=0.3, mask_token_share_invisible_random=0.4,
                  mask_precision_patch_random=patch_random,
                  mask_precision_token_method=patch / 2,
                  mask_precision_token_random=patch_random / 2, pictures=[])
  with open(os.path.join(directory, "eval", "pretrain.json"), "w") as f:
    json.dump(pretrain, f)
  with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
    for step in (5, 10):
      f.write(json.dumps({"step": step, "train/mask/patch_precision": patch * step / 10,
                          "train/mask/token_precision": 0.1,
                          "train/negatives/false_negative_rate": fn_rate * step / 5}) + "\n")
  with open(os.path.join(directory, "finetune", "eval", "category.json"), "w") as f:
    json.dump({"results": [{"accuracy": accuracy, "macro_f1": accuracy / 2}]}, f)
  with open(os.path.join(directory, "run.json"), "w") as f:
    json.dump({"pretrain": {"seconds": seconds, "command": "main pretrain"},
               "finetune": {"seconds": 1.0, "command": "main finetune"}}, f)


def test_report_from_run_files(tmp_path):
  root, docs = tmp_path / "runs", tmp_path / "docs"
  for seed, (r, patch, acc) in enumerate([(10.0, 0.4, 50.0), (12.0, 0.5, 54.0)]):
    _fake_run(report.run_dir(str(root), "syncmask", seed), r_mean=r, patch=patch,
              patch_random=0.25, fn_rate=0.0, accuracy=acc, seconds=60.0)
  for seed, r in enumerate([4.0, 5.0]):
    _fake_run(report.run_dir(str(root), "random_masks", seed), r_mean=r, patch=0.25,
              patch_random=0.25, fn_rate=0.01, accuracy=40.0, seconds=30.0)
  readme = tmp_path / "README.md"
  readme.write_text(f"# x\n{report.README_BEGIN}\nold\n{report.README_END}\n## next\n")
  path = report.main([f"--workdir={root}", f"--docs={docs}", "--variants=syncmask,random_masks",
                      "--seeds=0,1", "--no_run", "--steps=400", f"--readme={readme}"])
  text = open(path).read()
  # Means and sample stds of the runs' own numbers (r_mean is block value + 6).
  assert "| syncmask | SyncMask masks, ungrouped batches | 2 | 0.450 ± 0.071 |" in text
  assert "17.0 ± 1.4" in text and "10.5 ± 0.7" in text  # R mean: syncmask, random_masks
  assert "52.0 ± 2.8" in text  # subcategory accuracy
  # False-negative rate: mean over the logged windows (0.01 and 0.02) in %.
  assert "1.50 ± 0.00" in text
  assert "3.1 min summed over 4 runs" in text
  assert "the 1+K twins on the first 200 (600 views)" in text
  # SyncMask vs random retrieval, paired (both ungrouped): differences 6 and 7, so
  # d = 6.5, s = 0.707, SE = 0.5, d/SE = 13 > t(0.975, 1) = 12.7: held.
  claim = [l for l in text.splitlines() if l.startswith("| SyncMask masks give better "
                                                        "retrieval than random MLM+MIM "
                                                        "masks (full gallery)")][0]
  assert "| +6.5 | 0.7 | paired, 2 | +13.0 (±12.7) |" in claim and "**held**" in claim
  # Twins R@1 is the mean of i2t and t2i: (10 + 12) / 2 and (12 + 14) / 2 for syncmask,
  # 5 and 6 for random_masks.
  assert "| syncmask | 11.0 ± 1.4 | 13.0 ± 1.4 | 12.0 ± 1.4 | 85.0 ± 0.0 | 11.0 ± 1.4 " \
         "| 26.0 ± 0.0 |" in text
  claim = [l for l in text.splitlines() if l.startswith("| SyncMask masks give better "
                                                        "fine-grained retrieval")][0]
  assert "| +6.5 |" in claim and "**held**" in claim
  # Unshowable words (lower is better): 0.3 vs 0.4 in every run, no spread: held.
  claim = [l for l in text.splitlines() if l.startswith("| SyncMask's token masks pick "
                                                        "fewer words no view")][0]
  assert "| +0.100 | 0.000 | paired, 2 | +inf (±12.7) |" in claim and "**held**" in claim
  # Mask precision, paired in the syncmask runs: 0.4, 0.5 vs 0.25: d = 0.2, s = 0.071,
  # d/SE = 4 < 12.7 with two seeds; likewise tokens, and subcategory accuracy (d/SE = 6).
  claim = [l for l in text.splitlines() if l.startswith("| SyncMask's patch masks")][0]
  assert "+0.200" in claim and "within the seed spread" in claim
  assert ("Of 7 claims, 4 held, 0 went the other way and 3 are within the seed spread"
          in text)
  for png in ("mask_precision.png", "recall.png", "twins.png"):
    assert os.path.getsize(docs / "results" / png) > 1000
  # The README block between the markers is replaced, the rest kept.
  block = readme.read_text()
  assert "old" not in block and block.startswith("# x\n") and block.endswith("## next\n")
  assert "| syncmask | SyncMask masks, ungrouped batches | 2 | 0.450 ± 0.071 |" in block
  assert "](docs/results.md)" in block and "(docs/results/recall.png)" in block
  summary = json.load(open(docs / "results" / "summary.json"))
  assert summary["syncmask"]["1"]["full_gallery/r_mean"] == 18.0
  assert summary["random_masks"]["0"]["false_negative_rate"] == pytest.approx(0.015)


def test_runs_on_different_twins_sets_are_not_compared(tmp_path):
  root = tmp_path / "runs"
  for seed, products in enumerate([200, 1000]):
    _fake_run(report.run_dir(str(root), "syncmask", seed), r_mean=10.0, patch=0.4,
              patch_random=0.25, fn_rate=0.0, accuracy=50.0, seconds=60.0,
              twins_products=products)
  with pytest.raises(ValueError, match=r"\(200, 600\): syncmask seed 0; "
                     r"\(1000, 3000\): syncmask seed 1"):
    report.collect(str(root), {"syncmask": [0, 1]})


def test_twins_plot_marks_each_groups_chance(tmp_path):
  directory = str(tmp_path / "run")
  _fake_run(directory, r_mean=10.0, patch=0.4, patch_random=0.25, fn_rate=0.0,
            accuracy=50.0, seconds=1.0)
  path = os.path.join(directory, "eval", "pretrain.json")
  with open(path) as f:
    pretrain = json.load(f)
  twins = next(b for b in pretrain["results"] if b["protocol"] == "twins")
  twins.update(r1_chance=6.9, r1_chance_colour=25.0, r1_chance_side=26.0)  # 1+15, 1+3
  with open(path, "w") as f:
    json.dump(pretrain, f)
  runs = {"syncmask": {0: report.read_run(directory)}}
  columns = report.twins_columns(runs)
  assert [label for _, label in columns] == ["all visible", "colour", "side", "invisible"]
  assert report.twins_chance(runs, columns) == [6.9, 25.0, 26.0, None]  # not recorded
  report.plot_twins(runs, str(tmp_path / "twins.png"))
  assert os.path.getsize(tmp_path / "twins.png") > 1000


def test_report_goes_to_the_workdir_unless_published(tmp_path):
  """A trial sweep never rewrites the repository's README, docs/results.md or plots."""
  root = tmp_path / "runs"
  _fake_run(report.run_dir(str(root), "syncmask", 0), r_mean=10.0, patch=0.4,
            patch_random=0.25, fn_rate=0.0, accuracy=50.0, seconds=60.0)
  published = [os.path.join(report.REPO, p) for p in ("README.md", "docs/results.md")]
  before = [os.path.getmtime(p) for p in published]
  path = report.main([f"--workdir={root}", "--variants=syncmask", "--seeds=0", "--no_run"])
  assert path == str(root / "report" / "results.md")
  assert os.path.getsize(root / "report" / "results" / "recall.png") > 1000
  assert [os.path.getmtime(p) for p in published] == before
  args = report.parse_args([f"--workdir={root}", "--study=published", "--publish"])
  assert args.docs == os.path.join(report.REPO, "docs")
  assert args.readme == os.path.join(report.REPO, "README.md")
  assert report.parse_args([f"--workdir={root}"]).readme == ""


def test_bad_variant_is_named(capsys):
  with pytest.raises(SystemExit):
    report.parse_args(["--variants=syncmask,nope"])
  assert "nope" in capsys.readouterr().err


def test_report_needs_no_checkout(tmp_path):
  """Installed, the package has no configs/ beside it: the report reads the study's
  variants from the package, whatever the current directory."""
  site = tmp_path / "site"
  shutil.copytree(os.path.dirname(report.__file__), site / "syncmask_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  code = ("from syncmask_jax import report; "
          "report.parse_args(['--workdir=runs', '--variants=semmim,albef']); "
          "print(report.__file__, *report.study.VARIANTS)")
  run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(site)), check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.split() == [str(site / "syncmask_jax" / "report.py"),
                                *report.study.VARIANTS]


@pytest.mark.slow
def test_real_sweep_end_to_end(tmp_path):
  """One tiny real run: the report reads what main.py and the fine-tuning write."""
  small = ["--override=--config.data.synth_train_products=64",
           "--override=--config.data.synth_val_products=24",
           "--override=--config.eval.pictures=1",
           "--override=--config.eval.twins.num_products=4"]  # the study's 1000: minutes
  path = report.main([f"--workdir={tmp_path / 'runs'}", f"--docs={tmp_path / 'docs'}",
                      "--variants=syncmask", "--seeds=0", "--steps=3",
                      # SyncMask's masks from step 1 (the SynthFashion warm-up is 300).
                      "--override=--config.masking.warmup_steps=1",
                      "--finetune_steps=2", "--finetune_override=--config.log_every=1",
                      "--finetune_override=--config.data.synth_train_products=64",
                      "--finetune_override=--config.data.synth_val_products=24",
                      *small])
  run = report.read_run(report.run_dir(str(tmp_path / "runs"), "syncmask", 0))
  assert run["step"] == 3
  assert 0.0 <= run["patch_precision"] <= 1.0 and 0.0 <= run["token_precision"] <= 1.0
  assert 0.0 <= run["full_gallery/r_mean"] <= 100.0
  assert 0.0 <= run["subcategory_accuracy"] <= 100.0
  assert [s for s, _ in run["curves"]["train/mask/patch_precision"]] == [3]
  assert "overlay_syncmask_0.png" in open(path).read()


def test_readme_without_markers_is_an_error_naming_it(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("# no markers\n")
  with pytest.raises(ValueError, match="README.md: no .*report:begin"):
    report.update_readme(str(readme), ["x"])
  assert readme.read_text() == "# no markers\n"


def test_a_sweep_that_compares_a_model_with_itself_is_refused(tmp_path):
  """At 300 steps SynthFashion's warm-up keeps SyncMask on random masks throughout:
  syncmask and random_masks would agree to the last digit. Refused before any run, naming
  the switch; 600 steps (the trial study.sh suggests) passes the check."""
  root = tmp_path / "runs"
  with pytest.raises(SystemExit, match=r"random_masks and syncmask train the same model: "
                     r"masking.warmup_steps=300 >= 300 steps keeps masking.strategy="
                     r"'syncmask' on random masks"):
    report.main([f"--workdir={root}", "--variants=syncmask,random_masks", "--seeds=0,1",
                 "--steps=300", "--no_run"])
  assert not root.exists()
  # syncmask alone is refused too: its own switch does nothing.
  with pytest.raises(SystemExit, match="random_masks and syncmask train the same model"):
    report.main([f"--workdir={root}", "--variants=syncmask", "--seeds=0", "--steps=30",
                 "--no_run"])
  # A warm-up shorter than the run: nothing to refuse (and no runs to report).
  with pytest.raises(SystemExit, match="no finished runs"):
    report.main([f"--workdir={root}", "--variants=syncmask,random_masks", "--seeds=0,1",
                 "--steps=600", "--no_run"])
  with pytest.raises(SystemExit, match="no finished runs"):
    report.main([f"--workdir={root}", "--variants=syncmask", "--seeds=0", "--steps=30",
                 "--override=--config.masking.warmup_steps=10", "--no_run"])


def test_switches_that_do_nothing_are_named():
  configs = report.variant_configs(1000, [])
  assert report.study.same_models(configs, train_records=6000) == []
  # No ITM loss: the miner's mode is never read, the negatives ablations are one model.
  configs = report.variant_configs(1000, ["--config.loss.itm=0"])
  pairs = {(a, b): why_a + why_b
           for a, b, why_a, why_b in report.study.same_models(configs, train_records=6000)}
  assert pairs[("full_subcategory", "negatives_random")] == [
      "loss.itm=0: no loss reads the mined negatives (negatives.mode='semi_hard')",
      "loss.itm=0: no loss reads the mined negatives (negatives.mode='random')"]
  assert ("syncmask", "ungrouped_hard") in pairs
  # One record per subcategory in a batch: grouping puts no two of one together.
  configs = report.variant_configs(1000, ["--config.data.subcategories_per_batch=32"])
  (a, b, why_a, why_b), = [p for p in report.study.same_models(configs, train_records=6000)
                           if "full_subcategory" in p[:2]]
  assert (a, b) == ("syncmask", "full_subcategory") and not why_a
  assert why_b == ["data.grouping='subcategory' with data.subcategories_per_batch=32 in a "
                   "batch of 32: one record per subcategory, so no two records of a "
                   "subcategory share a batch"]
  # Embedding grouping orders an epoch by the previous one's embeddings: a run inside
  # its first epoch (6000 records / 32 = 187 steps) is a shuffle.
  configs = report.variant_configs(150, ["--config.masking.warmup_steps=0"])
  pairs = report.study.same_models(configs, train_records=6000)
  assert [(a, b) for a, b, _, _ in pairs] == [("syncmask", "full_embedding")]
  assert "187 steps" in pairs[0][3][0]
  configs = report.variant_configs(200, ["--config.masking.warmup_steps=0"])
  assert report.study.same_models(configs, train_records=6000) == []


def test_tally_counts_claims_without_a_verdict():
  one = report.judge([1.0], [0.5])
  two = report.judge([1.0, 1.1], [0.5, 1.4])
  judged = [(c, j) for c, j in zip(report.CLAIMS, [one, one, two])]
  assert report.tally_line(judged) == (
      "Of 3 claims, 0 held, 0 went the other way, 1 are within the seed spread and 2 have "
      "no verdict (one seed a side: run two or more).")
  assert report.tally_line(judged[2:]) == (
      "Of 1 claims, 0 held, 0 went the other way and 1 are within the seed spread.")


def test_a_named_study_fixes_its_budget_and_seeds(tmp_path, capsys):
  args = report.parse_args(["--study=published", "--jobs=2", "--publish"])
  published = report.study.STUDIES["published"]
  assert (args.steps, args.finetune_steps) == (3000, 300)
  assert args.workdir == os.path.join(os.getcwd(), "runs", "study3000")
  assert args.seeds_of["syncmask"] == list(range(10))
  assert args.seeds_of["negatives_hard"] == [0, 1, 2]
  assert list(args.seeds_of) == list(published.seeds)
  assert args.testbed == published.testbed == "original"
  with pytest.raises(SystemExit):
    report.parse_args(["--study=published", "--steps=1000"])
  assert "--study=published fixes --steps" in capsys.readouterr().err
  # --publish writes the README's block: only from a named study, so the command the
  # block names makes it again.
  with pytest.raises(SystemExit):
    report.parse_args([f"--workdir={tmp_path}", "--publish"])
  assert "--publish writes the README's block" in capsys.readouterr().err


def test_a_sweeps_testbed_reaches_its_pretraining_and_fine_tuning_runs(tmp_path):
  args = report.parse_args([f"--workdir={tmp_path}", "--testbed=details"])
  (_, pretrain, _), (_, tune, _) = report._commands("albef", 3, args, str(tmp_path))  # pylint: disable=protected-access
  assert f"--config={report.study.PRETRAIN}:variant=albef,seed=3,steps=1000,testbed=details" \
      in pretrain
  assert f"--config={report.study.FINETUNE},steps=300,testbed=details" in tune
  named = report.parse_args(["--study=details"])
  assert (named.testbed, named.steps, len(named.seeds_of["syncmask"])) == ("details", 3000, 10)
  configs = report.variant_configs(1000, [], "details")
  assert all(c.data.synth_facing_marks and c.data.synth_detail_size == 2.0
             for c in configs.values())


def test_readme_block_names_the_command_that_made_it():
  """The block's command, parsed, is the study in its table (runs per variant, steps),
  and the README's launcher line runs exactly that command."""
  with open(os.path.join(report.REPO, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  block = readme.split(report.README_BEGIN)[1].split(report.README_END)[0]
  command = block.split("From `python -m syncmask_jax.report ", 1)[1].split("`", 1)[0]
  args = report.parse_args(command.split())
  rows = [r.split("|") for r in block.splitlines() if r.startswith("| ")]
  runs = {r[1].strip(): int(r[3]) for r in rows if r[3].strip().isdigit()}
  assert {v: len(s) for v, s in args.seeds_of.items()} == runs
  assert f"({args.steps} steps of the tiny model per run" in block
  assert f"then {args.finetune_steps} fine-tuning steps" in block
  launcher = readme.split("```bash\n./launch/study.sh ", 1)[1].split("\n", 1)[0]
  with open(os.path.join(report.REPO, "launch", "study.sh"), encoding="utf-8") as f:
    study_sh = f.read()
  assert 'syncmask_jax.report --jobs=2 "$@"' in study_sh
  assert command == f"--jobs=2 {launcher}"
