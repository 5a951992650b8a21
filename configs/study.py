"""One run of the study (syncmask_jax/study.py: its variants and what each varies).

  python -m syncmask_jax.main --config=configs/study.py:variant=full_subcategory,seed=1 \
    --workdir=runs/study/full_subcategory/seed1
  python -m syncmask_jax.report --workdir=runs/study      # every variant and seed + docs
"""

import importlib.util
import os

from syncmask_jax import config_lib, study


def _synthfashion(arg: str):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthfashion.py")
  spec = importlib.util.spec_from_file_location("synthfashion_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, variant="syncmask", seed=0, steps=1000,
                              testbed="original")
  c = _synthfashion(f"recipe={study.recipe(args.variant)},steps={args.steps},"
                    f"testbed={args.testbed}")
  study.apply(c, args.variant, args.seed)
  return c
