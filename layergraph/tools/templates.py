"""Start a project from a template: ``layergraph new``.

``list_templates``     the templates under ``model_templates/`` (a directory
                       with a ``train_val.prototxt``);
``new_from_template``  copy one into a directory, its data sources pointed at
                       a dataset.

A template may ship recipes for other kinds of dataset in ``recipes.json``
beside its prototxts: settings measured better there, which ``new``
applies when the dataset qualifies (``--recipe auto``, the default) or when
asked (``--recipe NAME``); ``--recipe template`` keeps the template as it
is.  Each recipe::

    {"NAME": {"min_images_per_label": 2000,       # auto: the training split's
                                                   # smallest label has as many
              "replace": [["OLD", "NEW"], ...],    # in train_val.prototxt; OLD
                                                   # must occur
              "max_iter": 4000,                    # the schedule scales with it
              "summary": "what it changes and what it measured"}}
"""
import json
import os

from ..errors import LayergraphError


def _holds_templates(folder):
    return os.path.isdir(folder) and any(
        os.path.isfile(os.path.join(folder, d, "train_val.prototxt")) for d in os.listdir(folder))


def template_dir():
    """The folder of the templates: the repository's ``model_templates/`` in a
    source checkout (edits there show at once), else the copy installed as
    package data, ``layergraph/model_templates/`` (setup.py maps one to the
    other, as it maps ``kernels/`` to ``layergraph/cuda_kernels/``).  None
    when neither holds a template."""
    from importlib import resources
    package = resources.files("layergraph")
    checkout = os.path.join(os.path.dirname(str(package)), "model_templates")
    installed = package / "model_templates"
    for candidate in (checkout, installed):
        # a wheel installs into a directory, so the Traversable is a real path
        if isinstance(candidate, (str, os.PathLike)) and _holds_templates(candidate):
            return os.fspath(candidate)
    return None


TEMPLATE_DIR = template_dir() or os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), "model_templates")


def list_templates():
    if not os.path.isdir(TEMPLATE_DIR):
        return []
    return sorted(d for d in os.listdir(TEMPLATE_DIR)
                  if os.path.isfile(os.path.join(TEMPLATE_DIR, d, "train_val.prototxt")))


def load_recipes(template):
    """The recipes of a template (see the module docstring): {name: dict}."""
    path = os.path.join(TEMPLATE_DIR, template, "recipes.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            recipes = json.load(f)
    except (OSError, ValueError) as e:
        raise LayergraphError(f"{path}: not a readable recipes file "
                              f"({' '.join(str(e).split())[:120]})") from None
    if not isinstance(recipes, dict) or not all(isinstance(r, dict) for r in recipes.values()):
        raise LayergraphError(f"{path}: expected {{\"name\": {{...}}, ...}}")
    return recipes


def choose_recipe(template, info, recipe="auto"):
    """(name, recipe dict) to apply, or (None, None): ``recipe`` 'auto' picks
    the first whose ``min_images_per_label`` the dataset (``info``, see
    _dataset_facts) meets; 'template' none; else that recipe by name."""
    recipes = load_recipes(template)
    if recipe in (None, "template"):
        return None, None
    if recipe != "auto":
        if recipe not in recipes:
            raise LayergraphError(f"template {template} has no recipe '{recipe}'; recipes: "
                                  f"{', '.join(['auto', 'template'] + sorted(recipes))}")
        return recipe, recipes[recipe]
    if info is None or not info.get("smallest_label"):
        return None, None
    for name, r in recipes.items():
        need = r.get("min_images_per_label")
        if need is not None and info["smallest_label"] >= need:
            return name, r
    return None, None


def _apply_recipe(text, name, recipe, path):
    for old, new in recipe.get("replace", []):
        if old not in text:
            raise LayergraphError(f"recipe '{name}' of {path}: '{old}' not found in the "
                                  f"template (the template changed; update its recipes.json)")
        text = text.replace(old, new)
    return text


def new_from_template(template, dataset, out, force=False, max_iter=None, log=None,
                      recipe="auto"):
    """Copy a template into ``out`` with its data sources pointed at
    ``dataset``; returns the files written.

    When the dataset exists, every dataset-dependent field is rewritten too:
    ``label_count`` (DataSequence), ``pregen_label_count`` (Decode), P x K
    batches that ask for more labels than the dataset has, and the solver's
    ``test_iter`` so that a test covers the testing split once (at most 200
    batches).  ``max_iter`` rescales the schedule (max_iter, stepvalue,
    stepsize, snapshot, test_interval) proportionally; without it the
    template's count is kept and ``log`` is told how many epochs it covers.
    ``recipe``: 'auto' (a recipe of the template's recipes.json that the
    dataset qualifies for), 'template' (none) or a recipe's name; ``log``
    is told which one was applied.
    """
    import shutil
    src = os.path.join(TEMPLATE_DIR, template)
    if template not in list_templates():
        raise LayergraphError(f"unknown template '{template}'; templates: "
                              f"{', '.join(list_templates()) or 'none found'}")
    if os.path.exists(out) and os.listdir(out) and not force:
        raise LayergraphError(f"{out} exists and is not empty (use --force to overwrite)")
    if max_iter is not None and max_iter < 1:
        raise LayergraphError(f"--max-iter must be at least 1, got {max_iter}")
    info = _dataset_facts(dataset)
    recipe_name, chosen = choose_recipe(template, info, recipe)
    if chosen is not None:
        if max_iter is None and chosen.get("max_iter"):
            max_iter = int(chosen["max_iter"])
        if log:
            why = (f" (the smallest label of {dataset}.training has "
                   f"{info['smallest_label']:,} images, at least "
                   f"{chosen['min_images_per_label']:,})" if recipe == "auto" else "")
            log(f"applied the template's '{recipe_name}' recipe{why}: "
                f"{chosen.get('summary', 'see recipes.json')}; `new --recipe template` "
                f"keeps the template as it is")
    os.makedirs(out, exist_ok=True)
    written = []
    batches = {}
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if not os.path.isfile(path) or name in ("solver.prototxt", "recipes.json"):
            continue
        target = os.path.join(out, name)
        recipe_here = chosen is not None and name == "train_val.prototxt"
        if name.endswith(".prototxt") and (dataset or recipe_here):
            with open(path) as f:
                text = f.read()
            if recipe_here:
                text = (f"# `layergraph new` applied this template's '{recipe_name}' recipe "
                        f"(recipes.json):\n# {chosen.get('summary', '')}\n# (the comments "
                        f"below describe the template as it is)\n"
                        + _apply_recipe(text, recipe_name, chosen, path))
            if dataset:
                text = _rewrite_net(text, dataset, info, batches)
            with open(target, "w") as f:
                f.write(text)
        elif name == "README.md" and dataset:
            with open(path) as f:
                text = _rewrite_readme(f.read(), template, dataset, recipe_name, chosen)
            with open(target, "w") as f:
                f.write(text)
        else:
            shutil.copyfile(path, target)
        written.append(target)
    solver = os.path.join(src, "solver.prototxt")
    if os.path.isfile(solver):
        target = os.path.join(out, "solver.prototxt")
        with open(solver) as f:
            text = f.read()
        text, note = _rewrite_solver(text, info, batches, max_iter)
        with open(target, "w") as f:
            f.write(text)
        written.append(target)
        if note and log:
            log(note)
    return sorted(written)


def _dataset_facts(dataset):
    """Labels and image counts of an existing dataset (None when it does not
    exist yet: then only the sources are rewritten)."""
    if not dataset:
        return None
    from ..imagedb.store import dataset_exists, dataset_info
    if not dataset_exists(dataset):
        return None
    info = dataset_info(dataset)
    sources = info["sources"]
    counts = sources["training"]["label_counts"]
    labels = sorted(int(k) for k in counts)
    return {"labels": labels, "train": sources["training"]["count"],
            "test": sources.get("testing", {}).get("count", 0),
            "smallest_label": min((int(v) for v in counts.values()), default=0)}


def _rewrite_net(text, dataset, info, batches):
    import re
    text = re.sub(r'source:\s*"[^".]+\.(training|testing)"',
                  lambda m: f'source: "{dataset}.{m.group(1)}"', text)
    if info is None:
        return text
    n_labels = len(info["labels"])
    text = re.sub(r"\blabel_count:\s*\d+", f"label_count: {n_labels}", text)
    text = re.sub(r"\bpregen_label_count:\s*\d+", f"pregen_label_count: {n_labels}", text)
    if info["labels"] and info["labels"][0] != 0:
        text = re.sub(r"\blabel_start:\s*-?\d+", f"label_start: {info['labels'][0]}", text)

    def fix_pxk(m):
        block = m.group(0)
        p = re.search(r"labels_per_batch:\s*(\d+)", block)
        k = re.search(r"images_per_label:\s*(\d+)", block)
        if p and k and int(p.group(1)) > n_labels:
            block = re.sub(r"labels_per_batch:\s*\d+", f"labels_per_batch: {n_labels}", block)
            block = re.sub(r"batch_size:\s*\d+", f"batch_size: {n_labels * int(k.group(1))}",
                           block)
        return block
    text = re.sub(r"data_param\s*\{[^}]*\}", fix_pxk, text)
    # the batch size of each phase's data layer, for test_iter and epochs
    for m in re.finditer(r"include\s*\{\s*phase:\s*(TRAIN|TEST)\s*\}.*?batch_size:\s*(\d+)",
                         text, re.S):
        batches.setdefault(m.group(1), int(m.group(2)))
    return text


def _rewrite_solver(text, info, batches, max_iter):
    import math
    import re
    note = None
    old = re.search(r"^max_iter:\s*(\d+)", text, re.M)
    if max_iter is not None and old:
        factor = max_iter / int(old.group(1))

        def scale(m):
            return f"{m.group(1)}: {max(1, int(round(int(m.group(2)) * factor)))}"
        text = re.sub(r"^(stepvalue|stepsize|snapshot|test_interval):\s*(\d+)", scale, text,
                      flags=re.M)
        text = re.sub(r"^max_iter:\s*\d+", f"max_iter: {max_iter}", text, flags=re.M)
    if info is None:
        return text, note
    test_batch = batches.get("TEST")
    if test_batch and info["test"]:
        test_iter = min(200, math.ceil(info["test"] / test_batch))
        text = re.sub(r"^test_iter:\s*\d+", f"test_iter: {test_iter}", text, flags=re.M)
    iters = re.search(r"^max_iter:\s*(\d+)", text, re.M)
    train_batch = batches.get("TRAIN")
    if iters and train_batch and info["train"]:
        epochs = int(iters.group(1)) * train_batch / info["train"]
        note = (f"the solver runs {int(iters.group(1)):,} iterations x {train_batch} images = "
                f"{epochs:,.1f} epochs of the {info['train']:,} training images; "
                f"change it with `new --max-iter N` (the schedule scales with it) or "
                f"`train --iterations N`")
    return text, note


def _rewrite_readme(text, template, dataset, recipe_name=None, recipe=None):
    import re
    text = re.sub(r"\bMNIST\.(training|testing)\b", lambda m: f"{dataset}.{m.group(1)}", text)
    text = re.sub(r"--dataset MNIST\b", f"--dataset {dataset}", text)
    applied = ""
    if recipe is not None:
        applied = (f"; its '{recipe_name}' recipe applied (recipes.json): "
                   f"{recipe.get('summary', '')}")
    return (f"<!-- copied from model_templates/{template} by `layergraph new`, its data "
            f"sources pointed at {dataset}{applied} -->\n" + text)
