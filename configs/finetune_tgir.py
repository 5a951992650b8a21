"""Text-guided image retrieval (TGIR, docs/method.md 7) from a pretraining run.

  python -m syncmask_jax.main --config=configs/finetune_tgir.py \
    --config.init_checkpoint=runs/fg/checkpoints --config.data.root=/data/fashioniq \
    --config.data.vocab_path=/ckpt/bert-base-uncased/vocab.txt --workdir=runs/fiq
  python -m syncmask_jax.main --config=configs/finetune_tgir.py:data=synthfashion \
    --config.init_checkpoint=runs/synthfashion/checkpoints --workdir=runs/synthfashion_tgir

Query = text_proj of the fused [CLS] of (reference image, "caption1 and caption2");
gallery = projected image features; contrastive (InfoNCE, in-batch) fine-tuning on the
train triplets of all `tgir.categories` together. Evaluation: R@10 / R@50 per category
and their mean on val, under the gallery protocols of `tgir.gallery_protocols`.

data=fashioniq (default): FashionIQ under data.root, categories dress / shirt / toptee,
both gallery protocols (`split`, `val_union`). SyncMask reports (val, R@10/R@50):
dress 33.76/61.23, shirt 35.82/62.12, toptee 44.82/72.06, mean 38.13/65.14.
data=synthfashion: SynthFashion-TGIR (data/synthfashion_tgir.py), a laptop run: a
product's view and a text naming one changed attribute ("is red instead of blue")
against the same view of its twin; the twin attributes are the categories, gallery
`split` (every view of the val products and of their targeted twins). The model size
and vocabulary are the pretraining run's (its config.json; cli.py).
"""

from syncmask_jax import config_lib
from syncmask_jax.data import synthfashion_tgir


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, size="base", steps=0, data="fashioniq")
  if args.data not in ("fashioniq", "synthfashion"):
    raise ValueError(f"config argument data={args.data!r}: expected fashioniq | synthfashion")
  big = args.data == "fashioniq"
  c = config_lib.default_config()
  c.task = "tgir"
  c.init_checkpoint = ""  # a pretraining run's checkpoints/ (latest step, params only)
  c.model = config_lib.model_config(args.size)
  c.model.dtype = "bfloat16" if config_lib.full_size(args.size) else "float32"
  c.data.name = "fashioniq" if big else "synthfashion_tgir"
  c.data.global_batch_size = 128 if big else 32
  c.data.eval_batch_size = 128 if big else 64
  c.data.max_text_len = 64 if big else 32
  if not big:
    # [ours] 1000 train products give ~8k queries per attribute, more than 300 steps of
    # 32 read; 200 val products, as the other SynthFashion fine-tuning tasks.
    c.data.synth_train_products = 1000
    c.data.synth_val_products = 200
    c.tgir.categories = synthfashion_tgir.ATTRIBUTES
    c.tgir.gallery_protocols = ("split",)
  # steps=0: 6000 on FashionIQ; 300 on SynthFashion (a laptop run: 4 min of training
  # and 40 s of evaluation on 2 shared CPU cores; steps=N for more).
  steps = args.steps or (6000 if big else 300)
  config_lib.finetune_schedule(c, steps, 2e-5 if config_lib.full_size(args.size) else 1e-4)
  return c
