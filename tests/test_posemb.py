"""model.posemb: identity, crop and interpolation against PyTorch's bilinear resize."""

import jax
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import posemb


def _grid(f, t, d=5, seed=0):
  return np.asarray(jax.random.normal(jax.random.key(seed), (f, t, d)))


def _torch_bilinear(grid, shape):
  x = torch.from_numpy(np.array(grid)).permute(2, 0, 1)[None]  # [1, D, F, T]
  y = torch.nn.functional.interpolate(x, size=shape, mode="bilinear", align_corners=False)
  return y[0].permute(1, 2, 0).numpy()


def test_identity_resize_returns_the_input_exactly():
  g = _grid(8, 64)
  np.testing.assert_array_equal(posemb.resize_grid(g, (8, 64)), g)
  np.testing.assert_array_equal(posemb.resize_grid(g, (8, 64), mode="interpolate"), g)


def test_stride_16_to_10_matches_torch_bilinear():
  g = _grid(8, 64, d=12)
  got = posemb.resize_grid(g, (12, 101))
  assert got.shape == (12, 101, 12)
  np.testing.assert_allclose(got, _torch_bilinear(g, (12, 101)), atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(1, 12), st.integers(1, 40))
def test_interpolate_mode_matches_torch_for_any_upsampling(f, t, f2, t2):
  f2, t2 = max(f, f2), max(t, t2)
  g = _grid(f, t, seed=f * 100 + t)
  np.testing.assert_allclose(posemb.resize_grid(g, (f2, t2), mode="interpolate"),
                             _torch_bilinear(g, (f2, t2)), atol=1e-5)


def test_shrinking_crops_the_centre_as_ssast():
  g = _grid(12, 101)
  got = np.asarray(posemb.resize_grid(g, (8, 50)))
  f0, t0 = 12 // 2 - 8 // 2, 101 // 2 - 50 // 2
  np.testing.assert_array_equal(got, g[f0:f0 + 8, t0:t0 + 50])


def test_mixed_directions_crop_one_axis_and_interpolate_the_other():
  g = _grid(8, 64)
  got = np.asarray(posemb.resize_grid(g, (12, 32)))
  t0 = 64 // 2 - 32 // 2
  np.testing.assert_allclose(got, _torch_bilinear(g[:, t0:t0 + 32], (12, 32)), atol=1e-5)


@pytest.mark.parametrize("shape_in,shape_out,match", [((2, 3, 4, 5), (2, 3), "freq, time, width"),
                                                      ((8, 8), (4, 4), "freq, time, width"),
                                                      ((2, 3, 4), (4,), "two positive"),
                                                      ((2, 3, 4), (0, 3), "two positive")])
def test_bad_shapes_are_refused(shape_in, shape_out, match):
  with pytest.raises(ValueError, match=match):
    posemb.resize_grid(np.zeros(shape_in), shape_out)


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="mode"):
    posemb.resize_grid(_grid(2, 2), (3, 3), mode="nearest")
