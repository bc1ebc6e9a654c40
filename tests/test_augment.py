"""On-the-fly augmentation in the Data layer (transform_param max_shift,
max_rotation, min_scale, max_scale, elastic_alpha, elastic_sigma) and its
warp (layers/_augment.py)."""
import numpy as np
import pytest

from layergraph.errors import LayerError
from layergraph.imagedb import store
from layergraph.layers import _augment
from layergraph.layers.data import AUGMENT_TAG
from layergraph.proto import pb
from layergraph.testing import make_layer, setup_layer

AUG = "max_shift: 2 max_rotation: 15 min_scale: 0.8 max_scale: 1.2"


@pytest.fixture
def db(tmp_path, monkeypatch):
    """TOY: 30 training images 1x8x8 (5 labels), 10 testing."""
    monkeypatch.setenv("LAYERGRAPH_DB", str(tmp_path / "db"))
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    test_images = rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    with store.DatasetWriter("TOY") as w:
        w.add("training", images, np.arange(30) % 5)
        w.add("testing", test_images, np.arange(10) % 5)
    return {"images": images, "test_images": test_images}


def data_layer(data_param, transform="", phase=pb.TRAIN, seed=0):
    spec = (f'name: "data" type: "Data" top: "data" top: "label" '
            f'transform_param {{ {transform} }} data_param {{ {data_param} }}')
    layer = make_layer(spec, phase=phase, seed=seed, dtype=np.float32)
    _, top = setup_layer(layer, [], 2)
    return layer, top


def batches(layer, top, n):
    out = []
    for _ in range(n):
        layer.forward([], top)
        out.append(tuple(t.data.copy() for t in top))
    return out


def draws(layer, k, n):
    """The augmentation parameters the layer draws for batch k (n images)."""
    tp = layer.param.transform_param
    rng = layer._plan._rng(AUGMENT_TAG, k)
    return _augment.draw(rng, n, *_augment.check(layer, tp))


def shifted(image, dy, dx):
    """image (C, H, W) moved by (dy, dx) whole pixels, zero fill."""
    out = np.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def warp_one(image, theta, scale=1.0, shift=(0, 0)):
    x = np.asarray(image, np.float32)[None]
    rows, cols = _augment.source_coordinates(x.shape[2], x.shape[3], np.array([theta]),
                                             np.array([scale]), np.array([shift]))
    return _augment.warp(x, rows, cols)[0]


# ------------------------------------------------------------- the warp --

def test_rotation_by_90_degrees_is_rot90():
    image = np.random.default_rng(0).random((2, 7, 7)).astype(np.float32)
    for k, theta in ((1, np.pi / 2), (-1, -np.pi / 2), (2, np.pi)):
        np.testing.assert_allclose(warp_one(image, theta), np.rot90(image, k, axes=(1, 2)),
                                   atol=1e-6)
    even = np.random.default_rng(1).random((1, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(warp_one(even, np.pi / 2), np.rot90(even, 1, axes=(1, 2)),
                               atol=1e-6)


def test_a_pure_shift_moves_pixels_exactly():
    image = np.random.default_rng(2).random((3, 6, 9)).astype(np.float32)
    for dy, dx in ((0, 0), (1, -2), (-3, 4), (6, 0), (0, -9)):
        np.testing.assert_array_equal(warp_one(image, 0.0, 1.0, (dy, dx)),
                                      shifted(image, dy, dx))


def test_rotation_and_scaling_keep_the_centre_fixed():
    rng = np.random.default_rng(3)
    odd = rng.random((1, 9, 9)).astype(np.float32)
    for theta, scale in ((0.3, 1.0), (-0.2, 0.8), (1.0, 1.3)):
        assert warp_one(odd, theta, scale)[0, 4, 4] == odd[0, 4, 4]
    # an even size: the centre is between pixels; a blob there stays there
    r, c = np.mgrid[0:28, 0:28]
    blob = np.exp(-((r - 13.5) ** 2 + (c - 13.5) ** 2 / 4) / 8)[None].astype(np.float32)
    out = warp_one(blob, np.deg2rad(30), 0.8)[0]
    centre = [(out * r).sum() / out.sum(), (out * c).sum() / out.sum()]
    np.testing.assert_allclose(centre, [13.5, 13.5], atol=1e-3)
    # scaling about the centre: a point at offset 4 goes to offset 4 s
    dot = np.zeros((1, 9, 9), np.float32)
    dot[0, 4, 8] = 1
    out = warp_one(dot, 0.0, 0.5)
    assert out[0, 4, 6] == 1 and out.sum() == 1
    out = warp_one(dot, np.pi / 2, 0.5)  # and a quarter turn counter-clockwise: up
    np.testing.assert_allclose(out[0, 2, 4], 1, atol=1e-6)
    np.testing.assert_allclose(out.sum(), 1, atol=1e-5)


def test_outside_is_zero_and_inside_is_bilinear():
    image = np.full((1, 4, 4), 10, np.float32)
    out = warp_one(image, 0.0, 2.0)  # magnify: every sample inside the image
    np.testing.assert_allclose(out, 10, rtol=1e-6)
    out = warp_one(image, 0.0, 0.5)  # shrink: the border samples fall outside
    assert out[0, 0, 0] == 0 and out[0, 1, 1] > 0
    ramp = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    half = warp_one(ramp, 0.0, 1.0, (0, 0))
    np.testing.assert_array_equal(half, ramp)
    x = ramp[None]
    rows = np.array([[[1.5]]], np.float32)
    cols = np.array([[[2.25]]], np.float32)
    got = _augment.warp(x, rows, cols)[0, 0, 0, 0]
    np.testing.assert_allclose(got, 1.5 * 4 + 2.25, rtol=1e-6)  # a linear ramp is exact


# ------------------------------------------------------------ Data layer --

def test_defaults_are_a_no_op(db):
    spec = 'source: "TOY.training" batch_size: 7 enable_random_selection: true'
    base = "mirror: true crop_size: 6 mean_value: 10 scale: 0.5"
    a, ta = data_layer(spec, base, seed=1)
    b, tb = data_layer(spec, base + " max_shift: 0 max_rotation: 0 min_scale: 1 max_scale: 1",
                       seed=1)
    assert a._plan.transform.augment is None and b._plan.transform.augment is None
    for (da, la), (db_, lb) in zip(batches(a, ta, 6), batches(b, tb, 6)):
        np.testing.assert_array_equal(da, db_)
        np.testing.assert_array_equal(la, lb)


def test_a_drawn_shift_moves_each_image_by_exactly_that(db):
    layer, top = data_layer('source: "TOY.training" batch_size: 10', "max_shift: 3")
    seen = set()
    for k, (data, label) in enumerate(batches(layer, top, 3)):
        theta, scale, shift = draws(layer, k, 10)
        assert (theta == 0).all() and (scale == 1).all()
        for i in range(10):
            source = db["images"][(10 * k + i) % 30].astype(np.float32)
            np.testing.assert_array_equal(data[i], shifted(source, *shift[i]))
            seen.add(tuple(shift[i]))
    assert len(seen) > 10 and max(max(abs(s) for s in t) for t in seen) == 3


def test_order_crop_mirror_warp_mean_scale(db, tmp_path):
    """y = scale * (A(mirror(crop(x))) - mirror(crop(mean))), the mean per pixel."""
    mean = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    proto = pb.BlobProto(num=1, channels=1, height=8, width=8, data=mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(proto.SerializeToString())
    layer, top = data_layer('source: "TOY.training" batch_size: 12',
                            f'mean_file: "{path}" crop_size: 6 mirror: true scale: 0.5 '
                            'max_shift: 2')
    data = batches(layer, top, 1)[0][0]
    rng = layer._plan._rng(0)   # the batch's own draws: crop offsets, then flips
    h_off, w_off = rng.integers(0, 3, size=12), rng.integers(0, 3, size=12)
    flip = rng.random(12) < 0.5
    _, _, shift = draws(layer, 0, 12)
    for i in range(12):
        window = (slice(None), slice(h_off[i], h_off[i] + 6), slice(w_off[i], w_off[i] + 6))
        x = db["images"][i].astype(np.float32)[window]
        m = mean[0][window]
        if flip[i]:
            x, m = x[..., ::-1], m[..., ::-1]
        want = (shifted(np.ascontiguousarray(x), *shift[i]) - m) * np.float32(0.5)
        np.testing.assert_array_equal(data[i], want)
    assert flip.any() and not flip.all()


def test_reproducible_from_the_seed_and_independent_of_selection(db):
    spec = 'source: "TOY.training" batch_size: 8 enable_random_selection: true'
    a, ta = data_layer(spec, AUG + " mirror: true", seed=4)
    b, tb = data_layer(spec, AUG + " mirror: true", seed=4)
    c, tc = data_layer(spec, AUG + " mirror: true", seed=5)
    d, td = data_layer(spec, "mirror: true", seed=4)  # no augmentation
    got_a, got_b = batches(a, ta, 5), batches(b, tb, 5)
    got_c, got_d = batches(c, tc, 5), batches(d, td, 5)
    for (da, la), (db_, lb), (dd, ld) in zip(got_a, got_b, got_d):
        np.testing.assert_array_equal(da, db_)
        np.testing.assert_array_equal(la, ld)  # the same images chosen ...
        assert not np.array_equal(da, dd)      # ... and warped
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(got_a, got_c))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_gives_the_same_next_batches(db, prefetch):
    spec = 'source: "TOY.training" batch_size: 6 enable_random_selection: true'
    a, ta = data_layer(spec + " prefetch: 2", AUG + " crop_size: 7 mirror: true", seed=2)
    batches(a, ta, 3)
    state = a.state_dict()
    expected = batches(a, ta, 4)
    b, tb = data_layer(spec + f" prefetch: {prefetch}", AUG + " crop_size: 7 mirror: true",
                       seed=2)
    batches(b, tb, 1)   # a running prefetch thread restarts at the restored counter
    b.load_state_dict(state)
    for (d1, l1), (d2, l2) in zip(expected, batches(b, tb, 4)):
        np.testing.assert_array_equal(d1, d2)
        np.testing.assert_array_equal(l1, l2)
    a.close()
    b.close()


def test_pairs_warp_each_image_on_its_own(db):
    spec = 'source: "TOY.training" batch_size: 6 images_per_blob: 2 output_all_labels: true'
    a, ta = data_layer(spec, "max_rotation: 20", seed=1)
    b, tb = data_layer(spec, "", seed=1)
    (da, la), (db_, lb) = batches(a, ta, 1)[0], batches(b, tb, 1)[0]
    np.testing.assert_array_equal(la, lb)  # the same partners
    rng = a._plan._rng(AUGMENT_TAG, 0)     # first images, then their partners
    fields = _augment.check(a, a.param.transform_param)
    first, second = _augment.draw(rng, 6, *fields)[0], _augment.draw(rng, 6, *fields)[0]
    for i in range(6):
        np.testing.assert_allclose(da[i, :1], warp_one(db_[i, :1], first[i]), atol=1e-4)
        np.testing.assert_allclose(da[i, 1:], warp_one(db_[i, 1:], second[i]), atol=1e-4)


def test_test_phase_is_not_augmented(db):
    spec = 'source: "TOY.testing" batch_size: 5'
    a, ta = data_layer(spec, AUG + " scale: 0.5", phase=pb.TEST)
    b, tb = data_layer(spec, "scale: 0.5", phase=pb.TEST)
    assert a._plan.transform.augment is None
    for (da, _), (db_, _) in zip(batches(a, ta, 3), batches(b, tb, 3)):
        np.testing.assert_array_equal(da, db_)


@pytest.mark.parametrize("bad, message", [
    ("min_scale: 1.2", "max_scale .* must be >= min_scale"),
    ("max_scale: 0.5", "max_scale .* must be >= min_scale"),
    ("min_scale: 0 max_scale: 1", "min_scale must be a number > 0"),
    ("min_scale: -0.5", "min_scale must be a number > 0"),
    ("max_rotation: -5", r"max_rotation must be in \[0, 180\]"),
    ("max_rotation: 200", r"max_rotation must be in \[0, 180\]"),
    ("max_rotation: nan", r"max_rotation must be in \[0, 180\]"),
    ("elastic_alpha: -1", "elastic_alpha must be a number >= 0"),
    ("elastic_alpha: inf", "elastic_alpha must be a number >= 0"),
    ("elastic_alpha: 5 elastic_sigma: 0", "elastic_sigma must be a number > 0"),
    ("elastic_sigma: -2", "elastic_sigma must be a number > 0"),
])
def test_bad_values_are_one_line_layer_errors(db, bad, message):
    for phase in (pb.TRAIN, pb.TEST):
        with pytest.raises(LayerError, match=message) as err:
            data_layer('source: "TOY.training" batch_size: 2', bad, phase=phase)
        assert "\n" not in str(err.value) and "layer 'data' (Data)" in str(err.value)


# ------------------------------------------------------ elastic distortion --

def test_blur_matrix_is_a_normalised_gaussian_with_mirrored_border():
    for size, sigma in ((28, 4.0), (8, 1.5), (5, 6.0)):   # 6.0: the kernel outgrows the axis
        b = _augment.blur_matrix(size, sigma).astype(np.float64)
        np.testing.assert_allclose(b.sum(axis=1), 1, rtol=1e-6)
        radius = int(4 * sigma + 0.5)
        g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        g /= g.sum()
        u = np.random.default_rng(0).standard_normal(size)
        # by hand: extend u by mirroring (d c b a | a b c d | d c b a), then convolve
        period = np.concatenate([u, u[::-1]])
        extended = period[np.arange(-radius, size + radius) % (2 * size)]
        want = np.convolve(extended, g, mode="valid")
        np.testing.assert_allclose(b @ u, want, rtol=1e-5, atol=1e-6)


def test_blur_matches_scipy_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    u = np.random.default_rng(1).uniform(-1, 1, (28, 20))
    for sigma in (1.0, 4.0, 6.0):
        want = ndimage.gaussian_filter(u, sigma, mode="reflect", truncate=4.0)
        got = _augment.blur_matrix(28, sigma) @ u.astype(np.float32) @ \
            _augment.blur_matrix(20, sigma).T
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_displacement_is_smooth_noise_of_the_predicted_size():
    alpha, sigma = 34.0, 4.0
    rows, cols = _augment.displacement(np.random.default_rng(3), 2000, 28, 28, alpha, sigma)
    assert rows.shape == cols.shape == (2000, 28, 28) and rows.dtype == np.float32
    inner = (slice(None), slice(10, 18), slice(10, 18))
    # U[-1, 1] (variance 1/3) blurred by a 2-d Gaussian: variance 1/3 * 1/(4 pi sigma^2)
    predicted = alpha * np.sqrt(1 / 3 / (4 * np.pi * sigma ** 2))
    for field in (rows, cols):
        assert abs(float(field.mean())) < 0.05 * predicted
        assert float(np.sqrt((field[inner] ** 2).mean())) == pytest.approx(predicted, rel=0.05)
        # smooth: neighbours move together, far pixels independently
        a, b, far = field[:, 14, 10].ravel(), field[:, 14, 11].ravel(), field[:, 14, 26].ravel()
        assert np.corrcoef(a, b)[0, 1] > 0.95
        assert abs(np.corrcoef(a, far)[0, 1]) < 0.3
    assert abs(np.corrcoef(rows.ravel(), cols.ravel())[0, 1]) < 0.05  # independent axes
    # linear in alpha, from the same draws
    r2, _ = _augment.displacement(np.random.default_rng(3), 2000, 28, 28, 2 * alpha, sigma)
    np.testing.assert_allclose(r2, 2 * rows, rtol=1e-5, atol=1e-5)


def test_elastic_warp_is_the_affine_warp_plus_the_displacement():
    x = np.random.default_rng(4).random((5, 2, 12, 10)).astype(np.float32)
    fields = (1, 10.0, 0.9, 1.1, 8.0, 3.0)
    got = _augment.Augment(*fields)(x, np.random.default_rng(7))
    rng = np.random.default_rng(7)   # the same draws, in the documented order
    theta, scale, shift = _augment.draw(rng, 5, *fields)
    rows, cols = _augment.source_coordinates(12, 10, theta, scale, shift)
    dr, dc = _augment.displacement(rng, 5, 12, 10, 8.0, 3.0)
    want = _augment.warp(x, rows + dr, cols + dc)
    np.testing.assert_array_equal(got, want)
    plain = _augment.Augment(*fields[:4])(x, np.random.default_rng(7))
    assert not np.allclose(got, plain)
    # a constant image stays constant where the displaced pixels stay inside
    flat = np.full((3, 1, 28, 28), 7.0, np.float32)
    out = _augment.Augment(0, 0, 1, 1, 2.0, 4.0)(flat, np.random.default_rng(0))
    np.testing.assert_allclose(out[:, :, 4:24, 4:24], 7.0, rtol=1e-5)


def test_elastic_in_the_data_layer_changes_only_the_warp(db):
    """Reproducible from the seed; the same images, crops, flips and affine
    draws as without it (its noise is drawn after them); off at 0."""
    spec = 'source: "TOY.training" batch_size: 8 enable_random_selection: true'
    elastic = " elastic_alpha: 6 elastic_sigma: 2"
    a, ta = data_layer(spec, AUG + elastic + " mirror: true", seed=4)
    b, tb = data_layer(spec, AUG + elastic + " mirror: true", seed=4)
    c, tc = data_layer(spec, AUG + " mirror: true", seed=4)
    off, toff = data_layer(spec, "mirror: true elastic_alpha: 0 elastic_sigma: 2", seed=4)
    assert off._plan.transform.augment is None
    assert a._plan.transform.augment.elastic == (6.0, 2.0)
    for k, ((da, la), (db_, lb), (dc, lc)) in enumerate(zip(batches(a, ta, 4), batches(b, tb, 4),
                                                            batches(c, tc, 4))):
        np.testing.assert_array_equal(da, db_)
        np.testing.assert_array_equal(la, lc)
        assert not np.array_equal(da, dc)
        theta_a, _, shift_a = draws(a, k, 8)
        theta_c, _, shift_c = draws(c, k, 8)
        np.testing.assert_array_equal(theta_a, theta_c)
        np.testing.assert_array_equal(shift_a, shift_c)
    a.close(), b.close(), c.close(), off.close()
