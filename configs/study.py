"""The study (docs/results.md): the paper's claims on SynthFashion, one budget for all.

A variant is a recipe plus field edits on top of `configs/synthfashion.py`; the sweep
(`python -m syncmask_jax.report`) runs every variant with each seed, fine-tunes each
run for subcategory recognition and writes the report.

  python -m syncmask_jax.report --workdir=runs/study                 # sweep + docs
  python -m syncmask_jax.main --config=configs/study.py:variant=full_subcategory,seed=1 \
    --workdir=runs/study/full_subcategory/seed1                      # one of its runs
"""

import importlib.util
import os

from syncmask_jax import config_lib

# name -> (recipe, field edits over the recipe, what it is). The negatives ablation is
# negatives_random / negatives_hard / full_subcategory (semi_hard), all grouped.
VARIANTS = {
    "albef": ("albef", {},
              "ALBEF: random MLM, no MIM, hard ITM negatives excluding only the pair"),
    "random_masks": ("syncmask", {"masking.strategy": "random"},
                     "random MLM + MIM masks (SyncMask's losses and miner)"),
    "syncmask": ("syncmask", {}, "SyncMask masks, ungrouped batches"),
    "full_subcategory": ("syncmask", {"data.grouping": "subcategory"},
                         "SyncMask + subcategory-grouped batches + semi-hard negatives"),
    "full_embedding": ("syncmask", {"data.grouping": "embedding"},
                       "SyncMask + embedding-grouped batches + semi-hard negatives"),
    "negatives_random": ("syncmask", {"data.grouping": "subcategory",
                                      "negatives.mode": "random"},
                         "full_subcategory with random negatives"),
    "negatives_hard": ("syncmask", {"data.grouping": "subcategory", "negatives.mode": "hard"},
                       "full_subcategory with hard (ALBEF multinomial) negatives"),
    "semmim": ("semmim", {}, "SemMIM: text-guided masks, prototype targets, agreement"),
}

# The fine-tuning run that follows each pretraining run (its init_checkpoint and seed
# are the run's own).
FINETUNE = "configs/finetune_category.py:label=subcategory,data=synthfashion,size=tiny"


def _synthfashion(arg: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthfashion.py")
  spec = importlib.util.spec_from_file_location("synthfashion_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, variant="syncmask", seed=0, steps=1000)
  if args.variant not in VARIANTS:
    raise ValueError(f"variant={args.variant!r}: expected one of {sorted(VARIANTS)}")
  recipe, edits, _ = VARIANTS[args.variant]
  c = _synthfashion(f"recipe={recipe},steps={args.steps}")
  c.seed = args.seed
  # Up to two views of a product may share a batch, as in an unconstrained sampler over
  # multi-view listings: the miners meet real false negatives and their rate is measured.
  c.data.views_per_batch = 2
  for field, value in edits.items():
    *path, name = field.split(".")
    node = c
    for part in path:
      node = node[part]
    node[name] = value
  return c
