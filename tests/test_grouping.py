"""Grouped batch sampling: coverage, product cap, grouping statistics, state round trip."""

import json

import numpy as np
import pytest

from syncmask_jax.data import grouping


def _catalogue(num_products: int = 600, num_sub: int = 12, seed: int = 0):
  """Products with 1-4 views each; a product's views share its subcategory."""
  rs = np.random.RandomState(seed)
  views = rs.randint(1, 5, num_products)
  product_id = np.repeat(np.arange(num_products) * 7 + 3, views)  # arbitrary ids
  subcategory = np.repeat(rs.randint(0, num_sub, num_products), views)
  return product_id, subcategory


def _sampler(grouping_name="none", batch=16, seed=0, **kw):
  product_id, subcategory = _catalogue()
  return grouping.GroupedBatchSampler(
      num_records=len(product_id), global_batch_size=batch, seed=seed,
      grouping=grouping_name, product_id=product_id, subcategory=subcategory, **kw)


def _same_pair_share(order: np.ndarray, key: np.ndarray) -> float:
  k = key[order]  # (steps, B)
  same = (k[:, :, None] == k[:, None, :]).sum() - k.size
  return same / (k.shape[0] * k.shape[1] * (k.shape[1] - 1))


@pytest.mark.parametrize("name", ["none", "subcategory", "embedding"])
def test_epoch_is_a_permutation_prefix_and_deterministic(name):
  s = _sampler(name)
  order = s.epoch_order(0)
  assert order.shape == (s.num_records // 16, 16)
  assert len(np.unique(order)) == order.size  # no record twice in an epoch
  np.testing.assert_array_equal(order, _sampler(name).epoch_order(0))
  if name != "embedding":
    assert not np.array_equal(order, s.epoch_order(1))
    assert not np.array_equal(order, _sampler(name, seed=1).epoch_order(0))


@pytest.mark.parametrize("name", ["none", "subcategory", "embedding"])
@pytest.mark.parametrize("cap", [1, 2])
def test_views_of_a_product_respect_views_per_batch(name, cap):
  s = _sampler(name, views_per_batch=cap)
  if name == "embedding":  # views of one product embed alike: the worst case
    rs = np.random.RandomState(0)
    emb = rs.randn(s.product_id.max() + 1, 8)[s.product_id] + 0.01 * rs.randn(s.num_records, 8)
    s.record_embeddings(np.arange(s.num_records), emb)
  order = s.epoch_order()
  for batch in order:
    _, counts = np.unique(s.product_id[batch], return_counts=True)
    assert counts.max() <= cap
  assert s.relaxed == 0


def test_subcategory_grouping_makes_batches_homogeneous():
  product_id, subcategory = _catalogue()
  grouped = _sampler("subcategory", subcategories_per_batch=2).epoch_order(0)
  shuffled = _sampler("none").epoch_order(0)
  g, r = _same_pair_share(grouped, subcategory), _same_pair_share(shuffled, subcategory)
  assert r < 0.15 and g > 3 * r, (g, r)
  # Most batches come from exactly subcategories_per_batch subcategories.
  distinct = [len(np.unique(subcategory[b])) for b in grouped]
  assert np.median(distinct) <= 2
  assert _same_pair_share(grouped, product_id) == 0


def test_embedding_grouping_orders_by_nearest_neighbour():
  s = _sampler("embedding", search_size=64)
  first = s.epoch_order()  # no embeddings: a shuffle
  rs = np.random.RandomState(1)
  cluster = rs.randint(0, 6, s.num_records)
  centres = rs.randn(6, 16) * 3
  emb = centres[cluster] + rs.randn(s.num_records, 16)
  # Embeddings arrive batch by batch, as the train loop hands them back.
  for batch in first:
    s.record_embeddings(batch, emb[batch])
  for _ in range(s.steps_per_epoch):
    s.advance()
  assert s.epoch == 1
  second = s.epoch_order()
  assert len(np.unique(second)) == second.size
  g, r = _same_pair_share(second, cluster), _same_pair_share(first, cluster)
  assert g > 2 * r, (g, r)


def test_embedding_grouping_without_embeddings_for_some_records():
  s = _sampler("embedding", search_size=32)
  s.record_embeddings(np.arange(0, s.num_records, 3),
                      np.random.RandomState(0).randn(len(range(0, s.num_records, 3)), 4))
  s.record_embeddings(np.array([-1]), np.zeros((1, 4)))  # eval padding: ignored
  order = s.epoch_order()
  assert len(np.unique(order)) == order.size == s.steps_per_epoch * 16


@pytest.mark.parametrize("name", ["none", "subcategory", "embedding"])
def test_state_round_trip_through_json(name):
  s = _sampler(name)
  if name == "embedding":
    s.record_embeddings(np.arange(s.num_records),
                        np.random.RandomState(0).randn(s.num_records, 8))
  for _ in range(s.steps_per_epoch + 3):  # into epoch 1, position 3
    s.advance()
  order = s.epoch_order()
  state = json.loads(json.dumps(s.get_state()))
  t = _sampler(name)
  t.set_state(state)
  assert (t.epoch, t.position) == (1, 3)
  np.testing.assert_array_equal(t.epoch_order(), order)
  # New embeddings after the restore change the next epoch in both alike.
  if name == "embedding":
    for x in (s, t):
      x.record_embeddings(np.arange(10), np.ones((10, 8)))
      for _ in range(x.steps_per_epoch - 3):
        x.advance()
    np.testing.assert_array_equal(t.epoch_order(), s.epoch_order())


def test_state_from_another_setup_is_refused():
  state = _sampler("none").get_state()
  with pytest.raises(ValueError, match="global_batch_size"):
    _sampler("none", batch=8).set_state(state)


def test_bad_arguments():
  with pytest.raises(ValueError, match="grouping"):
    _sampler("random")
  with pytest.raises(ValueError, match="cannot fill"):
    grouping.GroupedBatchSampler(num_records=4, global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="subcategory"):
    grouping.GroupedBatchSampler(num_records=16, global_batch_size=8, seed=0,
                                 grouping="subcategory")


def test_pack_trades_tail_conflicts_into_earlier_batches():
  product_id = np.r_[np.arange(14), 99, 99]  # records 14 and 15: two views of one product
  batches, relaxed = grouping._pack(np.arange(16), product_id, 8, 1, 2)
  assert relaxed == 0
  assert sorted(batches.ravel().tolist()) == list(range(16))
  for batch in batches:
    assert (product_id[batch] == 99).sum() == 1
