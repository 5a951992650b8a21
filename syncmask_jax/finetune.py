"""Fine-tuning from a pretraining checkpoint: CR/SCR, FashionIQ TGIR, retrieval.

  python -m syncmask_jax.main --config=configs/finetune_<task>.py --workdir=DIR

with `config.task` = category | tgir | retrieval. The loop is the pretraining
driver's (metric writers, Checkpointer, progress report, SIGTERM, exact resume of the
state and the data iterator). Parameters start from `config.init_checkpoint`, a run's
`checkpoints` directory (its latest step, parameters only: no optimizer, no queue),
unless `DIR/checkpoints` already holds a fine-tuning checkpoint, which is resumed.

Tasks (METHOD.md 7), each a small pure step under one `jax.jit` over the mesh:

* `category`: CR or SCR (`config.finetune.label`): a new Dense head on the fused [CLS]
  of (image, text); cross-entropy. Rows whose label is unknown (-1: a FashionGen
  validation label unseen in train) carry no loss.
* `tgir`: query = text_proj of the fused [CLS] of (reference image, "caption1 and
  caption2"), L2-normalised; InfoNCE of each query against the in-batch target images'
  projected features, queries sharing a target all positives (normalised per row).
* `retrieval`: ITC (`losses.itc_loss`, product-aware targets) and ITM (`losses.itm_loss`
  on negatives from `negatives.mine_negatives`) over the global batch. [ours] Without
  a momentum model or queue: the batch is its own ITC bank and there is nothing to
  distil from (alpha = 0). ALBEF's fine-tuning keeps both; SyncMask's point is that
  grouped batches make the in-batch negatives hard.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from syncmask_jax import checkpointing, config_lib, evaluate, losses, optim
from syncmask_jax import sharding, train
from syncmask_jax import train_state as train_state_lib
from syncmask_jax import train_step as train_step_lib
from syncmask_jax.data import pipeline
from syncmask_jax.models import layers
from syncmask_jax.models.vlp import VLP

TASKS = ("category", "tgir", "retrieval")
LABELS = ("category", "subcategory")
# Parameters a task adds to the pretrained model: allowed to be absent from the checkpoint.
NEW_PARAMS = {"category": ("classifier",), "tgir": (), "retrieval": ()}


# -- models and state -------------------------------------------------------------------


class CategoryModel(VLP):
  """The shared VLP with a classifier (one Dense layer) on the fused [CLS]."""

  def __init__(self, cfg: ml_collections.ConfigDict, num_classes: int, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.classifier = layers.Dense(cfg.text_width, num_classes, ("embed", "classes"),
                                   rngs=rngs, dtype=jnp.dtype(cfg.dtype))

  def class_logits(self, fused: jax.Array) -> jax.Array:
    return self.classifier(fused[:, 0]).astype(jnp.float32)


@flax.struct.dataclass
class FinetuneState:
  step: jax.Array
  params: dict
  opt_state: Any
  rng: jax.Array  # raw uint32 key data, as TrainState's


def abstract_params(build: Callable[[], nnx.Module], config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh) -> tuple[Any, dict]:
  """(graphdef, parameters as ShapeDtypeStructs carrying their shardings): what a restore
  needs, without initialising anything."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
  shardings = sharding.named(
      mesh, sharding.param_specs(abstract_state, config.mesh.axis_rules, mesh))
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(abstract_state), shardings)
  return graphdef, params


def create_finetune_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                          build: Callable[[], nnx.Module]
                          ) -> tuple[Callable[[], FinetuneState], FinetuneState,
                                     train_state_lib.Setup]:
  """(init, abstract state, setup): `init()` makes a fresh state straight into its
  sharded layout (as `create_train_state`); the abstract state (ShapeDtypeStructs with
  their shardings) is what a resumed run restores into, with nothing initialised."""
  graphdef, abstract = abstract_params(build, config, mesh)
  tx = optim.make_optimizer(config.optim, abstract, config.total_steps)

  def init() -> FinetuneState:
    params = nnx.to_pure_dict(nnx.state(build()))
    return FinetuneState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=tx.init(params),
                         rng=jax.random.key_data(jax.random.key(config.seed)))

  shapes = jax.eval_shape(init)
  param_specs = jax.tree.map(lambda a: a.sharding.spec, abstract)
  opt_specs = optax.tree_map_params(
      tx, lambda _, spec: spec, shapes.opt_state, param_specs,
      transform_non_params=lambda _: jax.sharding.PartitionSpec(),
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  specs = FinetuneState(step=jax.sharding.PartitionSpec(), params=param_specs,
                        opt_state=opt_specs, rng=jax.sharding.PartitionSpec())
  shardings = sharding.named(mesh, specs)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
  setup = train_state_lib.Setup(graphdef=graphdef, state_shardings=shardings, mesh=mesh,
                                tx=tx)
  return jax.jit(init, out_shardings=shardings), abstract_state, setup


# -- data -------------------------------------------------------------------------------


class TripletsUnion:
  """FashionIQ triplets of several categories as one source (training on all of them).

  ASIN ids are ranks within a category, so each category's ids are offset past the
  previous categories': in-batch positives (same target) never cross categories.
  """

  def __init__(self, sources: list[Any]):
    self.sources = sources
    self.starts = np.concatenate([[0], np.cumsum([len(s) for s in sources])])
    self.id_offsets = np.concatenate([[0], np.cumsum([len(s.index.asin_ids)
                                                      for s in sources])])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _ids(self, k: int, ids: np.ndarray) -> np.ndarray:
    # Queries without a target carry -1 - position: keep them unique and negative.
    return np.where(ids >= 0, ids + self.id_offsets[k], ids - self.starts[k])

  def __getitem__(self, i: int) -> dict[str, Any]:
    i = int(i)
    k = int(np.searchsorted(self.starts, i, side="right")) - 1
    record = dict(self.sources[k][i - int(self.starts[k])])
    record["product_id"] = np.int64(self._ids(k, np.int64(record["product_id"])))
    record["index"] = np.int64(i)
    record["target_index"] = np.int64(-1)  # a position in one category's gallery only
    return record

  def metadata(self) -> dict[str, np.ndarray]:
    return {"product_id": np.concatenate([self._ids(k, s.metadata()["product_id"])
                                          for k, s in enumerate(self.sources)])}


def tgir_train_source(config: ml_collections.ConfigDict) -> TripletsUnion:
  categories = evaluate.tgir_settings(config).categories
  return TripletsUnion([pipeline.make_source(evaluate.with_data(config, fashioniq_category=c),
                                             "train", "queries") for c in categories])


def num_classes(config: ml_collections.ConfigDict) -> int:
  """config.finetune.num_classes, or the size of the label list (train's labels)."""
  field = config.finetune.label
  source = pipeline.make_eval_source(config)
  labels = getattr(source, "labels", None)
  known = (len(labels[field]) if labels else
           {"category": getattr(source, "num_categories", 0),
            "subcategory": getattr(source, "num_subcategories", 0)}[field])
  if not known:
    known = int(pipeline.source_metadata(source)[field].max()) + 1
  n = int(config.finetune.get("num_classes", 0)) or known
  if n < known:
    raise ValueError(f"config.finetune.num_classes={n}: the {field} labels have {known} "
                     "classes")
  return n


# -- steps ------------------------------------------------------------------------------


def _fused(model: VLP, batch: dict, rngs: nnx.Rngs | None) -> jax.Array:
  image_tokens = model.encode_image(batch["image"], rngs=rngs)
  text_hidden = model.encode_text(batch["text_ids"], batch["text_mask"], rngs=rngs)
  fused, _ = model.fuse(text_hidden, batch["text_mask"], image_tokens, rngs=rngs)
  return fused


def _update(config: ml_collections.ConfigDict, setup: train_state_lib.Setup,
            state: FinetuneState, loss_fn: Callable) -> tuple[FinetuneState, dict]:
  """Gradients -> optimizer -> temperature clamp, as the pretraining step."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params["temp"] = jnp.clip(params["temp"], config.model.temp_min, config.model.temp_max)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if config.nonfinite == "skip":
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             state.replace(step=state.step + 1))
  lr = optim.learning_rate_schedule(config.optim, config.total_steps)(state.step)
  return new_state, dict(aux, loss=loss, grad_norm=grad_norm, finite=finite,
                         learning_rate=lr)


def make_category_step(config: ml_collections.ConfigDict, setup: train_state_lib.Setup
                       ) -> Callable[[FinetuneState, dict], tuple[FinetuneState, dict]]:
  field = config.finetune.label

  def step(state: FinetuneState, batch: dict) -> tuple[FinetuneState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    labels = batch[field]
    known = (labels >= 0).astype(jnp.float32)  # -1: unknown label, no loss

    def loss_fn(params):
      model = nnx.merge(setup.graphdef, params)
      logits = model.class_logits(_fused(model, batch, nnx.Rngs(dropout=rng)))
      logp = jax.nn.log_softmax(logits, axis=-1)
      ce = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[:, None], axis=-1)[:, 0]
      count = jnp.maximum(jnp.sum(known), 1.0)
      hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
      return jnp.sum(ce * known) / count, {"accuracy": jnp.sum(hit * known) / count}

    return _update(config, setup, state, loss_fn)

  return step


def make_tgir_step(config: ml_collections.ConfigDict, setup: train_state_lib.Setup
                   ) -> Callable[[FinetuneState, dict], tuple[FinetuneState, dict]]:

  def step(state: FinetuneState, batch: dict) -> tuple[FinetuneState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    pid = batch["product_id"]
    positives = (pid[:, None] == pid[None, :]).astype(jnp.float32)
    targets = positives / jnp.sum(positives, axis=1, keepdims=True)

    def loss_fn(params):
      model = nnx.merge(setup.graphdef, params)
      drop = nnx.Rngs(dropout=rng)
      # Reference and target images through the ViT as one batch.
      image_tokens = model.encode_image(
          jnp.concatenate([batch["image"], batch["target_image"]]), rngs=drop)
      reference, target_tokens = jnp.split(image_tokens, 2)
      text_hidden = model.encode_text(batch["text_ids"], batch["text_mask"], rngs=drop)
      fused, _ = model.fuse(text_hidden, batch["text_mask"], reference, rngs=drop)
      query = model.text_feature(fused)
      target = model.image_feature(target_tokens)
      temp = model.temperature()
      logits = query @ target.T / temp
      hit = positives[jnp.arange(pid.shape[0]), jnp.argmax(logits, axis=1)]
      return (jnp.mean(losses.soft_cross_entropy(logits, targets)),
              {"accuracy": jnp.mean(hit), "temp": temp})

    return _update(config, setup, state, loss_fn)

  return step


def make_retrieval_step(config: ml_collections.ConfigDict, setup: train_state_lib.Setup
                        ) -> Callable[[FinetuneState, dict], tuple[FinetuneState, dict]]:

  def step(state: FinetuneState, batch: dict) -> tuple[FinetuneState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_neg, k_drop = jax.random.split(rng)
    ids, tmask, pid = batch["text_ids"], batch["text_mask"], batch["product_id"]

    def loss_fn(params):
      model = nnx.merge(setup.graphdef, params)
      drop = nnx.Rngs(dropout=k_drop)
      image_tokens = model.encode_image(batch["image"], rngs=drop)
      text_hidden = model.encode_text(ids, tmask, rngs=drop)
      image_feat = model.image_feature(image_tokens)
      text_feat = model.text_feature(text_hidden)
      # The batch is its own bank (gradients flow through the query side, as through
      # ALBEF's online-vs-momentum sims); every same-product entry is a positive.
      loss_itc, itc_aux = losses.itc_loss(image_feat, text_feat, image_feat, text_feat, pid,
                                          pid, model.temperature(), alpha=0.0)
      loss_itm, mine_stats = train_step_lib.itm_with_mined_negatives(
          model, k_neg, itc_aux["sim_i2t"], pid, ids, text_hidden, tmask, image_tokens,
          config.negatives, drop)
      aux = {"loss_itc": loss_itc, "loss_itm": loss_itm, "temp": model.temperature(),
             **{f"negatives/{k}": v for k, v in mine_stats.items()}}
      return config.loss.itc * loss_itc + config.loss.itm * loss_itm, aux

    return _update(config, setup, state, loss_fn)

  return step


# -- tasks ------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
  """What the loop and the evaluation CLI need of a fine-tuning task.

  Both: `params` are the abstract (sharded) parameters a checkpoint is restored into.
  Built for training also: `state`, the abstract train state, `init_state()` for a
  fresh one, and the `step_fn`.
  """
  name: str
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  graphdef: Any
  params: dict
  # (config, graphdef, params, mesh) -> result blocks (evaluate.py)
  protocols: Callable[..., list[dict]]
  state: FinetuneState | None = None
  init_state: Callable[[], FinetuneState] | None = None
  setup: train_state_lib.Setup | None = None
  train_iter: pipeline.TrainIterator | None = None
  step_fn: Callable[[FinetuneState, dict], tuple[FinetuneState, dict]] | None = None

  def blocks(self, params: dict) -> list[dict]:
    return self.protocols(self.config, self.graphdef, params, self.mesh)

  def evaluate(self, params: dict, workdir: str, writer=None, step: int = 0
               ) -> dict[str, Any]:
    c = self.config
    with evaluate.naming_step(step):
      blocks = self.blocks(params)
    results = {"task": self.name, "step": int(step), "dataset": c.data.name,
               "split": pipeline.EVAL_SPLIT[c.data.name],
               "init_checkpoint": c.get("init_checkpoint", ""), "results": blocks}
    evaluate.write_results(workdir, self.name, results, writer, step)
    return results

  def init_from(self, state: FinetuneState, directory: str) -> FinetuneState:
    """`state` with the pretrained parameters of `directory` (the new head's stay)."""
    params, step = checkpointing.load_pretrained(directory, state.params,
                                   allow_missing=NEW_PARAMS[self.name])
    logging.info("%s: parameters from %s (step %d)", self.name, directory, step)
    return state.replace(params=params)


def validate(config: ml_collections.ConfigDict) -> None:
  config_lib.validate(config)
  task = config.get("task", "pretrain")
  if task not in TASKS:
    raise ValueError(f"config.task={task!r}: fine-tuning tasks are {TASKS}")
  name = config.data.name
  if task == "category":
    if config.finetune.label not in LABELS:
      raise ValueError(f"config.finetune.label={config.finetune.label!r}: expected one of "
                       f"{LABELS}")
    if name not in ("fashiongen", "synthfashion"):
      raise ValueError(f"config.data.name={name!r}: category recognition needs labelled "
                       "products (fashiongen | synthfashion)")
  if task == "tgir" and name != "fashioniq":
    raise ValueError(f"config.data.name={name!r}: the tgir task reads fashioniq")
  if config.data.grouping == "embedding":
    raise ValueError("config.data.grouping='embedding' needs the pretraining step's "
                     "embeddings: fine-tuning supports none | subcategory")
  if task == "retrieval" and name == "fashioniq":
    raise ValueError("config.data.name='fashioniq': use the tgir task")
  evaluate.eval_settings(config)


def build_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
               for_training: bool = True) -> Task:
  """The task's model, evaluation and, `for_training`, its fresh state, data and step
  (evaluation only: nothing is initialised, no training data is opened)."""
  task = config.task
  train.resolve_vocab(config)
  train_iter = None
  if for_training:
    source = tgir_train_source(config) if task == "tgir" else None
    train_iter = pipeline.make_train_iterator(config, source=source)
  if task == "category":
    n = num_classes(config)
    build = lambda: CategoryModel(config.model, n, rngs=nnx.Rngs(params=config.seed))
    protocols = functools.partial(evaluate.category_blocks, num_classes=n)
  else:
    build = lambda: VLP(config.model, rngs=nnx.Rngs(params=config.seed))
    protocols = evaluate.tgir_blocks if task == "tgir" else evaluate.retrieval_blocks
  if not for_training:
    graphdef, params = abstract_params(build, config, mesh)
    return Task(name=task, config=config, mesh=mesh, graphdef=graphdef, params=params,
                protocols=protocols)
  init_state, state, setup = create_finetune_state(config, mesh, build)
  make_step = {"category": make_category_step, "tgir": make_tgir_step,
               "retrieval": make_retrieval_step}[task]
  return Task(name=task, config=config, mesh=mesh, graphdef=setup.graphdef,
              params=state.params, protocols=protocols, state=state, init_state=init_state,
              setup=setup, train_iter=train_iter, step_fn=make_step(config, setup))


# -- the loop ---------------------------------------------------------------------------


def finetune_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Fine-tunes `config.task` from `config.init_checkpoint`, evaluates at the end."""
  validate(config)
  train.resolve_vocab(config)  # before config.json is written: it records the values used
  writer = train.start_run(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  task = build_task(config, mesh)
  train_iter = task.train_iter
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    keep=config.keep_checkpoints, keep_every=config.keep_every)
  if ckpt.latest_step() is not None:  # resume: init_checkpoint is not read again
    state, data_state, _ = ckpt.restore(task.state)
    train_iter.set_state(data_state)
  else:
    state = task.init_state()
    if config.get("init_checkpoint", ""):
      state = task.init_from(state, config.init_checkpoint)
    else:
      logging.warning("config.init_checkpoint is empty: fine-tuning from random weights")
  return train.run_loop(
      config, workdir, state=state, step_fn=task.step_fn, setup=task.setup,
      train_iter=train_iter, ckpt=ckpt, writer=writer,
      evaluate=lambda s, step: task.evaluate(s.params, workdir, writer, step), name=task.name)
