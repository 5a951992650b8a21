"""The study: runs the sweep of `syncmask_jax/study.py` and writes its report.

  python -m syncmask_jax.report --workdir=runs/study [--seeds=0,1,2,3,4] [--steps=1000]
      [--finetune_steps=300] [--variants=albef,syncmask,...] [--jobs=2] [--docs=DIR]
      [--no_run]   (report from the runs already in --workdir)
  python -m syncmask_jax.report --jobs=2 --study=published --publish
      (a named study of study.STUDIES: its budget, variants, seeds per variant and
      workdir; --publish writes docs/results.md, docs/results/ and README's block, and
      takes a named study only, so the README's command is the one that made its block)

The report goes to WORKDIR/report/ unless --publish (or --docs) says otherwise: a small
or trial sweep never overwrites the published results.

A sweep in which two variants would train the same model is refused before anything
runs, naming the switch that does nothing (`study.effective`): e.g. at --steps=300 the
SynthFashion warm-up (masking.warmup_steps=300) keeps SyncMask on random masks
throughout, so `syncmask` and `random_masks` would agree to the last digit.

Each (variant, seed) is one pretraining run (`python -m syncmask_jax.main
--config=configs/study.py:variant=V,seed=S,steps=N`, evaluated at the end: retrieval
under the full-gallery and 1+100 protocols, mask precision on held-out pairs) and one
subcategory fine-tuning run from its last checkpoint. A run whose evaluation file
exists is not repeated, and an interrupted one resumes from its checkpoint, so the
sweep can be stopped and started again.

Every figure of the report is read back from the runs' files (`eval/pretrain.json`,
`metrics.jsonl`, `finetune/eval/category.json`, `run.json`): nothing is typed in.
Per variant: mean and sample standard deviation over seeds. A claim "A beats B" is a
two-sided t-test at 5% on the difference d:
* *paired* over seeds where both sides saw the same batches (a claim inside one run's
  models, e.g. its masks against random masks on the same model; or two variants with
  the same batch grouping, whose runs of one seed share the data order): s is the
  standard deviation of the per-seed differences and SE = s / sqrt(n);
* *unpaired* (Welch) otherwise: s is the pooled seed spread sqrt((s_A^2 + s_B^2) / 2)
  and SE = sqrt(s_A^2 / n_A + s_B^2 / n_B).
It *held* when d / SE exceeds the t quantile t(0.975, df), went *the other way* below
minus it, and is *within the seed spread* otherwise (fewer than two seeds a side: no
verdict). The smallest detectable difference is (t(0.975, df) + t(0.8, df)) * SE: the
difference the test would find four times in five at that spread and seed count.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

import numpy as np
from scipy import stats  # jax's own dependency
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from absl import flags

from syncmask_jax import cli, config_lib, console, paths, study
from syncmask_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOLS = (("full_gallery", "full gallery"), ("one_plus_100", "1+100"))
RECALLS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean")
CURVES = (("train/mask/patch_precision", "patches"), ("train/mask/token_precision", "tokens"))
# Training statistics of the miner and the losses, averaged over the logged windows.
TRAINING = (("negatives/fallback_rate", "fallback_rate"),
            ("negatives/semi_hard_rate", "semi_hard_rate"),
            ("negatives/false_negative_rate", "false_negative_rate"),
            ("loss_itc", "loss_itc"), ("loss_itm", "loss_itm"))
ALPHA, POWER = 0.05, 0.8


@dataclasses.dataclass(frozen=True)
class Claim:
  """`better` beats `worse` on `metric` (per-run values; `lower` if smaller is better).

  With `worse` = None the comparison is paired inside `better`'s runs: `metric` against
  `baseline_metric` (the same model's random masks). `main`: one of the claims the study
  is sized to settle."""
  text: str
  metric: str
  better: str
  worse: str | None
  baseline_metric: str | None = None
  lower: bool = False
  main: bool = False

  def paired(self) -> bool:
    """Paired over seeds when both sides saw the same batches (module docstring)."""
    return self.worse is None or study.grouping(self.better) == study.grouping(self.worse)


TWINS = "twins/r1"  # the 1+K twins protocol: mean of i2t and t2i R@1 on visible changes

CLAIMS = (
    # The three the study is sized for (issue: SyncMask vs random masks; grouping +
    # semi-hard vs none; SemMIM vs ALBEF), on the fine-grained protocol.
    Claim("SyncMask masks give better fine-grained retrieval than random MLM+MIM masks "
          "(1+K twins)", TWINS, "syncmask", "random_masks", main=True),
    # Issue 30's claims on the details, where SyncMask's premise (mask what both
    # modalities show) is about: each detail attribute's twins on their own.
    *(Claim(f"SyncMask masks tell a detail's {what} better than random MLM+MIM masks "
            f"(1+K twins, {attribute})", f"{TWINS}_{attribute}", "syncmask",
            "random_masks", main=True)
      for attribute, what in (("detail_presence", "presence"), ("detail_colour", "colour"),
                              ("detail_side", "side"))),
    Claim("The full method (subcategory grouping + semi-hard) beats SyncMask masks alone "
          "(1+K twins)", TWINS, "full_subcategory", "syncmask", main=True),
    Claim("SemMIM beats the ALBEF baseline (1+K twins)", TWINS, "semmim", "albef", main=True),
    Claim("SyncMask's patch masks hit co-occurring patches more often than random masks "
          "(same model, held-out pairs)", "patch_precision", "syncmask", None,
          "patch_precision_random"),
    Claim("SyncMask's token masks hit co-occurring words more often than random masks "
          "(same model, held-out pairs)", "token_precision", "syncmask", None,
          "token_precision_random"),
    Claim("SyncMask's token masks pick fewer words no view can show than random masks",
          "token_share_invisible", "syncmask", None, "token_share_invisible_random",
          lower=True),
    Claim("SyncMask's token masks pick fewer function words than random masks",
          "token_share_function", "syncmask", None, "token_share_function_random",
          lower=True),
    Claim("With subcategory-grouped batches (the full method), SyncMask's patch masks hit "
          "co-occurring patches more often than random masks", "patch_precision",
          "full_subcategory", None, "patch_precision_random"),
    Claim("With embedding-grouped batches, SyncMask's patch masks hit co-occurring patches "
          "more often than random masks", "patch_precision", "full_embedding", None,
          "patch_precision_random"),
    Claim("SemMIM's text-guided patch masks hit co-occurring patches more often than random "
          "masks", "patch_precision", "semmim", None, "patch_precision_random"),
    Claim("SyncMask masks give better retrieval than random MLM+MIM masks (full gallery)",
          "full_gallery/r_mean", "syncmask", "random_masks"),
    Claim("SyncMask masks give better retrieval than random MLM+MIM masks (1+100)",
          "one_plus_100/r_mean", "syncmask", "random_masks"),
    Claim("SyncMask masks fine-tune to a better subcategory accuracy than random masks",
          "subcategory_accuracy", "syncmask", "random_masks"),
    Claim("MIM + MLM on random masks beat the ALBEF baseline (full gallery)",
          "full_gallery/r_mean", "random_masks", "albef"),
    Claim("MIM + MLM on random masks beat the ALBEF baseline (1+K twins)", TWINS,
          "random_masks", "albef"),
    Claim("The full method (subcategory grouping + semi-hard) beats SyncMask masks alone "
          "(full gallery)", "full_gallery/r_mean", "full_subcategory", "syncmask"),
    Claim("Embedding grouping + semi-hard beats SyncMask masks alone (full gallery)",
          "full_gallery/r_mean", "full_embedding", "syncmask"),
    Claim("Semi-hard negatives beat hard negatives, both grouped (full gallery)",
          "full_gallery/r_mean", "full_subcategory", "negatives_hard"),
    Claim("Semi-hard negatives beat hard negatives, both grouped (1+K twins)", TWINS,
          "full_subcategory", "negatives_hard"),
    Claim("Semi-hard negatives beat random negatives, both grouped (full gallery)",
          "full_gallery/r_mean", "full_subcategory", "negatives_random"),
    Claim("Semi-hard negatives beat random negatives, both grouped (1+K twins)", TWINS,
          "full_subcategory", "negatives_random"),
    Claim("Semi-hard negatives beat hard negatives, both ungrouped (full gallery)",
          "full_gallery/r_mean", "syncmask", "ungrouped_hard"),
    Claim("Semi-hard negatives beat hard negatives, both ungrouped (1+K twins)", TWINS,
          "syncmask", "ungrouped_hard"),
    Claim("Subcategory grouping helps with hard negatives too (full gallery)",
          "full_gallery/r_mean", "negatives_hard", "ungrouped_hard"),
    Claim("SyncMask's miner mines fewer same-product negatives than ALBEF's",
          "false_negative_rate", "syncmask", "albef", lower=True),
    Claim("The full method fine-tunes to a better subcategory accuracy than ALBEF",
          "subcategory_accuracy", "full_subcategory", "albef"),
    Claim("SemMIM beats the ALBEF baseline (full gallery)", "full_gallery/r_mean", "semmim",
          "albef"),
    Claim("SemMIM fine-tunes to a better subcategory accuracy than ALBEF",
          "subcategory_accuracy", "semmim", "albef"),
)


def run_dir(root: str, variant: str, seed: int) -> str:
  return os.path.join(root, variant, f"seed{seed}")


# -- running ----------------------------------------------------------------------------


def _commands(variant: str, seed: int, args: argparse.Namespace,
              directory: str) -> list[tuple[str, list[str], str]]:
  """(name, argv, file that marks it done) for the pretraining and fine-tuning runs."""
  main = [sys.executable, "-m", "syncmask_jax.main"]
  pretrain = main + [f"--config={study.PRETRAIN}:variant={variant},seed={seed},"
                     f"steps={args.steps},testbed={args.testbed}", f"--workdir={directory}",
                     *args.override]
  ft_dir = os.path.join(directory, "finetune")
  tune = main + [f"--config={study.FINETUNE},steps={args.finetune_steps},"
                 f"testbed={args.testbed}",
                 f"--config.init_checkpoint={os.path.join(directory, 'checkpoints')}",
                 f"--config.seed={seed}", f"--workdir={ft_dir}", *args.finetune_override]
  return [("pretrain", pretrain, os.path.join(directory, "eval", "pretrain.json")),
          ("finetune", tune, os.path.join(ft_dir, "eval", "category.json"))]


def run_one(variant: str, seed: int, args: argparse.Namespace) -> bool:
  """Runs what is missing of one (variant, seed), recorded in its run.json; whether
  anything was missing."""
  directory = run_dir(args.workdir, variant, seed)
  paths.path(directory).mkdir(parents=True, exist_ok=True)
  info_path = os.path.join(directory, "run.json")
  info = {}
  if paths.path(info_path).exists():
    info = paths.read_json(info_path)
  ran = False
  for name, argv, done in _commands(variant, seed, args, directory):
    if paths.path(done).exists():
      continue
    ran = True
    log = os.path.join(directory, f"{name}.log")
    t0 = time.time()
    proc = _run_logged(argv, log)
    if proc.returncode != 0:
      raise RuntimeError(f"{variant} seed {seed}: {name} failed (exit {proc.returncode}); "
                         f"see {log}")
    if not paths.path(done).exists():
      # A run stopped by SIGTERM or Ctrl-C saves its step and exits 0 (loop.py).
      raise RuntimeError(f"{variant} seed {seed}: {name} stopped before it finished "
                         f"(exit 0, no {done}); rerun the sweep to resume it; see {log}")
    # The command as a user types it (argv after the interpreter).
    info[name] = {"seconds": time.time() - t0, "command": " ".join(argv[1:])}
    paths.write_json(info_path, info)
  return ran


def _run_logged(argv: list[str], log: str) -> subprocess.CompletedProcess:
  """Runs `argv` with its output in `log`: live in a local file; for a bucket, in a
  local temporary file copied up when the command ends (a child writes to a file
  descriptor, which an object store has not)."""
  if not paths.is_remote(log):
    with paths.path(log).open("w", encoding="utf-8") as f:
      return subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False)
  with tempfile.TemporaryFile("w+", encoding="utf-8") as f:
    proc = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False)
    f.seek(0)
    paths.write_text(log, f.read())
  return proc


def sweep_eta(durations: Sequence[float], queued: int, running: Sequence[float],
              workers: int) -> float | None:
  """Seconds until a sweep ends, each job taking the mean of `durations` (the jobs that
  ran; None before any): `queued` jobs not started and jobs that have run `running`
  seconds, on `workers` at a time."""
  if not durations:
    return None
  mean = sum(durations) / len(durations)
  left = [max(mean - r, 0.0) for r in running]
  return max(max(left, default=0.0), (queued * mean + sum(left)) / workers)


def run_sweep(seeds: dict[str, Sequence[int]], args: argparse.Namespace) -> None:
  """Runs what is missing of every (variant, seed) of `seeds` (variant -> its seeds)."""
  everyone = sorted({s for v in seeds.values() for s in v})
  jobs = [(v, s) for s in everyone for v in seeds if s in seeds[v]]
  lock, t0 = threading.Lock(), time.time()
  started: dict[tuple[str, int], float] = {}
  durations: list[float] = []  # of the jobs that ran something (not found complete)
  done = [0]

  def work(job):
    with lock:
      started[job] = time.time()
    ran = run_one(*job, args)
    with lock:
      now = time.time()
      seconds = now - started.pop(job)
      done[0] += 1
      if ran:
        durations.append(seconds)
      line = (f"[{done[0]}/{len(jobs)}] {job[0]} seed {job[1]} "
              + (f"done in {seconds:.0f} s" if ran else "already done")
              + f"; {now - t0:.0f} s so far")
      # Jobs not yet started (pool's queue) and those in flight: an ETA only while
      # something is left, and from what is left, not from the jobs already done.
      queued = len(jobs) - done[0] - len(started)
      eta = sweep_eta(durations, queued, [now - s for s in started.values()], args.jobs)
      if (queued or started) and eta is not None:
        line += f", ETA {eta:.0f} s"
      print(line, flush=True)

  with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
    futures = [pool.submit(work, j) for j in jobs]
    try:
      for future in concurrent.futures.as_completed(futures):
        future.result()
    except BaseException:
      # A failed run stops the sweep once the runs in flight end; finished ones are kept.
      pool.shutdown(wait=True, cancel_futures=True)
      raise


# -- reading the runs --------------------------------------------------------------------


def read_run(directory: str) -> dict[str, Any]:
  """The figures of one run, from its files."""
  pretrain = paths.read_json(os.path.join(directory, "eval", "pretrain.json"))
  out: dict[str, Any] = {"step": pretrain["step"]}
  for block in pretrain["results"]:
    if block.get("scoring") == "itc":
      # The twins protocol reports R@1 only, overall and per attribute.
      for k in [k for k in block if k in RECALLS or k.startswith(("i2t_r1_", "t2i_r1_"))]:
        out[f"{block['protocol']}/{k}"] = float(block[k])
    if block.get("protocol") == "twins" and block.get("scoring") == "itc":
      out["twins_attributes"] = list(block["attributes"])
      if "num_products" in block:
        out["twins_size"] = (int(block["num_products"]), int(block["num_queries"]))
      for tail in ["", "_invisible"] + [f"_{a}{split}" for a in block["attributes"]
                                        for split in ("", "_in_product", "_in_twin")]:
        if f"i2t_r1{tail}" in block and f"t2i_r1{tail}" in block:
          out[f"{TWINS}{tail}"] = (float(block[f"i2t_r1{tail}"])
                                   + float(block[f"t2i_r1{tail}"])) / 2
        if f"r1_chance{tail}" in block:  # evaluations since the chance was recorded
          out[_chance(f"{TWINS}{tail}")] = float(block[f"r1_chance{tail}"])
  for kind in ("patch", "token"):
    out[f"{kind}_precision"] = float(pretrain[f"mask_precision_{kind}_method"])
    out[f"{kind}_precision_random"] = float(pretrain[f"mask_precision_{kind}_random"])
  for share in ("invisible", "function"):
    for side, tail in (("method", ""), ("random", "_random")):
      if f"mask_token_share_{share}_{side}" in pretrain:
        out[f"token_share_{share}{tail}"] = float(pretrain[f"mask_token_share_{share}_{side}"])
  source = pretrain.get("mask_source")
  if source in pretrain.get("grounding", {}):
    out["pointing"] = float(pretrain["grounding"][source]["visible/pointing"])
  if pretrain.get("mask_strategy") == "text_guided":
    # Text-guided masking picks patches only (its MLM mask is uniform random: the
    # random column), so it has no token figures of its own.
    for key in ("token_precision", "token_share_invisible", "token_share_function"):
      out[key] = np.nan
  curves: dict[str, list[tuple[int, float]]] = {name: [] for name, _ in CURVES}
  training: dict[str, list[float]] = {name: [] for _, name in TRAINING}
  metrics = paths.path(os.path.join(directory, "metrics.jsonl")).read_text(encoding="utf-8")
  for line in metrics.splitlines():
    row = json.loads(line)
    for name in curves:
      if name in row:
        curves[name].append((row["step"], row[name]))
    for key, name in TRAINING:
      if f"train/{key}" in row:
        training[name].append(row[f"train/{key}"])
  out["curves"] = curves
  # Mean over the logged windows of training (each a mean over its steps).
  for name, values in training.items():
    out[name] = float(np.mean(values)) if values else np.nan
  tune_path = os.path.join(directory, "finetune", "eval", "category.json")
  if paths.path(tune_path).exists():
    block = paths.read_json(tune_path)["results"][0]
    out["subcategory_accuracy"] = float(block["accuracy"])
    out["subcategory_macro_f1"] = float(block["macro_f1"])
  info_path = os.path.join(directory, "run.json")
  if paths.path(info_path).exists():
    info = paths.read_json(info_path)
    out["seconds"] = sum(v["seconds"] for v in info.values())
    out["commands"] = {k: v["command"] for k, v in info.items()}
  # When the run started (its resolved config is written first) and last wrote a result.
  mtime = lambda p: paths.path(p).stat().mtime
  out["started"] = mtime(os.path.join(directory, "config.json"))
  out["finished"] = max(mtime(p) for p in (
      os.path.join(directory, "eval", "pretrain.json"), tune_path) if paths.path(p).exists())
  out["pictures"] = sorted(p for p in pretrain.get("pictures", []) if p.endswith(".png"))
  return out


def collect(root: str, seeds: dict[str, Sequence[int]]) -> dict[str, dict[int, dict]]:
  """The finished runs of every (variant, seed) of `seeds` (variant -> its seeds)."""
  runs: dict[str, dict[int, dict]] = {}
  for v, variant_seeds in seeds.items():
    for s in variant_seeds:
      d = run_dir(root, v, s)
      if paths.path(os.path.join(d, "eval", "pretrain.json")).exists():
        runs.setdefault(v, {})[s] = read_run(d)
  sizes: dict[Any, list[str]] = {}
  for v, by_seed in runs.items():
    for s, r in by_seed.items():
      sizes.setdefault(r.get("twins_size"), []).append(f"{v} seed {s}")
  if len(sizes) > 1:
    raise ValueError(
        f"{root}: runs evaluated on different twins sets, (products, queries): "
        + "; ".join(f"{size}: {', '.join(names)}" for size, names in sizes.items())
        + ". Re-evaluate them alike (python -m syncmask_jax.evaluate "
        "--config=configs/study.py:variant=V,seed=S,steps=N --workdir=RUN) to compare them")
  return runs


def busy_seconds(intervals: Sequence[tuple[float, float]]) -> float:
  """The time covered by the union of (start, end) intervals: a sweep's wall time without
  the pauses between its invocations."""
  total, reach = 0.0, -np.inf
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample (ddof=1) standard deviation; std 0 for a single value."""
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _t(q: float, df: float) -> float:
  return float(stats.t.ppf(q, df))


def _detectable(se: float, df: float) -> float:
  """The difference the test finds with POWER at standard error `se`, `df` degrees."""
  return (_t(1 - ALPHA / 2, df) + _t(POWER, df)) * se


def seeds_needed(d: float, spread: float, paired: bool, most: int = 100) -> int | None:
  """The fewest seeds a side at which `d` is detected with POWER at the seed `spread`
  (None: more than `most`, or no difference)."""
  if d == 0 or not np.isfinite(d):
    return None
  for n in range(2, most + 1):
    se = spread / np.sqrt(n) if paired else spread * np.sqrt(2 / n)
    df = n - 1 if paired else 2 * n - 2
    if _detectable(se, df) <= abs(d):
      return n
  return None


def judge(better: Sequence[float], worse: Sequence[float], lower: bool = False,
          paired: bool = False) -> dict[str, Any]:
  """The verdict rule of the module docstring; `lower`: smaller values are better;
  `paired`: better[i] and worse[i] come from the same seed (equal lengths)."""
  b, w = np.asarray(better, np.float64), np.asarray(worse, np.float64)
  mb, sb = mean_std(b)
  mw, sw = mean_std(w)
  sign = -1.0 if lower else 1.0
  if paired:
    if b.shape != w.shape:
      raise ValueError(f"paired: {b.size} against {w.size} values")
    d, spread = mean_std(sign * (b - w))
    se, df = spread / np.sqrt(b.size), b.size - 1
  else:
    d, spread = sign * (mb - mw), float(np.sqrt((sb**2 + sw**2) / 2))
    vb, vw = sb**2 / b.size, sw**2 / w.size
    se = float(np.sqrt(vb + vw))
    df = ((vb + vw)**2 / (vb**2 / max(b.size - 1, 1) + vw**2 / max(w.size - 1, 1))
          if vb + vw > 0 else b.size + w.size - 2)
  out = dict(better=mb, worse=mw, difference=d, spread=spread, se=se, paired=paired,
             n=int(min(b.size, w.size)))
  if min(b.size, w.size) < 2:
    return dict(out, verdict="no verdict (one seed)", ratio=np.nan, threshold=np.nan,
                detectable=np.nan, seeds_needed=None)
  threshold = _t(1 - ALPHA / 2, df)
  ratio = d / se if se > 0 else (0.0 if d == 0 else float(np.copysign(np.inf, d)))
  verdict = ("held" if ratio > threshold else "the other way" if ratio < -threshold
             else "within the seed spread")
  return dict(out, verdict=verdict, ratio=ratio, threshold=threshold,
              detectable=_detectable(se, df),
              seeds_needed=seeds_needed(d, spread, paired))


def judge_claim(claim: Claim, runs: dict[str, dict[int, dict]]) -> dict[str, Any] | None:
  if claim.better not in runs or (claim.worse is not None and claim.worse not in runs):
    return None
  if claim.worse is None:
    rows = list(runs[claim.better].values())
    better = [r.get(claim.metric, np.nan) for r in rows]
    worse = [r.get(claim.baseline_metric, np.nan) for r in rows]
  elif claim.paired():
    seeds = sorted(set(runs[claim.better]) & set(runs[claim.worse]))
    better = [runs[claim.better][s].get(claim.metric, np.nan) for s in seeds]
    worse = [runs[claim.worse][s].get(claim.metric, np.nan) for s in seeds]
  else:
    better = [r.get(claim.metric, np.nan) for r in runs[claim.better].values()]
    worse = [r.get(claim.metric, np.nan) for r in runs[claim.worse].values()]
  if not better or not worse or np.isnan(better).any() or np.isnan(worse).any():
    return None
  return judge(better, worse, claim.lower, claim.paired())


# -- pictures ---------------------------------------------------------------------------


def _save(fig: Figure, path: str) -> None:
  FigureCanvasAgg(fig)
  with paths.path(path).open("wb") as f:  # matplotlib opens only local files by name
    fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_curves(runs: dict[str, dict[int, dict]], path: str) -> None:
  """Training-batch mask precision vs step: mean over seeds, band = min..max."""
  fig = Figure(figsize=(11, 4))
  for i, (name, label) in enumerate(CURVES):
    ax = fig.add_subplot(1, 2, i + 1)
    for variant, seeds in runs.items():
      series = [dict(r["curves"][name]) for r in seeds.values()]
      steps = sorted(set.intersection(*(set(s) for s in series)))
      if not steps:
        continue
      values = np.array([[s[t] for t in steps] for s in series])
      line, = ax.plot(steps, values.mean(0), label=variant)
      ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(),
                      alpha=0.15)
    ax.set_title(f"mask precision, {label} (training batches)")
    ax.set_xlabel("step")
    ax.set_ylabel("share of masked that co-occur")
    ax.grid(alpha=0.3)
  fig.axes[0].legend(fontsize=8)
  _save(fig, path)


def plot_bars(runs: dict[str, dict[int, dict]], metrics: Sequence[tuple[str, str]],
              ylabel: str, path: str) -> None:
  """One panel per metric: a bar per variant, mean over seeds with std error bars."""
  fig = Figure(figsize=(5.5 * len(metrics), 4))
  names = list(runs)
  for i, (metric, title) in enumerate(metrics):
    ax = fig.add_subplot(1, len(metrics), i + 1)
    stats = [mean_std([r.get(metric, np.nan) for r in runs[v].values()]) for v in names]
    ax.bar(range(len(names)), [m for m, _ in stats], yerr=[s for _, s in stats],
           capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
  _save(fig, path)


def twins_columns(runs: dict[str, dict[int, dict]]) -> list[tuple[str, str]]:
  """(metric, label) of the twins rows: all visible changes, each attribute, invisible."""
  attributes = next((r["twins_attributes"] for v in runs.values() for r in v.values()
                     if "twins_attributes" in r), [])
  return ([(TWINS, "all visible")] + [(f"{TWINS}_{a}", a) for a in attributes]
          + [(f"{TWINS}_invisible", "invisible")])


def _chance(metric: str) -> str:
  """The figure holding a twins row's R@1 by chance (read_run)."""
  return metric.replace(TWINS, f"{TWINS}_chance", 1)


def twins_chance(runs: dict[str, dict[int, dict]],
                 columns: Sequence[tuple[str, str]]) -> list[float | None]:
  """Each twins column's R@1 by chance (None where no run recorded it). Every run is
  evaluated on the same twins, so their records agree; the mean keeps one level."""
  out = []
  for metric, _ in columns:
    chance = [r[_chance(metric)] for seeds in runs.values() for r in seeds.values()
              if _chance(metric) in r]
    out.append(float(np.mean(chance)) if chance else None)
  return out


def plot_twins(runs: dict[str, dict[int, dict]], path: str) -> None:
  """Twins R@1 per changed attribute: a bar per variant, mean over seeds, std bars; a
  dashed line over each group at its chance level (1+15 overall, 1+3 per attribute)."""
  columns = twins_columns(runs)
  fig = Figure(figsize=(max(8.0, 1.6 * len(columns)), 4))
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / max(len(runs), 1)
  for i, (variant, seeds) in enumerate(runs.items()):
    stats_ = [mean_std([r.get(m, np.nan) for r in seeds.values()]) for m, _ in columns]
    ax.bar(np.arange(len(columns)) + (i - (len(runs) - 1) / 2) * width,
           [m for m, _ in stats_], width, yerr=[s for _, s in stats_], capsize=2,
           label=variant)
  label = "chance"
  for j, chance in enumerate(twins_chance(runs, columns)):
    if chance is not None:
      ax.hlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                linewidth=1, label=label)
      label = None
  ax.set_xticks(range(len(columns)), [label for _, label in columns], fontsize=8)
  ax.set_title("1+K twins: R@1 (mean of i2t and t2i) by what the twin changes")
  ax.set_ylabel("R@1 (%)")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  _save(fig, path)


# -- the markdown ----------------------------------------------------------------------


def _fmt(values: Sequence[float], digits: int = 1) -> str:
  values = [v for v in values if not np.isnan(v)]
  if not values:
    return "-"
  m, s = mean_std(values)
  return f"{m:.{digits}f} ± {s:.{digits}f}"


def _column(runs: dict[int, dict], metric: str, scale: float = 1.0, digits: int = 1) -> str:
  return _fmt([r.get(metric, np.nan) * scale for r in runs.values()], digits)


def machine() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  model = platform.processor()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:  # paths: ok (not a run file)
      model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": model, "cpus": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()]}


def _claim_row(claim: Claim, j: dict[str, Any]) -> str:
  against = claim.worse or f"{claim.better}, random masks"
  digits = 1 if "/" in claim.metric or "accuracy" in claim.metric else 3
  pairing = f"paired, {j['n']}" if j["paired"] else "unpaired"
  needed = j["seeds_needed"] if j["seeds_needed"] is not None else "> 100"
  ratio = (f"{j['ratio']:+.1f} (±{j['threshold']:.1f})"
           if np.isfinite(j["threshold"]) else "-")
  return (f"| {claim.text} | {claim.metric} | {claim.better}: {j['better']:.{digits}f} | "
          f"{against}: {j['worse']:.{digits}f} | {j['difference']:+.{digits}f} | "
          f"{j['spread']:.{digits}f} | {pairing} | {ratio} | "
          f"{j['detectable']:.{digits}f} | {needed} | **{j['verdict']}** |")


CLAIMS_HEADER = ["| claim | measure | A | B | d | seed spread s | pairing (seeds) "
                 "| d/SE (needed) | smallest detectable | seeds to detect d | verdict |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
RULE = ("A claim is a two-sided t-test at 5% on the difference d: *paired* over seeds "
        "where both sides saw the same batches (inside one run; or two variants with the "
        "same batch grouping, whose runs of a seed share the data order), with s the "
        "standard deviation of the per-seed differences and SE = s / sqrt(n); otherwise "
        "unpaired (Welch), with s the pooled seed spread. It *held* when d / SE exceeds "
        "the t quantile in brackets, went *the other way* below minus it, and is *within "
        "the seed spread* otherwise. *Smallest detectable* is the difference the test "
        "finds four times in five at this spread and seed count; *seeds to detect d*, "
        "the seeds a side at which the observed d would be. With this many claims at 5%, "
        "about one verdict in twenty is a false alarm.")


def tally_line(judged: Sequence[tuple[Claim, dict[str, Any]]]) -> str:
  """The claims' count by verdict (every claim judged is counted once), and which held
  or went the other way."""
  verdicts = [j["verdict"] for _, j in judged]
  held = [c.text for c, j in judged if j["verdict"] == "held"]
  other = [c.text for c, j in judged if j["verdict"] == "the other way"]
  counts = [f"{verdicts.count('held')} held", f"{verdicts.count('the other way')} went the "
            "other way", f"{verdicts.count('within the seed spread')} are within the seed "
            "spread"]
  unjudged = verdicts.count("no verdict (one seed)")
  if unjudged:
    counts.append(f"{unjudged} have no verdict (one seed a side: run two or more)")
  return (f"Of {len(verdicts)} claims, {', '.join(counts[:-1])} and {counts[-1]}"
          + (f". Held: {'; '.join(held)}" if held else "")
          + (f". The other way: {'; '.join(other)}" if other else "") + ".")


def write_report(runs: dict[str, dict[int, dict]], seeds: Sequence[int],
                 args: argparse.Namespace, command: str) -> str:
  """docs/results.md, its PNGs and summary.json; returns the markdown's path."""
  fig_dir = os.path.join(args.docs, "results")
  paths.path(fig_dir).mkdir(parents=True, exist_ok=True)
  plot_curves(runs, os.path.join(fig_dir, "mask_precision.png"))
  plot_bars(runs, [(f"{p}/r_mean", f"retrieval, {label} (mean of R@1/5/10 both ways)")
                   for p, label in PROTOCOLS], "recall (%)",
            os.path.join(fig_dir, "recall.png"))
  plot_twins(runs, os.path.join(fig_dir, "twins.png"))
  overlays = []
  for variant in ("syncmask", "random_masks", "semmim"):
    if variant in runs:
      first = runs[variant][min(runs[variant])]
      for i, src in enumerate(p for p in first["pictures"] if not p.endswith("_mask.png")):
        if i == 2:
          break
        name = f"overlay_{variant}_{i}.png"
        paths.path(src).copy(paths.path(os.path.join(fig_dir, name)), overwrite=True)
        overlays.append((variant, name))

  judged = [(c, j) for c in CLAIMS if (j := judge_claim(c, runs)) is not None]
  seconds = [r["seconds"] for v in runs.values() for r in v.values() if "seconds" in r]
  every = [r for v in runs.values() for r in v.values()]
  span = max(r["finished"] for r in every) - min(r["started"] for r in every)
  elapsed = busy_seconds([(r["started"], r["finished"]) for r in every])
  m = machine()
  # One twins set for all (`collect` checks).
  twins_size = next(iter(next(iter(runs.values())).values())).get("twins_size")
  budget = (f"{args.steps} steps of the tiny model per run, seeds "
            f"{', '.join(map(str, seeds))}, then {args.finetune_steps} fine-tuning steps")
  overview = [
      "| variant | what | runs | mask precision patches | tokens | full gallery R mean "
      "| 1+100 R mean | 1+K twins R@1 | subcategory acc. (%) |",
      "|---|---|---|---|---|---|---|---|---|"]
  for v, seeds_runs in runs.items():
    overview.append(
        f"| {v} | {study.VARIANTS[v][2]} | {len(seeds_runs)} | "
        f"{_column(seeds_runs, 'patch_precision', digits=3)} | "
        f"{_column(seeds_runs, 'token_precision', digits=3)} | "
        f"{_column(seeds_runs, 'full_gallery/r_mean')} | "
        f"{_column(seeds_runs, 'one_plus_100/r_mean')} | "
        f"{_column(seeds_runs, TWINS)} | "
        f"{_column(seeds_runs, 'subcategory_accuracy')} |")
  main_claims = CLAIMS_HEADER + [_claim_row(c, j) for c, j in judged if c.main]
  claims = CLAIMS_HEADER + [_claim_row(c, j) for c, j in judged if not c.main]
  tally = tally_line(judged)
  lines = [
      "# Results: the papers' claims on SynthFashion",
      "",
      "Written by `python -m syncmask_jax.report` from the runs' own files; do not edit by "
      "hand (rerun the command below). "
      f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}.",
      "",
      "## How it was run",
      "",
      "```",
      command,
      "```",
      "",
      f"* Variants (`syncmask_jax/study.py`), {budget}. Each run pretrains with batch 32 "
      "on SynthFashion (2000 train products, at most two views of a product per batch), "
      "is evaluated at the end on the 200 held-out products (601 views)"
      + (f", the 1+K twins on the first {twins_size[0]} ({twins_size[1]} views)"
         if twins_size else "")
      + ", then fine-tuned for subcategory recognition (16 classes) from its last "
      "checkpoint.",
      *(["* Not every variant ran every seed: "
         + "; ".join(f"{v} seeds {', '.join(map(str, sorted(sr)))}"
                     for v, sr in runs.items() if set(sr) != set(seeds)) + "."]
        if any(set(sr) != set(seeds) for sr in runs.values()) else []),
      f"* Machine: {m['cpu']}, {m['cpus']} CPUs, {m['platform']}; Python {m['python']}, "
      f"JAX {m['jax']} on {', '.join(m['devices'])}.",
      f"* Wall time: {elapsed / 60:.0f} min with runs in flight ({span / 60:.0f} min from "
      f"the first run's start to the last result), {args.jobs} runs at a time; "
      f"{sum(seconds) / 60:.1f} min summed over "
      f"{len(seconds)} runs (pretraining + fine-tuning), median "
      f"{np.median(seconds) if seconds else float('nan'):.0f} s per run.",
      "* Figures: mean ± sample standard deviation over seeds. Recall in %; mask precision "
      "is the share of masked patches (tokens) that the generator says co-occur with the "
      "text (are named by it) in that view. 1+K twins R@1: each held-out view against "
      "its product and K twins that differ in one attribute its view shows, mean of "
      "image-to-text and text-to-image R@1 (`retrieval.twins_recall`).",
      "",
      *overview,
      "", "## The claims", "", tally, "", RULE, "",
      "The claims the study is sized to settle:", "", *main_claims, "",
      "All the others:", "", *claims]
  columns = twins_columns(runs)
  lines += ["", "## Fine-grained retrieval: 1+K twins (ITC)", "",
            "R@1 (%), mean of i2t and t2i, by what the twin changes. *all visible*: the "
            "product ranked against all its twins whose change its view shows, at once; "
            "an attribute: against that attribute's twins the view shows only (by chance "
            "1 / (1 + their number): about 25% on colour and pattern, whose 3 twins every "
            "view shows, but 41-49% on a detail's presence, colour and side, whose twins a "
            "view mostly shows one of; docs/study/calibration.md, *By chance*). "
            "*invisible*: twins whose change the query's view cannot show (a back detail "
            "seen from the front): they tie with the product at best, so they are "
            "reported apart and left out of the other columns.", "",
            "| variant | i2t R@1 | t2i R@1 | " + " | ".join(l for _, l in columns) + " |",
            "|---|---|---|" + "---|" * len(columns)]
  for v, seeds_runs in runs.items():
    lines.append(f"| {v} | {_column(seeds_runs, 'twins/i2t_r1')} | "
                 f"{_column(seeds_runs, 'twins/t2i_r1')} | "
                 + " | ".join(_column(seeds_runs, k) for k, _ in columns) + " |")
  lines += ["", "![twins R@1 per attribute](results/twins.png)", ""]
  lines += ["## Mask precision and grounding", "",
            "Held-out pairs, the final momentum model: its masks against uniform random "
            "masks at the same ratios from the same model. Unshowable: the share of "
            "masked words that no view can show (back details seen from the front); "
            "function: the share that are function words; pointing: how often a visible "
            "word's map peaks on its own patches (the mask source's map). SemMIM's "
            "text-guided masking picks patches only (its MLM mask is uniform random), so "
            "it has no token figure of its own.", "",
            "| variant | strategy patches | random patches | strategy tokens | random tokens "
            "| unshowable | random | function | random | pointing |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for v, seeds_runs in runs.items():
    lines.append(f"| {v} | " + " | ".join(_column(seeds_runs, k, digits=3) for k in (
        "patch_precision", "patch_precision_random", "token_precision",
        "token_precision_random", "token_share_invisible", "token_share_invisible_random",
        "token_share_function", "token_share_function_random")) + " | "
        + _column(seeds_runs, "pointing", digits=2) + " |")
  lines += ["", "Over training (training batches, the masks the step used):", "",
            "![mask precision over training](results/mask_precision.png)", ""]
  lines += ["## The miner and the losses over training", "",
            "Means over the logged windows of training. Fallback: anchors without a "
            "candidate of the miner's mode (for semi-hard: no non-false negative below "
            "s(i, i) - margin), which took a uniform one; semi-hard: mined negatives that "
            "are semi-hard; false negatives: mined negatives from the anchor's own "
            "product (in %).", "",
            "| variant | fallback | semi-hard | false negatives (%) | ITC loss | ITM loss |",
            "|---|---|---|---|---|---|"]
  for v, seeds_runs in runs.items():
    lines.append(f"| {v} | {_column(seeds_runs, 'fallback_rate', digits=3)} | "
                 f"{_column(seeds_runs, 'semi_hard_rate', digits=3)} | "
                 f"{_column(seeds_runs, 'false_negative_rate', 100.0, 2)} | "
                 f"{_column(seeds_runs, 'loss_itc', digits=3)} | "
                 f"{_column(seeds_runs, 'loss_itm', digits=3)} |")
  lines.append("")
  for p, label in PROTOCOLS:
    lines += [f"## Retrieval, {label} (ITC)", "",
              "| variant | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | R mean |",
              "|---|---|---|---|---|---|---|---|"]
    for v, seeds_runs in runs.items():
      lines.append(f"| {v} | " + " | ".join(_column(seeds_runs, f"{p}/{k}")
                                             for k in RECALLS) + " |")
    lines.append("")
  lines += ["![recall per variant](results/recall.png)", "", "## Mask overlays", "",
            "Held-out views (first seed): the patch mask in red, the cross-attention of the "
            "masked words, the caption with the masked words marked.", ""]
  lines += [f"* {v}: ![{v} overlay](results/{name})" for v, name in overlays]
  lines += ["", "## Per-run commands", "", "```"]
  for seeds_runs in runs.values():
    for r in seeds_runs.values():
      lines += [f"python {cmd}".replace(REPO + os.sep, "")  # paths from the repository
                for cmd in r.get("commands", {}).values()]
  lines += ["```", ""]
  path = os.path.join(args.docs, "results.md")
  paths.write_text(path, "\n".join(lines))
  summary = {v: {str(s): {k: val for k, val in r.items()
                          if k not in ("curves", "pictures", "started", "finished")}
                 for s, r in sr.items()} for v, sr in runs.items()}
  summary["claims"] = [dict(claim=c.text, main=c.main, **j) for c, j in judged]
  paths.write_json(os.path.join(fig_dir, "summary.json"), summary)
  if args.readme:
    docs = os.path.relpath(args.docs, os.path.dirname(os.path.abspath(args.readme)))
    update_readme(args.readme, [
        f"From `{command}` ({budget}; {m['cpus']} CPUs, {args.jobs} runs at a time: "
        f"{elapsed / 60:.0f} min with runs in flight, {span / 60:.0f} min end to end). "
        f"All claims, tables, plots, mask overlays and commands: [{docs}/results.md]"
        f"({docs}/results.md).", "", tally, "", *overview, "", RULE, "",
        *main_claims, "",
        f"![twins R@1 per attribute]({docs}/results/twins.png)",
        f"![recall per variant]({docs}/results/recall.png)",
        *[f"![{v} mask overlay]({docs}/results/{name})" for v, name in overlays[:1]]])
  return path


README_BEGIN = "<!-- report:begin (written by python -m syncmask_jax.report) -->"
README_END = "<!-- report:end -->"


def update_readme(path: str, block: Sequence[str]) -> None:
  """Replaces the text between the README's report markers with `block`."""
  text = paths.path(path).read_text(encoding="utf-8")
  if README_BEGIN not in text or README_END not in text:
    raise ValueError(f"{path}: no {README_BEGIN!r} ... {README_END!r} markers to write "
                     "the results between (or pass --readme='')")
  head, rest = text.split(README_BEGIN, 1)
  _, tail = rest.split(README_END, 1)
  paths.write_text(path, head + README_BEGIN + "\n" + "\n".join(block) + "\n" + README_END
                   + tail)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  variants = study.VARIANTS
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--study", default=None, choices=sorted(study.STUDIES),
                 help="a named study (study.STUDIES): sets --steps, --finetune_steps, "
                 "--variants, the seeds of each variant and the default --workdir")
  p.add_argument("--workdir", default=None, help="default: runs/study, or the study's")
  p.add_argument("--publish", action="store_true",
                 help="write into the repository: docs/results.md, docs/results/ and the "
                 "README's report block")
  p.add_argument("--docs", default=None,
                 help="folder of results.md and results/ (default: WORKDIR/report; with "
                 "--publish: the repository's docs/)")
  p.add_argument("--readme", default=None,
                 help="README whose report markers receive the overview (default: none; "
                 "with --publish: the repository's README.md)")
  p.add_argument("--variants", default=None, help=f"default: {','.join(variants)}")
  p.add_argument("--seeds", default=None, help="default: 0,1,2,3,4")
  p.add_argument("--steps", type=int, default=None, help="default: 1000")
  p.add_argument("--finetune_steps", type=int, default=None, help="default: 300")
  p.add_argument("--testbed", default=None, choices=sorted(config_lib.SYNTH_TESTBEDS),
                 help="SynthFashion's set (config_lib.SYNTH_TESTBEDS); default: original")
  p.add_argument("--jobs", type=int, default=1, help="runs at a time")
  p.add_argument("--no_run", action="store_true", help="only report the existing runs")
  p.add_argument("--override", action="append", default=[],
                 help="extra --config.x=y for every pretraining run (repeatable)")
  p.add_argument("--finetune_override", action="append", default=[],
                 help="extra --config.x=y for every fine-tuning run (repeatable)")
  args = p.parse_args(argv)
  fixed = ("variants", "seeds", "steps", "finetune_steps", "testbed")
  if args.study:
    sweep = study.STUDIES[args.study]
    given = [f"--{k}" for k in fixed if getattr(args, k) is not None]
    if given:
      p.error(f"--study={args.study} fixes {', '.join(given)}: leave them out, or run "
              "without --study")
    args.steps, args.finetune_steps = sweep.steps, sweep.finetune_steps
    args.testbed = sweep.testbed
    args.workdir = args.workdir or sweep.workdir
    args.seeds_of = {v: list(s) for v, s in sweep.seeds.items()}
    args.variants = ",".join(sweep.seeds)
    args.seeds = ",".join(map(str, sorted({s for v in sweep.seeds.values() for s in v})))
  else:
    if args.publish:
      p.error("--publish writes the README's block, which names the command that made "
              f"it: publish a named study (--study={'|'.join(sorted(study.STUDIES))}; "
              "add one to study.STUDIES)")
    defaults = {"variants": ",".join(variants), "seeds": "0,1,2,3,4", "steps": 1000,
                "finetune_steps": 300, "testbed": "original"}
    for k in fixed:
      if getattr(args, k) is None:
        setattr(args, k, defaults[k])
    args.workdir = args.workdir or "runs/study"
    try:
      seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
      p.error(f"--seeds={args.seeds}: expected integers separated by commas")
    args.seeds_of = {v: seeds for v in args.variants.split(",")}
  unknown = sorted(set(args.variants.split(",")) - set(variants))
  if unknown:
    p.error(f"--variants: unknown {unknown}; expected some of {sorted(variants)}")
  if args.jobs < 1 or args.steps < 1 or args.finetune_steps < 1:
    p.error("--jobs, --steps and --finetune_steps must be >= 1")
  args.workdir = paths.resolve(args.workdir)
  if args.docs is None:
    args.docs = (os.path.join(REPO, "docs") if args.publish
                 else os.path.join(args.workdir, "report"))
  if args.readme is None:
    args.readme = os.path.join(REPO, "README.md") if args.publish else ""
  return args


def variant_configs(steps: int, overrides: Sequence[str], testbed: str = "original"
                    ) -> dict[str, Any]:
  """Every variant's pretraining config at `steps` on SynthFashion's set `testbed`, with
  `overrides` (--config.x=y), parsed as `python -m syncmask_jax.main` parses them."""
  out = {}
  for v in study.VARIANTS:
    argv = ["report", f"--config={os.path.join(REPO, study.PRETRAIN)}:variant={v},seed=0,"
            f"steps={steps},testbed={testbed}", *overrides]
    flag_values = flags.FlagValues()
    # The config file is read from argv as the flag is defined: its fields' flags exist.
    holder = cli.define_config_flag(flag_values, argv)
    flag_values(argv)
    out[v] = holder.value
  return out


def refuse_same_models(args: argparse.Namespace) -> None:
  """SystemExit when two swept variants would train the same model at this budget and
  these overrides, or a swept variant's own switch does nothing so that it trains what
  another variant does (`study.same_models`); names the switches."""
  swept = args.seeds_of
  configs = variant_configs(args.steps, args.override, args.testbed)
  # Every variant reads the same train split (grouping orders it, never filters it).
  train_records = len(pipeline.make_source(next(iter(configs.values())), "train"))
  lines = [f"{a} and {b} train the same model: "
           + "; ".join(dict.fromkeys(why_a + why_b) or ["their configs are equal"])
           for a, b, why_a, why_b in study.same_models(configs, train_records)
           if (a in swept and b in swept) or (a in swept and why_a)
           or (b in swept and why_b)]
  if lines:
    raise SystemExit(f"--steps={args.steps}: a claim would compare a model with itself: "
                     + "; ".join(lines) + ". Use more steps (the trial: --variants="
                     "syncmask,random_masks --seeds=0,1 --steps=600), or change the switch "
                     "with --override")


def main(argv: Sequence[str] | None = None) -> str:
  args = parse_args(argv)
  seeds = sorted({s for v in args.seeds_of.values() for s in v})
  refuse_same_models(args)
  if not args.no_run:
    run_sweep(args.seeds_of, args)
  runs = collect(args.workdir, args.seeds_of)
  if not runs:
    raise SystemExit(f"no finished runs under {args.workdir}")
  command = "python -m syncmask_jax.report " + " ".join(
      a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no_run")
  path = write_report(runs, seeds, args, command)
  print(f"wrote {path}")
  return path


if __name__ == "__main__":
  console.one_line_errors(main)()
