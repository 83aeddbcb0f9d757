"""The paper's experiments (docs/paper.md, "## Experiments"), each one config and one command.

    registry.py     the one list: name, module, the figure or table it reproduces, `make reproduce`'s order
    runner.py       load an experiment's config (grid-axis overrides through megarank.sweep's checks), run it
    report.py       Result (checks, tables, figures) and its files: report.md, PNGs, CSVs, summary.json last
    reproduce.py    `make reproduce`: every experiment, then runs/paper/REPORT.md (a failure is a row, not the end)
    cli.py          `megarank-exp NAME | reproduce`
    factorized.py   Fig 1      scalar.py    Fig 5      pretrained.py   Fig 4
    icl/            Fig 2 (task, model, training, metrics, checks, figures, result: a module each)
    lm_sweep.py     Fig 3 left + Table 1       vit_sweep.py   Fig 3 right       sweeps.py   what both sweeps share
"""
