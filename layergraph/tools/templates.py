"""Start a project from a template: ``layergraph new``.

``list_templates``     the templates under ``model_templates/`` (a directory
                       with a ``train_val.prototxt``);
``new_from_template``  copy one into a directory, its data sources pointed at
                       a dataset.
"""
import os

from ..errors import LayergraphError


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
