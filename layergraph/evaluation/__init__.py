"""Evaluation of trained embedding nets.

``embedding``  run a dataset split through the RUN net and collect a blob;
``metrics``    retrieval metrics (precision@1, R-precision, MAP@R, mAP,
               k-NN and nearest-centroid accuracy, NMI) with
               pytorch-metric-learning's definitions, chunked over queries;
``hashing``    binary codes: Hamming-ranking mAP, precision within Hamming
               radius 2, packed export;
``reports``    the commands' work: test-many, inspect (t-SNE), evaluate.

docs/metrics.md writes the formulas out.
"""
from .embedding import (data_transform, embed, embedding_blob, load_split, preprocess,
                        resolve_blob, run_net)
from .hashing import (binarize, code_threshold, hamming_distances, hamming_metrics,
                      load_codes, save_codes)
from .metrics import METRICS, confusion_matrix, retrieval_metrics
from .reports import evaluate, format_report, inspect, test_many

__all__ = ["data_transform", "embed", "embedding_blob", "load_split", "preprocess",
           "resolve_blob", "run_net", "binarize", "code_threshold", "hamming_distances",
           "hamming_metrics", "load_codes", "save_codes", "METRICS", "confusion_matrix",
           "retrieval_metrics", "evaluate", "format_report", "inspect", "test_many"]
