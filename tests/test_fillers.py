"""Fillers: the distributions Caffe defines (checked by their statistics)."""
import numpy as np
import pytest

from layergraph.errors import LayerError
from layergraph.fillers import fill
from layergraph.proto import pb


def filler(**kw):
    return pb.FillerParameter(**kw)


def test_constant_and_uniform():
    rng = np.random.default_rng(0)
    assert np.all(fill(filler(type="constant", value=0.7), (3, 4), rng) == np.float32(0.7))
    u = fill(filler(type="uniform", min=-2, max=3), (200, 50), rng)
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean() - 0.5) < 0.05


@pytest.mark.parametrize("norm, n", [(pb.FillerParameter.FAN_IN, 50 * 9),
                                     (pb.FillerParameter.FAN_OUT, 100 * 9),
                                     (pb.FillerParameter.AVERAGE, (450 + 900) / 2)])
def test_xavier_and_msra_variance(norm, n):
    rng = np.random.default_rng(1)
    shape = (100, 50, 3, 3)   # fan_in = 50*9, fan_out = 100*9
    x = fill(filler(type="xavier", variance_norm=norm), shape, rng)
    assert np.abs(x).max() <= np.sqrt(3.0 / n) + 1e-12
    assert x.var() == pytest.approx(1.0 / n, rel=0.05)
    m = fill(filler(type="msra", variance_norm=norm), shape, rng)
    assert m.var() == pytest.approx(2.0 / n, rel=0.05)


def test_gaussian_sparse_and_unitball():
    rng = np.random.default_rng(2)
    g = fill(filler(type="gaussian", mean=1.0, std=0.5), (300, 100), rng)
    assert g.mean() == pytest.approx(1.0, abs=0.01) and g.std() == pytest.approx(0.5, rel=0.03)
    s = fill(filler(type="gaussian", std=1.0, sparse=20), (100, 400), rng)
    assert (s != 0).mean() == pytest.approx(20 / 100, abs=0.02)
    b = fill(filler(type="positive_unitball"), (5, 7, 2), rng)
    assert (b >= 0).all()
    np.testing.assert_allclose(b.reshape(5, -1).sum(1), 1.0)


def test_unknown_filler():
    with pytest.raises(LayerError, match="unknown filler type 'gauss'"):
        fill(filler(type="gauss"), (2,), np.random.default_rng(0))
