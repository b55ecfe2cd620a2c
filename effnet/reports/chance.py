"""Has a model learned anything? Its accuracy against guessing, and whether it gives every image one answer.

A model that guesses is right with probability 1/classes on each image, so on n images its number right follows
a binomial distribution; an accuracy inside that distribution's central 95% is not clearly above chance. A
model that gives every image the same top class has learned nothing either, whatever its accuracy (with one
class far larger than the others it can even look good). train.py ends with this verdict as a warning,
report.html shows it at the top, and export.py's agreement checks (float32 and INT8) say when their images all
got one answer.
Plain math: no numpy or scipy needed.
"""
import math
from collections.abc import Iterator, Sequence

from effnet.variants import IMAGENET

CONFIDENCE = 0.95  # the central part of the guessing distribution that counts as "chance"


def remedy(weights: str | None = None) -> str:
    """What usually helps a model that learned nothing, for a run that started from `weights` (its --weights; None:
    unknown). ImageNet weights are suggested only to a run that did not start from them, and with the download
    they need: offline, or when that download is what failed, advice to use them would send the user in a circle."""
    if (weights or "").lower() == IMAGENET:
        return "What usually helps: more epochs, or another --lr"
    return ("What usually helps: more epochs (from scratch, BatchNorm's running statistics lag behind the weights at "
            "first, so in evaluation mode the model answers nearly alike for every image), ImageNet weights "
            "(--weights imagenet, which needs their one-time download), or another --lr")


def chance_level(classes: int) -> float:
    """The accuracy of guessing among `classes` classes."""
    return 1 / classes


def _binomial_probabilities(trials: int, p: float) -> Iterator[float]:
    """P(X = 0), P(X = 1), ... for X ~ Binomial(trials, p), computed in log space: no overflow for large `trials`."""
    log_p, log_q, log_all = math.log(p), math.log1p(-p), math.lgamma(trials + 1)
    for k in range(trials + 1):
        yield math.exp(log_all - math.lgamma(k + 1) - math.lgamma(trials - k + 1) + k * log_p + (trials - k) * log_q)


def _quantile(fraction: float, trials: int, p: float) -> int:
    """The smallest count c with P(X <= c) >= fraction, X ~ Binomial(trials, p)."""
    cumulative = 0.0
    for count, probability in enumerate(_binomial_probabilities(trials, p)):
        cumulative += probability
        if cumulative >= fraction - 1e-12:  # rounding must not push an exact boundary one count up
            return count
    return trials


def guessing_interval(classes: int, images: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(lowest, highest) accuracy of the central `confidence` part of what guessing scores on `images` images."""
    tail = (1 - confidence) / 2
    p = chance_level(classes)
    return _quantile(tail, images, p) / images, _quantile(1 - tail, images, p) / images


def clearly_above_chance(correct: int, images: int, classes: int) -> bool:
    """Whether `correct` right out of `images` is above the interval that guessing falls in."""
    return images > 0 and correct / images > guessing_interval(classes, images)[1]


def one_answer(predicted_counts: Sequence[int]) -> int | None:
    """The class that got every answer when two or more images were answered and all got the same top class
    (`predicted_counts[c]`: how many images got class c); else None."""
    answered = [index for index, count in enumerate(predicted_counts) if count > 0]
    return answered[0] if len(answered) == 1 and sum(predicted_counts) >= 2 else None


def agreement_caveat(images: int, one_class: str | None, reference: str) -> str:
    """What an agreement check (an export against PyTorch, INT8 against float32) adds when `reference`, the model
    it compares with, gave all `images` the same top class `one_class`: agreeing with it proves nothing. ""
    when `one_class` is None."""
    if one_class is None:
        return ""
    return (f" (but {reference} gives all {images} the same top class, {one_class!r}, so this agreement proves "
            f"nothing: a model that answers one class for everything agrees trivially)")


def learned_nothing(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                    weights: str | None = None) -> str | None:
    """What is wrong, in one line, when the model behind a validation confusion matrix (rows: true class,
    columns: predicted class) is not clearly above chance or gives every image the same top class, and what
    helps a run that started from `weights` (remedy); None when it is neither."""
    rows = [[int(value) for value in row] for row in confusion]
    classes, images = len(rows), sum(map(sum, rows))
    if images == 0 or classes < 2:
        return None
    correct = sum(rows[i][i] for i in range(classes))
    single = one_answer([sum(row[column] for row in rows) for column in range(classes)])
    at_chance = not clearly_above_chance(correct, images, classes)
    if not at_chance and single is None:
        return None
    low, high = guessing_interval(classes, images)
    problems = []
    if at_chance:
        problems.append(f"the best epoch's validation accuracy, {correct / images:.3f} ({correct} of {images} images), "
                        f"is not clearly above chance: {chance_level(classes):.3f} for {classes} classes, and "
                        f"guessing scores {low:.3f} to {high:.3f} on {images} images ({CONFIDENCE:.0%} of the time)")
    if single is not None:
        problems.append(f"the model gives every validation image the same top class, {class_names[single]!r}")
    too_few = (f". With {images} validation images not even a perfect score is clearly above chance: hold out more "
               f"(--val-rate)" if high >= 1 else "")
    return f"the model has learned nothing usable: {'; and '.join(problems)}{too_few}. {remedy(weights)}"
