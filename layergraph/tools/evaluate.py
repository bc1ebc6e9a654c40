"""Backward-compatibility re-exports only.

The evaluation code moved to the ``layergraph.evaluation`` package
(embedding, metrics, hashing, reports) and the template code to
``layergraph.tools.templates``; this module keeps the old import path
``layergraph.tools.evaluate`` working for scripts written against it.
New code imports from those modules.
"""
from ..evaluation.embedding import (data_transform as _data_transform,  # noqa: F401
                                    decision as _decision, embed, load_split, preprocess,
                                    run_net)
from ..evaluation.metrics import confusion_matrix  # noqa: F401
from ..evaluation.reports import (inspect, plot_confusion, plot_scatter,  # noqa: F401
                                  test_many, tsne)
from .templates import TEMPLATE_DIR, list_templates, new_from_template  # noqa: F401
