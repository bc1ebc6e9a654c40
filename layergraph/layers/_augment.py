"""On-the-fly geometric augmentation of the Data layer (transform_param's
``max_shift``, ``max_rotation``, ``min_scale``, ``max_scale``, and the
elastic distortion's ``elastic_alpha``, ``elastic_sigma``).

Not a layer module: it registers nothing (the registry imports it, harmlessly).

The warp
--------
Pixel centres sit at integer (row, col) positions; the image centre is
``c = ((H - 1) / 2, (W - 1) / 2)``.  Each image b gets its own affine map,
drawn independently:

    theta_b ~ U[-max_rotation, +max_rotation] degrees
    s_b     ~ U[min_scale, max_scale]
    t_b     ~ U{-max_shift, ..., +max_shift}^2   (rows, cols; whole pixels)

and a source point p lands at the output point

    q = c + s_b R(theta_b) (p - c) + t_b,

where R(theta) turns the picture counter-clockwise as displayed (rows grow
downwards): R(theta) (u, v) = (cos theta u - sin theta v, sin theta u +
cos theta v) for a (row, col) offset (u, v).  So a rotation and a scaling keep
the centre fixed and a pure shift moves every pixel by exactly t_b; theta = 90
degrees is ``np.rot90``.  The output is sampled backwards: output pixel q reads
the source at

    p = c + (1 / s_b) R(-theta_b) (q - c - t_b)

by bilinear interpolation, with zero outside the image (a corner of the
interpolation stencil that falls outside contributes 0; at whole-pixel
positions -- shifts, 90-degree turns -- the stencil has one corner of weight
1, so those warps are exact).  Bilinear rather than nearest: a small rotation
or a scaling of 0.9 under nearest-neighbour sampling duplicates or drops whole
rows and columns of strokes a few pixels wide, bilinear keeps their mass; it
costs four gathers instead of one, yet nearest measured at most a third
cheaper for the whole augmentation (both far below a training step; see
:func:`warp`).

Elastic distortion (Simard, Steinkraus and Platt 2003, "Best practices for
convolutional neural networks applied to visual document analysis") bends
the strokes as handwriting varies, which no affine map does.  With
``elastic_alpha`` > 0, each image b also draws two fields of independent
noise ``U_b^r, U_b^c ~ U[-1, 1]`` (H x W each) and output pixel q reads the
source at

    p + alpha (G_sigma * U_b)(q)

where ``G_sigma *`` is a normalised Gaussian blur of ``elastic_sigma``
pixels (truncated at 4 sigma, the border mirrored as scipy.ndimage's
``reflect`` mode: ``d c b a | a b c d | d c b a``).  The blur makes the
displacement smooth -- neighbouring pixels move together -- so strokes
bend instead of scattering; alpha sets the size (about alpha / (2
sqrt(3 pi) sigma) pixels root-mean-square per axis away from the border:
~1.4 px for Simard's alpha = 34, sigma = 4 on 28 x 28 digits).  The blur is
two small matrix products per field (``B_H U B_W^T``, with ``B`` the blur
as an H x H matrix, the mirrored border folded in), about 1 ms for a batch
of 300 28 x 28 images.

Vectorised over the batch: the source coordinates of all images are built at
once, and each stencil corner of every output pixel of every image and
channel is read with one gather from the flattened batch (:func:`warp`).

Random draws come from the generator handed in (the Data layer's per-batch
generator for augmentation), in this order: theta (n), s (n), t (n x 2),
then, with the elastic distortion on, its noise (n x 2 x H x W) -- so
turning it on changes none of the affine draws.
"""
import math
import threading

import numpy as np


def check(layer, tp):
    """The augmentation fields of transform_param ``tp``, validated: (max_shift,
    max_rotation, min_scale, max_scale); one-line layer errors."""
    shift, rotation = int(tp.max_shift), float(tp.max_rotation)
    lo, hi = float(tp.min_scale), float(tp.max_scale)
    if not math.isfinite(rotation) or not 0 <= rotation <= 180:
        raise layer.error(f"transform_param.max_rotation must be in [0, 180] degrees, "
                          f"got {rotation:g}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0:
        raise layer.error(f"transform_param.min_scale must be a number > 0, got {lo:g}")
    if hi < lo:
        raise layer.error(f"transform_param.max_scale ({hi:g}) must be >= min_scale ({lo:g})")
    alpha, sigma = float(tp.elastic_alpha), float(tp.elastic_sigma)
    if not math.isfinite(alpha) or alpha < 0:
        raise layer.error(f"transform_param.elastic_alpha must be a number >= 0 (pixels per "
                          f"unit of smoothed noise; 0: off), got {alpha:g}")
    if not math.isfinite(sigma) or sigma <= 0:
        raise layer.error(f"transform_param.elastic_sigma must be a number > 0 (pixels), "
                          f"got {sigma:g}")
    return shift, rotation, lo, hi, alpha, sigma


def is_identity(shift, rotation, lo, hi, alpha=0.0, sigma=4.0):
    """True when the fields are at their defaults: no warp at all."""
    return shift == 0 and rotation == 0 and lo == 1 and hi == 1 and alpha == 0


def draw(rng, n, max_shift, max_rotation, min_scale, max_scale, *elastic):
    """Per-image affine parameters: (theta radians (n,), s (n,), t (n, 2)
    int).  (The elastic fields, if given, are drawn by :func:`displacement`
    after these.)"""
    theta = np.deg2rad(rng.uniform(-max_rotation, max_rotation, size=n))
    scale = rng.uniform(min_scale, max_scale, size=n)
    shift = rng.integers(-max_shift, max_shift + 1, size=(n, 2))
    return theta, scale, shift


def source_coordinates(h, w, theta, scale, shift):
    """(rows, cols), each (n, h, w) float32: where output pixel (i, j) of image
    b reads the source (the inverse map of the module docstring).  float32
    is exact where it matters: whole-pixel shifts and 90-degree turns give
    whole-number coordinates."""
    f = np.float32
    cr, cc = f((h - 1) / 2.0), f((w - 1) / 2.0)
    cos = (np.cos(theta) / scale).astype(f)[:, None, None]
    sin = (np.sin(theta) / scale).astype(f)[:, None, None]
    u = (np.arange(h, dtype=f)[None, :, None] - cr) - shift[:, 0, None, None].astype(f)
    v = (np.arange(w, dtype=f)[None, None, :] - cc) - shift[:, 1, None, None].astype(f)
    rows = cos * u + sin * v
    rows += cr
    cols = cos * v - sin * u
    cols += cc
    return rows, cols


def blur_matrix(size, sigma):
    """The normalised Gaussian blur of ``sigma`` pixels along an axis of
    ``size`` pixels as a (size, size) float32 matrix: ``B @ u`` blurs u,
    truncated at 4 sigma, with the border mirrored (scipy.ndimage's
    ``reflect``: the pixel at -1 is pixel 0, at size is size - 1)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    b = np.zeros((size, size))
    period = 2 * size
    for i in range(size):
        src = (i + offsets) % period
        src = np.where(src >= size, period - 1 - src, src)
        np.add.at(b[i], src, kernel)
    return b.astype(np.float32)


def displacement(rng, n, h, w, alpha, sigma, blur=None):
    """The elastic displacement (rows, cols), each (n, h, w) float32:
    ``alpha`` times noise U[-1, 1] drawn from ``rng`` (n x 2 x h x w, in
    that order) and blurred by a Gaussian of ``sigma`` pixels.  ``blur``:
    the (B_h, B_w) of :func:`blur_matrix`, reused (made here when None)."""
    bh, bw = blur if blur is not None else (blur_matrix(h, sigma), blur_matrix(w, sigma))
    noise = rng.uniform(-1.0, 1.0, size=(n, 2, h, w)).astype(np.float32)
    field = np.matmul(np.matmul(bh, noise), bw.T)
    field *= np.float32(alpha)
    return field[:, 0], field[:, 1]


class Workspace:
    """Buffers of :func:`warp` for one batch shape, reused from batch to batch:
    fresh temporaries of this size cost more in page faults than the
    arithmetic itself (the allocator returns them to the system between
    batches)."""

    def __init__(self, shape, out_hw):
        n, c, h, w = shape
        ho, wo = out_hw
        self.key = (tuple(shape), tuple(out_hw))
        hp, wp = h + 3, w + 3
        self.padded = np.zeros((n, c, hp, wp), np.float32)  # the border stays 0
        self.floor = np.empty((n, ho, wo), np.float32)
        self.corner = np.empty((n, ho, wo), np.int32)
        self.column = np.empty((n, ho, wo), np.int32)
        self.index = np.empty((n, c, ho, wo), np.int32)
        self.other = np.empty((n, c, ho, wo), np.int32)
        self.values = [np.empty((n, c, ho, wo), np.float32) for _ in range(4)]
        self.offset = ((np.arange(n)[:, None] * (c * hp * wp) + np.arange(c)[None, :] * (hp * wp))
                       .astype(np.int32)[:, :, None, None])


def warp(x, rows, cols, workspace=None):
    """Bilinear resampling of x (n, C, H, W) float32 at (rows, cols) (n, H', W'),
    zero outside; returns a new (n, C, H', W') float32 array.  ``rows`` and
    ``cols`` are overwritten (they become the interpolation fractions);
    ``workspace``: a :class:`Workspace` to reuse (made here when None or of
    another shape).

    The batch is padded with zeros (1 pixel before, 2 after each axis) and the
    coordinates clipped to [-1, H] x [-1, W]: a stencil corner outside the
    image then reads a zero of the padding, and a point clipped was entirely
    outside anyway, so no masks are needed.  One vectorised gather per
    stencil corner over the whole batch (all images and channels at once, no
    per-image loop), then two lerps along the columns and one along the rows.
    A single gather of the four corners stacked measured 5x slower (4x larger
    temporaries).  The whole augmentation of a batch of 64 1x28x28 images
    (draws and coordinates included) takes about 0.4 ms on one core of this
    project's CPU (best of 30 rounds; up to 0.75 ms under load); nearest
    sampling (one corner) saves up to a third of that.
    """
    n, c, h, w = x.shape
    ho, wo = rows.shape[1:]
    ws = workspace
    if ws is None or ws.key != (tuple(x.shape), (ho, wo)):
        ws = Workspace(x.shape, (ho, wo))
    wp = w + 3
    ws.padded[:, :, 1:h + 1, 1:w + 1] = x
    np.clip(rows, -1, h, out=rows)
    np.clip(cols, -1, w, out=cols)
    np.floor(rows, out=ws.floor)
    rows -= ws.floor                      # now the fractions along the rows
    ws.corner[...] = ws.floor
    np.floor(cols, out=ws.floor)
    cols -= ws.floor                      # ... and along the columns
    ws.column[...] = ws.floor
    ws.corner += 1
    ws.corner *= wp
    ws.corner += ws.column
    ws.corner += 1                        # flat index of corner (0, 0) in a padded image
    np.add(ws.corner[:, None], ws.offset, out=ws.index)
    flat = ws.padded.reshape(-1)
    v00, v01, v10, v11 = ws.values
    np.take(flat, ws.index, out=v00, mode="clip")   # every index is valid: no check
    np.add(ws.index, 1, out=ws.other)
    np.take(flat, ws.other, out=v01, mode="clip")
    ws.index += wp
    np.take(flat, ws.index, out=v10, mode="clip")
    ws.other += wp
    np.take(flat, ws.other, out=v11, mode="clip")
    fr, fc = rows[:, None], cols[:, None]
    v01 -= v00
    v01 *= fc
    v00 += v01          # top row of the stencil, interpolated along the columns
    v11 -= v10
    v11 *= fc
    v10 += v11          # bottom row
    out = np.subtract(v10, v00)
    out *= fr
    out += v00          # along the rows
    return out


class Augment:
    """The random affine warp of one Data layer (None of it exists when the
    fields are at their defaults).  Each thread calling it (the prefetch
    thread, or forward) keeps a :class:`Workspace` of its own."""

    def __init__(self, max_shift, max_rotation, min_scale, max_scale, elastic_alpha=0.0,
                 elastic_sigma=4.0):
        self.params = (max_shift, max_rotation, min_scale, max_scale)
        self.elastic = (float(elastic_alpha), float(elastic_sigma))
        self._blur = {}     # (h, w) -> the blur matrices of the elastic distortion
        self._local = threading.local()

    def __call__(self, x, rng):
        """x (n, C, H, W) float32 -> the warped batch, drawing from ``rng``."""
        n, _, h, w = x.shape
        theta, scale, shift = draw(rng, n, *self.params)
        rows, cols = source_coordinates(h, w, theta, scale, shift)
        alpha, sigma = self.elastic
        if alpha > 0:
            blur = self._blur.get((h, w))
            if blur is None:
                blur = self._blur[(h, w)] = (blur_matrix(h, sigma), blur_matrix(w, sigma))
            dr, dc = displacement(rng, n, h, w, alpha, sigma, blur)
            rows += dr
            cols += dc
        ws = getattr(self._local, "workspace", None)
        if ws is None or ws.key != (tuple(x.shape), (h, w)):
            ws = self._local.workspace = Workspace(x.shape, (h, w))
        return warp(x, rows, cols, ws)
