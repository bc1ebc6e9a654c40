r"""Binary hash codes: binarise an embedding, rank by Hamming distance,
export packed bits.

Binarising.  A K-bit code relaxed with tanh lives in [-1, 1] and is cut at
0 (the sign); one relaxed with a sigmoid lives in [0, 1] and is cut at 0.5.
``code_threshold`` tells them apart by the value range: every value in
[0, 1] gives 0.5, anything else 0.  Bit = value > threshold.

Hamming distance: :math:`d_H = (K - s_q \cdot s_r)/2` with the codes as
:math:`s \in \{-1,+1\}^K` (one matrix product, exact); ``popcount_distances``
gives the same from packed codes (XOR and a popcount table).

Metrics (queries, references, self-exclusion, lone-query exclusion and the
tie rule as in evaluation.metrics):

* Hamming-ranking mAP: the mean average precision of the whole reference
  list ranked by Hamming distance,
  :math:`\mathrm{AP}_q = \frac{1}{R_q}\sum_{i=1}^{N}P_q(i)\,\mathrm{rel}_q(i)`.
  Hamming distances tie a lot (48 bits give 49 values); ties are ordered by
  reference index, so the number is reproducible (the DPSH/HashNet scripts
  use np.argsort, whose order among ties is unspecified; Jiang et al.,
  "On the Evaluation Metric for Hashing", 2019, discuss the ambiguity).
* precision within Hamming radius 2 (hash lookup):
  :math:`\frac{|\{r: d_H(q,r)\le 2,\ y_r=y_q\}|}{|\{r: d_H(q,r)\le 2\}|}`,
  and **0 for a query that finds no reference within the radius** — the
  convention of the supervised and deep hashing literature (KSH, DPSH,
  HashNet report "precision within Hamming radius 2" this way: a failed
  lookup returns nothing useful).  ``empty_hamming_radius_2`` counts those
  queries so the convention's weight is visible.

Export: ``save_codes`` writes an .npz with, per split, ``<split>_codes``
(uint8, np.packbits along the bits, big-endian bit order, shape
(n, ceil(K/8))) and ``<split>_labels`` (int64), plus ``bits`` (K) and
``threshold``; ``load_codes`` reads it back.
"""
import os

import numpy as np

from ..errors import LayergraphError
from .metrics import (check_embeddings, query_chunks, rank,
                      ranking_scores, relevant_counts)

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def code_threshold(*embeddings):
    """0.5 when every value lies in [0, 1] (sigmoid-like codes), else 0
    (tanh-like codes: the sign)."""
    low = min(float(np.min(e)) for e in embeddings)
    high = max(float(np.max(e)) for e in embeddings)
    return 0.5 if low >= 0.0 and high <= 1.0 else 0.0


def binarize(embeddings, threshold):
    """(n, K) bool bits: value > threshold."""
    x = np.asarray(embeddings)
    return x.reshape(len(x), -1) > threshold


def pack(bits):
    """(n, K) bool -> (n, ceil(K/8)) uint8 (np.packbits, big-endian bits)."""
    return np.packbits(np.asarray(bits, bool), axis=1)


def unpack(packed, bits):
    """Inverse of ``pack`` for K = ``bits``."""
    return np.unpackbits(np.asarray(packed, np.uint8), axis=1, count=bits).astype(bool)


def hamming_distances(query_bits, reference_bits):
    """(b, n) int32 Hamming distances between (b, K) and (n, K) bool codes:
    with s = 2 bit - 1 in {-1, +1}, :math:`d_H = (K - s_q \cdot s_r) / 2`,
    one float32 matrix product (exact: every term is an integer below 2**24)."""
    bits = query_bits.shape[1]
    if bits >= 1 << 24:
        raise LayergraphError(f"{bits}-bit codes are too long")
    sq = np.where(query_bits, np.float32(1), np.float32(-1))
    sr = np.where(reference_bits, np.float32(1), np.float32(-1))
    return ((bits - sq @ sr.T) * 0.5).round().astype(np.int32)


def popcount_distances(query_packed, reference_packed):
    """The same distances from packed codes (``pack``): XOR, then a 256-entry
    popcount table summed over the bytes — what a code index does."""
    xor = np.bitwise_xor(query_packed[:, None, :], reference_packed[None, :, :])
    return _POPCOUNT[xor].sum(axis=2, dtype=np.int32)


def hamming_metrics(query_bits, query_labels, reference_bits=None, reference_labels=None,
                    radius=2, chunk_size=None):
    """Hamming-ranking mAP and precision within Hamming ``radius`` of
    (n, K) bool codes; ``reference_bits=None``: leave-one-out within the
    query set.  Returns {"hamming_map", "precision_hamming_radius_<r>",
    "empty_hamming_radius_<r>", "bits", "excluded_queries"}."""
    same_source = reference_bits is None
    query_bits, query_labels = check_embeddings(query_bits, query_labels, "query codes")
    if same_source:
        reference_bits, reference_labels = query_bits, query_labels
    else:
        reference_bits, reference_labels = check_embeddings(reference_bits, reference_labels,
                                                            "reference codes")
    bits = query_bits.shape[1]
    if reference_bits.shape[1] != bits:
        raise LayergraphError(f"query codes have {bits} bits but reference codes "
                              f"{reference_bits.shape[1]}")
    if len(reference_bits) - same_source < 1:
        raise LayergraphError("no reference code to rank")
    query_bits = query_bits > 0.5
    reference_bits = query_bits if same_source else reference_bits > 0.5
    relevant = relevant_counts(query_labels, reference_labels, same_source)
    kept = relevant > 0
    ap_sum = precision_sum = 0.0
    empty = 0
    for rows in query_chunks(len(query_bits), len(reference_bits), chunk_size):
        sel = rows.start + np.flatnonzero(kept[rows])
        if not len(sel):
            continue
        q_labels = query_labels[sel]
        distances = hamming_distances(query_bits[sel], reference_bits)
        order = rank(distances, sel if same_source else None)
        ap_sum += float(ranking_scores(order, q_labels, reference_labels, relevant[sel],
                                       include=("mean_average_precision",))
                        ["mean_average_precision"].sum())
        within = distances <= radius
        if same_source:
            within[np.arange(len(sel)), sel] = False
        retrieved = within.sum(axis=1)
        hits = (within & (reference_labels[None, :] == q_labels[:, None])).sum(axis=1)
        precision_sum += float((hits / np.maximum(retrieved, 1)).sum())
        empty += int((retrieved == 0).sum())
    n_kept = int(kept.sum())
    return {"hamming_map": ap_sum / n_kept if n_kept else None,
            f"precision_hamming_radius_{radius}": precision_sum / n_kept if n_kept else None,
            f"empty_hamming_radius_{radius}": empty,
            "bits": int(bits), "excluded_queries": int(len(query_bits) - n_kept)}


def save_codes(path, splits, threshold):
    """Write {split: (bits (n, K) bool, labels (n,))} as packed codes to the
    .npz ``path`` (the name is kept as given)."""
    arrays = {"threshold": np.float64(threshold)}
    widths = set()
    for name, (bits, labels) in splits.items():
        bits = np.asarray(bits, bool)
        widths.add(bits.shape[1])
        arrays[f"{name}_codes"] = pack(bits)
        arrays[f"{name}_labels"] = np.asarray(labels, np.int64)
    if len(widths) != 1:
        raise LayergraphError(f"the splits' codes differ in length: {sorted(widths)}")
    arrays["bits"] = np.int64(widths.pop())
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_codes(path):
    """{"bits": K, "threshold": t, "splits": {split: (bits (n, K) bool,
    labels (n,))}} from a file ``save_codes`` wrote."""
    try:
        with np.load(path) as data:
            bits = int(data["bits"])
            splits = {key[:-len("_codes")]: (unpack(data[key], bits),
                                             data[key[:-len("_codes")] + "_labels"])
                      for key in data.files if key.endswith("_codes")}
            threshold = float(data["threshold"])
    except (OSError, KeyError, ValueError) as e:
        raise LayergraphError(f"{path}: not a code file written by evaluate "
                              f"--export-codes ({e})") from None
    return {"bits": bits, "threshold": threshold, "splits": splits}
