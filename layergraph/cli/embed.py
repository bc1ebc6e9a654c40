"""``layergraph embed``: the embeddings of a dataset split, to a file (Caffe's
extract_features for metric learning).

    layergraph embed --model M --weights W [--layer feat] --dataset D
        [--split testing] --out emb.npy|emb.npz [--tsv DIR] [--gpu N]
        [--train-val FILE] [--scale S] [--mean M]

Every image of the split goes through the RUN net of M (a train_val or deploy
prototxt) with the train_val's transform (evaluation.embedding; for a deploy
M, --train-val/--scale/--mean as for test-many), in batches;
row i of the output is image i of the split in database (key) order, as
float32 (a blob of several axes per image is flattened).

``.npz``: one file with ``embeddings`` (N, D) float32 and ``labels`` (N,)
int64 (``np.load(path)["embeddings"]``).  ``.npy``: the embeddings alone,
and the labels in a sibling file, ``emb.npy`` -> ``emb.labels.npy``.
``--tsv DIR`` also writes DIR/tensors.tsv and DIR/metadata.tsv for the
TensorBoard Embedding Projector (one row per image; the labels).

Memory stays bounded for 100,000+ images: the split is read ``chunk_size``
images at a time (Source.read) and the rows go straight into a memory-mapped
.npy (np.lib.format.open_memmap), which an .npz then takes in from disk; the
files appear (atomically) only when complete.
"""
import os
import sys
import zipfile

import numpy as np

from ..errors import LayergraphError
from .common import _backend, _set_db, add_device_arguments, positive_int
from .evaluate import add_transform_arguments

#: images read from the database at a time (a multiple of the batch size)
CHUNK_IMAGES = 4096


def labels_path(out):
    """The labels file beside an .npy of embeddings: emb.npy -> emb.labels.npy."""
    return out[:-len(".npy")] + ".labels.npy"


def _source_name(dataset, split):
    return dataset if dataset.endswith((".training", ".testing")) else f"{dataset}.{split}"


def embed_dataset(model, weights, dataset, out, layer=None, split="testing", tsv=None,
                  batch_size=256, chunk_size=None, backend=None, progress=True):
    """Write the embeddings of ``dataset.split`` (see the module docstring);
    returns {"out", "labels_file", "layer", "count", "dimensions"}.

    layer: a blob or layer name of the RUN net (default: the Decode layer's
    bottom, else the last output); chunk_size: images read at a time (default
    CHUNK_IMAGES rounded to whole batches)."""
    from ..evaluation.embedding import (data_transform, embed, embedding_blob, resolve_blob,
                                        run_net)
    from ..imagedb.store import open_source
    out = os.fspath(out)
    kind = os.path.splitext(out)[1].lower()
    if kind not in (".npy", ".npz"):
        raise LayergraphError(f"--out {out}: give a .npy or .npz file")
    if batch_size < 1:
        raise LayergraphError("--batch-size must be positive")
    chunk = chunk_size or max(1, CHUNK_IMAGES // batch_size) * batch_size
    source = open_source(_source_name(dataset, split))
    tmp = {}
    try:
        net, param = run_net(model, weights, source.shape, backend)
        try:
            blob = resolve_blob(net, layer) if layer else embedding_blob(net)
            transform = data_transform(param)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            count = source.count
            labels = np.empty(count, np.int64)
            emb = None
            tensors = metadata = None
            if tsv:
                os.makedirs(tsv, exist_ok=True)
                tmp["tensors"] = os.path.join(tsv, f"tensors.tsv.tmp{os.getpid()}")
                tmp["metadata"] = os.path.join(tsv, f"metadata.tsv.tmp{os.getpid()}")
                tensors = open(tmp["tensors"], "w")
                metadata = open(tmp["metadata"], "w")
            bar = _progress_bar(count, progress)
            try:
                for start in range(0, count, chunk):
                    stop = min(start + chunk, count)
                    images, chunk_labels = source.read(np.arange(start, stop))
                    rows = embed(net, images, transform, source, [blob], batch_size)[blob]
                    rows = rows.reshape(len(rows), -1).astype(np.float32)
                    if emb is None:
                        tmp["embeddings"] = f"{out}.tmp{os.getpid()}.npy"
                        emb = np.lib.format.open_memmap(tmp["embeddings"], mode="w+",
                                                        dtype=np.float32,
                                                        shape=(count, rows.shape[1]))
                    emb[start:stop] = rows
                    labels[start:stop] = chunk_labels
                    if tensors is not None:
                        np.savetxt(tensors, rows, delimiter="\t", fmt="%.6g")
                        metadata.write("".join(f"{int(v)}\n" for v in chunk_labels))
                    bar.update(stop - start)
            finally:
                bar.close()
                for f in (tensors, metadata):
                    if f is not None:
                        f.close()
            dimensions = emb.shape[1]
            emb.flush()
            del emb
        finally:
            net.close()
        labels_file = _finish(out, kind, tmp, labels)
        if tsv:
            os.replace(tmp.pop("tensors"), os.path.join(tsv, "tensors.tsv"))
            os.replace(tmp.pop("metadata"), os.path.join(tsv, "metadata.tsv"))
    finally:
        source.close()
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    return {"out": out, "labels_file": labels_file, "layer": blob, "count": int(count),
            "dimensions": int(dimensions)}


def _finish(out, kind, tmp, labels):
    """Move the finished files into place; returns the labels file (None for
    an .npz, which holds them)."""
    if kind == ".npy":
        target = labels_path(out)
        tmp["labels"] = f"{target}.tmp{os.getpid()}.npy"
        np.save(tmp["labels"], labels)
        os.replace(tmp.pop("embeddings"), out)
        os.replace(tmp.pop("labels"), target)
        return target
    # an .npz is a zip of .npy members (np.savez's layout): the embeddings
    # go in from the memory-mapped file on disk, a block at a time
    tmp["npz"] = f"{out}.tmp{os.getpid()}"
    with zipfile.ZipFile(tmp["npz"], "w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as zf:
        zf.write(tmp["embeddings"], "embeddings.npy")
        with zf.open("labels.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, labels)
    os.replace(tmp.pop("npz"), out)
    return None


def _progress_bar(total, enabled):
    """tqdm on stderr (off when stderr is not a terminal, or not ``enabled``)."""
    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass
    if not enabled:
        return _Null()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _Null()
    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, disable=None)


def cmd_embed(args):
    from .evaluate import _transform
    _set_db(args)
    with _transform(args):
        result = embed_dataset(args.model, args.weights, args.dataset, args.out,
                               layer=args.layer, split=args.split, tsv=args.tsv,
                               batch_size=args.batch_size, backend=_backend(args),
                               progress=not args.quiet)
    extra = f" and labels to {result['labels_file']}" if result["labels_file"] else ""
    print(f"wrote {result['count']} x {result['dimensions']} float32 embeddings of "
          f"'{result['layer']}' to {result['out']}{extra}")
    if args.tsv:
        print(f"wrote {os.path.join(args.tsv, 'tensors.tsv')} and metadata.tsv")
    return 0


def add_commands(sub):
    p = sub.add_parser("embed", help="embeddings of a dataset split to .npy/.npz (and "
                                     "projector TSV), with their labels")
    p.add_argument("--model", required=True, help="train_val (or deploy) prototxt")
    p.add_argument("--weights", required=True)
    p.add_argument("--dataset", required=True, help="dataset name (or NAME.training/.testing)")
    p.add_argument("--split", default="testing", choices=["training", "testing"])
    p.add_argument("--layer", help="embedding blob or layer (default: the Decode layer's "
                                   "input, else the last output)")
    p.add_argument("--out", required=True,
                   help="emb.npz (arrays 'embeddings' and 'labels') or emb.npy (the "
                        "embeddings; the labels go to emb.labels.npy)")
    p.add_argument("--tsv", metavar="DIR",
                   help="also DIR/tensors.tsv and metadata.tsv (TensorBoard projector)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_transform_arguments(p)
    p.add_argument("--db")
    add_device_arguments(p)
    p.set_defaults(func=cmd_embed)
