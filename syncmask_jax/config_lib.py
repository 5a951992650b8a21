"""Shared config pieces: model size presets, the default experiment config, validation.

Experiment files under `configs/` build on `default_config()` and override what they
need (big_vision style: `get_config(arg)` with `key=value,...` string args).
Every [ours] choice of METHOD.md is a field here with the default METHOD.md gives.
"""

from __future__ import annotations

import ml_collections

# Logical axis names carried by parameters -> mesh axes. One table (MaxText style):
# data parallel, FSDP and tensor parallel are edits of this table, not of code.
# `fsdp` shards the large "embed" dimension of every weight; `tensor` shards heads/MLP.
DEFAULT_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("patch", None),
    ("pos", None),
    ("proj", None),
    ("classes", None),
    ("prototypes", None),
    ("norm", None),
)

MODEL_PRESETS = {
    # ViT-B/16 at 256 px + BERT-base split 6+6, as ALBEF.
    "base": dict(
        image_size=256, patch_size=16, vision_width=768, vision_depth=12, vision_heads=12,
        vision_mlp_dim=3072, text_width=768, text_layers=6, fusion_layers=6, text_heads=12,
        text_mlp_dim=3072, max_positions=512, embed_dim=256),
    "small": dict(
        image_size=128, patch_size=16, vision_width=256, vision_depth=4, vision_heads=4,
        vision_mlp_dim=1024, text_width=256, text_layers=2, fusion_layers=2, text_heads=4,
        text_mlp_dim=1024, max_positions=128, embed_dim=128),
    "tiny": dict(
        image_size=64, patch_size=16, vision_width=64, vision_depth=2, vision_heads=2,
        vision_mlp_dim=128, text_width=64, text_layers=1, fusion_layers=1, text_heads=2,
        text_mlp_dim=128, max_positions=64, embed_dim=32),
}


def model_config(preset: str = "tiny", vocab_size: int = 30522) -> ml_collections.ConfigDict:
  if preset not in MODEL_PRESETS:
    raise ValueError(f"config.model.preset={preset!r}: expected one of {sorted(MODEL_PRESETS)}")
  m = ml_collections.ConfigDict(dict(MODEL_PRESETS[preset]))
  m.preset = preset
  m.vocab_size = vocab_size
  m.type_vocab_size = 2
  m.vision_ln_eps = 1e-6  # ALBEF/timm ViT; HF ViT checkpoints carry 1e-12 in config.json.
  m.text_ln_eps = 1e-12  # BERT.
  m.text_dropout = 0.1  # BERT hidden/attention dropout.
  m.vision_dropout = 0.0
  m.temp_init = 0.07
  m.temp_min = 0.001
  m.temp_max = 0.5
  m.dtype = "float32"  # compute dtype; params stay float32. "bfloat16" for mixed precision.
  m.remat = False  # nnx.remat per transformer block.
  m.text_init = ""  # HF BERT-family checkpoint directory (config.json + weights).
  m.image_init = ""  # HF ViT/DeiT checkpoint directory.
  m.mim_decoder_layers = 2  # [ours] light cross-modal MIM decoder.
  return m


def default_config() -> ml_collections.ConfigDict:
  """The full experiment config with METHOD.md defaults (SyncMask recipe, tiny model)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.recipe = "syncmask"  # syncmask | albef | semmim
  c.model = model_config("tiny")

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthfashion"
  c.data.global_batch_size = 32
  c.data.max_text_len = 40
  c.data.grouping = "none"  # none | subcategory | embedding
  c.data.subcategories_per_batch = 4
  c.data.views_per_batch = 1
  c.data.skip_bad_records = False
  c.data.mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP/ALBEF normalisation.
  c.data.std = (0.26862954, 0.26130258, 0.27577711)
  c.data.two_views = False  # SemMIM agreement learning.
  c.data.num_workers = 0
  c.data.vocab_path = ""  # empty: the SynthFashion WordPiece vocab, trained and cached.
  c.data.root = ""

  c.masking = ml_collections.ConfigDict()
  c.masking.strategy = "syncmask"  # random | syncmask | text_guided
  c.masking.ratio_img = 0.5
  c.masking.ratio_txt = 0.15
  c.masking.selection = "gumbel"  # topk | gumbel
  c.masking.tau = 1.0
  # What gumbel sampling sees: "mass" samples from softmax(s / tau) (METHOD.md 2.2);
  # "log_mass" from softmax(log s / tau), i.e. proportional to s^(1/tau), which does not
  # flatten when the per-patch mass is small (raw mass at tau=1 is close to uniform).
  c.masking.score = "mass"
  c.masking.random_fraction = 0.0
  c.masking.layers = (-1,)  # fusion layers whose cross-attention is averaged
  c.masking.head_reduce = "mean"  # mean | max

  c.negatives = ml_collections.ConfigDict()
  c.negatives.mode = "semi_hard"  # semi_hard | hard | random
  c.negatives.margin = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.itc = 1.0
  c.loss.itm = 1.0
  c.loss.mlm = 1.0
  c.loss.mim = 1.0
  c.loss.agreement = 1.0
  c.loss.alpha = 0.4
  c.loss.alpha_ramp_steps = -1  # -1: one epoch
  c.loss.mlm_distill = True
  c.loss.mim_target = "pixels"  # pixels | momentum_features
  c.loss.mim_norm_pix = True

  c.momentum = 0.995
  c.queue_size = 256

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 20
  c.optim.weight_decay = 0.02
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.grad_clip = 1.0
  c.optim.grad_accum_steps = 1
  # Regex list (big_vision style) of parameter paths excluded from weight decay.
  c.optim.no_decay = (r".*bias$", r".*(norm|ln|LayerNorm).*", r".*embed.*", r".*cls_token.*",
                      r".*mask_token.*", r".*temp$", r".*pos_embed.*")

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.axis_rules = DEFAULT_AXIS_RULES

  c.total_steps = 200
  c.log_every = 10
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.keep_every = 0
  c.eval_every = 0
  c.nonfinite = "stop"  # stop | skip
  return c
