"""Evaluate and inspect trained embedding nets.

``embed``       run a dataset split through a net (batched) and collect a blob;
``test_many``   classify a split with the RUN net: accuracy, per-label
                accuracy, confusion matrix (nearest class centroid through the
                Decode layer, or argmax for classifier nets);
``inspect``     t-SNE scatter of embeddings coloured by label, and TensorBoard
                Embedding Projector files.
"""
import json
import os

import numpy as np

from ..backend import to_numpy
from ..errors import LayergraphError
from ..net import DATA_LAYER_TYPES, Net, filter_net
from ..proto import pb
from ..prototxt import read_net


# ------------------------------------------------------------- helpers ----

def _data_transform(net_param):
    """The TEST-phase (else TRAIN) data layer's transform_param."""
    for phase in (pb.TEST, pb.TRAIN):
        for lp in filter_net(net_param, pb.NetState(phase=phase)).layer:
            if lp.type in DATA_LAYER_TYPES:
                return lp.transform_param
    return pb.TransformationParameter()


def preprocess(images, transform, source=None):
    """Apply a Data layer's deterministic transform (mean, scale) to uint8
    images (n, C, H, W): (x - mean) * scale, as Caffe's DataTransformer."""
    x = images.astype(np.float32)
    if transform.use_imagedb_mean and source is not None:
        mean = source.mean()
        if mean is not None:
            x -= mean
    elif transform.mean_file:
        from ..imagedb.store import read_mean_file
        x -= read_mean_file(transform.mean_file)
    elif len(transform.mean_value):
        mv = np.asarray(transform.mean_value, np.float32)
        x -= mv.reshape(-1, 1, 1) if mv.size > 1 else mv[0]
    return x * transform.scale


def load_split(dataset, split="testing", count=None, seed=0):
    """(images uint8 (n,C,H,W), labels int64 (n,), source) of a dataset split;
    ``count`` draws that many at random (reproducibly), None takes all."""
    from ..imagedb.store import open_source
    name = dataset if dataset.endswith((".training", ".testing")) else f"{dataset}.{split}"
    source = open_source(name)
    images, labels = source.read_all()
    if count is not None and count < len(labels):
        pick = np.sort(np.random.default_rng(seed).choice(len(labels), count, replace=False))
        images, labels = images[pick], labels[pick]
    return images, labels, source


def run_net(model, weights, image_shape, backend=None):
    param = model if isinstance(model, pb.NetParameter) else read_net(model)
    net = Net(param, pb.RUN, weights=weights, input_shape=(1,) + tuple(image_shape),
              backend=backend)
    if not net.inputs:
        raise LayergraphError(f"{model}: the RUN net has no input blob")
    return net, param


def embed(net, images, transform, source, blob_names, batch_size=256):
    """Forward ``images`` in batches; returns {blob name: stacked data}."""
    outs = {name: [] for name in blob_names}
    for name in blob_names:
        if name not in net.blobs:
            raise LayergraphError(f"the RUN net has no blob '{name}'; blobs: "
                                  f"{', '.join(net.blobs)}")
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size], transform, source)
        net.forward(**{net.inputs[0]: x})
        for name in blob_names:
            outs[name].append(to_numpy(net.blobs[name].data).astype(np.float64))
    return {name: np.concatenate(v) for name, v in outs.items()}


def _decision(net):
    """(blob, 'argmin'|'argmax', embedding blob or None) used to classify."""
    for i, layer in enumerate(net.layers):
        if layer.type == "Decode":
            return net.top_names[i][0], "argmin", net.bottom_names[i][0]
    if not net.outputs:
        raise LayergraphError("the RUN net has no output to classify with")
    return net.outputs[-1], "argmax", None


def confusion_matrix(labels, predicted, num_labels):
    cm = np.zeros((num_labels, num_labels), np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


# ------------------------------------------------------------ test-many ----

def test_many(model, weights, dataset, split="testing", count=1000, batch_size=256,
              centroids="model", out=None, seed=0, log=print, centroid_dataset=None,
              backend=None):
    """Classify a dataset split with the RUN net; returns the report dict.

    centroids="model": the Decode layer's stored centroids (learned during
    training).  centroids="training": recompute each class centroid from the
    embeddings of a training split (``centroid_dataset``'s, default
    ``dataset``'s: pass the few-shot dataset the net was trained on) under the
    final weights, then classify by the nearest one.
    """
    images, labels, source = load_split(dataset, split, count, seed)
    net, param = run_net(model, weights, images.shape[1:], backend)
    transform = _data_transform(param)
    try:
        blob, rule, embedding = _decision(net)
        if centroids == "training":
            if embedding is None:
                raise LayergraphError("--centroids training needs a net with a Decode layer")
            emb = embed(net, images, transform, source, [embedding], batch_size)[embedding]
            train_images, train_labels, train_source = load_split(
                centroid_dataset or dataset, "training")
            train_emb = embed(net, train_images, transform, train_source, [embedding],
                              batch_size)[embedding]
            classes = np.unique(train_labels)
            cents = np.stack([train_emb[train_labels == c].mean(0) for c in classes])
            d = ((emb[:, None, :] - cents[None]) ** 2).sum(-1)
            predicted = classes[d.argmin(1)]
        else:
            scores = embed(net, images, transform, source, [blob], batch_size)[blob]
            scores = scores.reshape(len(scores), -1)
            predicted = scores.argmin(1) if rule == "argmin" else scores.argmax(1)
    finally:
        net.close()
    num_labels = int(max(labels.max(), predicted.max())) + 1
    cm = confusion_matrix(labels, predicted, num_labels)
    per_label = {int(c): float(cm[c, c] / cm[c].sum()) for c in range(num_labels)
                 if cm[c].sum()}
    accuracy = float((predicted == labels).mean())
    report = {"model": os.fspath(model) if not isinstance(model, pb.NetParameter) else "",
              "weights": os.fspath(weights), "dataset": dataset, "split": split,
              "count": int(len(labels)), "centroids": centroids,
              "centroid_dataset": (centroid_dataset or dataset) if centroids == "training"
              else None, "accuracy": accuracy,
              "per_label_accuracy": per_label, "confusion_matrix": cm.tolist()}
    if log:
        log(f"accuracy: {accuracy:.4f} ({int((predicted == labels).sum())}/{len(labels)}) "
            f"on {dataset}.{split}")
        log("per-label accuracy:")
        for c, acc in per_label.items():
            log(f"  {c:>3}: {acc:.4f}  ({int(cm[c].sum())} images)")
        log("confusion matrix (rows: true label, columns: predicted):")
        width = max(4, len(str(cm.max())) + 1)
        log("     " + "".join(f"{c:>{width}}" for c in range(num_labels)))
        for c in range(num_labels):
            log(f"{c:>4} " + "".join(f"{v:>{width}}" for v in cm[c]))
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
        plot_confusion(cm, os.path.join(out, "confusion.png"),
                       title=f"{dataset}.{split}: accuracy {accuracy:.2%}")
        if log:
            log(f"wrote {os.path.join(out, 'report.json')} and "
                f"{os.path.join(out, 'confusion.png')}")
    return report


def plot_confusion(cm, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 5))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_xticks(range(cm.shape[1]))
    ax.set_yticks(range(cm.shape[0]))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------- inspect ----

def inspect(model, weights, layer, dataset, out=None, split="testing", count=2000,
            projector=None, batch_size=256, seed=0, perplexity=30.0, log=print, backend=None):
    """Embeddings of ``layer`` (a blob name, a layer name (its first top), or
    a Debug layer, whose store is read) drawn with t-SNE, coloured by label."""
    images, labels, source = load_split(dataset, split, count, seed)
    net, param = run_net(model, weights, images.shape[1:], backend)
    transform = _data_transform(param)
    try:
        debug = None
        if layer in net.layer_names and net.layer(layer).type == "Debug":
            debug = net.layer(layer)
            blob = net.top_names[net.layer_names.index(layer)][0]
        elif layer in net.blobs:
            blob = layer
        elif layer in net.layer_names and net.top_names[net.layer_names.index(layer)]:
            blob = net.top_names[net.layer_names.index(layer)][0]
        else:
            raise LayergraphError(f"no layer or blob '{layer}' in the RUN net; layers: "
                                  f"{', '.join(net.layer_names)}")
        emb = embed(net, images, transform, source, [blob], batch_size)[blob]
        emb = emb.reshape(len(emb), -1)
        if debug is not None:
            stored, _ = debug.stored_embeddings()
            emb = np.asarray(stored, np.float64).reshape(len(stored), -1)
            labels = labels[-len(emb):]
    finally:
        net.close()
    result = {"embeddings": emb, "labels": labels}
    if projector:
        os.makedirs(projector, exist_ok=True)
        np.savetxt(os.path.join(projector, "tensors.tsv"), emb, delimiter="\t", fmt="%.6g")
        with open(os.path.join(projector, "metadata.tsv"), "w") as f:
            f.write("\n".join(str(int(v)) for v in labels) + "\n")
        if log:
            log(f"wrote {projector}/tensors.tsv and metadata.tsv "
                f"(load them in the TensorBoard Embedding Projector)")
    if out:
        points = tsne(emb, seed=seed, perplexity=perplexity)
        result["points"] = points
        plot_scatter(points, labels, out,
                     title=f"t-SNE of '{blob}' ({len(emb)} {dataset}.{split} images)")
        if log:
            log(f"wrote {out}")
    return result


def tsne(embeddings, seed=0, perplexity=30.0):
    """2-D t-SNE (scikit-learn); 2-D embeddings are returned as they are."""
    if embeddings.shape[1] <= 2:
        return embeddings[:, :2] if embeddings.shape[1] == 2 else np.c_[
            embeddings, np.zeros(len(embeddings))]
    from sklearn.manifold import TSNE
    perplexity = min(perplexity, max(2.0, (len(embeddings) - 1) / 3.0))
    return TSNE(n_components=2, init="pca", random_state=seed,
                perplexity=perplexity).fit_transform(embeddings)


def plot_scatter(points, labels, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=5, color=cmap(int(c) % cmap.N),
                   label=str(int(c)), alpha=0.8)
        cx, cy = np.median(points[sel], axis=0)
        ax.text(cx, cy, str(int(c)), fontsize=14, weight="bold",
                bbox=dict(fc="white", alpha=0.7, ec="none"))
    ax.legend(markerscale=3, fontsize=8, loc="best", ncol=2)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ new ----

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "model_templates")


def list_templates():
    if not os.path.isdir(TEMPLATE_DIR):
        return []
    return sorted(d for d in os.listdir(TEMPLATE_DIR)
                  if os.path.isfile(os.path.join(TEMPLATE_DIR, d, "train_val.prototxt")))


def new_from_template(template, dataset, out, force=False):
    """Copy a template into ``out`` with its data sources pointed at
    ``dataset``; returns the files written."""
    import re
    import shutil
    src = os.path.join(TEMPLATE_DIR, template)
    if template not in list_templates():
        raise LayergraphError(f"unknown template '{template}'; templates: "
                              f"{', '.join(list_templates()) or 'none found'}")
    if os.path.exists(out) and os.listdir(out) and not force:
        raise LayergraphError(f"{out} exists and is not empty (use --force to overwrite)")
    os.makedirs(out, exist_ok=True)
    written = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            continue
        target = os.path.join(out, name)
        if name.endswith(".prototxt") and dataset:
            with open(path) as f:
                text = f.read()
            text = re.sub(r'source:\s*"[^".]+\.(training|testing)"',
                          lambda m: f'source: "{dataset}.{m.group(1)}"', text)
            with open(target, "w") as f:
                f.write(text)
        else:
            shutil.copyfile(path, target)
        written.append(target)
    return written
