"""``layergraph new``: start a project from a template of model_templates/,
pointed at a dataset."""
import os

from .common import _set_db


def cmd_new(args):
    from ..tools.templates import new_from_template
    from ..imagedb.store import dataset_exists
    _set_db(args)
    notes = []
    written = new_from_template(args.template, args.dataset, args.out, force=args.force,
                                max_iter=args.max_iter, log=notes.append,
                                recipe=args.recipe)
    for path in written:
        print(f"wrote {path}")
    for note in notes:
        print(f"note: {note}")
    if args.dataset and not dataset_exists(args.dataset):
        print(f"note: dataset '{args.dataset}' does not exist yet; create it with "
              f"'layergraph data ...' before training")
    print(f"train with: layergraph train --solver {os.path.join(args.out, 'solver.prototxt')}")
    return 0


def add_commands(sub):
    p = sub.add_parser("new", help="start a model from a template (model_templates/)")
    p.add_argument("--template", required=True,
                   help="a folder of model_templates/: TripletNet_28x28, Siamese_28x28, "
                        "TripletNet_28x28_BatchHard, DeepHash_28x28")
    p.add_argument("--dataset", help="dataset whose .training/.testing sources to use")
    p.add_argument("--out", required=True, help="directory to create")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.add_argument("--max-iter", type=int,
                   help="train this many iterations (the lr schedule, snapshots and tests "
                        "scale with it)")
    p.add_argument("--recipe", default="auto",
                   help="auto (default): apply a recipe of the template's recipes.json "
                        "that the dataset qualifies for (e.g. TripletNet_28x28_BatchHard's "
                        "'large_dataset' from 2,000 images per label); 'template': the "
                        "template as it is; or a recipe's name")
    p.add_argument("--db")
    p.set_defaults(func=cmd_new)
