"""Prints docs/grounding.md's lever table from the evaluation JSONs in docs/grounding/runs.

Each JSON is a run's eval/pretrain.json (`python -m syncmask_jax.evaluate`), trimmed to
the mask and grounding figures; `LEVERS` names, per row, the file and the mask source
whose figures the row shows. Run from the repository root:

  python docs/grounding/table.py           # prints the tables
  python docs/grounding/table.py --write   # and puts them into docs/grounding.md
"""

import contextlib
import io
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RUNS = ["default_s0", "default_s1", "default_s2"]
GRADCAM_RUNS = ["gc_default_s0", "gc_default_s1", "gc_default_s2"]
# The default again on a later machine (the same code and seeds give other numbers on
# another CPU: XLA's CPU kernels differ), and the lever paired with it.
RERUN_RUNS = ["rerun_default_s0", "rerun_default_s1", "rerun_default_s2"]
CHECKPOINT_RUNS = ["ckpt_s0", "ckpt_s1", "ckpt_s2"]
# Issue 30's chosen set (`testbed=details`, 3000 steps): random_masks teachers evaluated
# again with each s_txt (`masking.token_score`; docs/study/calibration.py grounding).
DETAILS_SEEDS = (0, 1, 2)


def details_runs(token_score: str) -> list[str]:
  return [f"details_rm_s{s}.{token_score}" for s in DETAILS_SEEDS]

# (lever, run file(s) under runs/, source of the row). Several files: mean ± std.
LEVERS = [
    ("attention, mass-gumbel tau 1 (the old selection); teacher trained with it",
     ["att_s0.mass"], "attention"),
    ("same teacher, attention, top-k", ["att_s0.topk"], "attention"),
    ("same teacher, attention minus the caption's mean, top-k", ["att_s0.topk"],
     "attention_centered"),
    ("same teacher, Grad-CAM (fusion layer 0), top-k", ["att_s0.topk"], "gradcam"),
    ("warm-up 300, training masks mass-gumbel (near random); Grad-CAM, mass-gumbel",
     ["gc_w300_s0.mass"], "gradcam"),
    ("same teacher, Grad-CAM, top-k", ["gc_w300_s0.topk"], "gradcam"),
    ("same teacher, Grad-CAM, log-mass gumbel tau 0.25", ["gc_w300_s0.l25"], "gradcam"),
    ("same teacher, Grad-CAM minus the caption's mean, tau 0.25", ["gc_w300_s0.l25"],
     "gradcam_centered"),
    ("same teacher, centred attention, tau 0.25", ["gc_w300_s0.l25"], "attention_centered"),
    ("warm-up 300, trained with Grad-CAM masks (tau 0.25)", ["gcT_w300_s0.l25"], "gradcam"),
    ("warm-up 300, trained with centred-attention masks; centred attention",
     ["cenT_w300_s0.l25"], "attention_centered"),
    ("same teacher, Grad-CAM, tau 0.25", ["cenT_w300_s0.l25"], "gradcam"),
    ("same teacher, Grad-CAM, heads reduced by max", ["cenT_w300_s0.max"], "gradcam"),
    ("Grad-CAM masks + subcategory-grouped batches (the full method)", ["gcT_sub_s0"],
     "gradcam"),
    ("Grad-CAM masks (tau 0.25, warm-up 300), seeds 0, 1, 2", GRADCAM_RUNS, "gradcam"),
    ("same teachers, Grad-CAM minus the caption's mean", GRADCAM_RUNS, "gradcam_centered"),
    ("same teachers, centred attention", GRADCAM_RUNS, "attention_centered"),
    ("**the default** (`./launch/local.sh`: Grad-CAM minus the caption's mean), seeds 0, "
     "1, 2", DEFAULT_RUNS, "gradcam_centered"),
    ("the default without the warm-up (`masking.warmup_steps=0`), seed 0", ["warm0_s0"],
     "gradcam_centered"),
    ("the default again, on a later machine, seeds 0, 1, 2", RERUN_RUNS, "gradcam_centered"),
    ("a teacher from an earlier run's checkpoint: the previous row's runs continued for 1000 "
     "steps (`init_checkpoint`, SyncMask masks from step 0), seeds 0, 1, 2", CHECKPOINT_RUNS,
     "gradcam_centered"),
    ("the default at 3000 steps, seed 0", ["long_s0"], "gradcam_centered"),
    ("the details set (`configs/synthfashion.py:testbed=details`, 3000 steps): random_masks "
     "teachers (masks never steered), the default's source and selection, s_txt = mass "
     "(SyncMask's), seeds " + ", ".join(map(str, DETAILS_SEEDS)), details_runs("mass"),
     "gradcam_centered"),
    ("same teachers, s_txt = share (renormalised per word: `masking.token_score=share`)",
     details_runs("share"), "gradcam_centered"),
    ("same teachers, s_txt = focus (the share times how few patches the word's map covers)",
     details_runs("focus"), "gradcam_centered"),
]

COLUMNS = [  # (header, key in grounding[source], or a key of the JSON's top level)
    ("patch precision", "patch_precision"),
    ("random masks", "mask_precision_patch_random"),
    ("token precision", "token_share_visible"),
    ("random masks", "mask_precision_token_random"),
    ("function-word share", "token_share_function"),
    ("random masks", "mask_token_share_function_random"),
    ("unshowable share", "token_share_invisible"),
    ("random masks", "mask_token_share_invisible_random"),
    ("visible pointing", "visible/pointing"),
    ("own share", "visible/own_share"),
    ("AUC s_img", "auc_patch"),
    ("AUC s_txt", "auc_token"),
    ("full-gallery R mean", "r_mean"),
]


def value(run: dict, source: str, key: str) -> float:
  if key == "r_mean":
    return run["results"][0]["r_mean"]
  return run[key] if key.startswith("mask_") else run["grounding"][source][key]


def cell(values: list[float]) -> str:
  fmt = "{:.1f}" if max(values) > 1.5 else "{:.3f}"
  if len(values) == 1:
    return fmt.format(values[0])
  return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


# (target, key, random key, ratio the default must reach over random (None: below random),
# or an absolute floor).
TARGETS = [
    ("token precision >= 2x random", "token_share_visible", "mask_precision_token_random",
     2.0),
    ("patch precision >= 1.5x random", "patch_precision", "mask_precision_patch_random", 1.5),
    ("function-word share of the token mask below random", "token_share_function",
     "mask_token_share_function_random", None),
    ("unshowable-word share of the token mask below random", "token_share_invisible",
     "mask_token_share_invisible_random", None),
    ("visible words' pointing >= 0.8", "visible/pointing", 0.8, None),
]


def targets(names: list[str], source: str = "gradcam_centered") -> None:
  """The grounded-masks issue's targets over the default's seeds: each difference must
  exceed 2 pooled seed standard deviations (paired seeds: same model, same data)."""
  runs = []
  for name in names:
    with open(os.path.join(HERE, "runs", f"{name}.json"), encoding="utf-8") as f:
      runs.append(json.load(f))
  print("| target | default (mean ± sd) | reference | ratio | difference / pooled sd | met |")
  print("|---|---|---|---|---|---|")
  for name, key, ref, ratio in TARGETS:
    got = [value(r, source, key) for r in runs]
    refs = [ref] * len(runs) if isinstance(ref, float) else [value(r, source, ref)
                                                             for r in runs]
    sd = ((statistics.stdev(got) ** 2 + statistics.stdev(refs) ** 2) / 2) ** 0.5
    diff = statistics.mean(got) - statistics.mean(refs)
    if ratio is not None:  # at least `ratio` times the reference, by more than 2 sd
      need = statistics.mean(got) - ratio * statistics.mean(refs)
      met = need > 0 and diff > 2 * sd
    elif isinstance(ref, float):  # at least the floor, by more than 2 sd
      sd = statistics.stdev(got)
      met = diff - 2 * sd >= 0
    else:  # below the reference by more than 2 sd
      met = -diff > 2 * sd
    print(f"| {name} | {cell(got)} | {cell(refs)} | "
          f"{statistics.mean(got) / statistics.mean(refs):.2f} | "
          f"{diff / sd if sd else float('inf'):+.1f} | {'yes' if met else '**no**'} |")


def main():
  print("| # | lever | " + " | ".join(h for h, _ in COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 2) + "|")
  for row, (lever, files, source) in enumerate(LEVERS, 1):
    runs = []
    for name in files:
      path = os.path.join(HERE, "runs", f"{name}.json")
      if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
          runs.append(json.load(f))
    if not runs:
      continue
    cells = [cell([value(r, source, key) for r in runs]) for _, key in COLUMNS]
    print(f"| {row} | {lever} ({source}, {len(runs)} run{'s' * (len(runs) > 1)}) | "
          + " | ".join(cells) + " |")


def tables() -> str:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    main()
    for names, what in [(DEFAULT_RUNS, "the default's three seeds"),
                        (RERUN_RUNS, "the default's three seeds on a later machine"),
                        (CHECKPOINT_RUNS, "the teachers from a checkpoint")]:
      if all(os.path.exists(os.path.join(HERE, "runs", f"{n}.json")) for n in names):
        print(f"\nThe targets of the grounded-masks issue, over {what} (paired with "
              "random masks on the same models):\n")
        targets(names)
  return out.getvalue()


if __name__ == "__main__":
  text = tables()
  print(text)
  if "--write" in sys.argv:
    page = os.path.join(os.path.dirname(HERE), "grounding.md")
    with open(page, encoding="utf-8") as f:
      doc = f.read()
    begin, end = "<!-- table:begin -->\n", "<!-- table:end -->"
    head, rest = doc.split(begin)
    with open(page, "w", encoding="utf-8") as f:
      f.write(head + begin + text + rest[rest.index(end):])
