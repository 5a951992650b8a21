"""The study (docs/results.md): the papers' claims on SynthFashion, one budget for all.

A variant is a recipe plus field edits on top of `configs/synthfashion.py`; the sweep
(`python -m syncmask_jax.report`) runs every variant with each seed, fine-tunes each
run for subcategory recognition and writes the report. The definition lives here, in
the package, so that the report reads it when installed; `configs/study.py` builds one
run's config from it.

  python -m syncmask_jax.report --workdir=runs/study                 # sweep + docs
  python -m syncmask_jax.main --config=configs/study.py:variant=full_subcategory,seed=1 \
    --workdir=runs/study/full_subcategory/seed1                      # one of its runs
"""

import os

import ml_collections

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
    # With syncmask and negatives_hard, a 2x2 of grouping x miner.
    "ungrouped_hard": ("syncmask", {"negatives.mode": "hard"},
                       "SyncMask masks, ungrouped batches, hard (ALBEF multinomial) negatives"),
    "semmim": ("semmim", {}, "SemMIM: text-guided masks, prototype targets, agreement"),
}

# The config files of a variant's two runs, relative to the repository root: the
# pretraining run (`:variant=V,seed=S,steps=N`) and the fine-tuning run that follows it
# (its init_checkpoint and seed are the pretraining run's own).
PRETRAIN = os.path.join("configs", "study.py")
FINETUNE = "configs/finetune_category.py:label=subcategory,data=synthfashion,size=tiny"


def recipe(variant: str) -> str:
  """The recipe `variant` edits; an unknown variant is an error naming the known ones."""
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r}: expected one of {sorted(VARIANTS)}")
  return VARIANTS[variant][0]


def grouping(variant: str) -> str:
  """The batch grouping of `variant` (its data order; one seed's runs of two variants
  see the same batches exactly when their groupings agree)."""
  recipe(variant)
  return VARIANTS[variant][1].get("data.grouping", config_lib.default_config().data.grouping)


def apply(c: ml_collections.ConfigDict, variant: str, seed: int) -> None:
  """`variant`'s settings, in place, over the SynthFashion config of its recipe."""
  c.seed = seed
  # Up to two views of a product may share a batch, as in an unconstrained sampler over
  # multi-view listings: the miners meet real false negatives and their rate is measured.
  c.data.views_per_batch = 2
  # The 1+K twins on the eval split's first 1000 products (the retrieval gallery keeps
  # its 200): on 200, the eval set's sampling was most of a paired twins claim's seed
  # spread (docs/study/twins_size.md).
  c.eval.twins.num_products = 1000
  for field, value in VARIANTS[variant][1].items():
    *path, name = field.split(".")
    node = c
    for part in path:
      node = node[part]
    node[name] = value
