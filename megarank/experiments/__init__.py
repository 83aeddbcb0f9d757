"""The paper's experiments (PAPER.md, "What it measured"), each one config and one command:

    name        module          reproduces
    factorized  factorized.py   Fig 1: two 5×5 factors under L2 vs the nuclear norm on their product
    scalar      scalar.py       Fig 5: w = a·b vs w, AdamW (decoupled) vs Adam + L2
    icl         icl.py          Fig 2: a 2-layer attention-only transformer on in-context linear regression
    lm-sweep    lm_sweep.py     Fig 3 left + Table 1: the GPT over wd_attn × wd_mlp × seeds
    vit-sweep   vit_sweep.py    Fig 3 right: the ViT over wd_attn
    pretrained  pretrained.py   Fig 4: factor balance of a pretrained model's attention

Every module defines `Config` (a dataclass: every knob, a docstring each, `out_dir` among them) and
`run(cfg, *, progress) -> Result`; cli.py loads configs/experiments/paper/<name>.yaml onto Config (OmegaConf
dot-list overrides as everywhere else) and report.py writes the result: report.md, PNGs, CSVs and
summary.json (written last: a directory without it holds no finished result).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from megarank.errors import MegarankError

EXPERIMENTS: dict[str, str] = {
    "factorized": "megarank.experiments.factorized",
    "scalar": "megarank.experiments.scalar",
    "icl": "megarank.experiments.icl",
    "lm-sweep": "megarank.experiments.lm_sweep",
    "vit-sweep": "megarank.experiments.vit_sweep",
    "pretrained": "megarank.experiments.pretrained",
}


def experiment_module(name: str) -> ModuleType:
    """The module that runs experiment `name` (its Config and run)."""
    if name not in EXPERIMENTS:
        raise MegarankError(f"unknown experiment '{name}'; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])


def default_config_path(name: str) -> str:
    """configs/experiments/paper/<name>.yaml, with '-' as '_' (lm-sweep -> lm_sweep.yaml)."""
    return f"configs/experiments/paper/{name.replace('-', '_')}.yaml"
