"""Reports on a trained embedding net, from a dataset split run through its
RUN net (evaluation.embedding):

``test_many``  classify a split: accuracy, per-label accuracy, confusion
               matrix (nearest class centroid through the Decode layer, or
               argmax for classifier nets);
``inspect``    t-SNE scatter of embeddings coloured by label, and TensorBoard
               Embedding Projector files;
``evaluate``   retrieval metrics of a query split against a reference split
               (evaluation.metrics), and of binary codes (evaluation.hashing):
               ``layergraph evaluate``.
"""
import json
import os

import numpy as np

from ..errors import LayergraphError
from ..proto import pb
from .embedding import (data_transform, decision, embed, embedding_blob, load_split,
                        resolve_blob, run_net)
from .hashing import binarize, code_threshold, hamming_metrics, save_codes
from .metrics import confusion_matrix, retrieval_metrics


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
    transform = data_transform(param)
    try:
        blob, rule, embedding = decision(net)
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
    a Debug layer, whose store is read) drawn with t-SNE, coloured by label.

    ``projector``: a folder for the TensorBoard Embedding Projector:
    ``tensors.tsv`` and ``metadata.tsv`` (the labels) at its top, and, with
    tensorboardX installed, what ``train --tensorboard`` writes at each test
    (layergraph.tensorboard.write_projector): ``00000/<blob>/`` with the
    embeddings, labels and a sprite of the images, ``projector_config.pbtxt``
    and an event file, so ``tensorboard --logdir DIR`` shows them."""
    images, labels, source = load_split(dataset, split, count, seed)
    net, param = run_net(model, weights, images.shape[1:], backend)
    transform = data_transform(param)
    try:
        debug = None
        if layer in net.layer_names and net.layer(layer).type == "Debug":
            debug = net.layer(layer)
            blob = net.top_names[net.layer_names.index(layer)][0]
        else:
            blob = resolve_blob(net, layer)
        emb = embed(net, images, transform, source, [blob], batch_size)[blob]
        emb = emb.reshape(len(emb), -1)
        if debug is not None:
            stored, _ = debug.stored_embeddings()
            emb = np.asarray(stored, np.float64).reshape(len(stored), -1)
            labels = labels[-len(emb):]
            images = images[-len(emb):]
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
        try:
            from ..tensorboard import write_projector
            folder = write_projector(projector, emb, labels, images, tag=blob, log=log)
        except LayergraphError as e:  # tensorboardX is not installed
            if log:
                log(f"note: {e}; wrote the TSV files only")
        else:
            if log:
                log(f"wrote {folder} and {projector}/projector_config.pbtxt: "
                    f"tensorboard --logdir {projector}")
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


# ------------------------------------------------------------- evaluate ----

SPLITS = ("training", "testing")


def evaluate(model, weights, dataset, query="testing", reference="training", layer=None,
             k=5, count=None, seed=0, batch_size=256, binary=False, threshold=None,
             export_codes=None, chunk_size=None, log=print, backend=None):
    """Retrieval metrics of ``dataset.query`` against ``dataset.reference``
    embedded by the RUN net (``layer``: a blob or layer name; default the
    Decode layer's bottom, else the last output).  ``query == reference``
    ranks each image against the rest of its split (leave-one-out).
    ``count`` draws that many images of each split at random (``seed``).

    ``binary`` adds Hamming-ranking mAP and precision within Hamming radius
    2 of the binarised embedding (``threshold``, default from the value
    range: evaluation.hashing); ``export_codes`` writes the packed codes of
    both splits with their labels to that .npz.  Returns the report dict
    (the metrics of evaluation.metrics.retrieval_metrics plus the run's
    description); ``log`` gets one line per metric.
    """
    for name, split in (("query", query), ("reference", reference)):
        if split not in SPLITS:
            raise LayergraphError(f"--{name} must be training or testing, not '{split}'")
    if dataset.endswith((".training", ".testing")):
        raise LayergraphError(f"give the dataset name without the split ('{dataset}'); "
                              f"choose the splits with --query and --reference")
    if count is not None and count <= 0:
        raise LayergraphError("--count must be positive")
    same_source = query == reference
    q_images, q_labels, q_source = load_split(dataset, query, count, seed)
    if same_source:
        r_images, r_labels, r_source = q_images, q_labels, q_source
    else:
        r_images, r_labels, r_source = load_split(dataset, reference, count, seed)
        if r_images.shape[1:] != q_images.shape[1:]:
            raise LayergraphError(f"{dataset}: {query} images are {q_images.shape[1:]} but "
                                  f"{reference} images {r_images.shape[1:]}")
    net, param = run_net(model, weights, q_images.shape[1:], backend)
    transform = data_transform(param)
    try:
        blob = resolve_blob(net, layer) if layer else embedding_blob(net)
        q_emb = embed(net, q_images, transform, q_source, [blob], batch_size)[blob]
        q_emb = q_emb.reshape(len(q_emb), -1)
        if same_source:
            r_emb = q_emb
        else:
            r_emb = embed(net, r_images, transform, r_source, [blob], batch_size)[blob]
            r_emb = r_emb.reshape(len(r_emb), -1)
    finally:
        net.close()
    report = {"model": os.fspath(model) if not isinstance(model, pb.NetParameter) else "",
              "weights": os.fspath(weights), "dataset": dataset, "query": query,
              "reference": reference, "layer": blob, "dimensions": int(q_emb.shape[1])}
    report.update(retrieval_metrics(q_emb, q_labels, None if same_source else r_emb,
                                    None if same_source else r_labels, k=k,
                                    chunk_size=chunk_size, seed=seed))
    if binary or export_codes:
        if threshold is None:
            threshold = code_threshold(q_emb, r_emb)
        q_bits = binarize(q_emb, threshold)
        r_bits = q_bits if same_source else binarize(r_emb, threshold)
        report["threshold"] = float(threshold)
        if binary:
            hashing = hamming_metrics(q_bits, q_labels, None if same_source else r_bits,
                                      None if same_source else r_labels,
                                      chunk_size=chunk_size)
            hashing.pop("excluded_queries")  # the same queries as above
            report.update(hashing)
        if export_codes:
            splits = {query: (q_bits, q_labels)}
            if not same_source:
                splits[reference] = (r_bits, r_labels)
            save_codes(export_codes, splits, threshold)
            report["codes_file"] = os.fspath(export_codes)
    if log:
        for line in format_report(report):
            log(line)
    return report


def format_report(report):
    """The lines ``layergraph evaluate`` prints: a header, then one
    ``name: value`` line per metric."""
    how = ("leave-one-out within the split" if report["same_source"]
           else f"against {report['dataset']}.{report['reference']} "
                f"({report['references']} images)")
    lines = [f"{report['dataset']}.{report['query']} ({report['queries']} queries) {how}; "
             f"embedding '{report['layer']}' ({report['dimensions']}-d)"]
    names = [
        ("precision_at_1", None), ("r_precision", None),
        ("mean_average_precision_at_r", None), ("mean_average_precision", None),
        ("knn_accuracy", f"k={report['k']}"), ("centroid_accuracy", None), ("nmi", "k-means"),
        ("hamming_map", f"{report.get('bits')} bits, threshold {report.get('threshold')}"),
        ("precision_hamming_radius_2",
         f"{report.get('empty_hamming_radius_2')} queries found nothing within radius 2 "
         f"and count as 0"),
    ]
    for name, note in names:
        if name not in report:
            continue
        value = report[name]
        text = "n/a" if value is None else f"{value:.4f}"
        lines.append(f"{name}: {text}" + (f"  ({note})" if note else ""))
    lines.append(f"excluded_queries: {report['excluded_queries']}  (their label has no "
                 f"other reference image)")
    if report.get("codes_file"):
        lines.append(f"wrote {report['codes_file']}")
    return lines
