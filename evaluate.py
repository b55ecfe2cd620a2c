"""The evaluation program: a folder of class folders in; scores, a per-photo CSV, figures and an HTML report out
(DESCRIPTION is what --help tells users). The scoring itself is effnet/reports/scoring.py."""
import argparse
import json
import os
import sys
from pathlib import Path

from effnet.atomic_files import write_json
from effnet.command_line import ArgumentParser, UsageError, one_line, report
from effnet.data.class_folders import ClassFolders, presplit_folders, scan_class_folders
from effnet.data.duplicates import copies_of_training_photos
from effnet.data.images import IMAGE_EXTENSIONS
from effnet.inference.classifier import Classifier, NonFiniteOutputError, model_files, weights_or_newest
from effnet.model_flags import add_model_flags, add_precision_flag, classifier_from_flags
from effnet.output_paths import (
    OutputKind,
    RunInputs,
    check_distinct,
    check_file_target,
    check_folder_target,
    generator_field,
    marked_at_start,
)
from effnet.reports.scoring import DEFAULT_TOP_K, RESULT_FILES, Evaluation, describe, evaluate_images, write_files

PROGRAM = "evaluate.py"
RECORD = "evaluated.json"  # in the output folder: which DIR and weights its results are of
JSON_OUTPUT = OutputKind("a JSON file of evaluate.py", marked_at_start(json.dumps(generator_field(PROGRAM))[1:-1]))
OUTPUT_FILES = {**RESULT_FILES, RECORD: OutputKind(f"a record of {PROGRAM}", JSON_OUTPUT.recognise)}


DESCRIPTION = """Score a trained EfficientNet on a folder of labelled photos, DIR/<class name>/<photos>, the class
folders named as the model's classes (any of them): accuracy, top-k accuracy and per-class precision, recall
and F1; by default with the best.pth of the newest run in runs/.

    python evaluate.py my_test_set                                # scores, and the files below
    python evaluate.py my_test_set --weights runs/20261128-101500-b0/best.pth
    python evaluate.py my_test_set --report report.html           # a page with the mistakes
    python evaluate.py my_test_set --json scores.json             # every score, as JSON
    python evaluate.py test --weights model-29.pth --model b0 --class-indices class_indices.json

Writes predictions.csv (every photo: its true and predicted class, confidence, the true class's rank),
per_class.csv, confusion_matrix.png and evaluated.json into --output-dir. Unreadable photos are listed and
left out. An output never replaces a photo or the weights, nor a file evaluate.py did not write unless
--overwrite is given (docs/outputs.md).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=DESCRIPTION)
    parser.add_argument("directory", metavar="DIR", help="folder with one sub-folder of photos per class")
    model = parser.add_argument_group("model")
    scoring = parser.add_argument_group("scoring")
    add_model_flags(model, "evaluate", tta_group=scoring)
    add_precision_flag(model)
    add = scoring.add_argument
    add("--top-k", type=int, default=DEFAULT_TOP_K,
        help=f"also count a photo right when its class is among the top k, shown when k is below the number of "
             f"classes (default {DEFAULT_TOP_K})")
    add("--batch-size", type=int, default=32, help="photos per forward pass (default 32)")
    add = parser.add_argument_group("output").add_argument
    add("--output-dir", default=None,
        help="where predictions.csv, per_class.csv, confusion_matrix.png and evaluated.json go (default "
             "evaluations/<DIR name>/, or <DIR name>-2/ ... when that one holds another folder's results)")
    add("--json", default=None, metavar="FILE",
        help="also write every score and the confusion matrix as JSON (default: none)")
    add("--report", default=None, metavar="FILE",
        help="also write a self-contained HTML report (scores, confusion matrix, misclassified photos with "
             "Grad-CAM), to open in a browser (default: none)")
    add("--overwrite", action="store_true",
        help="let the outputs replace existing files that evaluate.py did not write (default: refuse; its own "
             "earlier results are replaced anyway, the photos, weights and class names never are)")
    return parser


def class_folders(directory: str) -> ClassFolders:
    """DIR's class folders, or a UsageError saying what is wrong with DIR."""
    if not os.path.isdir(directory):
        raise UsageError(f"{directory} does not exist or is not a folder; give a folder with one sub-folder of "
                         f"photos per class")
    found = scan_class_folders(directory, check_headers=False)  # an unreadable photo is listed when scored
    if found.images:
        return found
    split = presplit_folders(directory)
    if split:
        hint = f"it is split into {', '.join(sorted(split))}: evaluate one of them, " \
               f"such as {os.path.join(directory, 'test')}"
    elif found.loose_images:
        hint = f"its photos are not sorted into class folders: put them in {directory}/<class name>/"
    else:
        hint = f"expected {directory}/<class name>/<photos> ({', '.join(IMAGE_EXTENSIONS)})"
    raise UsageError(f"{directory} holds no class folders with photos; {hint}")


def shown_names(names: list[str], limit: int = 50) -> str:
    """The first `limit` class names, and how many there are when that is not all of them."""
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def labelled_images(found: ClassFolders, classifier: Classifier, weights: str) -> tuple[list[str], list[int]]:
    """Every photo of DIR with its class's index among the model's classes."""
    names = classifier.class_names
    unknown = [name for name in found.classes if name not in names]
    if unknown and names == [str(i) for i in range(len(names))]:
        raise UsageError(f"{weights} carries no class names (its {len(names)} classes are numbered 0 ... "
                         f"{len(names) - 1}), so {found.root}'s folders cannot be matched; pass --class-indices FILE")
    if unknown:
        shown = shown_names(names, 10)
        folders = f"these folders: {', '.join(unknown)}" if len(unknown) > 1 else "the folder"
        raise UsageError(f"{os.path.join(found.root, unknown[0])}: '{unknown[0]}' is not a class of {weights} "
                         f"({shown}); rename or remove {folders}")
    paths, labels = [], []
    for class_name, class_paths in found.images.items():
        paths += class_paths
        labels += [names.index(class_name)] * len(class_paths)
    return paths, labels


def write_outputs(evaluation: Evaluation, args: argparse.Namespace, classifier: Classifier) -> list[Path]:
    """predictions.csv, per_class.csv, confusion_matrix.png and evaluated.json, and the --json and --report files."""
    output_dir = Path(args.output_dir)
    written = write_files(evaluation, output_dir, f"{Path(args.directory).name}, {len(evaluation.results)} photos")
    weights = classifier.backend.origin
    write_json(output_dir / RECORD, {**generator_field(PROGRAM), "directory": os.path.realpath(args.directory),
                                     "weights": weights})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, {**generator_field(PROGRAM), "weights": weights, "directory": args.directory,
                               "predictions": str(written[0]), **evaluation.scores(args.top_k)})
        written.append(Path(args.json))
    if args.report:
        from effnet.reports import report_page

        preprocessing = classifier.preprocessing
        settings = {"evaluated": f"{weights} on {args.directory}", "backend": classifier.backend.name,
                    "photos": os.path.abspath(args.directory),
                    "model classes": shown_names(classifier.class_names),
                    "preprocessing": f"resize {preprocessing.resize}, centre crop {preprocessing.crop}, "
                                     f"{preprocessing.interpolation}",
                    "per photo": str(written[0])}
        title = f"Evaluation on {Path(os.path.abspath(args.directory)).name}"
        written.append(report_page.write_evaluation_report(args.report, title, settings, evaluation, args.top_k,
                                                           written[2], classifier))
    return written


def holds_other_results(folder: Path, directory: str) -> bool:
    """Whether `folder` holds the results of another folder than `directory` (or results of unknown origin)."""
    if not any((folder / name).exists() for name in OUTPUT_FILES):
        return False
    try:
        return json.loads((folder / RECORD).read_text())["directory"] != os.path.realpath(directory)
    except (OSError, ValueError, KeyError, TypeError):  # written by an earlier evaluate.py, or by someone else
        return True


def default_output_dir(directory: str) -> str:
    """evaluations/<DIR name>/, or <DIR name>-2/, -3/ ... when it holds another folder's results: A/test and
    B/test must not replace each other's."""
    base = Path("evaluations") / Path(os.path.realpath(directory)).name
    folder, number = base, 1
    while holds_other_results(folder, directory):
        number += 1
        folder = base.with_name(f"{base.name}-{number}")
    return str(folder)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before the model loads, outputs that would replace an input or a file evaluate.py did not write,
    that lie in DIR (the next run would score them), or that are the wrong kind of thing."""
    from effnet.reports.report_page import REPORT_OUTPUT

    args.weights = weights_or_newest(args.weights)
    inputs = RunInputs()
    for path, what in model_files(args.weights, args.class_indices):
        inputs.add_file(path, what)
    inputs.add_folder(args.directory, "the folder of class folders")
    args.output_dir = args.output_dir or default_output_dir(args.directory)
    check_folder_target("--output-dir", args.output_dir, inputs, OUTPUT_FILES, args.overwrite)
    for flag, path, kind in (("--json", args.json, JSON_OUTPUT), ("--report", args.report, REPORT_OUTPUT)):
        if path:
            check_file_target(flag, path, inputs, kind, args.overwrite)
    check_distinct([*(("--output-dir", os.path.join(args.output_dir, name)) for name in OUTPUT_FILES),
                    *((flag, path) for flag, path in (("--json", args.json), ("--report", args.report)) if path)])


def warn_about_training_copies(weights: str, paths: list[str], shown: int = 10) -> None:
    """Warn about the photos that are copies of photos the weights' run trained on (its split.json says which):
    the model has seen them, so their scores flatter it."""
    run_dir = Path(weights).parent
    copies = copies_of_training_photos(run_dir, paths) if os.path.isfile(weights) else []
    for photo, trained, bits in copies[:shown]:
        kind = "the same picture as" if bits == 0 else f"a near-duplicate ({bits} bits apart) of"
        print(f"warning: {one_line(photo)} is {kind} the training photo {one_line(trained)}", file=sys.stderr)
    if copies:
        more = f" ({len(copies) - shown} more not named)" if len(copies) > shown else ""
        print(f"warning: {len(copies)} of the {len(paths)} photos are copies of photos {run_dir} trained on "
              f"({run_dir / 'split.json'}){more}; their scores flatter the model", file=sys.stderr)


def score_and_write(args: argparse.Namespace, classifier: Classifier, paths: list[str], labels: list[int]) -> int:
    """Score the photos, write the results and print the scores; the exit status."""
    try:
        evaluation = evaluate_images(classifier, paths, labels, args.batch_size)
    except NonFiniteOutputError as error:  # a broken model: no score would mean anything
        return report(str(error), status=1)
    for path, error in evaluation.unreadable:
        print(f"warning: unreadable photo left out: {one_line(path)}: {one_line(error)}", file=sys.stderr)
    if not evaluation.results:
        return report(f"{args.directory}: none of its {len(paths)} photos could be read (see the warnings above)")
    try:
        written = write_outputs(evaluation, args, classifier)
    except OSError as error:  # an unwritable --output-dir, --json or --report
        return report(f"{error.filename or 'a file'}: {error.strerror or error}; choose another place", status=1)
    print(f"{classifier.backend.origin} on {args.directory}: {describe(evaluation, args.top_k)}")
    if evaluation.unreadable:
        count = len(evaluation.unreadable)
        print(f"left out {count} unreadable photo{'s' if count > 1 else ''} (listed above)")
    print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        return report("--top-k and --batch-size must be at least 1")
    try:
        check_outputs(args)
        found = class_folders(args.directory)
        classifier = classifier_from_flags(args, precision=args.precision)
        paths, labels = labelled_images(found, classifier, classifier.backend.origin)
        warn_about_training_copies(args.weights, paths)
        return score_and_write(args, classifier, paths, labels)
    except (UsageError, ValueError, RuntimeError) as error:  # WeightsError is a ValueError
        return report(str(error))
    except KeyboardInterrupt:  # the results are written last, each file atomically: none is half written
        return report("interrupted; run it again for the results (a file written so far is whole)", status=130)


if __name__ == "__main__":
    sys.exit(main())
