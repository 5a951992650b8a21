"""The fine-tuning tasks (`config.task`): one file each, one entry in `TASKS`.

A new task (e.g. VQA, captioning) is a `base.Task` subclass in its own file plus its
line here; `finetune.py` drives every task the same way.
"""

from __future__ import annotations

import ml_collections

from syncmask_jax.tasks import base, captioning, category, retrieval, tgir, vqa

TASKS: dict[str, type[base.Task]] = {
    "category": category.Category,
    "tgir": tgir.Tgir,
    "retrieval": retrieval.Retrieval,
    "vqa": vqa.VQA,
    "captioning": captioning.Captioning,
}


def get(config: ml_collections.ConfigDict) -> base.Task:
  """The task `config.task` names, for `config`."""
  name = config.task
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}: fine-tuning tasks are {tuple(TASKS)}")
  return TASKS[name](config)
