"""FashionGen pretraining at the paper's size (ViT-B/16 256 px + BERT-base 6+6).

  python -m syncmask_jax.main --config=configs/fashiongen.py:recipe=syncmask \
    --config.data.root=/data/fashiongen --config.data.vocab_path=/ckpt/bert/vocab.txt \
    --config.model.text_init=/ckpt/bert-base-uncased \
    --config.model.image_init=/ckpt/vit-base-patch16-224 --workdir=gs://bucket/run
"""

from syncmask_jax import config_lib


def get_config(arg: str | None = None):
  args = config_lib.parse_arg(arg, recipe="syncmask", size="base", steps=100000)
  c = config_lib.default_config()
  c.model = config_lib.model_config(args.size)
  c.model.dtype = "bfloat16"
  c.data.name = "fashiongen"
  c.data.global_batch_size = 512
  c.data.eval_batch_size = 512
  c.data.grouping = "subcategory"
  c.data.geometric_aug = True
  c.data.max_text_len = 128
  c.queue_size = 65536
  c.total_steps = args.steps
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 2000
  c.log_every = 100
  c.checkpoint_every = 2000
  c.keep_every = 20000
  return config_lib.apply_recipe(c, args.recipe)
