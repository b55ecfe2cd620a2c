"""The export program: a checkpoint to ONNX or OpenVINO's IR, checked against PyTorch before it is kept, and with
--int8 an INT8 model too (DESCRIPTION is what --help tells users). The conversion and its check are
effnet/inference/onnx_conversion.py, the quantization effnet/inference/int8.py."""
import argparse
import itertools
import os
import sys
from pathlib import Path

from effnet.command_line import ArgumentParser, UsageError, report
from effnet.data.images import images_under, is_image_name
from effnet.inference.classifier import model_files, newest_checkpoint
from effnet.inference.export_format import EXPORT_FORMAT, EXPORTED_SUFFIXES, FORMATS, OPSET
from effnet.inference.int8 import DEFAULT_MIN_AGREEMENT, export_int8, run_photos
from effnet.output_paths import OutputKind, RunInputs, check_file_target, file_identity, marked_at_end
from effnet.run_files import INT8_SUFFIX, default_output, float_stem, int8_path, is_int8_name
from effnet.variants import variant_name

CHECK_PHOTOS = 32  # photos of --images used for the check, at most
MIN_OPSET = 13  # the oldest whose operators the network's export needs everywhere (checked down to it)
# An export of this project carries EXPORT_FORMAT in its metadata, at the end of the file (output_paths.py).
EXPORT_OUTPUT = OutputKind("an export of this project", marked_at_end(EXPORT_FORMAT), model=True)
OPENVINO_WEIGHTS_OUTPUT = OutputKind("the weights of an export of this project",
                                     lambda path: EXPORT_OUTPUT.recognise(str(Path(path).with_suffix(".xml"))),
                                     model=True)


DESCRIPTION = """Export a trained EfficientNet for prediction without PyTorch: to ONNX (ONNX Runtime, OpenVINO and
others read it) or OpenVINO's IR, by default the best.pth of the newest run in runs/, written beside it.

    python export.py                                                     # best.onnx beside best.pth
    python export.py runs/20261128-101500-b0/best.pth --images my_photos/  # checked on your photos
    python export.py runs/20261128-101500-b0/best.pth --int8             # and best.int8.onnx
    python export.py runs/20261128-101500-b0/best.pth --format openvino  # best.xml + best.bin
    python export.py model-29.pth --model b0 --class-indices class_indices.json  # a tutorial file

The file holds the class names and the preprocessing, so "python predict.py photo.jpg --weights best.onnx"
needs nothing else. Before it is kept, the export and PyTorch classify the same images and the agreement is
printed; a mismatch is an error and leaves no file (an existing one stays as it was). With --int8, the INT8
model is calibrated on the run's training photos and kept only when it agrees with float32 on the run's
validation photos. train.py already writes best.onnx at the end of a run.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=DESCRIPTION)
    parser.add_argument("weights", nargs="?", default=None,
                        help="this project's checkpoint, or a bare tutorial / torchvision state_dict (default: the "
                             "newest runs/*/best.pth)")
    add = parser.add_argument_group("a bare state_dict (checkpoints of this project record both)").add_argument
    add("--model", default=None,
        help="variant of a bare state_dict (default: the one its shapes show); checkpoints record their own")
    add("--class-indices", default=None,
        help="class names for a bare state_dict (default: class_indices.json beside the weights, else here)")
    add = parser.add_argument_group("export").add_argument
    add("--format", choices=FORMATS, default="onnx",
        help="onnx (default; ONNX Runtime, OpenVINO and others read it) or openvino (IR .xml + .bin; needs "
             "the openvino package)")
    add("--opset", type=parse_opset, default=OPSET,
        help=f"ONNX opset version, {MIN_OPSET} up to the newest this PyTorch writes (default {OPSET})")
    add("--images", nargs="+", default=(), metavar="PATH",
        help=f"photos or folders to check the export on (the first {CHECK_PHOTOS}; default: synthetic images)")
    add = parser.add_argument_group("output").add_argument
    add("--output", default=None, help="where to write (default: beside the weights, .onnx or .xml)")
    add("--overwrite", action="store_true",
        help="let --output replace an existing file that is not an export of this project (default: refuse; "
             "its own exports are replaced anyway, the weights and photos never are)")
    add = parser.add_argument_group("INT8").add_argument
    add("--int8", action="store_true",
        help="also write an INT8 model beside the export (best.int8.onnx): ONNX Runtime's static quantization, "
             "calibrated on the run's training photos (split.json beside the checkpoint), kept only when it "
             "agrees with float32 on the run's validation photos (default: float32 only)")
    add("--min-agreement", type=parse_percent, default=None, metavar="PERCENT",
        help=f"with --int8: the share of validation photos whose top-1 class must stay float32's (default "
             f"{DEFAULT_MIN_AGREEMENT:g}); below it the INT8 model is refused and not written")
    return parser


def parse_percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text}: give a percentage from 0 to 100")
    return value


def max_opset() -> int:
    """The newest opset PyTorch's exporter writes."""
    from torch.onnx import _constants  # no public name for it

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", OPSET))


def parse_opset(text: str) -> int:
    """--opset while the flags are read, without PyTorch: a whole number, MIN_OPSET or newer (check_opset
    asks PyTorch for the newest it writes once it is imported)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"{text}: choose an opset from {MIN_OPSET} to the newest this PyTorch writes")
    return value


def check_opset(opset: int) -> None:
    if opset > max_opset():
        raise UsageError(f"--opset {opset}: choose an opset from {MIN_OPSET} to {max_opset()}, the newest this "
                         f"PyTorch writes")


def check_photos(arguments: list[str]) -> list[str]:
    """The first CHECK_PHOTOS image files among files and folders (searched recursively)."""
    found = []
    for argument in arguments:
        if os.path.isdir(argument):
            found += itertools.islice(images_under(argument), CHECK_PHOTOS - len(found))
        elif os.path.isfile(argument):
            found.append(argument)
        else:
            raise UsageError(f"--images {argument}: no such file or folder")
    return found[:CHECK_PHOTOS]


def run_inputs(weights: Path, args: argparse.Namespace) -> RunInputs:
    """What the export reads: the weights, the class names file and the --images."""
    inputs = RunInputs()
    inputs.add_file(weights, "the weights")
    for path, what in model_files(weights, args.class_indices):
        if what == "the class names file":
            inputs.add_file(path, what)
    for argument in args.images:
        inputs.add_file(argument, "the photo")
        inputs.add_folder(argument, "the photo folder", lambda relative: is_image_name(os.path.basename(relative)))
    return inputs


def check_output(weights: Path, output: Path, args: argparse.Namespace) -> None:
    """Refuse, before anything is loaded, an output that is the wrong kind of file or would replace an input
    or a file export.py did not write."""
    if weights.suffix.lower() in EXPORTED_SUFFIXES:
        source = weights.with_suffix(".pth")
        raise UsageError(f"{weights} is an exported model already; export.py exports a .pth checkpoint"
                         f"{f' (such as {source}, beside it)' if source.is_file() else ''}")
    expected = default_output(weights, args.format).suffix
    if output.suffix.lower() != expected:
        raise UsageError(f"--output {output}: with --format {args.format} the file must end in {expected}")
    if output.is_dir():
        raise UsageError(f"--output {output} is a folder; give a file name ending in {expected}")
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: the folder {output.parent} does not exist")
    check_int8_flags(output, args)
    inputs = run_inputs(weights, args)
    if file_identity(output.parent) == file_identity(weights.parent):  # the checkpoint's own exports, beside it
        for path in (output, output.with_suffix(".bin"), int8_path(output)):
            inputs.add_own_output(path)
    check_file_target("--output", str(output), inputs, EXPORT_OUTPUT, args.overwrite)
    if args.format == "openvino":
        check_file_target("--output", str(output.with_suffix(".bin")), inputs, OPENVINO_WEIGHTS_OUTPUT, args.overwrite)
    if args.int8:
        if args.format != "onnx":
            raise UsageError(f"--int8 writes an ONNX model (which OpenVINO reads too); use it with --format onnx, "
                             f"not --format {args.format}")
        check_file_target("--output", str(int8_path(output)), inputs, EXPORT_OUTPUT, args.overwrite)
        run_photos(weights)  # the calibration and check photos are there, before anything slow starts


def check_int8_flags(output: Path, args: argparse.Namespace) -> None:
    """Which file gets which model must be plain: --output names the float32 export, whose INT8 export goes
    beside it as <name>.int8.onnx, so a name that says INT8 is never given a float32 model; and
    --min-agreement, which only the INT8 check reads, is not ignored silently."""
    if is_int8_name(output):
        stem = float_stem(output)
        raise UsageError(f"--output {output}: a name ending in {INT8_SUFFIX} is an INT8 export's; --output names "
                         f"the float32 export (such as {stem}.onnx), and with --int8 the INT8 one goes beside it as "
                         f"{stem}{INT8_SUFFIX}")
    if args.min_agreement is not None and not args.int8:
        raise UsageError(f"--min-agreement {args.min_agreement:g} needs --int8: it is the INT8 model's check")


def export(args: argparse.Namespace) -> int:
    """Check the outputs, then export and report (PyTorch is imported here, after the checks)."""
    weights = Path(args.weights) if args.weights else newest_checkpoint(
        name_one="give the checkpoint to export: python export.py CHECKPOINT")
    output = Path(args.output) if args.output else default_output(weights, args.format)
    check_output(weights, output, args)
    photos = check_photos(list(args.images))
    if args.images and not photos:
        raise UsageError(f"--images {' '.join(args.images)}: no image files there")
    from effnet.inference.onnx_conversion import export_checkpoint  # PyTorch: seconds to import

    check_opset(args.opset)
    output, check = export_checkpoint(weights, output, args.model and variant_name(args.model), args.class_indices,
                                      photos, args.format, args.opset)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB), {check.summary()}")
    if args.int8:
        minimum = DEFAULT_MIN_AGREEMENT if args.min_agreement is None else args.min_agreement
        quantized, agreement = export_int8(output, weights, min_agreement=minimum)
        print(f"wrote {quantized} ({quantized.stat().st_size / 2**20:.1f} MiB, INT8), {agreement.summary()}")
    if check.real and check.images < len(photos):
        print(f"note: {len(photos) - check.images} of the --images could not be read and were left out")
    elif photos and not check.real:
        print(f"warning: none of the {len(photos)} --images could be read, so the check used synthetic images",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return export(args)
    except (UsageError, ValueError) as error:  # WeightsError is a ValueError
        return report(str(error))
    except OSError as error:  # an unwritable folder or a full disk: the old file, if any, is untouched
        return report(f"{error.filename or args.output or 'the export'}: {error.strerror or error}", status=1)
    except KeyboardInterrupt:  # also while PyTorch is imported; the file is written atomically, or not at all
        return report("interrupted; nothing was written (an existing export stays as it was)", status=130)


if __name__ == "__main__":
    sys.exit(main())
