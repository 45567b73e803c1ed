"""User text (class names from folder names or dataset metadata, file paths) never reaches a
terminal, a prediction line or report.md raw."""

from __future__ import annotations

from deft_jax.cli import predict as predict_cli
from deft_jax.run import escape
from deft_jax.run.report import render_report

NASTY = ["clear\x1b[2J", "two\nlines", "tab\tbed", "pipe|cell", "<b>bold</b>", "rtl\u202eevil", "café 日本"]


def test_terminal_text_shows_control_and_format_characters_as_escapes_and_keeps_letters():
    assert escape.terminal("clear\x1b[2J") == "clear\\x1b[2J"
    assert escape.terminal("two\nlines\r") == "two\\x0alines\\x0d"
    assert escape.terminal("tab\tbed") == "tab\\x09bed"
    assert escape.terminal("rtl\u202eevil") == "rtl\\u202eevil"
    assert escape.terminal("café 日本") == "café 日本"


def test_markdown_text_escapes_table_syntax_html_and_control_characters():
    assert escape.markdown("pipe|cell") == "pipe\\|cell"
    assert escape.markdown("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"
    assert escape.markdown("a_b*c") == "a\\_b\\*c"
    assert "\n" not in escape.markdown("two\nlines") and "\x1b" not in escape.markdown("\x1b[2J")


def test_predict_prints_one_tab_separated_line_per_image_whatever_the_names(monkeypatch, tmp_path, capsys):
    import numpy as np

    from deft_jax import api

    class FakeModel:
        class_names = NASTY

        def predict(self, paths, on_progress=None):
            return np.eye(len(NASTY))[: len(paths)] * 0.5

    monkeypatch.setattr(api, "load", lambda run_dir: FakeModel())
    paths = [tmp_path / f"img{i}\n.png" for i in range(len(NASTY))]
    for path in paths:
        path.write_bytes(b"")  # the fake model never reads them
    assert predict_cli.main(["--run", str(tmp_path), *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(NASTY)
    assert all(len(line.split("\t")) == 3 and "\x1b" not in line and "\u202e" not in line for line in lines)
    assert lines[-1].split("\t")[1] == "café 日本"


def test_the_report_keeps_its_tables_whole_with_hostile_class_names():
    n = len(NASTY)
    test = {"n": n, "accuracy": 1.0, "macro_f1": 1.0, "confusion_matrix": [[int(i == j) for j in range(n)] for i in range(n)],
            "per_class_recall": {c: 1.0 for c in NASTY}}
    cfg = {"search": {"population_size": 4, "generations": 1, "differential_weight": 0.5, "crossover_rate": 0.9,
                      "elitism": True, "metric": "accuracy"},
           "finetune": {"optimizer": "sgd", "learning_rate": 0.01, "epochs": 1, "batch_size": 8},
           "final": {"epochs": 1}, "data": {"split_seed": 0}, "model": {"input_size": 32}}
    report = render_report(cfg=cfg, description="folder /data/x\x1b]0;title\x07", model="small_cnn", pretrained=None,
                           group_sizes={"head": 10}, best_mask={"head": True}, best_fitness=0.0, history=[],
                           metrics={"test": test, "val": test, "trainable_fraction": 1.0}, class_names=NASTY,
                           split_sizes={"train": 1, "val": 1, "test": n}, seconds={"total": 1.0})
    assert "\x1b" not in report and "\x07" not in report and "<b>" not in report and "\u202e" not in report
    header = report.index("Test confusion matrix")
    rows = [line for line in report[header:].splitlines() if line.startswith("|")]
    assert len(rows) == n + 2  # header, rule, one row per class: no name split a row
    cells = {len(line.replace("\\|", "").strip("|").split("|")) for line in rows}
    assert cells == {n + 1}
