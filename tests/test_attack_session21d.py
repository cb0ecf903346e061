"""Attack 21d: what hsnet writes for people to open (spreadsheets, browsers, Markdown viewers, plots).

Each test states the promise or the independent expectation it checks; each failed on the code it
was written against because of the defect it names.
"""

from __future__ import annotations

import csv
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from crafted import noise_photo

# OWASP "CSV Injection": a cell starting with one of these is a formula to Excel, LibreOffice and
# Google Sheets (=, +, -, @; a tab or a carriage return before them is skipped by some of them).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _rafd_tree(root: Path, folder: str, subjects: int = 5) -> None:
    """RaFD's naming (any folder depth: README's table) under ``root/folder``; noise JPEGs."""
    from hsnet.data.datasets import RAFD_CLASSES

    seed = 0
    for subject in range(1, subjects + 1):
        for emotion in RAFD_CLASSES:
            seed += 1
            noise_photo(root / folder / f"Rafd090_{subject:02d}_Caucasian_female_{emotion}_frontal.jpg", seed,
                        fmt="JPEG")


def test_import_manifest_has_no_cell_a_spreadsheet_runs_as_a_formula(tmp_path):
    """docs/security.md (data steps): "None of it is trusted: every name that comes from outside (an
    object key, a manifest path, ..., a photo's file name)"; README: `hsnet data import` "writes a
    manifest CSV" with `path` relative to --root, and RaFD's layout is "any folder depth".

    Independent expectation (OWASP, CSV Injection): a CSV meant to be opened in a spreadsheet never
    holds a cell starting with =, +, -, @ (or a tab/CR before them) as written, since Excel and
    LibreOffice evaluate it (WEBSERVICE/HYPERLINK send other cells to a server; a folder named
    '-2023' shows as #NAME? instead of its path). A dataset folder named like a formula (the raw
    data is "written by whoever can upload there") lands at the start of manifest.csv's `path` cell
    as written today. Either neutralise such cells (e.g. a leading apostrophe, undone on read) or
    leave those files out and list them."""
    from hsnet.data.datasets import import_dataset

    root = tmp_path / "raw"
    _rafd_tree(root, '=HYPERLINK("https:attacker.example","photos")')
    _rafd_tree(root, "photos")  # and a folder named as folders are: the import goes on without the others
    out = tmp_path / "interim" / "manifest.csv"
    summary = import_dataset("rafd", root, out)
    assert summary["images"] == 40 and summary["formula_like"] == 40  # left out, and counted
    with open(out, newline="", encoding="utf-8-sig") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    formulas = [cell for cell in cells if cell.startswith(FORMULA_STARTS)]
    assert not formulas, f"{len(formulas)} manifest cells a spreadsheet evaluates as formulas, e.g. {formulas[0]!r}"


def test_validation_data_docs_escape_the_manifest_paths_they_show(tmp_path, monkeypatch):
    """docs/security.md: `validate` trusts "nothing in the manifest"; README: `--report` gets "the
    Data Docs (`data_docs/index.html`)", the page the Kubeflow UI shows of the validation
    (hsnet.data.validate.validation_page), "also of one that failed".

    Independent expectation: an HTML report shows a file name as text. A failed check's page
    lists the offending paths; a path holding HTML (a folder named `<img src=x onerror=...>`, legal
    on Linux, here listed twice in a hand-edited manifest) is written into the page as markup, so
    opening the report runs the manifest author's script (stored XSS). Fix: give Great Expectations
    HTML-escaped copies of the string columns it renders (html.escape keeps distinct paths
    distinct, so every check is unchanged), or escape the pages after they are built."""
    from hsnet.data.datasets import import_dataset
    from hsnet.data.manifest import read_manifest, write_manifest
    from hsnet.data.validate import ValidationFailed, validate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "false")
    payload = "<img src=x onerror=alert(document.domain)>"
    root = tmp_path / "raw"
    _rafd_tree(root, payload)
    manifest = tmp_path / "manifest.csv"
    import_dataset("rafd", root, manifest)
    rows = read_manifest(manifest)
    write_manifest(manifest, rows + [dict(rows[0])])  # one row twice: "duplicate paths" names it
    report = tmp_path / "report"
    with pytest.raises(ValidationFailed):
        validate(manifest, root, "rafd", report, progress=False)
    pages = list((report / "data_docs").rglob("*.html"))
    assert pages, "validate wrote no Data Docs"
    raw = [p.relative_to(report) for p in pages if payload in p.read_text(encoding="utf-8", errors="replace")]
    assert not raw, f"the manifest's path is written into {raw[0]} as HTML markup, not as text: {payload}"


def test_training_curves_of_a_single_epoch_show_its_figures(tmp_path, monkeypatch):
    """README: training ends with "`history.json` and `training_curves.png` (the whole run, the epoch
    of `best.pt` marked)"; hsnet.plots.plot_training_curves: "Loss, accuracy, FGAL's level weights
    and the learning rate per epoch, the whole run".

    A one-epoch run (train.max_epochs: 1, a smoke run, a run a guard stopped after its second
    epoch has one point per curve fewer) is drawn with lines only: a line through one point draws
    nothing, so the PNG shows empty axes and a legend. Each curve with a single point must be
    visible (a marker). The figure is looked at as it is saved (the PNG is still written)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from hsnet.plots import plot_training_curves

    saved = []
    real_savefig = Figure.savefig

    def keep(fig, *args, **kwargs):
        saved.append(fig)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    history = [{"epoch": 1, "loss": 1.967, "accuracy": 0.1, "val_loss": 1.950, "val_accuracy": 0.0, "lr": 0.001,
                "images_per_s": 17.3, "lambda_A": 0.49, "lambda_B": 0.50, "lambda_C": 0.51}]
    out = tmp_path / "training_curves.png"
    plot_training_curves(history, out, "training on sample", best_epoch=1)
    assert out.is_file() and saved
    invisible = [f"{ax.get_title() or ax.get_ylabel()}: {line.get_label()}"
                 for ax in saved[-1].axes for line in ax.get_lines()
                 if len(line.get_xdata()) == 1 and str(line.get_marker()) in ("None", "", " ", "none")]
    assert not invisible, f"curves drawn as an invisible one-point line: {invisible}"


def test_reproduce_report_links_its_chart_whatever_the_report_is_called(tmp_path):
    """README: `hsnet reproduce report` writes the tables and "a bar chart with the intervals and
    each run", linked from the section (hsnet.reproduce.ablation_section: "where to draw the bar
    chart (linked from the section)"). The chart is named after --out.

    Independent expectation (CommonMark, the Markdown of GitHub and of the Kubeflow/MLflow UIs): a
    link destination with a space or unbalanced parentheses must be written in <...> or escaped
    (%20); `![...](my results (draft)-ablation-rafdb.png)` is not an image but literal text. So
    `--out "docs/my results.md"` gives a report whose chart does not show."""
    from markdown_it import MarkdownIt

    from hsnet.paper import CONFIGS
    from hsnet.reproduce import exp_name, report

    rows = [{"experiment": exp_name("rafdb", cfg, seed), "rev": None, "timestamp": "", "seed": seed,
             "dataset": "rafdb", "config": cfg, "accuracy": 0.85 + 0.01 * seed + 0.002 * i, "mean_accuracy": 0.75,
             "classes": [], "confusion_matrix": None, "images": 3068}
            for i, cfg in enumerate(CONFIGS) for seed in range(2)]
    out = tmp_path / "docs" / "my results (draft).md"
    out.parent.mkdir()
    r = report(out, rows=rows)
    chart = Path(r["charts"]["rafdb"])
    assert chart.is_file()
    tokens = MarkdownIt("commonmark").parse(out.read_text(encoding="utf-8"))
    images = [unquote(child.attrs.get("src", "")) for t in tokens if t.type == "inline"
              for child in (t.children or []) if child.type == "image"]
    assert chart.name in images, (f"the report's chart {chart.name!r} is not an image in the Markdown "
                                  f"(images found: {images})")


def _metrics(dataset: str, **how) -> dict:
    from hsnet.evaluate import metrics_from_confusion
    from hsnet.paper import RESULTS

    classes = [f"c{i}" for i in range(7)]
    cm = np.diag([50] * 7)
    cm[0, 1] = 1
    m = metrics_from_confusion(cm, classes)
    m.update(dataset=dataset, images=int(cm.sum()), tta_hflip=False, split="test")
    m.update(how)
    assert dataset in RESULTS
    return m


def test_comparison_md_says_when_the_figures_are_not_test_figures():
    """README: `hsnet evaluate` writes "`comparison.md` (this run beside the paper's number)"; the
    paper's numbers (Tables 2-5; hsnet.paper.RESULTS) are test-set accuracies (Sect. 4.3), and
    `hsnet evaluate --split` takes any split of the manifest.

    With `--split val` comparison.md (also the Kubeflow UI's Markdown and an MLflow artifact) puts
    validation accuracy under "this run" beside the paper's test accuracy and prints a
    "difference" without a word about the split (metrics.json and the confusion matrix's title
    name it). The page must name a split other than test."""
    from hsnet.evaluate import comparison_markdown

    text = comparison_markdown("rafdb", _metrics("rafdb", split="val"))
    assert "val" in text.lower(), f"comparison.md of a val-split evaluation doesn't say so:\n{text}"


def test_comparison_md_says_when_the_figures_were_measured_with_flips():
    """CLI help of `hsnet evaluate --tta-hflip`: "off in the paper"; hsnet.evaluate logs for it
    "these figures are not the served model's". README: comparison.md is "this run beside the
    paper's number".

    With evaluate.tta_hflip on, comparison.md (the figures people quote: Kubeflow's Markdown
    visualisation, the MLflow artifact) shows the flip-averaged accuracy as "this run" and its
    "difference" to the paper's single-pass figure, with nothing saying it was measured another
    way; only a log line does. The page must say the test images were scored with their mirror
    image (TTA / flip)."""
    from hsnet.evaluate import comparison_markdown

    text = comparison_markdown("kdef", _metrics("kdef", tta_hflip=True)).lower()
    assert "flip" in text or "tta" in text or "mirror" in text, \
        f"comparison.md of a flip-averaged evaluation doesn't say so:\n{text}"
