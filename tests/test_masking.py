"""model.masking: exact counts, determinism, cluster contiguity, padding avoided."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import masking

GRID = (8, 64)  # SSAST's stride-16 grid on 128 x 1024


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 3), st.integers(1, 8), st.integers(1, 40), st.data(),
       st.sampled_from(["random", "cluster"]), st.integers(0, 2**16))
def test_exactly_num_masked_per_clip_and_indices_agree(batch, f, t, data, kind, seed):
  num = data.draw(st.integers(1, f * t))
  mask, idx = masking.sample(jax.random.key(seed), batch, (f, t), num, kind=kind)
  mask, idx = np.asarray(mask), np.asarray(idx)
  assert mask.shape == (batch, f * t) and idx.shape == (batch, num)
  np.testing.assert_array_equal(mask.sum(1), num)
  for b in range(batch):
    assert len(set(idx[b])) == num
    assert mask[b, idx[b]].all()


def test_ssast_default_ratio():
  mask, _ = masking.sample(jax.random.key(0), 4, GRID, 400)
  assert float(mask.mean()) == pytest.approx(400 / 512)


def test_same_key_same_mask_other_key_other_mask():
  a = masking.sample(jax.random.key(7), 2, GRID, 100)[0]
  b = masking.sample(jax.random.key(7), 2, GRID, 100)[0]
  c = masking.sample(jax.random.key(8), 2, GRID, 100)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a[0], a[1])  # clips in a batch get different masks


def _neighbour_fraction(mask: np.ndarray) -> float:
  """Of masked patches, the mean fraction of their 4-neighbours (inside the grid) also masked."""
  m = mask.reshape(-1, *GRID)
  fracs = []
  for grid in m:
    pad = np.pad(grid, 1)
    nb = pad[:-2, 1:-1].astype(int) + pad[2:, 1:-1] + pad[1:-1, :-2] + pad[1:-1, 2:]
    inside = np.pad(np.ones_like(grid), 1)
    cnt = inside[:-2, 1:-1].astype(int) + inside[2:, 1:-1] + inside[1:-1, :-2] + inside[1:-1, 2:]
    fracs.append((nb / cnt)[grid].mean())
  return float(np.mean(fracs))


def test_cluster_masks_are_contiguous_random_masks_are_not():
  ratio = 0.3
  num = int(ratio * 512)
  rnd = np.asarray(masking.sample(jax.random.key(1), 32, GRID, num, kind="random")[0])
  clu = np.asarray(masking.sample(jax.random.key(1), 32, GRID, num, kind="cluster")[0])
  # Random: a masked patch's neighbour is masked with probability ~ the ratio.
  assert abs(_neighbour_fraction(rnd) - ratio) < 0.05
  # Cluster: blobs, so most neighbours of a masked patch are masked too.
  assert _neighbour_fraction(clu) > 0.6


def test_padding_is_masked_only_when_valid_patches_run_out():
  valid = jnp.broadcast_to(jnp.arange(64) < 20, (8, 64)).reshape(1, -1)  # 160 valid patches
  mask, _ = masking.sample(jax.random.key(2), 1, GRID, 100, kind="cluster", valid=valid)
  assert not np.asarray(mask)[~np.asarray(valid)].any()
  mask, _ = masking.sample(jax.random.key(2), 1, GRID, 200, kind="cluster", valid=valid)
  assert np.asarray(mask)[np.asarray(valid)].all()  # every valid patch, then 40 padded ones


@pytest.mark.parametrize("kwargs,match", [(dict(num_masked=0), "num_masked"),
                                          (dict(num_masked=513), "num_masked"),
                                          (dict(num_masked=10, kind="blocks"), "kind"),
                                          (dict(num_masked=10, cluster_size=0), "cluster_size")])
def test_bad_arguments_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    masking.sample(jax.random.key(0), 1, GRID, **kwargs)
