"""FashionIQ text-guided image retrieval (TGIR, docs/method.md 7) from a pretraining run.

  python -m syncmask_jax.main --config=configs/finetune_tgir.py \
    --config.init_checkpoint=runs/fg/checkpoints --config.data.root=/data/fashioniq \
    --config.data.vocab_path=/ckpt/bert-base-uncased/vocab.txt --workdir=runs/fiq

Query = text_proj of the fused [CLS] of (reference image, "caption1 and caption2");
gallery = projected image features; contrastive (InfoNCE, in-batch) fine-tuning on the
train triplets of all `tgir.categories` together. Evaluation: R@10 / R@50 per category
and their mean on val, under both gallery protocols (`split`, `val_union`).
SyncMask reports (val, R@10/R@50): dress 33.76/61.23, shirt 35.82/62.12,
toptee 44.82/72.06, mean 38.13/65.14.
"""

from syncmask_jax import config_lib


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, size="base", steps=6000)
  c = config_lib.default_config()
  c.task = "tgir"
  c.init_checkpoint = ""  # a pretraining run's checkpoints/ (latest step, params only)
  c.model = config_lib.model_config(args.size)
  c.model.dtype = "bfloat16" if config_lib.full_size(args.size) else "float32"
  c.data.name = "fashioniq"
  c.data.global_batch_size = 128
  c.data.eval_batch_size = 128
  c.data.max_text_len = 64
  config_lib.finetune_schedule(c, args.steps, 2e-5 if config_lib.full_size(args.size) else 1e-4)
  return c
