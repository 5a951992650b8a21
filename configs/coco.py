"""SemMIM pretraining on COCO (Karpathy split, ALBEF's JSON), base size (ViT-B/16 256 px
+ BERT-base 6+6), evaluated by COCO retrieval (docs/method.md 4 and 7).

  python -m syncmask_jax.main --config=configs/coco.py \
    --config.data.root=/data/coco --config.data.vocab_path=/ckpt/bert/vocab.txt \
    --config.model.text_init=/ckpt/bert-base-uncased \
    --config.model.image_init=/ckpt/vit-base-patch16-224 --workdir=gs://bucket/run

`data.root` holds coco_{train,val,test}.json; image paths in them are relative to
`data.image_root` (default: root). `:karpathy=flickr30k` reads Flickr30K's files instead.
"""

from syncmask_jax import config_lib


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, recipe="semmim", size="base", steps=30000, karpathy="coco")
  c = config_lib.default_config()
  c.model = config_lib.model_config(args.size)
  c.model.dtype = "bfloat16"
  c.data.name = "coco"
  c.data.karpathy_name = args.karpathy
  c.data.global_batch_size = 512
  c.data.eval_batch_size = 512
  # No categories in COCO; an image's other captions are positives through product_id.
  c.data.grouping = "none"
  c.data.geometric_aug = True
  c.data.max_text_len = 40
  c.queue_size = 65536
  c.total_steps = args.steps
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 1000
  c.log_every = 100
  c.checkpoint_every = 2000
  c.keep_every = 10000
  return config_lib.apply_recipe(c, args.recipe)
