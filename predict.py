"""The prediction program: photos in, ranked classes out (DESCRIPTION is what --help tells users); and `classify`,
re-exported here for notebooks and scripts (`from predict import classify`)."""
import argparse
import collections
import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from effnet.command_line import ArgumentParser, UsageError, exit_now, interrupts_deferred, one_line, printable, report
from effnet.data.images import images_under, is_image_name

# Re-exported for notebooks and scripts written against earlier versions of this file.
from effnet.inference.classifier import (  # noqa: F401
    Classifier,
    NonFiniteOutputError,
    Prediction,
    Scored,
    classify,
    model_files,
    weights_or_newest,
)
from effnet.inference.runtimes import PRECISIONS
from effnet.model_flags import add_model_flags, add_precision_flag, classifier_from_flags
from effnet.output_paths import OutputKind, RunInputs, check_file_target, file_identity, header_matches  # noqa: F401 (re-exported)
from effnet.run_files import RUNS_DIR as DEFAULT_RUNS_DIR
from effnet.run_files import newest_checkpoint  # noqa: F401 (re-exported)


def expand_inputs(arguments: Sequence[str]) -> Iterator[str | Scored]:
    """Files, folders (searched recursively for images) and globs, in order, as paths; an argument that
    matches nothing comes as a Scored with its error set. Folders and globs pass over the figures predict.py
    saved (a --save into the photos' own folder), which are not photos; a file named by itself is taken."""
    for argument in arguments:
        if os.path.isdir(argument):
            yield from _photos_among(images_under(argument), argument, "folder holds no images")
        elif os.path.exists(argument):
            yield argument
        elif glob.has_magic(argument):
            found = sorted(p for p in glob.glob(argument, recursive=True) if os.path.isfile(p))
            yield from _photos_among(found, argument, "no file matches this pattern")
        else:
            yield Scored(argument, error="no such file")


def figures() -> ModuleType:
    """The plotting module, imported when a figure is drawn or a folder is scanned for figures: a run that
    classifies one photo does without it (its whole run takes about 0.2 s)."""
    from effnet.reports import figures as module

    return module


FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg")  # figures.MARKED_FORMATS: the formats whose figures are marked


def _photos_among(paths: Iterable[str], argument: str, none_found: str) -> Iterator[str | Scored]:
    """`paths` without predict.py's own figures, with a note of how many were passed over; a Scored with the
    error `none_found` when nothing is left."""
    photos = passed_over = 0
    for path in paths:
        if path.lower().endswith(FIGURE_SUFFIXES) and figures().is_prediction_figure(path):
            passed_over += 1
        else:
            photos += 1
            yield path
    if passed_over:
        print(f"note: {printable(argument)}: passed over {passed_over} figure{'s' if passed_over > 1 else ''} "
              f"that predict.py saved there", file=sys.stderr, flush=True)
    if not photos:
        yield Scored(argument, error=none_found + (" but predict.py's figures" if passed_over else ""))


def figure_path(template: str | None, source: str, index: int | None, suffix: str = "",
                stem_shared: bool = True) -> str:
    """--save out.png for one image; out_<position>_<image name>.png for each of several. A folder
    (existing, or written with a trailing slash) gets <image name>_pred.png inside it, a name that cannot be
    the photo itself even when the folder is the photos' own; photos of the run that share a name
    (`stem_shared`) get their position in front: <position>_<image name>_pred.png."""
    if not template:
        return ""
    position = f"{index:03d}_" if index is not None else ""
    if is_folder(template):
        position = position if stem_shared else ""
        return str(Path(template) / f"{position}{Path(source).stem}{suffix or '_pred'}.png")
    target = Path(template)
    stem = target.stem + (f"_{position}{Path(source).stem}" if index is not None else "") + suffix
    return str(target.with_name(stem + (target.suffix or ".png")))


def is_folder(template: str) -> bool:
    return template.endswith(("/", os.sep)) or os.path.isdir(template)


def check_figure_name(template: str | None) -> None:
    """Refuse a --save name matplotlib cannot write, before any work is done."""
    if not template or is_folder(template):
        return
    from matplotlib.backend_bases import FigureCanvasBase

    extension = Path(template).suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if extension and extension not in supported:
        raise UsageError(f"--save {template}: cannot write .{extension} figures; use one of "
                           f"{', '.join('.' + e for e in sorted(supported))}")


# What predict.py writes, and how it knows its own earlier files (output_paths.py has the rule).
CSV_OUTPUT = OutputKind("a CSV table of predict.py", header_matches(r"image(,class_\d+,probability_\d+)+,error"))
FIGURE_OUTPUT = OutputKind("a figure of predict.py", lambda path: figures().is_prediction_figure(path),
                           scans_pass_over=True, picture=True)
UNMARKED_FIGURE_OUTPUT = OutputKind("a figure of predict.py", None,
                                    f"(only its {', '.join(FIGURE_SUFFIXES)} figures say so)", picture=True)


def check_figure_target(flag: str, path: str, inputs: RunInputs, overwrite: bool) -> None:
    """Refuse a figure name that is an input of the run (never, even with --overwrite), or an existing file that
    predict.py did not draw (unless `overwrite`)."""
    marked = path.lower().endswith(FIGURE_SUFFIXES)
    check_file_target(flag, path, inputs, FIGURE_OUTPUT if marked else UNMARKED_FIGURE_OUTPUT, overwrite)


def write_figures(classifier: Classifier, result: Prediction, args: argparse.Namespace, position: int | None,
                  inputs: RunInputs, stem_shared: bool) -> None:
    """The --cam and --save/--show figures of one classified image; never over an input of the run, and over
    another existing file only when it is an earlier figure of ours or --overwrite says so."""
    def target(path: str, flag: str) -> str:
        if path:
            check_figure_target(flag, path, inputs, args.overwrite)
        return path

    view = None
    title = printable(Path(result.source).name)
    if args.cam:
        view, cam, _ = classifier.grad_cam(result.source)
        cam_path = figure_path(args.save or os.path.join(args.cam_dir, ""), result.source, position, "_cam",
                               stem_shared)
        cam_target = target(cam_path, "--save" if args.save else "--cam-dir")
        figures().prediction_figure(view, title, result.ranked, cam_target, cam=cam)
    if args.save or args.show:
        if view is None:
            view = classifier.preprocessing.load_view(result.source)
        saved = figure_path(args.save, result.source, position, stem_shared=stem_shared)
        figures().prediction_figure(view, title, result.ranked, target(saved, "--save"), show=args.show)


class Output:
    """Results as they come, each written at once (a crash keeps what was printed): text or one JSON object
    per line on stdout, a row per image in --csv FILE, errors on stderr, and on a terminal a progress bar
    once a run takes more than a second."""

    progress_delay = 1.0  # seconds before the bar appears: none for a handful of photos

    def __init__(self, args: argparse.Namespace, class_count: int) -> None:
        self.json, self.top_k = args.json, min(args.top_k or 5, class_count)
        self.csv_file: IO[str] | None = None
        self.bar: Any = None
        self.written = 0  # results written to every output
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(unit="image", delay=self.progress_delay, file=sys.stderr, dynamic_ncols=True)
        if args.csv:
            import csv  # only for --csv

            self.csv_file = open(args.csv, "w", newline="", encoding="utf-8")  # closed in close()
            self.csv = csv.writer(self.csv_file)
            ranks = range(1, self.top_k + 1)
            self.csv.writerow(["image", *(f"{kind}_{r}" for r in ranks for kind in ("class", "probability")), "error"])

    def write(self, result: Prediction) -> None:
        """Print and write one result everywhere; Ctrl-C waits until it is complete in every output."""
        with interrupts_deferred():
            self._write(result)
            self.written += 1  # in the block: a Ctrl-C held back during the writes is raised after it

    def _write(self, result: Prediction) -> None:
        if self.json:  # json escapes a name's undecodable bytes itself (\udcXX), and they read back as the file's
            self._print(json.dumps({"image": result.source, "error": result.error, "predictions": [
                {"class": c, "probability": round(p, 6)} for c, p in result.ranked]}), sys.stdout)
        # text and CSV: such bytes as \xNN, which any UTF-8 stream can take
        result = Prediction(printable(result.source), [(printable(c), p) for c, p in result.ranked],
                            result.error and printable(result.error))
        if not self.json and result.ranked:  # a newline in a file name must not start a line of its own
            rows = (f"  {one_line(c):<24} {p:.4f}" for c, p in result.ranked)
            self._print("\n".join([one_line(result.source), *rows]), sys.stdout)
        if result.error:
            self._print(f"error: {one_line(result.source)}: {one_line(result.error)}", sys.stderr)
        if self.csv_file:
            cells = [value for c, p in result.ranked for value in (c, f"{p:.6f}")]
            self.csv.writerow([result.source, *cells, *[""] * (2 * self.top_k - len(cells)), result.error or ""])
            self.csv_file.flush()
        if self.bar is not None:
            self.bar.update()

    def _print(self, text: str, stream: IO[str]) -> None:
        if self.bar is not None and stream.isatty():
            self.bar.write(text, file=stream)  # above the bar, which is redrawn below it
        else:
            print(text, file=stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.csv_file:
            self.csv_file.close()


DESCRIPTION = f"""Classify photos with a trained EfficientNet: by default the best.pth of the newest run in
{DEFAULT_RUNS_DIR}/ (through its best.onnx, which starts faster, when that is up to date).

    python predict.py rose.jpg                             # the top 5 classes
    python predict.py photos/ "more/*.png" --top-k 3       # folders (recursively) and globs
    python predict.py photos/ --json > results.jsonl       # one JSON object per photo and line
    python predict.py photos/ --csv results.csv            # a table too, a row per photo
    python predict.py rose.jpg --save rose_pred.png --cam  # figures: top classes, Grad-CAM
    python predict.py rose.jpg --weights runs/20261128-101500-b0/best.pth
    python predict.py rose.jpg --weights model-29.pth --model b0 --class-indices class_indices.json

Results are printed as they are ready; an unreadable photo is reported and the others are still classified
(exit status 1). An output never replaces a photo or the weights, nor a file predict.py did not write unless
--overwrite is given (docs/outputs.md). In Python:

    from predict import classify
    classify("rose.jpg", "runs/20261128-101500-b0/best.pth")  # [("roses", 0.93), ...]
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=DESCRIPTION)
    parser.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    model = parser.add_argument_group("model")
    prediction = parser.add_argument_group("prediction")
    add_model_flags(model, "use", tta_group=prediction)
    add_precision_flag(model, PRECISIONS)
    add = prediction.add_argument
    add("--top-k", type=int, default=None, help="classes to show per image (default min(5, classes))")
    add("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add = parser.add_argument_group("output").add_argument
    add("--json", action="store_true", help="print one JSON object per image and line, as results come (default: text)")
    add("--csv", default=None, metavar="FILE",
        help="also write a row per image to FILE: image, class_1, probability_1, ... , error (default: none)")
    add("--save", default=None, metavar="OUT.png",
        help="write the photo with its top-k bar chart (OUT_<n>_<image>.png for several images; a FOLDER/ "
             "gets one <image>_pred.png per image, <n>_<image>_pred.png for images of the same name; default: none)")
    add("--overwrite", action="store_true",
        help="let --csv, --save and --cam replace existing files that predict.py did not write (default: refuse; "
             "its own earlier tables and figures are replaced anyway, the run's inputs never are)")
    add("--show", action="store_true", help="open the figure in a window, as the tutorial did (default off)")
    add("--cam", action="store_true", help="also save a Grad-CAM heat map of where the network looked (default off)")
    add("--cam-dir", default="gradcam", help="folder for Grad-CAM images without --save (default gradcam/)")
    return parser


def classify_all(classifier: Classifier, inputs: Iterable[str | Scored], args: argparse.Namespace,
                 output: Output, known: RunInputs | None = None) -> bool:
    """Classify and write each result as it comes (with its figures when asked); True if all went well.
    `known`: what the run reads besides the photos (check_outputs)."""
    figures_wanted = args.save or args.cam or args.show
    if figures_wanted:  # figures must never overwrite a photo: know them all first
        inputs, known = list(inputs), known or RunInputs()
        photos = [item for item in inputs if isinstance(item, str)]
        for photo in photos:
            known.add_file(photo, "the photo")
        several, stems = len(inputs) > 1, collections.Counter(Path(photo).stem for photo in photos)
    all_well = True
    for position, scored in enumerate(classifier.scores(inputs, args.batch_size)):
        result = Prediction(scored.source, classifier.rank(scored.probabilities, args.top_k)
                            if scored.error is None else [], scored.error)
        if figures_wanted and result.error is None:
            try:
                write_figures(classifier, result, args, position if several else None, known,
                              stems[Path(result.source).stem] > 1)
            except UsageError as error:
                result.error = str(error)
            except OSError as error:  # an unwritable --save / --cam-dir: report it, keep the results
                result.error = f"no figure: {error}"
        output.write(result)
        all_well = all_well and result.error is None
    return all_well


def run_inputs(args: argparse.Namespace) -> RunInputs:
    """What this run reads, as far as it is known before the photos are listed: the model's files, the photos
    named, the folders given (whose image files it reads) and what the globs match."""
    inputs = RunInputs()
    for path, what in model_files(args.weights, args.class_indices):
        inputs.add_file(path, what)
    for argument in args.images:
        if os.path.isdir(argument):
            inputs.add_folder(argument, "the photo folder", lambda relative: is_image_name(os.path.basename(relative)))
        elif os.path.exists(argument):
            inputs.add_file(argument, "the photo")
        elif glob.has_magic(argument):
            for path in glob.iglob(argument, recursive=True):
                inputs.add_file(path, "the photo")
    return inputs


def check_outputs(args: argparse.Namespace) -> RunInputs:
    """Refuse, before the model loads, a --csv that would replace an input or someone else's file, and a --save
    name matplotlib cannot write; what the run reads, for the figures' checks."""
    args.weights = weights_or_newest(args.weights)
    inputs = run_inputs(args)
    if args.csv:
        try:
            check_file_target("--csv", args.csv, inputs, CSV_OUTPUT, args.overwrite)
        except UsageError as error:
            hint = " (--csv takes the name of the table to write, such as --csv results.csv)"
            raise UsageError(f"{error}{hint if is_image_name(os.path.basename(args.csv)) else ''}") from None
    check_figure_name(args.save)
    return inputs


def open_classifier(args: argparse.Namespace) -> Classifier:
    return classifier_from_flags(args, precision=args.precision, gradients=args.cam)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k is not None and args.top_k < 1 or args.batch_size < 1:
        return report("--top-k and --batch-size must be at least 1")
    no_window = args.show and figures().why_no_window()  # matplotlib would draw nowhere, and say little
    if no_window:
        print(f"warning: --show: {no_window}, so no window opens; keep the figures with --save FILE.png",
              file=sys.stderr)
        args.show = False
    try:
        known_inputs = check_outputs(args)
        classifier = open_classifier(args)
    except (UsageError, ValueError, RuntimeError) as error:  # WeightsError is a ValueError
        return report(str(error))
    except KeyboardInterrupt:
        return report("interrupted while the model was loading; nothing was classified", status=130)
    try:
        output = Output(args, len(classifier.class_names))
    except OSError as error:
        return report(f"--csv {args.csv}: {error.strerror or error}")
    try:
        return 0 if classify_all(classifier, expand_inputs(args.images), args, output, known_inputs) else 1
    except NonFiniteOutputError as error:
        return report(str(error), status=1)
    except KeyboardInterrupt:  # what was written stays: every result is complete in every output
        also = f" (also in {args.csv})" if args.csv else ""
        return report(f"interrupted after {output.written} image{'s' if output.written != 1 else ''}; the "
                      f"results written so far are complete{also}", status=130)
    except BrokenPipeError:  # the reader stopped early (predict.py ... | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    finally:
        output.close()


if __name__ == "__main__":
    exit_now(main())  # the results are written and --csv is closed: skip the interpreter's teardown
