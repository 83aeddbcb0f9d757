"""The one list of experiments: name, module, what it reproduces, and `make reproduce`'s order.

Most reproduce a figure or table of the paper; a few go beyond it (`beyond_paper`): they test a later claim
about weight decay and attention with the same machinery, and REPORT.md lists them in a section of their own.
Each module defines `Config` (a dataclass: every knob, a docstring each, `out_dir` among them) and
`run(cfg, *, progress) -> Result` (megarank/experiments/report.py). Its default config is
configs/experiments/<paper or beyond>/<name with '_' for '-'>.yaml; docs/paper.md, "## Experiments" and
"## Beyond the paper", describes each one.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from megarank.errors import MegarankError


@dataclass(frozen=True)
class Experiment:
    name: str
    """What megarank-exp and runs/paper/<name>/ call it."""
    module: str
    """The module that holds its Config and run."""
    reproduces: str
    """The paper's figure or table, or (beyond_paper) the work whose claim it tests, as REPORT.md names it."""
    beyond_paper: bool = False
    """Not one of the paper's results: listed under "Beyond the paper", its config under configs/experiments/beyond/."""

    @property
    def config_path(self) -> str:
        """configs/experiments/<paper|beyond>/<name>.yaml, with '-' as '_' (lm-sweep -> paper/lm_sweep.yaml)."""
        return f"configs/experiments/{'beyond' if self.beyond_paper else 'paper'}/{self.name.replace('-', '_')}.yaml"

    def load(self) -> ModuleType:
        """The module, imported on first use (the sweeps pull in training; factorized needs only numpy)."""
        return importlib.import_module(self.module)


# in `make reproduce` order: cheapest first, so the quick figures exist even if a long sweep is interrupted
EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment("factorized", "megarank.experiments.factorized", "Fig 1"),
    Experiment("scalar", "megarank.experiments.scalar", "Fig 5"),
    Experiment("pretrained", "megarank.experiments.pretrained", "Fig 4"),
    Experiment("icl", "megarank.experiments.icl", "Fig 2"),
    Experiment("vit-sweep", "megarank.experiments.vit_sweep", "Fig 3 right"),
    Experiment("lm-sweep", "megarank.experiments.lm_sweep", "Fig 3 left + Table 1"),
    Experiment("qk-norm", "megarank.experiments.qk_norm", "QK-norm (2026 preprint)", beyond_paper=True),
    Experiment("plasticity", "megarank.experiments.plasticity", "Han et al. 2026, plasticity", beyond_paper=True),
    Experiment("qk-ov", "megarank.experiments.qk_ov", "per-product decay: whose low rank costs perplexity",
               beyond_paper=True),
    Experiment("decay-off", "megarank.experiments.decay_off", "Jacobs, Zhou & Burkholz 2025, decay switched off",
               beyond_paper=True),
)
NAMES: tuple[str, ...] = tuple(e.name for e in EXPERIMENTS)


def experiment(name: str) -> Experiment:
    """The registry entry of `name`; a one-line error naming the choices for any other name."""
    for entry in EXPERIMENTS:
        if entry.name == name:
            return entry
    raise MegarankError(f"unknown experiment '{name}'; choose one of {', '.join(NAMES)}")
