"""The newcomer's commands as a user runs them, each in its own process: a search with only
`--data DIR --model efficientnet_lite0` on a split-folder tree (the default photo input
size), then batch prediction of the folder into a CSV; `import deft_jax` stays light."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, needs_lite0
from test_newcomer_api import write_split_tree

pytestmark = pytest.mark.slow


def run_module(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


@needs_lite0
def test_search_with_only_data_and_model_runs_on_a_split_folder_tree_and_predict_classifies_it(tmp_path):
    tree = write_split_tree(tmp_path / "photos", per_class=4)
    run = tmp_path / "run"
    # --set only shortens the search (population, generations, epochs): no size, no source keys
    done = run_module("-m", "deft_jax.search", "--data", str(tree), "--model", "efficientnet_lite0",
                      "--out", str(run), "--set", "search.population_size=4", "search.generations=0",
                      "final.epochs=1", "finetune.batch_size=8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "model.input_size not set: 160 px" in done.stdout and "test accuracy" in done.stdout
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["input_size"] == 160 and saved["data"]["source"]["kind"] == "folder"
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 4

    out = tmp_path / "out.csv"
    done = run_module("-m", "deft_jax.predict", "--run", str(run), str(tree), "--csv", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["path", "predicted", "probability", "cat", "dog"] and len(rows) == 1 + 16
    right = sum(row[1] == os.path.basename(os.path.dirname(row[0])) for row in rows[1:])
    assert f"16 labelled images, accuracy {right / 16:.4f}" in done.stdout


def test_import_deft_jax_does_not_import_jax_and_the_search_module_stays_callable():
    code = ("import sys, deft_jax; assert 'jax' not in sys.modules, 'jax imported'; "
            "f = deft_jax.search; import deft_jax.search; "
            "assert callable(deft_jax.search) and deft_jax.search.__class__.__name__ == 'CallableModule'; "
            "from deft_jax.errors import UserError\n"
            "try:\n    deft_jax.search(data='no/such/folder')\nexcept UserError as e:\n    print('refused:', e)")
    done = run_module("-c", code, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: --data no/such/folder: not found" in done.stdout
