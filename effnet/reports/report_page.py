"""report.html: one self-contained page about a training run or an evaluation, to open from disk.

Figures and thumbnails are inline (base64 PNG / JPEG), there are no scripts and nothing is fetched, so the
file can be mailed or archived as it is. A run's report shows its settings, learning curves, class
distribution, confusion matrix, per-class scores (and a test set's, when there is one) and the misclassified
validation images, most confidently wrong first, with a Grad-CAM overlay for the worst few; evaluate.py's
shows the same for the images it scored. No PyTorch here: Grad-CAM comes from the classifier's backend.
"""
import base64
import datetime
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from effnet.atomic_files import write_text
from effnet.data.images import open_image, reduce_jpeg_decode, to_rgb
from effnet.output_paths import OutputKind, html_generator_tag, marked_at_start
from effnet.reports import metrics
from effnet.reports.chance import chance_level, learned_nothing
from effnet.reports.scoring import Evaluation

GALLERY_LIMIT = 60  # misclassified images shown; the rest are counted (predictions.csv lists them all)
GRAD_CAM_COUNT = 6  # Grad-CAM overlays for the worst few: each costs a forward and a backward pass
THUMBNAIL_SIZE = 200  # pixels, the longer side
COPY_GROUPS_SHOWN = 30  # groups of copies from the data check; duplicates.csv lists them all
COPIES_SHOWN = 3  # pictures of one group side by side
LABEL_ISSUES_SHOWN = 24  # possible label errors; label_issues.csv lists them all
# evaluate.py's --report replaces its own earlier reports, never a training run's (output_paths.py)
REPORT_OUTPUT = OutputKind("a report of evaluate.py", marked_at_start(html_generator_tag("evaluate.py")))

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330; margin: 0;
       background: #f4f6f9; }
header { background: #1f3a5f; color: #fff; padding: 22px 32px 14px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; opacity: .85; }
nav { margin-top: 12px; display: flex; flex-wrap: wrap; gap: 6px 18px; }
nav a { color: #cfe0ff; text-decoration: none; font-size: 14px; }
main { max-width: 1200px; margin: 0 auto; padding: 8px 32px 40px; }
section { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08); padding: 16px 22px;
          margin: 18px 0; }
h2 { font-size: 19px; margin: 0 0 12px; color: #1f3a5f; }
h3 { font-size: 15px; margin: 14px 0 8px; }
.highlights { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0 0; }
.card { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08); padding: 10px 16px;
        min-width: 150px; }
.card b { display: block; font-size: 22px; color: #1f3a5f; }
.card span { font-size: 13px; color: #5b6475; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e3e7ee; text-align: left; }
td.number, th.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.average td { font-weight: 600; background: #f4f6f9; }
table.settings td:first-child { color: #5b6475; white-space: nowrap; }
table.settings td { word-break: break-all; }
img.figure { max-width: 100%; height: auto; display: block; }
.figures { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 0 32px; }

.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 14px; }
.gallery figure { margin: 0; border: 1px solid #e3e7ee; border-radius: 6px; padding: 8px; background: #fafbfc; }
.gallery figure.with-cam, .gallery figure.copies { grid-column: span 2; }
.pictures { display: flex; gap: 8px; justify-content: center; }
.pictures img { width: 200px; height: 200px; object-fit: contain; background: #eef1f5; border-radius: 4px; }
figcaption { font-size: 13px; margin-top: 6px; }
figcaption .wrong { color: #b42318; font-weight: 600; }
figcaption .path { color: #5b6475; word-break: break-all; font-size: 12px; }
.note { color: #5b6475; font-size: 13px; }
.warning { background: #fff4e5; border: 1px solid #f5b971; border-left: 6px solid #d97706; border-radius: 8px;
           color: #5c3a06; padding: 12px 18px; margin: 18px 0 0; }
.warning b { color: #9a4a00; }
"""


@dataclass
class Section:
    anchor: str
    title: str
    body: str  # HTML


def _text(value: Any) -> str:
    return html.escape(str(value))


def data_uri(image: Image.Image, image_format: str = "JPEG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, quality=85)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def figure_html(path: str | os.PathLike, alt: str) -> str:
    """The PNG at `path` inline, or a note saying it was not written."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">{_text(path.name)} was not written.</p>'
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="figure" src="data:image/png;base64,{encoded}" alt="{_text(alt)}">'


def settings_table(settings: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_text(key)}</td><td>{_text(value)}</td></tr>" for key, value in settings.items())
    return f'<table class="settings">{rows}</table>'


def scores_table(classes: Sequence[str], confusion: Any) -> str:
    """Precision, recall, F1 and images of every class, then the macro and weighted averages."""
    head = "<tr><th>class</th>" + "".join(f'<th class="number">{name}</th>' for name in
                                          ("precision", "recall", "F1", "images")) + "</tr>"
    rows = []
    for row in metrics.table_rows(classes, confusion):
        kind = ' class="average"' if row["class"].endswith(" average") else ""
        cells = "".join(f'<td class="number">{row[key]:.3f}</td>' for key in ("precision", "recall", "f1"))
        rows.append(f'<tr{kind}><td>{_text(row["class"])}</td>{cells}<td class="number">{row["support"]}</td></tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def thumbnail(path: str) -> Image.Image:
    """The photo, upright RGB, at most THUMBNAIL_SIZE pixels on its longer side (large JPEGs decode reduced)."""
    with open_image(path) as opened:
        reduce_jpeg_decode(opened, max(opened.size) / THUMBNAIL_SIZE)
        image = to_rgb(opened)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return image


def grad_cam_image(classifier: Any, path: str) -> Image.Image:
    """The network's view of the photo with the Grad-CAM overlay of its top class."""
    from effnet.reports import figures  # matplotlib's colour map

    view, cam, _ = classifier.grad_cam(path)
    return figures.cam_overlay(view, cam)


def _picture(make: Any, alt: str) -> str:
    """An inline <img> of the image `make()` returns, or a note when it cannot be made (a photo deleted since
    it was scored, say): one missing picture must not cost the whole report."""
    try:
        return f'<img src="{data_uri(make())}" alt="{alt}">'
    except Exception as error:
        return f'<p class="note">no {alt}: {_text(type(error).__name__)}: {_text(error)}</p>'


def _mistake_card(classifier: Any, names: Sequence[str], result: Any, position: int, with_cam: bool) -> str:
    pictures = [_picture(lambda: thumbnail(result.path), "photo")]
    cam_note = ""
    if with_cam:
        pictures.append(_picture(lambda: grad_cam_image(classifier, result.path), "Grad-CAM"))
        cam_note = "<br>right: Grad-CAM of the predicted class over the network's crop"
    return (f'<figure class="{"with-cam" if with_cam else ""}"><div class="pictures">{"".join(pictures)}</div>'
            f'<figcaption>#{position + 1} · true <b>{_text(names[result.true])}</b>, predicted '
            f'<span class="wrong">{_text(names[result.predicted])}</span> ({result.confidence:.1%}){cam_note}'
            f'<br><span class="path">{_text(result.path)}</span></figcaption></figure>')


def gallery_html(evaluation: Evaluation, classifier: Any, what: str) -> str:
    """The misclassified images, most confidently wrong first, with Grad-CAM for the first GRAD_CAM_COUNT."""
    wrong = evaluation.misclassified()
    if not wrong:
        return f'<p class="note">Every one of the {len(evaluation.results)} {what} images was classified right.</p>'
    cams = GRAD_CAM_COUNT if classifier.can_explain else 0
    shown = min(len(wrong), GALLERY_LIMIT)
    note = (f"{len(wrong)} of {len(evaluation.results)} {what} images were misclassified"
            f"{f'; the {shown} most confidently wrong are shown' if shown < len(wrong) else ''}, worst first. "
            + ("Grad-CAM shows where the network looked for the class it predicted." if cams else
               f"No Grad-CAM: the {_text(classifier.backend.name)} backend has no gradients."))
    cards = [_mistake_card(classifier, evaluation.class_names, result, i, i < cams)
             for i, result in enumerate(wrong[:shown])]
    return f'<p class="note">{note}</p><div class="gallery">{"".join(cards)}</div>'


def _copies_card(group: Any, dropped: Mapping[str, str]) -> str:
    """One group of copies: its pictures side by side, then kind, distance, what it breaks, and each member."""
    pictures = "".join(_picture(lambda path=member.path: thumbnail(path), "copy") for member in
                       group.members[:COPIES_SHOWN])
    more = f" (the first {COPIES_SHOWN} of {len(group.members)} shown)" if len(group.members) > COPIES_SHOWN else ""
    flags = [flag for flag, found in (("label conflict", len(group.classes) > 1),
                                      ("train/val/test leakage", len(group.parts) > 1)) if found]
    members = "".join(f'<br>{_text(member.class_name)} · {_text(member.part)} · '
                      f'{"<span class=wrong>left out</span> · " if member.path in dropped else ""}'
                      f'<span class="path">{_text(member.path)}</span>' for member in group.members)
    return (f'<figure class="copies"><div class="pictures">{pictures}</div><figcaption><b>{_text(group.kind)}</b> '
            f'copies{more}, distance {group.distance}{"".join(f" · <span class=wrong>{f}</span>" for f in flags)}'
            f'{members}</figcaption></figure>')


def copies_html(check: Any) -> str:
    """The data check (effnet/data/duplicates.py): its summary, and its groups of copies, worst first."""
    groups = check.worst_first()
    shown = groups[:COPY_GROUPS_SHOWN]
    if not groups:
        return f'<p class="note">{_text(check.summary())}. No copies found.</p>'
    cut = "" if len(shown) == len(groups) else f"; the first {len(shown)} are shown"
    cards = "".join(_copies_card(group, check.dropped) for group in shown)
    acted = (f"--drop-duplicates left {len(check.dropped)} of these images out of this run (split.json says why)"
             if check.dropped else "train.py --drop-duplicates would leave them out of a run")
    return (f'<p class="note">{_text(check.summary())}. duplicates.csv lists every group{cut}; {acted}.</p>'
            f'<div class="gallery">{cards}</div>')


def label_issues_html(issues: Sequence[Any], examined: int, accuracy: float, classes: int) -> str:
    """The images whose given class best.pth finds least likely (effnet/reports/label_issues.py); `accuracy`,
    best.pth's on the validation images, says how far to trust them."""
    shown = issues[:LABEL_ISSUES_SHOWN]
    note = (f"best.pth puts {len(issues)} of the {examined} images of the run in another class, at least as "
            f"confidently as it recognises that class on its own images; least likely label first"
            f"{'' if len(shown) == len(issues) else f', the first {len(shown)} shown'} (label_issues.csv lists them "
            f"all). best.pth is right on {accuracy:.0%} of the validation images (guessing: "
            f"{chance_level(classes):.0%}); a model trained briefly, or from scratch, doubts many right labels: these "
            f"are photos to look at, not errors found.")
    cards = "".join(f'<figure><div class="pictures">{_picture(lambda path=issue.path: thumbnail(path), "photo")}'
                    f'</div><figcaption>given <b>{_text(issue.given)}</b> ({issue.given_probability:.1%}), best.pth '
                    f'says <span class="wrong">{_text(issue.predicted)}</span> ({issue.predicted_probability:.1%}) · '
                    f'{_text(issue.part)}<br><span class="path">{_text(issue.path)}</span></figcaption></figure>'
                    for issue in shown)
    return f'<p class="note">{note}</p>' + (f'<div class="gallery">{cards}</div>' if cards else "")


def page_html(title: str, subtitle: str, highlights: Sequence[tuple[str, str]], sections: Sequence[Section],
              warning: str | None = None, program: str = "train.py") -> str:
    """The page; `warning`, when given, stands above everything else; `program` wrote it (its mark)."""
    nav = "".join(f'<a href="#{s.anchor}">{_text(s.title)}</a>' for s in sections)
    cards = "".join(f'<div class="card"><b>{_text(value)}</b><span>{_text(label)}</span></div>'
                    for label, value in highlights)
    banner = f'<p class="warning" role="alert"><b>warning:</b> {_text(warning)}</p>' if warning else ""
    body = "".join(f'<section id="{s.anchor}"><h2>{_text(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{html_generator_tag(program)}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_text(title)}</title>'
            f"<style>{STYLE}</style></head><body><header><h1>{_text(title)}</h1><p>{_text(subtitle)}</p>"
            f'<nav>{nav}</nav></header><main>{banner}<div class="highlights">{cards}</div>{body}</main>'
            f'</body></html>\n')


def _generated() -> str:
    return f"written {datetime.datetime.now():%Y-%m-%d %H:%M}"


def _unreadable_html(evaluation: Evaluation) -> str:
    items = "".join(f"<li>{_text(path)}: {_text(error)}</li>" for path, error in evaluation.unreadable)
    return f"<ul>{items}</ul>"


# What a flag left at None meant, where the run's resolved settings do not say (no raw "None" in the page)
NONE_MEANS = {"device": "auto", "workers": "auto", "ema": "off", "early_stopping": "off", "resume": "no"}


def flag_value(key: str, value: Any) -> str:
    """A flag's value as a person reads it: on/off for yes/no flags, what None stood for."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return NONE_MEANS.get(key, "none") if value is None else str(value)


def flags_tables(args: Mapping[str, Any], resolved: Mapping[str, Any] | None = None) -> str:
    """train.py's flags as the run used them, in two side-by-side tables; `resolved` replaces the values that
    the flags left open (the device chosen, the number of classes found, ...)."""
    used = {**args, **{key: value for key, value in (resolved or {}).items() if key in args}}
    flags = [(f"--{key.replace('_', '-')}", flag_value(key, value)) for key, value in used.items()]
    half = (len(flags) + 1) // 2
    return f'<h3>train.py flags</h3><div class="columns">{settings_table(dict(flags[:half]))}' \
           f'{settings_table(dict(flags[half:]))}</div>'


def run_facts(checkpoint: Mapping[str, Any], data: Mapping[str, str]) -> dict[str, Any]:
    """What the run was: its data and split, model, classes and evaluation preprocessing."""
    image = checkpoint.get("image") or {}
    return {**data, "model": f"efficientnet_{checkpoint.get('variant')}",
            "classes": ", ".join(checkpoint.get("class_names") or []),
            "evaluation preprocessing": f"resize {image.get('eval_resize')}, centre crop {image.get('eval_crop')}, "
                                        f"{image.get('interpolation')}"}


def write_run_report(run_dir: str | os.PathLike, checkpoint: Mapping[str, Any], data: Mapping[str, str],
                     validation: Evaluation, test: Evaluation | None, classifier: Any, data_check: Any = None,
                     label_issues: tuple[Sequence[Any], int] | None = None,
                     used: Mapping[str, str] | None = None) -> Path:
    """run_dir/report.html from the run folder's figures, best.pth's `checkpoint` (settings, best epoch and its
    validation confusion matrix), `data` ({"data": folder, "images": counts, "split": how}), best.pth's
    results on the validation and test images, and, when given, the data check before training, the
    possible label errors (the issues, and how many images were examined) and `used`: what the flags left to
    the machine came to."""
    run_dir = Path(run_dir)
    classes, confusion = list(checkpoint["class_names"]), np.asarray(checkpoint["confusion"])
    resolved = {"num_classes": len(classes), "image_size": (checkpoint.get("image") or {}).get("train_size"),
                "name": run_dir.name, **(used or {})}
    best = metrics.summary(confusion)
    highlights = [(f"validation accuracy, best epoch {checkpoint['best_epoch']}", f"{best['accuracy']:.1%}"),
                  ("validation macro F1", f"{best['macro_f1']:.3f}"),
                  ("validation images misclassified",
                   f"{len(validation.misclassified())} of {len(validation.results)}")]
    sections = [Section("settings", "Settings", settings_table(run_facts(checkpoint, data))
                        + flags_tables(checkpoint.get("args") or {}, resolved)),
                Section("curves", "Learning curves", figure_html(run_dir / "curves.png", "learning curves")),
                Section("distribution", "Class distribution",
                        figure_html(run_dir / "class_distribution.png", "images per class")),
                Section("confusion", "Confusion matrix",
                        figure_html(run_dir / "confusion_matrix.png", "validation confusion matrix")),
                Section("per-class", "Per-class scores (validation, best epoch)", scores_table(classes, confusion)),
                Section("misclassified", "Misclassified validation images", gallery_html(validation, classifier,
                                                                                         "validation"))]
    if data_check is not None:
        highlights.append(("groups of copies among the images", str(len(data_check.groups))))
        sections.insert(3, Section("data-checks", "Data checks", copies_html(data_check)))
    if label_issues is not None:
        sections.append(Section("label-issues", "Possible label errors",
                                label_issues_html(*label_issues, best["accuracy"], len(classes))))
    if test is not None:
        scores = test.scores(1)
        highlights.append(("test accuracy", f"{scores['accuracy']:.1%}"))
        names, test_confusion = test.shown_confusion()
        figure = figure_html(run_dir / "test" / "confusion_matrix.png", "test confusion matrix")
        sections.append(Section("test", f"Test set ({scores['images']} images, best.pth)",
                                f'<div class="figures">{figure}{scores_table(names, test_confusion)}</div>'
                                + (_unreadable_html(test) if test.unreadable else "")))
    page = page_html(f"Training run {run_dir.name}", f"{data['images']} · {_generated()}", highlights, sections,
                     learned_nothing(confusion, classes, (checkpoint.get("args") or {}).get("weights")))
    write_text(run_dir / "report.html", page)
    return run_dir / "report.html"


def write_evaluation_report(path: str | os.PathLike, title: str, settings: Mapping[str, Any],
                            evaluation: Evaluation, top_k: int, confusion_figure: str | os.PathLike,
                            classifier: Any) -> Path:
    """An evaluation's report: settings (the first one, what was evaluated, is also the subtitle), scores,
    confusion matrix (the PNG written beside predictions.csv), per-class table, misclassified images and the
    unreadable ones."""
    scores = evaluation.scores(top_k)
    names, confusion = evaluation.shown_confusion()
    highlights = [("accuracy", f"{scores['accuracy']:.1%}"),
                  *([(f"top-{scores['top_k']} accuracy", f"{scores['top_k_accuracy']:.1%}")] if "top_k" in scores
                    else []),
                  ("macro F1", f"{scores['macro_f1']:.3f}"), ("images scored", str(scores["images"])),
                  ("unreadable images", str(len(evaluation.unreadable)))]
    sections = [Section("settings", "Settings", settings_table(settings)),
                Section("confusion", "Confusion matrix", figure_html(confusion_figure, "confusion matrix")),
                Section("per-class", "Per-class scores", scores_table(names, confusion)),
                Section("misclassified", "Misclassified images", gallery_html(evaluation, classifier, "scored"))]
    if evaluation.unreadable:
        sections.append(Section("unreadable", "Unreadable images", _unreadable_html(evaluation)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subtitle = f"{next(iter(settings.values()), '')} · {_generated()}"
    write_text(path, page_html(title, subtitle, highlights, sections, program="evaluate.py"))
    return path
