"""Where the 1+K twins differences are: paired per-attribute R@1 differences (issue 20).

The study's main twins claims (docs/results.md) judge R@1 over all visible twins at
once. This script splits a claim's difference by the attribute the twins change (colour,
pattern, a detail's presence, colour or side), with the report's own verdict rule
(`report.judge`, paired over seeds exactly when the two variants share their batches,
as in the report), from a published report's summary.json. Six rows per pair are six
tests: a "held" row found here is a hypothesis, to be checked on seeds that did not
choose it (--seeds picks them).

Run from the repository root (no training; reads summary.json only):

  python docs/study/attributes.py --summary=docs/results/summary.json --seeds=0,1,2,3,4 \\
    --pair=syncmask:random_masks --pair=semmim:albef --out=docs/study/attributes_seeds0-4.json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from syncmask_jax import report, study  # noqa: E402


def attribute_claims(summary: dict, better: str, worse: str, seeds: list[int]
                     ) -> list[dict]:
  """One verdict per twins measure (all visible, then per attribute) of `better`
  against `worse` over `seeds`, paired when the two share their batch grouping (the
  report's rule, `report.Claim.paired`); a missing seed or measure is an error naming it."""
  paired = study.grouping(better) == study.grouping(worse)
  for v in (better, worse):
    if v not in summary:
      raise ValueError(f"summary has no variant {v!r} (it has {sorted(summary)})")
    missing = [s for s in seeds if str(s) not in summary[v]]
    if missing:
      raise ValueError(f"{v}: no run for seeds {missing} in the summary")
  first = summary[better][str(seeds[0])]
  rows = []
  for attribute in ["all visible", *first["twins_attributes"]]:
    key = report.TWINS if attribute == "all visible" else f"{report.TWINS}_{attribute}"
    values = {}
    for v in (better, worse):
      values[v] = []
      for s in seeds:
        if key not in summary[v][str(s)]:
          raise ValueError(f"{v} seed {s}: no {key!r} in the summary")
        values[v].append(summary[v][str(s)][key])
    j = report.judge(values[better], values[worse], paired=paired)
    # judge's "better" and "worse" are the two sides' means.
    rows.append(dict(j, a=better, b=worse, attribute=attribute, measure=key,
                     seeds=list(seeds),
                     per_seed=[x - y for x, y in zip(values[better], values[worse])]))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--summary", required=True, help="a report's results/summary.json")
  parser.add_argument("--seeds", required=True, help="comma-separated, e.g. 0,1,2,3,4")
  parser.add_argument("--pair", action="append", required=True,
                      help="BETTER:WORSE, two study variants (paired when they share "
                      "their batch grouping)")
  parser.add_argument("--out", default="", help="write the rows as JSON here")
  args = parser.parse_args()
  with open(args.summary) as f:
    summary = json.load(f)
  seeds = [int(s) for s in args.seeds.split(",")]
  rows = []
  for pair in args.pair:
    better, _, worse = pair.partition(":")
    rows += attribute_claims(summary, better, worse, seeds)
  print(f"seeds {args.seeds}; R@1 (%), mean of i2t and t2i")
  print("| A - B | twins changing | A | B | d | s | pairing | per seed | d/SE (needed) "
        "| verdict |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['a']} - {r['b']} | {r['attribute']} | {r['better']:.1f} | "
          f"{r['worse']:.1f} | {r['difference']:+.2f} | {r['spread']:.2f} | "
          f"{'paired' if r['paired'] else 'unpaired'} | "
          + " ".join(f"{x:+.1f}" for x in r["per_seed"])
          + f" | {r['ratio']:+.1f} (±{r['threshold']:.1f}) | {r['verdict']} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
