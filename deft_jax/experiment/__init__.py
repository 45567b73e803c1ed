"""Compare DEFT with baselines over repeated splits, with paired statistics.

    python -m deft_jax.experiment --config configs/osteosarcoma_resnet20.toml
        [--methods deft,linear-probe,...] [--seeds N] [--out DIR] [--resume DIR]
        [--set key=value ...]

For seed s = 0..N-1: one grouped stratified split with data.split_seed + s, training
seed `seed + s` (head init, batch order, DE), and every method on that same split.
Written under the output folder:

- runs.jsonl   one JSON object per (seed, method), appended as each finishes; runs.csv
- summary.md, summary.json   mean +- std over seeds, DEFT vs each method paired over seeds
- accuracy_by_method.png, deft_fitness.png, deft_groups.png
- config.json, experiment.json, splits/seed{s}.json, state/ (DEFT's resumable search)

`--resume DIR` skips every (seed, method) already in runs.jsonl (and resumes an
interrupted DEFT search at its last generation); it may add methods or seeds.

Modules: `runner` (runs every missing (seed, method)), `records` (runs.jsonl, runs.csv),
`stats` (paired tests, intervals, Holm), `summary` (summary.json, summary.md), `plots`
(the PNGs), `cli` (the command line; `__main__` runs it). The methods themselves live in
`deft_jax.methods`.
"""
