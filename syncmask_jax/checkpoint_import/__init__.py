"""Our models from others' checkpoints, and back: one module per source layout over one
key-mapping machinery (`keymap`: rule tables used for import and export alike).

  files     reading safetensors, torch pickles, Hugging Face directories
  keymap    the rule tables, the importer, the exporter, the import report
  hf_bert   Hugging Face BERT (`model.text_init`) and the BERT inside ALBEF and BLIP
  vit       Hugging Face / timm ViT and DeiT (`model.image_init`), ALBEF's and BLIP's ViT
  albef     ALBEF's checkpoints whole (the original code's and LAVIS's), and the export
  released  a released checkpoint as a run's starting point (`config.init_checkpoint`)
"""

from __future__ import annotations

import ml_collections
from absl import logging

from syncmask_jax.checkpoint_import.files import read_checkpoint
from syncmask_jax.checkpoint_import.hf_bert import load_bert
from syncmask_jax.checkpoint_import.keymap import ImportReport, mismatch_cause
from syncmask_jax.checkpoint_import.vit import load_vit

Params = dict

__all__ = ["ImportReport", "apply_inits", "load_bert", "load_vit", "log_report",
           "mismatch_cause", "read_checkpoint"]


def apply_inits(config: ml_collections.ConfigDict, params: Params) -> Params:
  """Loads `config.model.text_init` / `image_init` (empty: skip) into `params`.

  Call it on the online parameters before the momentum copy is made, so the EMA model
  starts from the same weights.
  """
  m = config.model
  if m.text_init:
    params, report = load_bert(m.text_init, params, m.text_layers, m.fusion_layers,
                               num_heads=m.text_heads, ln_eps=m.text_ln_eps)
    log_report(report)
  if m.image_init:
    params, report = load_vit(m.image_init, params, m.image_size, num_heads=m.vision_heads,
                              ln_eps=m.vision_ln_eps)
    log_report(report)
  return params


def log_report(report: ImportReport) -> None:
  logging.info("%s", report.summary())
  for w in report.warnings:
    logging.warning("%s: %s", report.source, w)
