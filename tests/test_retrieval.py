"""Retrieval metrics against brute force, the 1+100 sampler, itc vs itc+itm, and the
retrieval fine-tuning task end to end (ITC + ITM steps, then every protocol)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from syncmask_jax import console, retrieval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _brute_rank(scores, positives):
  """Position of the first positive when sorting by score, non-positives first on ties."""
  ranks = []
  for s, p in zip(scores, positives):
    if not p.any():
      ranks.append(retrieval.NO_POSITIVE)
      continue
    order = sorted(range(len(s)), key=lambda j: (-s[j], bool(p[j])))
    ranks.append(next(i for i, j in enumerate(order) if p[j]))
  return np.array(ranks)


def _brute_recall(ranks, k):
  return 100.0 * sum(1 for r in ranks if r < k) / len(ranks)


@pytest.mark.parametrize("seed", range(4))
def test_best_positive_rank_matches_brute_force_with_ties_and_multi_positive(seed):
  rs = np.random.RandomState(seed)
  # Scores on a coarse grid: many ties. Rows with 0, 1 or several positives.
  scores = rs.randint(0, 4, (30, 12)).astype(np.float32) / 4
  positives = rs.rand(30, 12) < rs.choice([0.0, 0.1, 0.4], (30, 1))
  ranks = retrieval.best_positive_rank(scores, positives)
  np.testing.assert_array_equal(ranks, _brute_rank(scores, positives))
  for k, v in retrieval.recall_at_k(ranks, (1, 5, 10)).items():
    assert v == pytest.approx(_brute_recall(_brute_rank(scores, positives), int(k[1:])))


def test_ties_count_against_the_query():
  scores = np.zeros((2, 5))
  positives = np.eye(2, 5, dtype=bool)
  # All equal: every non-positive ties with the positive, so it ranks last, not first.
  np.testing.assert_array_equal(retrieval.best_positive_rank(scores, positives), [4, 4])
  assert retrieval.recall_at_k([4, 4], (1,)) == {"r1": 0.0}
  # No positive at all: never a hit, at any k, even k >= the number of candidates.
  ranks = retrieval.best_positive_rank(np.ones((2, 3)), np.array([[0, 0, 0], [0, 1, 0]], bool))
  assert retrieval.recall_at_k(ranks, (1, 3, 10)) == {"r1": 0.0, "r3": 50.0, "r10": 50.0}


def test_full_gallery_text_hits_on_any_view_of_its_product():
  # 3 products; images are views (product of each below), one text per product.
  image_product = np.array([0, 0, 0, 1, 1, 2])
  # Features on orthogonal axes so the similarity is what we write here.
  sim = np.array([[0.1, 0.9, 0.2],   # image 0 (product 0) prefers text 1: miss @1
                  [0.8, 0.1, 0.0],   # image 1 (product 0) prefers text 0: hit
                  [0.3, 0.2, 0.1],   # hit
                  [0.0, 0.5, 0.4],   # image 3 (product 1): hit
                  [0.6, 0.3, 0.2],   # image 4 (product 1): text 1 second
                  [0.2, 0.1, 0.7]])  # image 5 (product 2): hit
  image_feat, text_feat = _factor(sim)
  scorer = retrieval.Scorer("itc")
  out = retrieval.bidirectional(image_feat, image_product, text_feat, np.arange(3), scorer)
  assert out["num_images"] == 6 and out["num_texts"] == 3
  assert out["i2t_r1"] == pytest.approx(100 * 4 / 6)
  # Text 0: best image 1 (product 0): hit. Text 1: best image 0 (product 0) but image 3
  # (product 1) is second: miss @1, hit @5. Text 2: image 5: hit.
  assert out["t2i_r1"] == pytest.approx(100 * 2 / 3)
  assert out["t2i_r5"] == 100.0
  # Brute force over the whole matrix, both directions.
  pos = image_product[:, None] == np.arange(3)[None, :]
  np.testing.assert_allclose(
      out["r_mean"], np.mean([_brute_recall(_brute_rank(sim, pos), k) for k in (1, 5, 10)]
                             + [_brute_recall(_brute_rank(sim.T, pos.T), k)
                                for k in (1, 5, 10)]), rtol=1e-6)


def _factor(sim):
  """Unit image and text features whose cosines are `sim / c` for one constant c.

  Texts are one-hot; image i is (sim[i], pad) / c with the pad making its norm 1.
  """
  n_t = sim.shape[1]
  norms = np.linalg.norm(sim, axis=1)
  big = norms.max() + 1.0
  image = np.concatenate([sim, np.sqrt(big ** 2 - norms ** 2)[:, None]], axis=1) / big
  text = np.concatenate([np.eye(n_t), np.zeros((n_t, 1))], axis=1)
  return image.astype(np.float32), text.astype(np.float32)


def test_karpathy_image_hits_on_any_of_its_captions():
  rs = np.random.RandomState(0)
  image_feat = _unit(rs.randn(6, 16))
  text_feat = _unit(rs.randn(30, 16))
  text_image = np.repeat(np.arange(6), 5)
  out = retrieval.bidirectional(image_feat, np.arange(6), text_feat, text_image,
                                retrieval.Scorer("itc"), chunk=4)
  sim = image_feat @ text_feat.T
  pos = np.arange(6)[:, None] == text_image[None, :]
  for k in (1, 5, 10):
    assert out[f"i2t_r{k}"] == pytest.approx(_brute_recall(_brute_rank(sim, pos), k))
    assert out[f"t2i_r{k}"] == pytest.approx(_brute_recall(_brute_rank(sim.T, pos.T), k))


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# -- 1+100 ---------------------------------------------------------------------------------


def _catalogue(num_products, subcategories, seed=0, views=(1, 4)):
  rs = np.random.RandomState(seed)
  product_id, subcategory = [], []
  for p in range(num_products):
    for _ in range(rs.randint(*views)):
      product_id.append(5000 + 7 * p)  # ids need not be dense
      subcategory.append(subcategories[p])
  return np.array(product_id), np.array(subcategory)


def test_one_plus_100_negatives_share_the_subcategory_when_enough_exist():
  subs = np.repeat([0, 1, 2], 150)
  pid, sub = _catalogue(450, subs)
  s = retrieval.sample_one_plus_100(pid, sub, num_queries=200, seed=3)
  assert s.products.shape == (200, 101) and s.records.shape == (200, 101)
  assert (s.topped_up == 0).all()
  product_sub = subs
  np.testing.assert_array_equal(product_sub[s.products[:, 1:]],
                                np.repeat(product_sub[s.products[:, :1]], 100, axis=1))
  assert len(set(s.products[:, 0])) == 200  # distinct query products
  _check_rows(s, pid)


def _check_rows(s, pid):
  _, _, record_product = retrieval.product_table(pid)
  # No positive among the negatives, no product twice in a row.
  assert not (s.products[:, 1:] == s.products[:, :1]).any()
  assert all(len(set(r)) == len(r) for r in s.products)
  # Each drawn view is a record of its product.
  np.testing.assert_array_equal(record_product[s.records], s.products)


def test_one_plus_100_tops_up_small_subcategories_and_unknown_labels():
  # Subcategory 0 has 10 products, subcategory 1 has 200, 5 products are unknown (-1).
  subs = np.array([0] * 10 + [1] * 200 + [-1] * 5)
  pid, sub = _catalogue(len(subs), subs, seed=1)
  s = retrieval.sample_one_plus_100(pid, sub, num_queries=215, seed=0)
  q_sub = subs[s.products[:, 0]]
  small = q_sub == 0
  assert (s.topped_up[small] == 91).all()  # 9 same-subcategory + 91 others
  for row in s.products[small]:
    assert set(np.flatnonzero(subs == 0)) - {row[0]} <= set(row[1:])
  assert (s.topped_up[q_sub == 1] == 0).all()
  assert (s.topped_up[q_sub == -1] == 100).all()  # unknown: never "same subcategory"
  _check_rows(s, pid)


def test_one_plus_100_fewer_products_than_asked():
  subs = np.array([0] * 30 + [1] * 20)
  pid, sub = _catalogue(50, subs, seed=2)
  s = retrieval.sample_one_plus_100(pid, sub, num_queries=1000, num_negatives=100, seed=0)
  assert s.products.shape == (50, 50)  # every product once, 49 negatives each
  _check_rows(s, pid)


def test_one_plus_100_is_deterministic_by_seed():
  subs = np.repeat([0, 1], 120)
  pid, sub = _catalogue(240, subs, seed=4)
  a = retrieval.sample_one_plus_100(pid, sub, num_queries=50, seed=7)
  b = retrieval.sample_one_plus_100(pid, sub, num_queries=50, seed=7)
  c = retrieval.sample_one_plus_100(pid, sub, num_queries=50, seed=8)
  np.testing.assert_array_equal(a.products, b.products)
  np.testing.assert_array_equal(a.records, b.records)
  assert not np.array_equal(a.products, c.products)


def test_one_plus_100_rounds_match_brute_force():
  subs = np.repeat([0, 1, 2], 40)
  pid, sub = _catalogue(120, subs, seed=5)
  _, first, record_product = retrieval.product_table(pid)
  rs = np.random.RandomState(0)
  image_feat = _unit(rs.randn(len(pid), 8))
  text_feat = _unit(rs.randn(len(first), 8))
  out = retrieval.one_plus_100_rounds(image_feat, pid, sub, text_feat,
                                      retrieval.Scorer("itc"), num_queries=30,
                                      num_negatives=20, rounds=3, seed=11)
  per_round = []
  for r in range(3):
    s = retrieval.sample_one_plus_100(pid, sub, num_queries=30, num_negatives=20, seed=11 + r)
    i2t, t2i = [], []
    for products, records in zip(s.products, s.records):
      q_img, q_txt = image_feat[records[0]], text_feat[products[0]]
      sims_i2t = np.array([q_img @ text_feat[p] for p in products])
      sims_t2i = np.array([q_txt @ image_feat[x] for x in records])
      # The positive is column 0; ties count against the query.
      i2t.append(sum(1 for v in sims_i2t[1:] if v >= sims_i2t[0]))
      t2i.append(sum(1 for v in sims_t2i[1:] if v >= sims_t2i[0]))
    per_round.append({f"i2t_r{k}": _brute_recall(i2t, k) for k in (1, 5, 10)}
                     | {f"t2i_r{k}": _brute_recall(t2i, k) for k in (1, 5, 10)})
  for key in per_round[0]:
    values = [m[key] for m in per_round]
    assert out[key] == pytest.approx(np.mean(values))
    assert out[f"{key}_std"] == pytest.approx(np.std(values))
  assert out["num_queries"] == 30 and out["num_negatives"] == 20 and out["rounds"] == 3
  assert out["seeds"] == [11, 12, 13]


# -- itc vs itc+itm ------------------------------------------------------------------------


def _features(seed=0, images=40, products=12):
  rs = np.random.RandomState(seed)
  image_product = rs.randint(0, products, images)
  image_product[:products] = np.arange(products)
  return (_unit(rs.randn(images, 8)), image_product, _unit(rs.randn(products, 8)),
          np.arange(products))


def test_itc_itm_with_an_itm_head_that_copies_itc_ranks_like_itc():
  image_feat, image_key, text_feat, text_key = _features()
  calls = []

  def cosine_itm(image_index, text_index):
    calls.append(len(image_index))
    return np.sum(image_feat[image_index] * text_feat[text_index], axis=-1)

  itc = retrieval.Scorer("itc")
  rerank = retrieval.Scorer("itc+itm", k=3, itm=cosine_itm)
  a = retrieval.bidirectional(image_feat, image_key, text_feat, text_key, itc)
  b = retrieval.bidirectional(image_feat, image_key, text_feat, text_key, rerank, chunk=7)
  assert a == b
  assert sum(calls) == 3 * (40 + 12)  # k pairs per query, in both directions
  # The 1+100 path too (its queries are gathered rows: the ITM pairs must be remapped).
  subs = np.zeros(len(text_feat), int)[image_key]
  kw = dict(num_queries=10, num_negatives=6, rounds=2, seed=0)
  assert (retrieval.one_plus_100_rounds(image_feat, image_key, subs, text_feat, itc, **kw)
          == retrieval.one_plus_100_rounds(image_feat, image_key, subs, text_feat,
                                           rerank, **kw))


def test_itc_itm_reranks_only_the_top_k_by_itm():
  image_feat, image_key, text_feat, text_key = _features(seed=1)
  rs = np.random.RandomState(2)
  table = rs.randn(len(image_feat), len(text_feat))
  k = 4
  scorer = retrieval.Scorer("itc+itm", k=k, itm=lambda i, t: table[i, t])
  got = retrieval.rank_queries(image_feat, text_feat, image_key, text_key, scorer,
                               query_is_image=True)
  got_t2i = retrieval.rank_queries(text_feat, image_feat, text_key, image_key, scorer,
                                   query_is_image=False)
  sim = image_feat @ text_feat.T

  def brute(sim, itm, positives):
    ranks = []
    for s, m, p in zip(sim, itm, positives):
      top = sorted(range(len(s)), key=lambda j: -s[j])[:k]
      rest = sorted(set(range(len(s))) - set(top), key=lambda j: -s[j])
      order = sorted(top, key=lambda j: -m[j]) + rest
      ranks.append(next(i for i, j in enumerate(order) if p[j]))
    return np.array(ranks)

  pos = image_key[:, None] == text_key[None, :]
  np.testing.assert_array_equal(got, brute(sim, table, pos))
  np.testing.assert_array_equal(got_t2i, brute(sim.T, table.T, pos.T))
  # And it is a different ranking from itc alone (the test can tell them apart).
  itc = retrieval.rank_queries(image_feat, text_feat, image_key, text_key,
                               retrieval.Scorer("itc"), query_is_image=True)
  assert not np.array_equal(itc, got)


def test_non_finite_features_or_scores_are_an_error_naming_the_array():
  image_feat, image_key, text_feat, text_key = _features()
  nan_images = image_feat.copy()
  nan_images[3] = np.nan  # `x >= NaN` is False: these queries would all be hits
  with pytest.raises(retrieval.NonFiniteError, match=r"image_feat: 8 non-finite values "
                                                     r"in 1 of 40 rows \(first: row 3\)"):
    retrieval.bidirectional(nan_images, image_key, text_feat, text_key,
                            retrieval.Scorer("itc"))
  nan_itm = retrieval.Scorer("itc+itm", k=3, itm=lambda i, t: np.where(i == 5, np.nan, 0.0))
  with pytest.raises(retrieval.NonFiniteError, match=r"itc\+itm scores of image_feat"):
    retrieval.bidirectional(image_feat, image_key, text_feat, text_key, nan_itm)


def test_scorer_rejects_unknown_scoring_and_missing_itm():
  with pytest.raises(ValueError, match="config.eval.scoring"):
    retrieval.Scorer("itm")
  with pytest.raises(ValueError, match="ITM pair scorer"):
    retrieval.Scorer("itc+itm")


# -- the retrieval fine-tuning task --------------------------------------------------


def test_retrieval_finetuning_through_main_itc_and_itc_itm(finetune_files):
  """`python -m syncmask_jax.main --config=configs/finetune_retrieval.py`: a few ITC + ITM
  steps from the pretraining checkpoint, then every protocol under both scorings. Two
  devices (the step's sharding is the pretraining step's, tested there)."""
  tmp = finetune_files["tmp"]
  workdir = str(tmp / "retrieval")
  args = [f"--config={os.path.join(ROOT, 'configs', 'finetune_retrieval.py')}"
          ":data=fashiongen,size=tiny,steps=2", f"--workdir={workdir}",
          f"--config.init_checkpoint={tmp / 'pretrain' / 'checkpoints'}",
          f"--config.data.root={tmp / 'fashiongen'}",
          f"--config.data.vocab_path={tmp / 'vocab.txt'}", "--config.model.vision_depth=1",
          "--config.data.global_batch_size=8", "--config.data.eval_batch_size=8",
          "--config.data.max_text_len=16", "--config.queue_size=16", "--config.log_every=1",
          "--config.eval.itm_k=3", "--config.eval.itm_batch_size=8",
          "--config.eval.one_plus_100.rounds=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  run = subprocess.run([sys.executable, "-m", "syncmask_jax.main", *args], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(os.path.join(workdir, "eval", "retrieval.json")) as f:
    out = json.load(f)
  assert out["task"] == "retrieval" and out["init_checkpoint"].endswith("checkpoints")
  labels = [(b["protocol"], b["scoring"]) for b in out["results"]]
  assert labels == [("full_gallery", "itc"), ("one_plus_100", "itc"),
                    ("full_gallery", "itc+itm"), ("one_plus_100", "itc+itm")]
  for b in out["results"]:
    for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean"):
      assert 0.0 <= b[k] <= 100.0
    if b["protocol"] == "full_gallery":
      assert b["num_images"] == 12 and b["num_texts"] == 6
      assert b["i2t_r10"] == b["t2i_r10"] == 100.0  # 6 texts / 12 images: all within 10
    else:  # 6 products: 6 queries against 1 + 5 (fewer than asked, stated)
      assert b["num_queries"] == 6 and b["num_negatives"] == 5
      assert b["num_queries_asked"] == 1000 and len(b["seeds"]) == 2
      assert "i2t_r1_std" in b
  # The summary names protocol and scoring on every line.
  assert "retrieval one_plus_100/itc+itm (6 queries x 1+5, 2 rounds)" in run.stdout
  # Only ITC and ITM were trained.
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_rows = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2]
  assert "train/loss_itc" in train_rows[-1] and "train/loss_itm" in train_rows[-1]
  assert "train/loss_mlm" not in train_rows[-1] and "train/loss_mim" not in train_rows[-1]
  assert any("eval/retrieval/one_plus_100/itc+itm/r_mean" in r for r in rows)


def test_itm_pairs_are_scored_in_slices_that_the_countdown_follows():
  calls = []

  def itm(image, text):
    calls.append(len(image))
    return image * 1000.0 + text

  countdown = console.Countdown("ITM re-ranking", 5000, "pairs")
  image, text = np.arange(5000), np.arange(5000)[::-1]
  scores = retrieval._counted(itm, countdown)(image, text)  # pylint: disable=protected-access
  assert calls == [4096, 904] and countdown.done == 5000
  np.testing.assert_array_equal(scores, image * 1000.0 + text)
