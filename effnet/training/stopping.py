"""How a training run stops when it must, in one line: bad input, a file that cannot be written, Ctrl-C, a loss
that diverged, photos that went away or memory that ran out; each says what is saved and how to go on."""
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from effnet.checkpoints import WeightsError
from effnet.command_line import UsageError, report
from effnet.download import DownloadError
from effnet.training.distributed import Distributed, shutdown
from effnet.training.progress import Progress
from effnet.training.run_folder import RunFolder
from effnet.training.steps import EpochResult, NonFiniteLossError


class ImagesLostError(RuntimeError):
    """Most images of an epoch could not be read: the data folder moved, a disk was unmounted, ..."""


@dataclass
class Stop:
    """The exit status a guarded block ended with: 0 when it ran through."""

    status: int = 0


def check_images_read(root: str, epoch: int, trained: EpochResult, validated: EpochResult, training: int,
                      validation: int) -> None:
    """Stop when fewer than half the `training` or `validation` images of an epoch could be read: an epoch on a
    few images, or on none, would be saved (and could become best.pth) as if it had trained."""
    for part, seen, expected in (("training", trained.images, training), ("validation", validated.images, validation)):
        if 2 * seen < expected:
            why = f"{root} is gone" if not os.path.isdir(root) else "see the warnings above"
            raise ImagesLostError(f"epoch {epoch}: only {seen} of {expected} {part} images could be read ({why})")


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


@contextlib.contextmanager
def stops_in_one_line() -> Iterator[Stop]:
    """Around a whole run: bad input (exit 2), a file that cannot be written (1) and Ctrl-C before the first epoch
    (130) end it in one line; torchrun's process group is left in any case."""
    stop = Stop()
    try:
        yield stop
    except KeyboardInterrupt:
        stop.status = report("interrupted before the first epoch; nothing was trained, so there is nothing to resume",
                             status=130)
    except (UsageError, WeightsError, DownloadError) as error:
        stop.status = report(str(error))
    except OSError as error:  # a full disk or a folder we may not write: nothing saved so far is lost
        stop.status = report(f"{error.filename or 'a file'}: {error.strerror or error}", status=1)
    finally:
        shutdown()


@contextlib.contextmanager
def epochs_stop_cleanly(folder: RunFolder, ddp: Distributed, progress: Progress) -> Iterator[Stop]:
    """Around the epochs: Ctrl-C (exit 130), a loss that diverged, photos that went away, memory that ran out (1),
    each in one line with what is saved and the command that continues."""
    stop = Stop()

    def resume() -> str | None:  # asked when the run stops: the epoch in progress may have been saved just now
        return f"python train.py --resume {folder.path}" if folder.has_checkpoint() else None

    try:
        yield stop
    except KeyboardInterrupt:
        if ddp.is_main:
            print(f"\ninterrupted in epoch {progress.next_epoch + 1}; {folder.saved_so_far()}"
                  f"{f'. Continue with: {resume()}' if resume() else ''}", flush=True)
        stop.status = 130
    except NonFiniteLossError as error:
        if ddp.is_main:
            print(f"error: {error}; stopped. {folder.saved_so_far()}. Lower --lr or check the data", flush=True)
        stop.status = 1
    except ImagesLostError as error:
        then = (f"put the images back (or pass --data-path with where they are now) and continue with: {resume()}"
                if resume() else "start the run again once the images are back")
        stop.status = _error(ddp, f"{error}; stopped, so that no epoch is saved as if it had trained. "
                                  f"{folder.saved_so_far()}; {then}")
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        first_line = str(error).strip().splitlines()[0][:200]
        stop.status = _error(ddp, f"out of memory in epoch {progress.next_epoch + 1} ({first_line}); "
                                  f"lower --batch-size or --image-size. {folder.saved_so_far()}")
    finally:
        folder.close()


def _error(ddp: Distributed, message: str) -> int:
    """`error: message` on stderr, once under torchrun; the exit status 1."""
    return report(message, status=1) if ddp.is_main else 1
