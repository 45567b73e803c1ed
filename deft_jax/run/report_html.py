"""report.html: the run's visual report, one self-contained page (figures and thumbnails
inline as data: URIs, inline CSS, no script, nothing fetched; a Content-Security-Policy
forbids any other source), so it opens offline from the run folder or as a mail attachment.

It shows what the search did (`search_view`: the fitness per generation of a
differential evolution, a screen's candidates, or that no search ran), the chosen layer
groups along the network, the Pareto front of the val quantity (in its own sign) against
the trainable fraction over the evaluated masks, the test confusion matrix and the most
confident test mistakes. Without matplotlib
the two plots are replaced by a line saying so; everything else is HTML (thumbnails need
only Pillow). All user text (class names, sample ids, the data description) is escaped."""

from __future__ import annotations

import base64

import numpy as np

from deft_jax.core.masks import GroupMask, lr_multiplier, mask_from_key, mask_key, trains
from deft_jax.core.metrics import fitness_formula, quantity_name, quantity_of, softmax
from deft_jax.run import figures
from deft_jax.run.escape import html_text as esc
from deft_jax.run.report import final_model_source, what_was_seen
from deft_jax.run.search_view import Candidate, candidates, direction, search_kind, search_line, whole_budget_epochs

MAX_MISTAKES = 12
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1a202c;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse}td,th{padding:.25em .6em;text-align:left}
.summary th{color:#4a5568;font-weight:600;vertical-align:top}.note{color:#4a5568;font-size:.92em}
.strip{display:flex;flex-wrap:wrap;align-items:stretch;gap:.35em}.end{align-self:center;color:#4a5568}
.grp{border:2px solid #a0aec0;border-radius:6px;padding:.3em .5em;min-width:5.5em;font-size:.85em;
background:#edf2f7;color:#4a5568}.grp.on{border-color:#2b6cb0;background:#2b6cb0;color:#fff}
.grp b{display:block}.bar{height:5px;background:currentColor;opacity:.55;margin:.25em 0;border-radius:2px}
.cm td,.cm th{border:1px solid #e2e8f0;text-align:right;font-variant-numeric:tabular-nums;font-size:.85em}
.cm th.row{text-align:left}.cm td.diag{outline:2px solid #2b6cb0;outline-offset:-2px}
.gallery{display:flex;flex-wrap:wrap;gap:.8em}.gallery figure{margin:0;width:10em;font-size:.8em}
.gallery img{image-rendering:pixelated;border:1px solid #cbd5e0;display:block;margin-bottom:.2em}
.wrong{color:#c53030}
"""


def render_html(*, cfg: dict, description: str, model: str, pretrained: str | None,
                group_sizes: dict[str, int], best_mask: GroupMask, best_fitness: float | None,
                history: list[dict], memo: dict[str, float], memo_short: dict[str, int],
                metrics: dict, class_names: list[str], split_sizes: dict[str, int],
                seconds: dict[str, float], test_images, test_labels: np.ndarray,
                test_logits: np.ndarray, test_ids=None) -> str:
    """The page. `best_fitness` None: no search ran (`search_view`). `test_images`: the test
    split's uint8 images (an array, or a view with `.uint8(positions)` such as
    `NormalizedImages`); `test_ids`: a label per test image (e.g. its group id: the file path
    for an image folder), or None."""
    metric = cfg["search"]["metric"]
    kind = search_kind(cfg, best_fitness)
    Figure = figures.figure_factory()
    names = list(best_mask)
    total = max(sum(group_sizes.values()), 1)
    rows = candidates(history, memo, memo_short, names, metric, mask_key(best_mask)) if kind == "screen" else []

    def fraction(key: str) -> float:
        mask = mask_from_key(key, names)
        return sum(group_sizes.get(g, 0) for g, v in mask.items() if trains(v)) / total

    body = [f"<h1>DEFT run report</h1><p class='note'>{esc(model)} on {esc(description)}</p>",
            _summary(cfg, kind, rows, pretrained, best_fitness, metrics, split_sizes, seconds, total)]
    if kind == "de":
        body += ["<h2>Search progress</h2>",
                 _figure(Figure, ", ".join(figures.fitness_labels(metric)[1:]), figures.fitness_png,
                         history, memo, memo_short, metric),
                 f"<p class='note'>{len(memo)} distinct masks evaluated over {len(history)} generations "
                 "(generation 0 is the initial population; memo hits are not retrained and not redrawn).</p>"]
    elif kind == "screen":
        body += ["<h2>Candidates</h2>", _candidates(cfg, rows)]
    body += ["<h2>Chosen layer groups</h2>", _strip(best_mask, group_sizes, total)]
    if kind != "none":
        points = [(fraction(k), quantity_of(metric, f)) for k, f in memo.items() if k not in memo_short]
        selected = (metrics["trainable_fraction"], quantity_of(metric, best_fitness))
        body += [f"<h2>Pareto front: val {esc(quantity_name(metric))} against trainable parameters</h2>",
                 _figure(Figure, ", ".join(figures.pareto_labels(metric)[1:]), figures.pareto_png,
                         points, selected, metric)
                 if points else "<p class='note'>No mask was scored with the whole budget.</p>",
                 f"<p class='note'>{len(points)} masks scored with the whole fitness budget"
                 + (f" ({len(memo_short)} more with the short budget only, left out)" if memo_short else "")
                 + f"; the star is the selected mask (search.select = {esc(str(cfg['search'].get('select')))}).</p>"]
    body += ["<h2>Test confusion matrix</h2>", _confusion(metrics["test"], class_names),
             "<h2>Misclassified test images</h2>",
             _mistakes(test_images, np.asarray(test_labels), np.asarray(test_logits), test_ids, class_names),
             f"<p class='note'>The test split was used once, for the final model only; "
             f"{esc(what_was_seen(metrics, kind))}. Numbers: report.md and metrics.json beside this file.</p>"]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>DEFT report: {esc(model)}, {esc(description)}</title><style>{STYLE}</style>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _candidates(cfg: dict, rows: list[Candidate]) -> str:
    """The screen's table: every candidate's val quantity after the short run and, for the
    finalists, after the whole budget; the selected one in bold."""
    metric = cfg["search"]["metric"]
    q = f"val {esc(quantity_name(metric))}"
    head = (f"<tr><th>candidate (fine-tuned groups)</th><th>{q}, screen ({cfg['finetune']['epochs']} epoch(s))</th>"
            f"<th>{q}, whole budget ({whole_budget_epochs(cfg)} epochs)</th><th>role</th></tr>")
    def cell(x: float | None) -> str:
        return "<td></td>" if x is None else f"<td>{x:.4f}</td>"

    bold = " style='font-weight:600'"
    cells = "".join(f"<tr{bold if r.role == 'selected' else ''}><td>{esc(r.groups)}</td>{cell(r.screen)}"
                    f"{cell(r.whole)}<td>{r.role}</td></tr>" for r in rows)
    return (f"<p class='note'>{len(rows)} candidates; {q}: {direction(metric)}. A blank screen score: the "
            "candidate skipped the short run (it gets the whole budget anyway).</p>"
            f"<table class='cm'>{head}{cells}</table>")


def _img(png: bytes, alt: str, **attrs) -> str:
    extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
    return (f"<img src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}' "
            f"alt='{esc(alt)}'{extra}>")


def _figure(Figure, what: str, draw, *args) -> str:
    if Figure is None:
        return (f"<p class='note'>No figure ({esc(what)}): matplotlib is not installed "
                "(<code>pip install matplotlib</code>, or the package's <code>plots</code> extra).</p>")
    return f"<p>{_img(draw(Figure, *args), what)}</p>"  # a bug drawing it stays a traceback


def _summary(cfg, kind, rows, pretrained, best_fitness, metrics, split_sizes, seconds, total) -> str:
    s, t, v = cfg["search"], metrics["test"], metrics["val"]
    metric = s["metric"]
    rows = [
        ("pretrained weights", esc(pretrained) if pretrained else "none (random init)"),
        ("train / val / test images", "{train} / {val} / {test}".format(**split_sizes)),
        ("search", esc(search_line(cfg, kind, len(rows), sum(r.whole is not None for r in rows)))),
        *([] if kind == "none" else [
            ("selected mask", f"val {esc(quantity_name(metric))} {quantity_of(metric, best_fitness):.4f} "
                              f"({direction(metric)}; {esc(fitness_formula(metric))} = {best_fitness:.4f})")]),
        ("trainable parameters", f"{metrics['trainable_fraction']:.1%} of {total:,}"),
        *([("final model", esc(final_model_source(metrics)))] if final_model_source(metrics) else []),
        ("final model, test", f"accuracy <b>{t['accuracy']:.4f}</b>, macro-F1 {t['macro_f1']:.4f} "
                              f"(n={t['n']})"),
        ("final model, val" + (" (out-of-fold)" if v.get("out_of_fold") else ""),
         f"accuracy {v['accuracy']:.4f}, macro-F1 {v['macro_f1']:.4f} (n={v['n']})" if v.get("n")
         else "none held out: the final model trained on train+val"),
        ("time", ", ".join(f"{esc(k)} {x:.0f} s" for k, x in seconds.items())),
    ]
    return "<table class='summary'>" + "".join(f"<tr><th>{k}</th><td>{x}</td></tr>" for k, x in rows) \
        + "</table>"


def _strip(mask: GroupMask, sizes: dict[str, int], total: int) -> str:
    """The groups in network order, input to head: trains (blue) or frozen (grey), their
    parameters (bar: share of the largest group) and learning-rate multiplier."""
    largest = max([sizes.get(g, 0) for g in mask] + [1])
    boxes = []
    for g, value in mask.items():
        n = sizes.get(g, 0)
        on = trains(value)
        m = lr_multiplier(value)
        state = ("trains" + (f", x{m:.3g} lr" if m != 1.0 else "")) if on else "frozen"
        boxes.append(f"<div class='grp{' on' if on else ''}' title='{esc(g)}: {n:,} parameters, {state}'>"
                     f"<b>{esc(g)}</b><div class='bar' style='width:{max(4, 100 * n / largest):.0f}%'></div>"
                     f"{n:,} ({n / total:.1%})<br>{state}</div>")
    n_on = sum(trains(v) for v in mask.values())
    return (f"<p class='note'>{n_on} of {len(mask)} groups fine-tuned (blue), the others frozen "
            "(grey); the bar is a group's parameters relative to the largest group.</p>"
            "<div class='strip'><span class='end'>input &rarr;</span>" + "".join(boxes)
            + "<span class='end'>&rarr; classes</span></div>")


def _confusion(test: dict, class_names: list[str]) -> str:
    cm = np.asarray(test["confusion_matrix"], dtype=np.int64)
    recall = test["per_class_recall"]
    short = all(len(c) <= 4 for c in class_names)  # short names head the columns, else numbers
    head = "".join(f"<th title='{esc(c)}'>{esc(c) if short else j}</th>" for j, c in enumerate(class_names))
    rows = []
    for i, c in enumerate(class_names):
        support = max(int(cm[i].sum()), 1)
        cells = []
        for j, count in enumerate(cm[i]):
            a = count / support
            rgb = "43,108,176" if i == j else "221,107,32"
            colour = "#fff" if a > 0.6 else "inherit"
            cells.append(f"<td class='{'diag' if i == j else ''}' style='background:rgba({rgb},{a:.2f});"
                         f"color:{colour}'>{count}</td>")
        r = recall.get(class_names[i]) if isinstance(recall, dict) else None
        rows.append(f"<tr><th class='row'>{esc(c) if short else f'{i}: {esc(c)}'}</th>{''.join(cells)}"
                    f"<td>{'n/a' if r is None else f'{r:.3f}'}</td></tr>")
    return (f"<p class='note'>Rows: true class; columns: predicted class{'' if short else ' (by number)'}. A cell's shade is "
            "its share of the row.</p><table class='cm'><tr><th>true \\ predicted</th>" + head
            + "<th>recall</th></tr>" + "".join(rows) + "</table>")


def _mistakes(images, labels: np.ndarray, logits: np.ndarray, ids, class_names: list[str]) -> str:
    if logits.size == 0 or labels.size == 0:
        return "<p class='note'>The test split is empty.</p>"
    prob = softmax(logits)
    pred = prob.argmax(-1)
    wrong = np.flatnonzero(pred != labels)
    if wrong.size == 0:
        return f"<p class='note'>None: all {labels.size} test images are classified correctly.</p>"
    confidence = prob[wrong, pred[wrong]]
    shown = wrong[np.lexsort((wrong, -confidence))][:MAX_MISTAKES]  # most confident first
    thumbs = images.uint8(shown) if hasattr(images, "uint8") else np.asarray(images)[shown]
    items = []
    for pos, thumb in zip(shown, thumbs):
        true, guess = class_names[labels[pos]], class_names[pred[pos]]
        sample = f"<br>id: {esc(str(ids[pos]))}" if ids is not None else ""
        items.append(f"<figure>{_img(figures.thumbnail_png(thumb), f'true {true}, predicted {guess}')}"
                     f"<figcaption>true: {esc(true)}<br><span class='wrong'>predicted: {esc(guess)}</span> "
                     f"<br>confidence {prob[pos, pred[pos]]:.2f}{sample}</figcaption></figure>")
    return (f"<p class='note'>{wrong.size} of {labels.size} test images misclassified; the "
            f"{len(shown)} most confident mistakes:</p><div class='gallery'>" + "".join(items) + "</div>")
