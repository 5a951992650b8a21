"""Shared config pieces: model size presets, the default experiment config, validation.

Experiment files under `configs/` build on `default_config()` and override what they
need (big_vision style: `get_config(arg)` with `key=value,...` string args).
Every [ours] choice of docs/method.md is a field here with the default docs/method.md gives.
"""

from __future__ import annotations

import json

import ml_collections

# config.model.attention: how attention is computed where no probabilities are asked
# for: "einsum" (explicit logits and softmax; the only path that returns probabilities
# or applies attention dropout), or `jax.nn.dot_product_attention` with implementation
# "xla" or "cudnn" (fused; cuDNN needs bfloat16 and an NVIDIA GPU). models.layers
# implements them.
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")
# config.model.dense_vjp: "custom" (models.layers' backward; the CPU's faster form) or
# "autodiff" (a GPU's cuBLAS reads transposed operands for free, so saving x^T is an
# extra copy: with cuDNN attention, -15% base step time on an H100, RESULTS.md A4).
DENSE_VJPS = ("custom", "autodiff")

# Allowed values of config fields, each written here once; the modules that implement
# them import these tuples and `validate` checks them before anything compiles.
RECIPES = ("syncmask", "albef", "semmim")
GROUPINGS = ("none", "subcategory", "embedding")  # config.data.grouping (data/grouping.py)
MASK_STRATEGIES = ("random", "syncmask", "text_guided")  # config.masking.strategy
# config.masking.source: where the word->patch map comes from (masking.word_patch_map).
MASK_SOURCES = ("attention", "attention_centered", "gradcam", "gradcam_centered")
MASK_SELECTIONS = ("topk", "gumbel")
MASK_HEAD_REDUCES = ("mean", "max")
MASK_SCORES = ("mass", "log_mass")
MASK_TOKEN_SCORES = ("mass", "share", "focus")  # config.masking.token_score
NEGATIVE_MODES = ("semi_hard", "hard", "random")  # config.negatives.mode (negatives.py)
NEGATIVE_EXCLUDES = ("false_negatives", "self")  # config.negatives.exclude
MIM_TARGETS = ("pixels", "momentum_features", "prototypes")  # config.loss.mim_target
EVAL_SCORINGS = ("itc", "itc+itm")  # config.eval.scoring (retrieval.Scorer)
EVAL_PROTOCOLS = ("full_gallery", "one_plus_100", "twins", "karpathy", "tgir")
# SynthFashion's detail levers (synthfashion.DetailStyle), as [low, high]. Size: a scale
# of the small details' boxes; above 2 a pair of pockets no longer fits a panel side by
# side nor one in a profile. Contrast: the least RGB distance of a detail's colour from
# the body, in (0, 150]; above about 159 a grey patterned body leaves a detail fewer than
# two colours, and then no detail-colour twin.
SYNTH_DETAIL_SIZES = (0.5, 2.0)
SYNTH_DETAIL_CONTRASTS = (0.0, 150.0)
# SynthFashion's sets by name (`configs/synthfashion.py:testbed=NAME`, the study's
# `Sweep.testbed`): generator fields over the defaults. `original`: the set of the
# README's main job and of the study published before issue 30. `details`: the setting
# issue 30's calibration chose for the detail claims (docs/study/calibration.md): the
# largest, most contrasting details, and facing marks so that a detail's side is in
# the image.
SYNTH_TESTBEDS = {
    "original": {},
    "details": {"synth_detail_size": 2.0, "synth_detail_contrast": 150.0,
                "synth_facing_marks": True},
}


def apply_synth_testbed(data: ml_collections.ConfigDict, name: str) -> None:
  """SynthFashion's set `name` (SYNTH_TESTBEDS) into a config's data block, in place."""
  if name not in SYNTH_TESTBEDS:
    raise ValueError(f"testbed={name!r}: expected one of {sorted(SYNTH_TESTBEDS)}")
  for field, value in SYNTH_TESTBEDS[name].items():
    data[field] = value


# What `config.eval.protocols=()` runs on each dataset (evaluate.eval_settings).
DEFAULT_PROTOCOLS = {"synthfashion": ("full_gallery", "one_plus_100", "twins"),
                     "fashiongen": ("full_gallery", "one_plus_100"),
                     "coco": ("karpathy",), "fashioniq": ("tgir",),
                     "synthfashion_tgir": ("tgir",)}

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

# ALBEF's released models (ALBEF.pth, ALBEF_4M.pth, the COCO/Flickr30K/VQA fine-tuned
# files): ViT-B/16 at 256 px + BERT-base split 6+6, embed 256. The rest of ALBEF's
# setting is the default config's (bert-base-uncased's 30522 tokens and token-type
# table, temperature 0.07, momentum 0.995) and the base configs' queue of 65536
# (tests/test_config.py::test_albef_base_is_albefs).
ALBEF_BASE = dict(
    image_size=256, patch_size=16, vision_width=768, vision_depth=12, vision_heads=12,
    vision_mlp_dim=3072, text_width=768, text_layers=6, fusion_layers=6, text_heads=12,
    text_mlp_dim=3072, max_positions=512, embed_dim=256)

MODEL_PRESETS = {
    "albef_base": ALBEF_BASE,
    "base": ALBEF_BASE,  # the paper's size, which is ALBEF's
    "small": dict(
        image_size=128, patch_size=16, vision_width=256, vision_depth=4, vision_heads=4,
        vision_mlp_dim=1024, text_width=256, text_layers=2, fusion_layers=2, text_heads=4,
        text_mlp_dim=1024, max_positions=128, embed_dim=128),
    "tiny": dict(
        image_size=64, patch_size=16, vision_width=64, vision_depth=2, vision_heads=2,
        vision_mlp_dim=128, text_width=64, text_layers=1, fusion_layers=1, text_heads=2,
        text_mlp_dim=128, max_positions=64, embed_dim=32),
}


def full_size(size: str) -> bool:
  """The paper's size, ALBEF's (`base`, `albef_base`): bfloat16 and its learning rates."""
  return MODEL_PRESETS.get(size) is ALBEF_BASE


def finetune_schedule(c: ml_collections.ConfigDict, steps: int, lr: float,
                      warmup_steps: int | None = None) -> None:
  """The fine-tuning tasks' common settings, in place [ours]: `steps` steps at `lr`,
  warm-up over a twentieth of them unless given; no MIM loss (no task model has a MIM
  head; a checkpoint's is ignored); a queue of one batch (unused, validated against it)."""
  c.loss.mim = 0.0
  c.queue_size = c.data.global_batch_size
  c.total_steps = steps
  c.optim.lr = lr
  c.optim.warmup_steps = max(steps // 20, 1) if warmup_steps is None else warmup_steps
  c.log_every = 50
  c.checkpoint_every = 1000


def model_config(preset: str = "tiny", vocab_size: int = 30522) -> ml_collections.ConfigDict:
  if preset not in MODEL_PRESETS:
    raise ValueError(f"config.model.preset={preset!r}: expected one of {sorted(MODEL_PRESETS)}")
  m = ml_collections.ConfigDict(dict(MODEL_PRESETS[preset]))
  m.preset = preset
  m.vocab_size = vocab_size
  # BERT's token-type table (only row 0 is used); 0: none, as LAVIS's ALBEF and BLIP.
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
  # Attention without probabilities or dropout: einsum | xla | cudnn (layers.py; cudnn:
  # fused on NVIDIA GPUs, bfloat16 only; -15% base step time on an H100 with the dense
  # layers' plain autodiff, benchmarks/RESULTS.md A4).
  m.attention = "einsum"
  # Backward of the dense layers: custom (keeps x^T from the forward; XLA:CPU's fast form)
  # | autodiff (plain; for GPUs, with attention=cudnn, benchmarks/RESULTS.md A4).
  m.dense_vjp = "custom"
  m.text_init = ""  # HF BERT-family checkpoint directory (config.json + weights).
  m.image_init = ""  # ViT/DeiT: HF checkpoint directory, or timm .pth/.safetensors file or dir.
  m.mim_decoder_layers = 2  # [ours] light cross-modal MIM decoder.
  return m


def default_config() -> ml_collections.ConfigDict:
  """The full experiment config with docs/method.md defaults (SyncMask recipe, tiny model)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.recipe = "syncmask"  # RECIPES
  c.model = model_config("tiny")

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthfashion"
  c.data.global_batch_size = 32
  c.data.max_text_len = 40
  c.data.grouping = "none"  # GROUPINGS
  c.data.subcategories_per_batch = 4
  c.data.views_per_batch = 1
  c.data.skip_bad_records = False
  c.data.mean = (0.48145466, 0.4578275, 0.40821073)  # CLIP/ALBEF normalisation.
  c.data.std = (0.26862954, 0.26130258, 0.27577711)
  c.data.two_views = False  # SemMIM agreement learning.
  c.data.num_workers = 0
  c.data.vocab_path = ""  # empty: the SynthFashion WordPiece vocab, trained and cached.
  c.data.root = ""
  c.data.eval_batch_size = 32
  c.data.source_format = "raw"  # raw (h5/json/images) | tfds (ArrayRecord build)
  c.data.tfds_data_dir = ""
  c.data.image_root = ""  # COCO/Flickr image folder (default: root)
  c.data.karpathy_name = "coco"  # coco | flickr30k
  c.data.fashioniq_category = "dress"  # dress | shirt | toptee (synthfashion_tgir: an attribute)
  c.data.fashioniq_gallery = "split"  # split | val_union
  c.data.verify_images = True
  c.data.synth_train_products = 20000
  c.data.synth_val_products = 1000
  c.data.synth_test_products = 1000
  c.data.synth_seed = 0  # the generator's seed, separate from the training seed
  # [ours] How visible SynthFashion's details are (synthfashion.DetailStyle): a scale of
  # the small details, the least RGB distance of a detail's colour from the body, and
  # facing marks (which way a view faces, so a detail's side can be read from it).
  # The defaults draw the original set; SYNTH_DETAIL_SIZES and _CONTRASTS bound them.
  c.data.synth_detail_size = 1.0
  c.data.synth_detail_contrast = 110.0
  c.data.synth_facing_marks = False
  c.data.embedding_search_size = 4096  # GRIT-VLP search window for embedding grouping
  c.data.read_threads = 4
  c.data.prefetch_batches = 4
  c.data.geometric_aug = False  # crop/flip; never with patch ground truth (SynthFashion)
  c.data.crop_scale = (0.5, 1.0)
  c.data.flip = True
  # The words a cleaned caption keeps: ALBEF's pre_caption (COCO/Flickr30K retrieval,
  # data/coco.py) and BLIP's (captioning's train captions, data/captions.py), both 30.
  # SynthFashion's references (and train captions) per view, as COCO has about 5.
  c.data.caption_max_words = 30
  c.data.captions_per_view = 5
  # VQA (data/vqa.py). Answer tokens with [CLS] and [SEP] (0: the data has no answers).
  c.data.max_answer_len = 0
  c.data.max_answers = 10  # distinct answers kept per question: all of VQA's ten humans
  c.data.single_answer_weight = 0.5  # ALBEF's weight of a Visual Genome answer
  c.data.minival_size = 0  # vqa_val.json questions held out as "minival" (0: none)
  c.data.vg_image_root = ""  # Visual Genome images (vg_qa.json's `image` is relative)

  c.masking = ml_collections.ConfigDict()
  c.masking.strategy = "syncmask"  # MASK_STRATEGIES
  c.masking.ratio_img = 0.5
  c.masking.ratio_txt = 0.15
  c.masking.selection = "gumbel"  # MASK_SELECTIONS
  c.masking.tau = 1.0
  # What gumbel sampling sees: "mass" samples from softmax(s / tau) (docs/method.md 2.2);
  # "log_mass" from softmax(log s / tau), i.e. proportional to s^(1/tau), which does not
  # flatten when the per-patch mass is small (raw mass at tau=1 is close to uniform).
  c.masking.score = "mass"
  # s_txt, what ranks the words once the patches are masked (masking.token_score):
  # "mass", SyncMask's, a word's map summed over the masked patches; [ours] "share", that
  # sum over the word's whole map (renormalised per word: where a word points, not how
  # strongly); "focus", the share times how few patches the map spreads over.
  c.masking.token_score = "mass"
  c.masking.random_fraction = 0.0
  c.masking.layers = (-1,)  # fusion layers whose cross-attention is averaged
  c.masking.head_reduce = "mean"  # MASK_HEAD_REDUCES
  # The word->patch map: one of MASK_SOURCES (masking.word_patch_map).
  c.masking.source = "attention"
  # [ours] random masks before this step: a teacher trained from scratch is not grounded.
  c.masking.warmup_steps = 0

  c.negatives = ml_collections.ConfigDict()
  c.negatives.mode = "semi_hard"  # NEGATIVE_MODES
  c.negatives.margin = 0.0
  # Who may not be a negative: "false_negatives" (same product or identical caption:
  # SyncMask) or "self" (only the pair itself: ALBEF's pretraining rule).
  c.negatives.exclude = "false_negatives"

  c.loss = ml_collections.ConfigDict()
  c.loss.itc = 1.0
  c.loss.itm = 1.0
  c.loss.mlm = 1.0
  c.loss.mim = 1.0
  c.loss.agreement = 1.0
  c.loss.alpha = 0.4
  c.loss.alpha_ramp_steps = -1  # -1: one epoch
  c.loss.mlm_distill = True
  c.loss.mim_target = "pixels"  # MIM_TARGETS (prototypes: SemMIM)
  c.loss.mim_norm_pix = True

  # SemMIM (docs/method.md section 4); read only when recipe == "semmim".
  c.semmim = ml_collections.ConfigDict()
  c.semmim.num_prototypes = 1024  # [paper] K of the shared prototype encoding space
  c.semmim.student_temp = 0.1  # [ours, DINO] softmax temperature of student assignments
  c.semmim.teacher_temp = 0.04  # [ours, DINO] sharpening of the momentum assignments
  c.semmim.center_momentum = 0.9  # [ours, DINO] running centres of the momentum logits
  # [ours, iBOT] the MIM output head also projects the global [CLS] into the prototype
  # space, so global and local encodings share projection and codebook.
  c.semmim.shared_head = True
  # [ours, iBOT] the patch centre is the mean over "all" patches (or only "masked" ones).
  c.semmim.patch_center = "all"

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
  c.eval_at_end = True
  c.task = "pretrain"  # pretrain, or a fine-tuning task of tasks.TASKS
  # A run's checkpoints/ dir (latest step). Fine-tuning starts from its parameters;
  # pretraining from its parameters and momentum model (the optimizer, queue, data order
  # and step start afresh; `train.init_from_checkpoint`). "": from scratch.
  c.init_checkpoint = ""
  c.eval = ml_collections.ConfigDict()
  c.eval.scoring = ("itc",)  # each listed scoring (EVAL_SCORINGS) is reported
  # itc+itm: ITC candidates re-ranked by ITM per query (ALBEF's k: COCO 256, Flickr30K 128).
  c.eval.itm_k = 256
  c.eval.itm_batch_size = 64  # (image, text) pairs per jitted ITM batch; multiple of #devices
  c.eval.query_chunk = 1024  # queries scored at once on the host
  c.eval.protocols = ()  # empty: the dataset's own (DEFAULT_PROTOCOLS)
  c.eval.one_plus_100 = ml_collections.ConfigDict(
      dict(num_queries=1000, num_negatives=100, rounds=5, seed=0))
  # SynthFashion's 1+K twins: the eval split's first num_products products (any number:
  # the retrieval gallery's size does not bound it), each against up to num_twins
  # one-attribute twins per attribute (`retrieval.twins_recall`).
  c.eval.twins = ml_collections.ConfigDict(dict(num_products=200, num_twins=3))
  c.eval.pictures = 4  # SynthFashion pretraining: pairs drawn into eval/pictures (0: none)
  c.eval.picture_words = 2  # words whose cross-attention each picture shows
  # TGIR (data.name='fashioniq' or 'synthfashion_tgir': the tgir task; evaluate.tgir_blocks).
  c.tgir = ml_collections.ConfigDict()
  c.tgir.categories = ("dress", "shirt", "toptee")  # trained together, reported each
  c.tgir.gallery_protocols = ("split", "val_union")  # both are reported
  c.tgir.ks = (10, 50)
  c.tgir.synth_twins = 1  # synthfashion_tgir: twins per product and attribute
  # TensorBoard event files beside metrics.jsonl. TensorFlow writes them through its own
  # gfile, outside the path layer (loop.make_writer): off where that cannot reach the
  # workdir's store (a GCS emulator).
  c.tensorboard = True
  c.profile_steps = 0  # >0: a profiler trace of that many steps (clu periodic_actions.Profile)
  # JAX's persistent compilation cache ('' = off), e.g. ~/.cache/syncmask_jax/xla; shared
  # by restarts and by runs of the same model (loop.use_compilation_cache).
  c.compilation_cache_dir = ""
  c.nonfinite = "stop"  # stop | skip
  # A resume under a config other than the workdir's config.json: refused unless True,
  # then logged in config_history.jsonl (resume.py; what may change freely is listed there).
  c.allow_config_change = False
  return c


def apply_recipe(c: ml_collections.ConfigDict, recipe: str) -> ml_collections.ConfigDict:
  """A recipe is a small set of config choices over the shared step (docs/method.md 3-5)."""
  if recipe not in RECIPES:
    raise ValueError(f"recipe={recipe!r}: expected one of {RECIPES}")
  c.recipe = recipe
  if recipe == "syncmask":
    c.masking.strategy = "syncmask"
    c.negatives.mode = "semi_hard"
    c.negatives.exclude = "false_negatives"
    c.loss.mim = 1.0
    c.loss.mim_target = "pixels"
  elif recipe == "albef":
    # The baseline: random MLM masks, no MIM, ALBEF's multinomial hard negatives that
    # exclude only the pair itself.
    c.masking.strategy = "random"
    c.negatives.mode = "hard"
    c.negatives.exclude = "self"
    c.loss.mim = 0.0
  elif recipe == "semmim":
    # Text-guided patch masks (docs/method.md 2.3), MIM on prototype targets, agreement on two
    # views; ITC/ITM/MLM and the negatives stay the core's.
    c.masking.strategy = "text_guided"
    c.masking.ratio_img = 0.5
    # [ours] gumbel sampling proportional to the text's attention mass (s^(1/tau)): masks
    # follow the text yet vary; raw mass at tau=1 would be close to uniform.
    c.masking.selection = "gumbel"
    c.masking.score = "log_mass"
    c.negatives.mode = "semi_hard"
    c.loss.mim = 1.0
    c.loss.mim_target = "prototypes"
    c.loss.agreement = 1.0
    c.data.two_views = True
  return c


def _check(cond: bool, field: str, value, expected: str) -> None:
  if not cond:
    raise ValueError(f"config.{field}={value!r}: {expected}")


def _check_in(field: str, value, allowed: tuple[str, ...]) -> None:
  _check(value in allowed, field, value, "expected " + " | ".join(allowed))


def validate(c: ml_collections.ConfigDict) -> None:
  """Fails before anything compiles, naming the offending field."""
  _check_in("recipe", c.recipe, RECIPES)
  _check(c.total_steps > 0, "total_steps", c.total_steps, "must be > 0")
  _check(c.log_every > 0, "log_every", c.log_every, "must be > 0")
  _check(c.checkpoint_every > 0, "checkpoint_every", c.checkpoint_every, "must be > 0")
  _check(c.data.global_batch_size >= 2, "data.global_batch_size", c.data.global_batch_size,
         "must be >= 2 (in-batch negatives)")
  _check_in("data.grouping", c.data.grouping, GROUPINGS)
  validate_masking(c.masking)
  _check_in("negatives.mode", c.negatives.mode, NEGATIVE_MODES)
  _check_in("negatives.exclude", c.negatives.exclude, NEGATIVE_EXCLUDES)
  _check(0.0 <= c.momentum < 1.0, "momentum", c.momentum, "must be in [0, 1)")
  _check(0.0 <= c.loss.alpha <= 1.0, "loss.alpha", c.loss.alpha, "must be in [0, 1]")
  _check_in("loss.mim_target", c.loss.mim_target, MIM_TARGETS)
  for name in ("itc", "itm", "mlm", "mim", "agreement"):
    _check(c.loss[name] >= 0, f"loss.{name}", c.loss[name], "must be >= 0")
  _check_in("nonfinite", c.nonfinite, ("stop", "skip"))
  _check(c.optim.grad_accum_steps >= 1, "optim.grad_accum_steps", c.optim.grad_accum_steps,
         "must be >= 1")
  _check(c.optim.lr > 0, "optim.lr", c.optim.lr, "must be > 0")
  for s in c.eval.scoring:
    _check(s in EVAL_SCORINGS, "eval.scoring", tuple(c.eval.scoring),
           f"expected entries of {EVAL_SCORINGS}")
  for p in c.eval.protocols:
    _check(p in EVAL_PROTOCOLS, "eval.protocols", tuple(c.eval.protocols),
           f"expected entries of {EVAL_PROTOCOLS}")
  for name in ("num_products", "num_twins"):
    _check(1 <= c.eval.twins[name] <= 1_000_000_000, f"eval.twins.{name}",
           c.eval.twins[name], "must be in [1, 1e9]")
  validate_detail_style(c.data)
  if c.recipe == "semmim":
    _validate_semmim(c)
  validate_mim_target(c)
  m = c.model
  _check(m.preset in MODEL_PRESETS, "model.preset", m.preset,
         f"expected one of {sorted(MODEL_PRESETS)}")
  _check(m.image_size % m.patch_size == 0, "model.image_size", m.image_size,
         f"must be a multiple of model.patch_size={m.patch_size}")
  _check(c.data.max_text_len <= m.max_positions, "data.max_text_len", c.data.max_text_len,
         f"must be <= model.max_positions={m.max_positions}")
  _check_in("model.dtype", m.dtype, ("float32", "bfloat16"))
  _check_in("model.attention", m.attention, ATTENTION_IMPLEMENTATIONS)
  _check(m.attention != "cudnn" or m.dtype == "bfloat16", "model.attention", m.attention,
         "cuDNN attention needs model.dtype='bfloat16'")
  _check_in("model.dense_vjp", m.dense_vjp, DENSE_VJPS)
  n = jax_process_count()
  _check(c.data.global_batch_size % n == 0, "data.global_batch_size", c.data.global_batch_size,
         f"must be divisible by the {n} processes")
  check_queue_size(c.queue_size, c.data.global_batch_size)


def validate_mim_target(c: ml_collections.ConfigDict) -> None:
  """Prototype targets are SemMIM's: any other recipe predicts pixels or features."""
  if c.recipe != "semmim":
    _check(c.loss.mim_target != "prototypes", "loss.mim_target", c.loss.mim_target,
           "prototypes is SemMIM's target: needs recipe='semmim'")


def validate_masking(m: ml_collections.ConfigDict) -> None:
  """The checks of a masking block: `config.masking`, or the variants evaluation draws."""
  _check_in("masking.strategy", m.strategy, MASK_STRATEGIES)
  _check_in("masking.selection", m.selection, MASK_SELECTIONS)
  _check_in("masking.head_reduce", m.head_reduce, MASK_HEAD_REDUCES)
  _check_in("masking.score", m.score, MASK_SCORES)
  _check_in("masking.token_score", m.token_score, MASK_TOKEN_SCORES)
  _check_in("masking.source", m.source, MASK_SOURCES)
  # Shares of the patches and of the maskable tokens: something of each stays visible.
  _check(0.0 <= m.ratio_img < 1.0, "masking.ratio_img", m.ratio_img, "must be in [0, 1)")
  _check(0.0 <= m.ratio_txt < 1.0, "masking.ratio_txt", m.ratio_txt, "must be in [0, 1)")
  _check(0.0 <= m.random_fraction <= 1.0, "masking.random_fraction", m.random_fraction,
         "must be in [0, 1]")
  _check(m.tau > 0, "masking.tau", m.tau, "must be > 0")
  layers = (m.layers,) if isinstance(m.layers, int) else m.layers
  _check(bool(layers) and all(isinstance(l, int) for l in layers), "masking.layers",
         m.layers, "expected a non-empty tuple of ints")
  _check(isinstance(m.warmup_steps, int) and m.warmup_steps >= 0, "masking.warmup_steps",
         m.warmup_steps, "expected an int >= 0")


def validate_detail_style(d: ml_collections.ConfigDict) -> None:
  """SynthFashion's detail levers: in range, and only where they are read (the
  synthfashion data and its captions; the VQA set draws its own products)."""
  lo, hi = SYNTH_DETAIL_SIZES
  _check(lo <= d.synth_detail_size <= hi, "data.synth_detail_size", d.synth_detail_size,
         f"must be in [{lo}, {hi}]")
  lo, hi = SYNTH_DETAIL_CONTRASTS
  _check(lo < d.synth_detail_contrast <= hi, "data.synth_detail_contrast",
         d.synth_detail_contrast, f"must be in ({lo}, {hi}]")
  default = default_config().data
  for name in ("synth_detail_size", "synth_detail_contrast", "synth_facing_marks"):
    _check(d.name == "synthfashion" or d[name] == default[name], f"data.{name}", d[name],
           f"only data.name='synthfashion' reads it (here {d.name!r}): leave it at "
           f"{default[name]!r}")


def check_queue_size(queue_size: int, global_batch: int) -> None:
  if queue_size <= 0 or queue_size % global_batch:
    raise ValueError(
        f"config.queue_size={queue_size} must be a positive multiple of "
        f"config.data.global_batch_size={global_batch} (the queue is filled a batch at a time)")


def _validate_semmim(c: ml_collections.ConfigDict) -> None:
  s = c.semmim
  _check(s.num_prototypes >= 2, "semmim.num_prototypes", s.num_prototypes, "must be >= 2")
  _check(s.student_temp > 0, "semmim.student_temp", s.student_temp, "must be > 0")
  _check(s.teacher_temp > 0, "semmim.teacher_temp", s.teacher_temp, "must be > 0")
  _check(0.0 <= s.center_momentum < 1.0, "semmim.center_momentum", s.center_momentum,
         "must be in [0, 1)")
  _check(s.patch_center in ("all", "masked"), "semmim.patch_center", s.patch_center,
         "expected all | masked")
  _check(isinstance(s.shared_head, bool), "semmim.shared_head", s.shared_head,
         "expected a bool")
  if c.loss.mim > 0:
    _check(c.loss.mim_target == "prototypes", "loss.mim_target", c.loss.mim_target,
           "recipe='semmim' predicts prototype assignments: expected prototypes")
  if c.loss.agreement > 0:
    _check(c.data.two_views, "data.two_views", c.data.two_views,
           "SemMIM agreement learning (loss.agreement > 0) needs two augmented views")


def jax_process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style `key=value,key=value` config-file arguments, typed by the defaults."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r}: expected key=value")
    k, v = item.split("=", 1)
    if k not in defaults:
      raise ValueError(f"config argument {k!r}: expected one of {sorted(defaults)}")
    out[k] = type(defaults[k])(v)
  return out


def with_defaults(stored: dict) -> dict:
  """A config as a run's config.json stores it, with the fields that file lacks (written
  before they were added) at their defaults: the values that run read."""
  return _fill(stored, json.loads(default_config().to_json_best_effort()))


def _fill(stored: dict, defaults: dict) -> dict:
  out = dict(stored)
  for k, v in defaults.items():
    if k not in out:
      out[k] = v
    elif isinstance(v, dict) and isinstance(out[k], dict):
      out[k] = _fill(out[k], v)
  return out
