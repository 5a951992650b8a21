"""One retrieval scorer for every protocol: scores, ranks of the best positive, R@k.

Every protocol of docs/method.md section 7 is "queries meet candidates; a candidate is a
positive of a query when their keys are equal":

* `full_gallery` (FashionGen, SynthFashion): all eval views against one text per
  product, key = product. An image query hits when its product's text is retrieved, a
  text query when *any* view of its product is (several positives per row).
* `karpathy` (COCO / Flickr30K): images against all captions, key = image position; an
  image query hits on any of its (5) captions, a caption on its image.
* `one_plus_100` (FashionBERT): per query its positive and 100 products of the same
  subcategory (`sample_one_plus_100`), a random view each; repeated over rounds with
  fixed seeds, mean and std reported.
* `twins` (SynthFashion): per product view, the product against its twins, products
  one attribute (colour, pattern, a detail's presence, colour or side) away
  (`synthfashion.twin_records`); R@1 per attribute, the twins the view cannot show
  counted apart, and a detail's presence and side split by which image shows the
  changed detail (`twins_recall`). The other protocols are mostly won on garment type
  and colour; this one isolates details.

A product's text is the text of its first record (FashionGen repeats the description
on every view row).

Scoring (`Scorer`): `itc` ranks by the cosine of the projected features; `itc+itm`
(ALBEF) takes each query's ITC top-k candidates and re-ranks them by the ITM head's
positive logit on the fused (image, text) pair. Candidates outside the top-k keep their
ITC order below every re-ranked candidate (ALBEF fills them with -100, which breaks
their order and could exceed a very negative ITM logit). The ITM logits come from
`ItmPairs`: fixed-size, jitted, sharded batches of (image, text) pairs; no pair is
scored in a Python loop.

Ties are counted against the query: the rank of a query's best positive is the number
of non-positives scoring >= it. A model that scores everything equal gets R@1 = 0,
never 100, so a collapsed model cannot look good. Non-finite features or scores are
an error (`NonFiniteError`, naming the array): `x >= NaN` is False, so a NaN model
would otherwise rank every positive first.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from syncmask_jax import config_lib, console
from syncmask_jax.data import pipeline, synthfashion

NO_POSITIVE = np.iinfo(np.int64).max  # rank of a query without positives: never a hit
# (image_index (P,), text_index (P,)) -> (P,) ITM positive logits.
PairScores = Callable[[np.ndarray, np.ndarray], np.ndarray]


class NonFiniteError(ValueError):
  """NaN or inf in retrieval features or scores (a diverged or collapsed model)."""


def check_finite(name: str, x: np.ndarray) -> None:
  """NonFiniteError naming `name` when `x` (rows first) holds a NaN or inf."""
  bad = ~np.isfinite(np.asarray(x))
  if bad.any():
    rows = np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))
    raise NonFiniteError(f"{name}: {int(bad.sum())} non-finite values in {len(rows)} of "
                         f"{len(bad)} rows (first: row {rows[0]}); ranks of NaN scores "
                         "would read as hits")


# -- ranks and recall -------------------------------------------------------------------


def best_positive_rank(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
  """(Q, C) scores and bool positives -> (Q,) 0-based rank of each query's best positive.

  Ties count against the query. A query without any positive (a FashionIQ target
  missing from the gallery) gets NO_POSITIVE, a miss at every k.
  """
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  best = np.max(np.where(positives, scores, -np.inf), axis=1, keepdims=True)
  ahead = np.sum((scores >= best) & ~positives, axis=1)
  return np.where(positives.any(axis=1), ahead, NO_POSITIVE)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """R@k in % of 0-based ranks."""
  ranks = np.asarray(ranks)
  return {f"r{k}": float(np.mean(ranks < k) * 100.0) for k in ks}


def bidirectional_metrics(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray,
                          ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """i2t_r{k}, t2i_r{k} and r_mean (mean of all of them), in %."""
  i2t, t2i = recall_at_k(i2t_ranks, ks), recall_at_k(t2i_ranks, ks)
  out = {f"i2t_{k}": v for k, v in i2t.items()}
  out.update({f"t2i_{k}": v for k, v in t2i.items()})
  out["r_mean"] = float(np.mean(list(i2t.values()) + list(t2i.values())))
  return out


# -- the scorer -------------------------------------------------------------------------


@dataclasses.dataclass
class Scorer:
  """`itc` or `itc+itm` scores of queries against their candidates.

  `itm(image_index, text_index)` gives the ITM positive logits of index pairs into the
  image and text sets the features came from (an `ItmPairs`); needed for `itc+itm`.
  """
  scoring: str = "itc"
  k: int = 256
  itm: PairScores | None = None

  def __post_init__(self):
    if self.scoring not in config_lib.EVAL_SCORINGS:
      raise ValueError(f"config.eval.scoring: {self.scoring!r}, expected one of "
                       f"{config_lib.EVAL_SCORINGS}")
    if self.scoring == "itc+itm" and (self.itm is None or self.k < 1):
      raise ValueError("itc+itm scoring needs an ITM pair scorer and k >= 1")

  def scores(self, sim: np.ndarray, query_index: np.ndarray, candidates: np.ndarray,
             query_is_image: bool) -> np.ndarray:
    """(Q, C) final scores from the (Q, C) ITC cosines of queries vs their candidates.

    `query_index` (Q,) and `candidates` (Q, C) index the query and candidate sets
    (images or texts per `query_is_image`), for the ITM pairs. Candidates tied at the
    k-th ITC score enter the top k in an arbitrary order.
    """
    if self.scoring == "itc":
      return sim
    q, c = sim.shape
    k = min(self.k, c)
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    query = np.repeat(np.asarray(query_index), k)
    cand = np.take_along_axis(np.asarray(candidates), top, axis=1).reshape(-1)
    image, text = (query, cand) if query_is_image else (cand, query)
    itm = np.asarray(self.itm(image, text), np.float64).reshape(q, k)
    # Shift the ITC scores so the best of them lies 1 below the worst re-ranked one.
    out = sim - sim.max(axis=1, keepdims=True) + itm.min(axis=1, keepdims=True) - 1.0
    np.put_along_axis(out, top, itm, axis=1)
    return out


def rank_queries(query_feat: np.ndarray, gallery_feat: np.ndarray, query_key: np.ndarray,
                 gallery_key: np.ndarray, scorer: Scorer, *, query_is_image: bool,
                 candidates: np.ndarray | None = None, query_index: np.ndarray | None = None,
                 chunk: int = 1024, names: tuple[str, str] = ("query features",
                                                              "gallery features")
                 ) -> np.ndarray:
  """0-based rank of each query's best positive among its candidates.

  Features are L2-normalised (Q, D) and (G, D). `candidates` (Q, C) indexes the gallery
  per query (1+100); None means the whole gallery. A candidate is a positive when its
  key equals the query's. `query_index` (Q,) places the queries in the image or text
  set the ITM pairs index (default: the queries are that set). Queries go in chunks,
  so (Q, G) never needs to fit at once. `names` name the two feature arrays in the
  NonFiniteError raised when they, or the scores, are not finite.
  """
  query_key, gallery_key = np.asarray(query_key), np.asarray(gallery_key)
  ranks = []
  for rows, cand, scores in scored_chunks(query_feat, gallery_feat, scorer,
                                          query_is_image=query_is_image, candidates=candidates,
                                          query_index=query_index, chunk=chunk, names=names):
    ranks.append(best_positive_rank(scores, query_key[rows][:, None] == gallery_key[cand]))
  return np.concatenate(ranks) if ranks else np.zeros((0,), np.int64)


def scored_chunks(query_feat: np.ndarray, gallery_feat: np.ndarray, scorer: Scorer, *,
                  query_is_image: bool, candidates: np.ndarray | None = None,
                  query_index: np.ndarray | None = None, chunk: int = 1024,
                  names: tuple[str, str] = ("query features", "gallery features")
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """(query rows, (R, C) candidate gallery indices, (R, C) final scores) per chunk of
  queries; arguments as `rank_queries`, which ranks them by key."""
  query_feat = np.asarray(query_feat, np.float32)
  gallery_feat = np.asarray(gallery_feat, np.float32)
  for name, feat in zip(names, (query_feat, gallery_feat)):
    check_finite(name, feat)
  query_index = np.arange(len(query_feat)) if query_index is None else np.asarray(query_index)
  if scorer.scoring == "itc+itm":  # the long part of an evaluation: its ETA in the log
    per_query = min(scorer.k, len(gallery_feat) if candidates is None
                    else np.shape(candidates)[1])
    countdown = console.Countdown(f"ITM re-ranking, {names[0]} vs {names[1]}",
                                  len(query_feat) * per_query, "pairs")
    scorer = dataclasses.replace(scorer, itm=_counted(scorer.itm, countdown))
  for start in range(0, len(query_feat), chunk):
    rows = np.arange(start, min(start + chunk, len(query_feat)))
    if candidates is None:
      cand = np.broadcast_to(np.arange(len(gallery_feat)), (len(rows), len(gallery_feat)))
      sim = query_feat[rows] @ gallery_feat.T
    else:
      cand = np.asarray(candidates[rows])
      sim = np.einsum("qd,qcd->qc", query_feat[rows], gallery_feat[cand])
    scores = scorer.scores(sim.astype(np.float64), query_index[rows], cand, query_is_image)
    check_finite(f"{scorer.scoring} scores of {names[0]} (from row {start}) vs {names[1]}",
                 scores)
    yield rows, cand, scores


def _counted(itm: PairScores, countdown: console.Countdown) -> PairScores:
  """`itm`, asked in slices of whole ITM batches (no more padding) so that `countdown`
  follows the pairs of a chunk."""
  step = 16 * getattr(itm, "batch_size", 256)

  def scores(image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(image_index), step):
      out.append(np.asarray(itm(image_index[start:start + step],
                                text_index[start:start + step])))
      countdown.add(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  return scores


# -- protocols --------------------------------------------------------------------------


def bidirectional(image_feat: np.ndarray, image_key: np.ndarray, text_feat: np.ndarray,
                  text_key: np.ndarray, scorer: Scorer, chunk: int = 1024) -> dict[str, Any]:
  """Every image against every text and back: `full_gallery` and `karpathy`."""
  i2t = rank_queries(image_feat, text_feat, image_key, text_key, scorer, query_is_image=True,
                     chunk=chunk, names=("image_feat", "text_feat"))
  t2i = rank_queries(text_feat, image_feat, text_key, image_key, scorer, query_is_image=False,
                     chunk=chunk, names=("text_feat", "image_feat"))
  out: dict[str, Any] = {"num_images": int(len(image_feat)), "num_texts": int(len(text_feat))}
  out.update(bidirectional_metrics(i2t, t2i))
  return out


@dataclasses.dataclass(frozen=True)
class OnePlus100:
  """One round of the 1+100 protocol; column 0 of each row is the positive product.

  products (Q, 1+n): product indices (into the unique products) of each query's row;
  records (Q, 1+n): the random view (record index) drawn for each of them;
  topped_up (Q,): how many of the row's negatives come from other subcategories.
  """
  products: np.ndarray
  records: np.ndarray
  topped_up: np.ndarray


def product_table(product_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(unique product ids in order of first record, first record of each, product index of
  each record)."""
  product_id = np.asarray(product_id)
  _, first, inverse = np.unique(product_id, return_index=True, return_inverse=True)
  # np.unique sorts by id; renumber products by their first record (source order).
  order = np.argsort(first, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  return product_id[first[order]], first[order], rank[inverse.reshape(-1)]


def sample_one_plus_100(product_id: np.ndarray, subcategory: np.ndarray, *,
                        num_queries: int = 1000, num_negatives: int = 100,
                        seed: int = 0) -> OnePlus100:
  """FashionBERT's 1+100 sampler over eval records, deterministic by `seed`.

  Draws min(num_queries, #products) query products; for each, `num_negatives` other
  products of its subcategory (all of them when fewer exist, topped up uniformly from
  the other subcategories; at most #products - 1 in all), then one random view of
  every product of the row. A subcategory id < 0 (a label unseen in train) is unknown:
  such products are never "same subcategory" and their rows are all top-up.
  """
  _, first, record_product = product_table(product_id)
  num_products = len(first)
  sub = np.asarray(subcategory)[first]
  by_product = np.argsort(record_product, kind="stable")
  counts = np.bincount(record_product, minlength=num_products)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rng = np.random.default_rng(seed)
  q = min(num_queries, num_products)
  n = min(num_negatives, num_products - 1)
  queries = rng.choice(num_products, q, replace=False)
  members = {s: np.flatnonzero(sub == s) for s in np.unique(sub) if s >= 0}
  rows = np.empty((q, 1 + n), np.int64)
  topped_up = np.zeros(q, np.int64)
  for i, p in enumerate(queries):
    same = members.get(sub[p], np.zeros(0, np.int64)) if sub[p] >= 0 else np.zeros(0, np.int64)
    same = same[same != p]
    if len(same) >= n:
      negatives = rng.choice(same, n, replace=False)
    else:
      others = np.setdiff1d(np.arange(num_products), np.append(same, p))
      negatives = np.concatenate([same, rng.choice(others, n - len(same), replace=False)])
      topped_up[i] = n - len(same)
    rows[i, 0], rows[i, 1:] = p, negatives
  view = (rng.random(rows.shape) * counts[rows]).astype(np.int64)
  return OnePlus100(products=rows, records=by_product[starts[rows] + view], topped_up=topped_up)


def one_plus_100(image_feat: np.ndarray, record_product: np.ndarray, text_feat: np.ndarray,
                 sample: OnePlus100, scorer: Scorer) -> dict[str, float]:
  """R@k of one 1+100 round: images are records, texts one per product (by index)."""
  query_records, query_products = sample.records[:, 0], sample.products[:, 0]
  i2t = rank_queries(image_feat[query_records], text_feat, record_product[query_records],
                     np.arange(len(text_feat)), scorer, query_is_image=True,
                     candidates=sample.products, query_index=query_records,
                     names=("image_feat", "text_feat"))
  t2i = rank_queries(text_feat[query_products], image_feat, query_products, record_product,
                     scorer, query_is_image=False, candidates=sample.records,
                     query_index=query_products, names=("text_feat", "image_feat"))
  return bidirectional_metrics(i2t, t2i)


def one_plus_100_rounds(image_feat: np.ndarray, product_id: np.ndarray,
                        subcategory: np.ndarray, text_feat: np.ndarray, scorer: Scorer, *,
                        num_queries: int = 1000, num_negatives: int = 100, rounds: int = 5,
                        seed: int = 0) -> dict[str, Any]:
  """The 1+100 protocol: `rounds` rounds with seeds seed, seed+1, ...; mean and std.

  image_feat (R, D) per record, text_feat (P, D) per product in `product_table` order.
  """
  _, _, record_product = product_table(product_id)
  per_round, topped_rows, topped_negatives, num_q, num_n = [], [], [], 0, 0
  for r in range(rounds):
    sample = sample_one_plus_100(product_id, subcategory, num_queries=num_queries,
                                 num_negatives=num_negatives, seed=seed + r)
    per_round.append(one_plus_100(image_feat, record_product, text_feat, sample, scorer))
    topped_rows.append(float(np.mean(sample.topped_up > 0)))
    topped_negatives.append(float(np.mean(sample.topped_up)))
    num_q, num_n = sample.products.shape[0], sample.products.shape[1] - 1
  out: dict[str, Any] = {
      "num_images": int(len(image_feat)), "num_texts": int(len(text_feat)),
      "num_queries": num_q, "num_queries_asked": int(num_queries), "num_negatives": num_n,
      "rounds": int(rounds), "seeds": [seed + r for r in range(rounds)],
      "spread": "std over rounds (ddof=0)",
      "share_of_rows_topped_up": float(np.mean(topped_rows)),
      "topped_up_negatives_per_row": float(np.mean(topped_negatives))}
  for key in per_round[0]:
    values = np.array([m[key] for m in per_round])
    out[key] = float(values.mean())
    out[f"{key}_std"] = float(values.std())
  return out


def twins_recall(image_feat: np.ndarray, text_feat: np.ndarray, groups: dict[str, Any],
                 scorer: Scorer, ks: Sequence[int] = (1,)) -> dict[str, Any]:
  """The 1+K twins protocol: R@k of a product against its one-attribute twins.

  `groups` as `synthfashion.twin_records` builds them: per query (a product's view)
  query_image / query_text index the image / text sets the features (and the scorer's
  ITM pairs) come from; member_image / member_text (Q, C) the candidates, slot 0 the
  product itself, the rest its twins with member_attribute (index into
  groups["attributes"], -1: an empty slot) and member_visible (the query's view shows
  the change). i2t: the view's image against the product's and its twins' texts; t2i:
  the product's text against the same view of the product and its twins. Each
  direction is scored once over the whole row (ITM re-ranks its ITC top k there); every
  reported row then ranks slot 0 among a subset of it: all visible twins
  (`{d}_r{k}`), one attribute's visible twins (`{d}_r{k}_{attribute}`), and the same
  for the twins the view does not show (`..._invisible`: chance is the best a model can
  do; t2i ties there by construction, the images being the same). With member_shown
  (`Twin.shown_by`), each attribute's visible twins are also split by which image of the
  view shows the change: `..._in_product` (the product's view shows it, the twin's
  lacks it: a detail removed, or moved to the mirror side) and `..._in_twin` (the
  twin's view shows it and the product's lacks it: a detail added, or moved here; the
  product must be told by what its image lacks). A query joins a row when it has at
  least one twin in it (`num_queries...`); a row without queries is left out. Ties count against the query (`best_positive_rank`): a model blind to an
  attribute scores identical twins equal and gets R@1 = 0 on it, not 1/(K+1).
  `r1_chance...`: each row's R@1 by chance (a scorer that orders a row at random), the
  mean over its queries of 1 / (1 + its twins there): 1+15 overall, 1+3 per attribute,
  fewer where the view hides some twins.
  """
  names = tuple(groups["attributes"])
  attribute = np.asarray(groups["member_attribute"])
  if attribute.ndim != 2 or not len(attribute):
    raise ValueError(f"groups['member_attribute']: shape {attribute.shape}, expected "
                     "(queries >= 1, 1 + twins)")
  visible = np.asarray(groups["member_visible"], bool)
  scores = {}
  for direction, query_feat, query_index, gallery_feat, candidates, is_image, feat_names in (
      ("i2t", image_feat, groups["query_image"], text_feat, groups["member_text"], True,
       ("image_feat", "text_feat")),
      ("t2i", text_feat, groups["query_text"], image_feat, groups["member_image"], False,
       ("text_feat", "image_feat"))):
    query_index = np.asarray(query_index)
    chunks = scored_chunks(np.asarray(query_feat)[query_index], gallery_feat, scorer,
                           query_is_image=is_image, candidates=np.asarray(candidates),
                           query_index=query_index, names=feat_names)
    scores[direction] = np.concatenate([c[2] for c in chunks])
  out: dict[str, Any] = {"num_queries": int(len(attribute)),
                         "num_products": int(len(np.unique(groups["query_text"]))),
                         "twin_slots": int(attribute.shape[1] - 1), "attributes": list(names)}
  twin = attribute >= 0
  selections = [("", twin)] + [(f"_{n}", attribute == a) for a, n in enumerate(names)]
  splits = [(visible, ""), (~visible, "_invisible")]
  if "member_shown" in groups:
    shown_by = np.asarray(groups["member_shown"])
    splits += [(shown_by == synthfashion.SHOWN_IN_PRODUCT, "_in_product"),
               (shown_by == synthfashion.SHOWN_IN_TWIN, "_in_twin")]
  for suffix, selected in selections:
    for shown, tail in splits:
      if not suffix and tail in ("_in_product", "_in_twin"):
        continue  # per attribute only: colour and pattern changes are shown in both
      mask = selected & shown
      mask[:, 0] = True
      rows = np.flatnonzero(mask[:, 1:].any(axis=1))
      out[f"num_queries{suffix}{tail}"] = int(len(rows))
      if not len(rows):
        continue
      out[f"r1_chance{suffix}{tail}"] = float(np.mean(100.0 / mask[rows].sum(axis=1)))
      # Unselected slots point at slot 0: a second copy of the positive changes no rank.
      cols = np.where(mask[rows], np.arange(mask.shape[1]), 0)
      for direction, s in scores.items():
        ranks = best_positive_rank(np.take_along_axis(s[rows], cols, axis=1), cols == 0)
        out.update({f"{direction}_{k}{suffix}{tail}": v
                    for k, v in recall_at_k(ranks, ks).items()})
  return out


# -- model-backed ITM -------------------------------------------------------------------


def host_rows(n: int) -> slice:
  """This process's contiguous rows of an n-row global batch (`make_global_batch`)."""
  p, count = jax.process_index(), jax.process_count()
  return slice(p * n // count, (p + 1) * n // count)


@functools.lru_cache(maxsize=16)
def _itm_logits_fn(graphdef: Any, mesh: jax.sharding.Mesh) -> Callable:
  """Jitted (params, tables, pair indices) -> ITM positive logits, one per (model, mesh)."""

  def logits(params, image_tokens, text_hidden, text_mask, image_index, text_index):
    model = nnx.merge(graphdef, params)
    fused, _ = model.fuse(text_hidden[text_index], text_mask[text_index],
                          image_tokens[image_index])
    return model.itm_logits(fused)[:, 1]

  # Replicated out: every process gets every logit (multi-host eval).
  return jax.jit(logits, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))


def _replicated(x: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host table on every device of the mesh (each process holds the whole table)."""
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(x.shape, s, lambda index: x[index])


class ItmPairs:
  """ITM positive logits of (image, text) index pairs, from stored encoder outputs.

  image_tokens (I, 1+N, W) are the ViT outputs, text_hidden (T, L, W) and text_mask
  (T, L) the text encoder's. The tables are put once on every device (replicated:
  (I (1+N) + T L) W values per device, e.g. 13 GB in bf16 for FashionGen's 32.5k
  validation views at ViT-B/16 256 px) so a batch moves only its pair indices; pairs
  run through the fusion encoder and the ITM head in jitted batches of `batch_size`
  (padded), sharded over the mesh's data axes.
  """

  def __init__(self, graphdef: Any, params: Any, mesh: jax.sharding.Mesh,
               image_tokens: np.ndarray, text_hidden: np.ndarray, text_mask: np.ndarray,
               batch_size: int = 256):
    self.params, self.mesh, self.batch_size = params, mesh, int(batch_size)
    self.tables = tuple(_replicated(np.asarray(x), mesh)
                        for x in (image_tokens, text_hidden, text_mask))
    self._logits = _itm_logits_fn(graphdef, mesh)

  def __call__(self, image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
    image_index = np.asarray(image_index, np.int32)
    text_index = np.asarray(text_index, np.int32)
    n, b = len(image_index), self.batch_size
    out = np.empty((n,), np.float32)
    rows = host_rows(b)
    for start in range(0, n, b):
      # Padded by repeating the batch's pairs: one compiled shape.
      pairs = pipeline.make_global_batch(
          {"image": np.resize(image_index[start:start + b], b)[rows],
           "text": np.resize(text_index[start:start + b], b)[rows]}, self.mesh)
      got = self._logits(self.params, *self.tables, pairs["image"], pairs["text"])
      out[start:start + b] = np.asarray(jax.device_get(got))[:min(b, n - start)]
    return out
