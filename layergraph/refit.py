"""Centroid refit: Decode centroids recomputed from a source in one pass.

A Decode layer's running-average centroids lag the embedding: they average
embeddings computed under weights that have since moved.  For each Decode
layer with ``decode_param.refit_centroids``, :func:`refit_centroids` runs
every image of a source through the current weights and installs

    c_l = (1 / n_l) sum_{i : y_i = l} f(x_i),    counts_l = min(n_l, cache_size * N)

(f: the Decode layer's embedding bottom; y_i: column 0 of its label bottom;
items of ``ignore_labels`` left out; labels the source lacks keep their
state), see :func:`layergraph.layers._centroids.refit_centroids`.

The pass (a TEST-phase net of its own)
--------------------------------------
From the net holding the Decode layer, the layers the Decode bottoms depend
on are copied -- the Data layer feeding them, then e.g. DataSequence, Slice
and the tower -- without their include/exclude rules, into a net built in the
TEST phase (Dropout passes through, no augmentation, the centre crop) that
shares the weights of the original by layer name, as the Solver's test nets
do.  Its Data layer reads ``refit_source`` (default: its own source) in
database order from the first record, with mirroring, random selection,
P x K batches, rand_skip and prefetching turned off; ceil(n / B) batches of
its batch size B cover the n records, the rows past n of the last batch
(the wrap-around) are dropped.  Row i of the embedding must be image i of the
batch (true through DataSequence, whose anchor is the bottom item, and
through the first half of pair data); an embedding with another number of
rows than the batch is an error.  Nothing of the original net runs, so its
layers' state (prefetch threads, DataSequence caches, batch counters) is
untouched.  Sums accumulate in float64 on the net's backend (NumPy or CuPy).

:func:`refit_for_solver` is the Solver's hook (``test_all`` and the end of
``solve``): it refits every Decode layer with refit_centroids of the TRAIN
net (whose blobs the TEST nets share) and of the TEST nets (a Decode only
there: its source defaults to the TRAIN net's Data layer's), once per
iteration.
"""
import math
import weakref

import numpy as np

from .backend import to_numpy
from .errors import LayergraphError
from .layers import _centroids as C
from .proto import pb

#: solver -> the iteration its centroids were last refit at
_REFIT_AT = weakref.WeakKeyDictionary()


def refit_layers(net):
    """The indices of the Decode layers of ``net`` with refit_centroids."""
    return [i for i, layer in enumerate(net.layers)
            if layer.type == "Decode" and getattr(layer, "refit", False)]


def _ancestors(net, index):
    """Indices (ascending) of the layers the bottoms of layer ``index`` depend on."""
    needed = set(net.bottom_names[index])
    keep = []
    for j in range(index - 1, -1, -1):
        if needed & set(net.top_names[j]):
            keep.append(j)
            needed.update(net.bottom_names[j])
    return keep[::-1]


def _refit_param(net, index, source):
    """The NetParameter of the refit pass of Decode layer ``index`` (see the
    module docstring) and the name of its Data layer."""
    decode = net.layers[index]
    keep = _ancestors(net, index)
    data = [j for j in keep if net.layers[j].type == "Data"]
    others = [j for j in keep if not net.layers[j].param.bottom
              and net.layers[j].type != "Data"]
    if len(data) != 1 or others:
        raise decode.error("refit_centroids needs its bottoms computed from exactly one Data "
                           f"layer; they depend on {len(data)} Data layer(s)"
                           + (f" and on '{net.layer_names[others[0]]}' "
                              f"({net.layers[others[0]].type})" if others else ""))
    param = pb.NetParameter(name=f"{net.name or 'net'} (refit of {decode.name})")
    for j in keep:
        lp = param.layer.add()
        lp.CopyFrom(net.layers[j].param)
        lp.ClearField("include")
        lp.ClearField("exclude")
    lp = param.layer[keep.index(data[0])]
    dp, tp = lp.data_param, lp.transform_param
    if source and source != dp.source:
        dp.source = source
        dp.ClearField("backend")  # found from the source itself
    for field in ("enable_random_selection", "rand_skip", "labels_per_batch",
                  "images_per_label", "mirror"):
        dp.ClearField(field)
    tp.ClearField("mirror")
    dp.prefetch = 0
    return param, lp.name


def refit_centroids(net, source=None, default_source=None, log=None, layers=None):
    """Refit the centroids of every Decode layer of ``net`` with
    refit_centroids (see the module docstring); returns {layer name: per-label
    item counts (L,) as NumPy}.

    source: the source for every such layer (overrides refit_source);
    default_source: the source of a layer without refit_source, where the
    Data layer feeding it should not be used (a TEST net refit from the
    training data).  ``log``: a function taking one line per layer refit.
    ``layers``: only these layer indices (default: all with refit_centroids).
    """
    from .net import Net
    done = {}
    for index in refit_layers(net) if layers is None else layers:
        decode = net.layers[index]
        bottoms = net.bottom_names[index]
        if len(bottoms) < 2:
            raise decode.error("refit_centroids needs the label bottom (the labels of the "
                               "source's images)")
        p = decode.param.decode_param
        chosen = source or p.refit_source or default_source
        param, data_name = _refit_param(net, index, chosen)
        refit_net = Net(param, phase=pb.TEST, seed=net.seed, dtype=net.dtype,
                        backend=net.backend, db=getattr(net, "db", None))
        try:
            refit_net.share_weights_from(net)
            sums, counts = _embed_and_sum(refit_net, data_name, decode, bottoms)
            data_source = refit_net.layer(data_name).param.data_param.source
        finally:
            refit_net.close()
        decode.set_refit(sums, counts, net.bottom_vecs[index][0].shape[0])
        counts = np.asarray(to_numpy(counts))
        done[decode.name] = counts
        if log is not None:
            log(f"refit the centroids of '{decode.name}' from {data_source}: "
                f"{int(counts.sum())} images, {int((counts > 0).sum())} labels")
    return done


def _embed_and_sum(refit_net, data_name, decode, bottoms):
    """Per-label float64 sums (L, D) and counts (L,) of the embeddings of every
    record of the refit net's source."""
    xp = refit_net.xp
    data = refit_net.layer(data_name)
    batch = data.param.data_param.batch_size
    total = data.source_size
    embedding, label = refit_net.blobs[bottoms[0]], refit_net.blobs[bottoms[1]]
    L, D = decode.num_labels, decode.dim
    sums = xp.zeros((L, D), dtype=xp.float64)
    counts = xp.zeros((L,), dtype=xp.float64)
    for step in range(math.ceil(total / batch)):
        refit_net.forward_prefilled()
        n = embedding.shape[0] if embedding.shape else 1
        if n != batch:
            raise decode.error(f"refit_centroids: the embedding '{bottoms[0]}' has {n} rows "
                               f"for a batch of {batch} images, so its rows cannot be matched "
                               f"to the images")
        rows = min(batch, total - step * batch)
        x = embedding.data.reshape(n, -1)[:rows].astype(xp.float64)
        if x.shape[1] != D:
            raise decode.shape_error(f"refit_centroids: the embedding has {x.shape[1]} "
                                     f"features per item, the layer {D}")
        labels = C.item_labels(decode, label, embedding.shape)[:rows]
        valid = C.ignore_mask(xp, labels, decode.ignore_labels)
        C.check_label_range(decode, labels, L, valid)
        s, m = C.batch_label_sums(xp, x, labels, valid, L)
        sums += s
        counts += m
    return sums, counts


def _train_source(solver, test_net, index):
    """The TRAIN net's Data source for a Decode layer that only a TEST net has:
    the TRAIN Data layer named like the TEST one feeding it, else the first."""
    names = [test_net.layer_names[j] for j in _ancestors(test_net, index)
             if test_net.layers[j].type == "Data"]
    train_data = [layer for layer in solver.net.layers if layer.type == "Data"]
    for layer in train_data:
        if layer.name in names:
            return layer.param.data_param.source
    if not train_data:
        raise LayergraphError(f"layer '{test_net.layer_names[index]}' (Decode): "
                              "refit_centroids without refit_source needs a Data layer in the "
                              "TRAIN net")
    return train_data[0].param.data_param.source


def refit_for_solver(solver, after_training=False):
    """The Solver's hook; returns True when it refit something.

    Called by ``Solver.test_all`` (only when there is a test net) and at the
    end of ``Solver.solve`` (``after_training``: the snapshot of the last
    iteration, when there is one, is written again with the refit centroids).
    A second call at the same iteration does nothing: the weights are the
    same.  Without a Decode layer with refit_centroids it costs one scan of
    the layers."""
    nets = [solver.net] + list(solver.test_nets)
    if not any(refit_layers(net) for net in nets):
        return False
    if not after_training and not solver.test_nets:
        return False
    if _REFIT_AT.get(solver) != solver.iter:
        log = (lambda line: solver.log(f"Iteration {solver.iter}, {line}"))
        refit_centroids(solver.net, log=log)
        seen = {id(solver.net.layers[i].blobs[0]) for i in refit_layers(solver.net)}
        for net in solver.test_nets:
            for i in refit_layers(net):
                if id(net.layers[i].blobs[0]) in seen:
                    continue  # shared with the TRAIN net: refit already
                layer = net.layers[i]
                default = (None if layer.param.decode_param.refit_source
                           else _train_source(solver, net, i))
                refit_centroids(net, default_source=default, log=log, layers=[i])
                seen.add(id(layer.blobs[0]))
        _REFIT_AT[solver] = solver.iter
    if after_training and solver.last_snapshot_iter == solver.iter:
        path = f"{solver.snapshot_prefix()}_iter_{solver.iter}.caffemodel"
        solver.net.save(path, write_diff=solver.param.snapshot_diff)
        solver.log(f"Rewrote {path} with the refit centroids")
    return True

