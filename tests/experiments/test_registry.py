"""The registry of experiments against what uses it: each entry's module (a Config dataclass and run), its
default config file, and megarank-exp's choices; an unknown name against the one-line error."""

from __future__ import annotations

import dataclasses

import pytest

from megarank.errors import MegarankError
from megarank.experiments.cli import main
from megarank.experiments.registry import EXPERIMENTS, NAMES, experiment
from tests.helpers import REPO


@pytest.mark.parametrize("entry", EXPERIMENTS, ids=NAMES)
def test_every_entry_has_a_module_and_a_config(entry):
    module = entry.load()
    assert dataclasses.is_dataclass(module.Config) and callable(module.run)
    assert "out_dir" in {f.name for f in dataclasses.fields(module.Config)}
    assert (REPO / entry.config_path).is_file()


def test_config_path_is_one_rule():
    """paper/ for the paper's experiments, beyond/ for the others, '-' as '_'."""
    assert experiment("lm-sweep").config_path == "configs/experiments/paper/lm_sweep.yaml"
    assert experiment("qk-norm").config_path == "configs/experiments/beyond/qk_norm.yaml"
    assert experiment("decay-off").config_path == "configs/experiments/beyond/decay_off.yaml"
    assert [e.name for e in EXPERIMENTS if e.beyond_paper] == ["qk-norm", "plasticity", "qk-ov", "decay-off"]
    assert not any(e.beyond_paper for e in EXPERIMENTS[:-4])  # the paper's first, so `make reproduce` runs them first


def test_names_are_unique_and_are_the_cli_choices(capsys):
    assert len(set(NAMES)) == len(NAMES) == 10
    with pytest.raises(SystemExit):
        main(["no-such-experiment"])
    err = capsys.readouterr().err
    assert all(name in err for name in (*NAMES, "reproduce"))
    with pytest.raises(MegarankError, match="unknown experiment 'nope'; choose one of factorized, scalar"):
        experiment("nope")
