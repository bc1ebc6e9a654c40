"""TensorBoard: event files of a training run, and Embedding Projector files.

Written with tensorboardX (the optional extra ``pip install -e
'.[tensorboard]'``; it needs no TensorFlow).  ``layergraph train
--tensorboard DIR``, or ``tensorboard_dir`` in the solver file (relative to
it), attaches a :class:`TensorBoardCallback` to the Solver; then

    tensorboard --logdir DIR

shows, under the step = the solver's iteration:

``train/loss``, ``train/smoothed_loss``, ``train/lr``, ``train/images_per_s``,
``train/tower_images_per_s``
    every iteration, the values of the record the solver passes to its
    callbacks -- at ``display`` iterations the very record written to the
    JSON log (``<snapshot_prefix>_log.jsonl``);
``train/output/<blob>``
    every scalar output blob of the TRAIN net (each loss top, and the extra
    tops a layer reports, e.g. OnlineTripletLoss's ``active`` fraction);
``test/<output>`` (``test<k>/`` for test net k > 0)
    every test: each output of the TEST net averaged over test_iter batches
    (the solver's test record); a vector output gives ``test/<output>/<i>``;
``weights/<layer>/<i>``
    with ``histograms``: a histogram of each learnable parameter blob, every
    ``histogram_every`` iterations (default: the solver's display interval,
    else 100);
the Embedding Projector
    every test: up to ``max_points`` rows of the TEST net's embedding (the
    Decode layer's bottom, or the blob named by ``embedding``) from the
    test's batches, with the labels as metadata and a sprite of the images
    the embedding was computed from (see :func:`trace_projector`).

A resumed run purges the events from the resume iteration on (tensorboardX's
purge_step), so the curves read as if the run never stopped.

``layergraph inspect --projector DIR`` writes the same projector files for a
trained model (:func:`write_projector`).
"""
import os
import re
import shutil

import numpy as np

from .backend import to_numpy
from .errors import LayergraphError
from .net import DATA_LAYER_TYPES

INSTALL_HINT = "pip install -e '.[tensorboard]'"
#: the TensorBoard frontend refuses larger sprite images
MAX_SPRITE_SIDE = 8192
CONFIG = "projector_config.pbtxt"


def require_tensorboardx(what="TensorBoard output"):
    """The tensorboardX module, or a one-line LayergraphError naming the extra."""
    try:
        import tensorboardX
    except ImportError:
        raise LayergraphError(f"{what} needs tensorboardX: {INSTALL_HINT}") from None
    return tensorboardX


# -------------------------------------------------------------- projector ----

def _producers(net):
    """blob name -> index of the layer that computes it (in-place layers,
    which rewrite a blob they read, do not count)."""
    out = {}
    for i, (bottoms, tops) in enumerate(zip(net.bottom_names, net.top_names)):
        for name in tops:
            if name not in bottoms and name not in out:
                out[name] = i
    return out


def _unsplit(net, producers, name):
    """The blob a Split layer's top copies (the user's name for it)."""
    while name in producers and net.layers[producers[name]].type == "Split":
        name = net.bottom_names[producers[name]][0]
    return name


def trace_projector(net, embedding=None):
    """(embedding blob, label blob, label column, image blob) of ``net`` for
    the Embedding Projector; label and image blob may be None.

    embedding: a blob or layer name (its first top); default the Decode
    layer's bottom (None if the net has no Decode layer).

    Image blob: from the embedding back along each layer's first bottom
    (through Split copies) to the first blob that a data layer, or a layer
    with several tops (DataSequence's anchor, Slice's first half of a pair),
    produces -- the images the embedding rows were computed from.

    Labels: the Decode layer's label bottom when the embedding is its
    bottom; else the label top of the layer that produced the images
    (a data layer's second top, DataSequence's labels top; through Slice
    and Split to the data layer).  A 2-D label blob (N, k) has one column per
    image top (DataSequence: anchor, positive, negatives; a pair Data layer
    with output_all_labels: both images): the column is the image blob's top
    index at its producer.
    """
    producers = _producers(net)
    decode = [i for i, layer in enumerate(net.layers) if layer.type == "Decode"]
    if embedding is None:
        if not decode:
            return None
        embedding = _unsplit(net, producers, net.bottom_names[decode[0]][0])
    elif embedding not in net.blobs:
        if embedding in net.layer_names and net.top_names[net.layer_names.index(embedding)]:
            embedding = net.top_names[net.layer_names.index(embedding)][0]
        else:
            raise LayergraphError(f"no blob or layer '{embedding}' in the TEST net for the "
                                  f"projector; blobs: {', '.join(net.blobs)}")
    name, image, column = embedding, None, 0
    for _ in range(len(net.layers) + 1):
        i = producers.get(name)
        if i is None:
            break
        layer = net.layers[i]
        bottoms, tops = net.bottom_names[i], net.top_names[i]
        if not bottoms or (layer.type != "Split" and len(tops) > 1):
            image, column = name, tops.index(name)
            break
        name = bottoms[0]
    label = None
    for i in decode:
        if len(net.bottom_names[i]) > 1 and \
                _unsplit(net, producers, net.bottom_names[i][0]) == embedding:
            label = net.bottom_names[i][1]
            break
    if label is None and image is not None:
        i = producers[image]
        for _ in range(len(net.layers)):
            layer, tops = net.layers[i], net.top_names[i]
            if layer.type in DATA_LAYER_TYPES:
                label = tops[1] if len(tops) > 1 else None
                break
            if layer.type == "DataSequence":
                label = tops[-1] if getattr(layer, "output_labels", False) else None
                break
            if layer.type not in ("Slice", "Split") or net.bottom_names[i][0] not in producers:
                break
            i = producers[net.bottom_names[i][0]]
    return embedding, label, column, image


def sprite_images(images):
    """Images (N, C, H, W) of any range as the sprite wants them: float in
    [0, 1] (min-max over the whole set), three channels (one channel
    repeated; of other counts the first), square (zero-padded)."""
    x = np.asarray(images, np.float32)
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    x = x[:, :3] if x.shape[1] == 3 else np.repeat(x[:, :1], 3, axis=1)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    n, c, h, w = x.shape
    side = max(h, w)
    if h != w:
        square = np.zeros((n, c, side, side), np.float32)
        square[:, :, :h, :w] = x
        x = square
    return x


def sprite_capacity(side):
    """The most images of ``side`` pixels a sprite may hold: the sprite is a
    square of ceil(sqrt(N)) images a side, at most MAX_SPRITE_SIDE pixels."""
    per_row = MAX_SPRITE_SIDE // max(int(side), 1)
    return per_row * per_row


def _clean_step(logdir, subdir):
    """Drop an earlier projector entry of the same step and tag (a resumed
    run testing again at the same iteration): its folder and its block in
    projector_config.pbtxt, which tensorboardX would otherwise duplicate."""
    path = os.path.join(logdir, subdir)
    if os.path.isdir(path):
        shutil.rmtree(path)
    config = os.path.join(logdir, CONFIG)
    if not os.path.isfile(config):
        return
    with open(config) as f:
        text = f.read()
    blocks = re.split(r"(?m)^(?=embeddings \{)", text)
    kept = [b for b in blocks if b and f'tensor_path: "{subdir}/' not in b]
    with open(config, "w") as f:
        f.write("".join(kept))


def _tag(name):
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "embedding"


def add_projector(writer, embeddings, labels=None, images=None, step=0, tag="embedding",
                  log=None):
    """Embedding Projector files through ``writer`` (a tensorboardX
    SummaryWriter): ``<logdir>/<step, 5 digits>/<tag>/tensors.tsv``,
    ``metadata.tsv`` (the labels), ``sprite.png`` (the images) and their
    entry in ``<logdir>/projector_config.pbtxt``.  The sprite is left out
    (with a note to ``log``) when the images would not fit in one
    (:func:`sprite_capacity`).  Returns the folder written."""
    mat = np.asarray(embeddings, np.float32)
    mat = mat.reshape(len(mat), -1)
    tag = _tag(tag)
    metadata = None if labels is None else [str(int(v)) for v in np.ravel(labels)]
    label_img = None
    if images is not None:
        label_img = sprite_images(images)
        if len(label_img) > sprite_capacity(label_img.shape[-1]):
            if log:
                log(f"tensorboard: {len(label_img)} images of {label_img.shape[-1]} pixels do "
                    f"not fit in one sprite; the projector shows them without pictures")
            label_img = None
    logdir = writer._get_file_writer().get_logdir()
    subdir = f"{str(step).zfill(5)}/{writer._encode(tag)}"
    _clean_step(logdir, subdir)
    with np.errstate(all="ignore"):
        writer.add_embedding(mat, metadata=metadata, label_img=label_img, global_step=step,
                             tag=tag)
    if label_img is not None:
        # tensorboardX leaves the sprite's unused bottom rows uninitialised
        # (np.ndarray): the same layout again, with a black background
        write_sprite(label_img, os.path.join(logdir, subdir, "sprite.png"))
    return os.path.join(logdir, subdir)


def write_sprite(images, path):
    """The projector's sprite of square images (N, 3, S, S) in [0, 1]: a
    square PNG of ceil(sqrt(N)) x ceil(sqrt(N)) cells, filled row by row (the
    frontend's layout, and tensorboardX's), black where no image is."""
    n, _, side, _ = images.shape
    per_row = int(np.ceil(np.sqrt(n)))
    canvas = np.zeros((per_row * side, per_row * side, 3), np.uint8)
    pixels = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    for k in range(n):
        r, c = divmod(k, per_row)
        canvas[r * side:(r + 1) * side, c * side:(c + 1) * side] = pixels[k]
    from PIL import Image
    Image.fromarray(canvas).save(path)


def write_projector(logdir, embeddings, labels=None, images=None, tag="embedding", step=0,
                    log=None):
    """Projector files of one set of embeddings in ``logdir`` (with an event
    file, so ``tensorboard --logdir`` lists the run): see :func:`add_projector`."""
    tbx = require_tensorboardx("the projector's sprite")
    os.makedirs(logdir, exist_ok=True)
    writer = tbx.SummaryWriter(logdir)
    try:
        return add_projector(writer, embeddings, labels, images, step=step, tag=tag, log=log)
    finally:
        writer.close()


# --------------------------------------------------------------- callback ----

class TensorBoardCallback:
    """A Solver callback writing TensorBoard event files (module docstring).

    >>> solver.add_callback(TensorBoardCallback("runs/tb", histograms=True))

    logdir: the event-file folder; histograms: weight histograms every
    ``histogram_every`` iterations; embedding: the TEST net blob for the
    projector (default the Decode layer's bottom; none without one);
    max_points: projector rows per test (from the test's first batches).
    """

    def __init__(self, logdir, histograms=False, embedding=None, max_points=1000,
                 histogram_every=None, flush_secs=30):
        self._tbx = require_tensorboardx()
        self.logdir = os.fspath(logdir)
        self.histograms = bool(histograms)
        self.embedding = embedding
        self.max_points = int(max_points)
        self.histogram_every = histogram_every
        self.flush_secs = flush_secs
        self.writer = None
        self._specs = {}      # test net id -> trace_projector(...) or None
        self._rows = {}       # test net id -> collected (embedding, label, image) batches
        self._noted = False

    def _writer(self, solver):
        if self.writer is None:
            os.makedirs(self.logdir, exist_ok=True)
            # a resumed run hides the events of the iterations it will redo
            # the file name holds the time in seconds: the start iteration
            # keeps a quickly resumed run from overwriting the last one's file
            # (and sorts them in order, as the reader wants)
            self.writer = self._tbx.SummaryWriter(
                self.logdir, purge_step=solver.iter if solver.iter > 0 else None,
                flush_secs=self.flush_secs, filename_suffix=f".from{solver.iter:09d}")
        return self.writer

    def on_start(self, solver):
        self._writer(solver)
        if self.embedding is not None and solver.test_nets and 0 not in self._specs:
            self._specs[0] = trace_projector(solver.test_nets[0], self.embedding)

    def on_iteration(self, solver, record):
        w, step = self._writer(solver), record["iter"]
        for key in ("loss", "smoothed_loss", "lr", "images_per_s", "tower_images_per_s"):
            if key in record:
                w.add_scalar(f"train/{key}", float(record[key]), step)
        net = solver.net
        for name in net.outputs:
            blob = net.blobs[name]
            if blob.count == 1:
                w.add_scalar(f"train/output/{name}", float(to_numpy(blob.data).ravel()[0]),
                             step)
        if self.histograms:
            every = self.histogram_every or solver.param.display or 100
            if step % every == 0:
                self._histograms(w, net, step)

    def _histograms(self, writer, net, step):
        seen = set()
        for layer, blobs in net.params.items():
            for k, blob in enumerate(blobs):
                if id(blob) in seen or not blob.learnable:
                    continue
                seen.add(id(blob))
                writer.add_histogram(f"weights/{layer}/{k}",
                                     np.asarray(to_numpy(blob.data), np.float64).ravel(), step)

    def _spec(self, solver, test_id, net):
        if test_id not in self._specs:
            self._specs[test_id] = trace_projector(
                net, self.embedding if test_id == 0 else None)
            if self._specs[test_id] is None and not self._noted:
                self._noted = True
                solver.log("tensorboard: the TEST net has no Decode layer; name the "
                           "projector's embedding blob (--tensorboard-embedding / "
                           "tensorboard_embedding) to see it in the Embedding Projector")
        return self._specs[test_id]

    def on_test_batch(self, solver, test_id, net):
        spec = self._spec(solver, test_id, net)
        if spec is None:
            return
        rows = self._rows.setdefault(test_id, [])
        have = sum(len(r[0]) for r in rows)
        if have >= self.max_points:
            return
        emb_name, label_name, column, image_name = spec
        # copies: on the CPU to_numpy returns the blob's own array, which the
        # next batch overwrites
        emb = np.array(to_numpy(net.blobs[emb_name].data), np.float32)
        n = len(emb)
        take = min(n, self.max_points - have)
        labels = images = None
        if label_name is not None:
            lab = np.asarray(to_numpy(net.blobs[label_name].data))
            if len(lab) == n:
                lab = lab.reshape(n, -1)
                labels = lab[:take, min(column, lab.shape[1] - 1)].copy()
        if image_name is not None:
            img = net.blobs[image_name].data
            if len(img) == n:
                images = np.array(to_numpy(img[:take]), np.float32)
        rows.append((emb[:take].reshape(take, -1), labels, images))

    def on_test(self, solver, test_id, results):
        w, step = self._writer(solver), solver.iter
        group = "test" if test_id == 0 else f"test{test_id}"
        for name, value in results.items():
            if np.ndim(value) == 0:
                w.add_scalar(f"{group}/{name}", float(value), step)
            else:
                for k, v in enumerate(np.ravel(value)):
                    w.add_scalar(f"{group}/{name}/{k}", float(v), step)
        rows = self._rows.pop(test_id, None)
        if rows:
            emb_name = self._specs[test_id][0]
            embeddings = np.concatenate([r[0] for r in rows])
            labels = (np.concatenate([r[1] for r in rows])
                      if all(r[1] is not None for r in rows) else None)
            images = (np.concatenate([r[2] for r in rows])
                      if all(r[2] is not None for r in rows) else None)
            add_projector(w, embeddings, labels, images, step=step,
                          tag=emb_name if test_id == 0 else f"{emb_name}_test{test_id}",
                          log=solver.log)
        w.flush()

    def on_snapshot(self, solver, paths):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
