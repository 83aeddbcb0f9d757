"""tools/venv_over_system.py (make install TORCH=system) without installing anything.

What is compared against what:
- the generated constraints against constraints.txt: every torch-family pin replaced by the interpreter's
  version, every other line kept, and a pin the kept torch forbids dropped with a note (setuptools' keeping
  a floor);
- the .pth line against a real interpreter: a child python that reads it sees the listed dir and runs that
  dir's own .pth files;
- the torch floor against a fake installed version: too old or missing is a one-line error;
- the torch floor in tools/venv_over_system.py against setup.py's install_requires and the README's claim.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

spec = importlib.util.spec_from_file_location("venv_over_system", REPO / "tools" / "venv_over_system.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


class FakeDist:
    """What constraints() reads of an installed distribution: its name and requirement lines."""

    def __init__(self, name: str, requires: list[str]):
        self.metadata = {"Name": name}
        self.requires = requires


def family(**versions: tuple[str, list[str]]) -> dict:
    return {name: (version, FakeDist(name, requires)) for name, (version, requires) in versions.items()}


def test_constraints_swap_the_torch_family_and_keep_the_rest():
    lock = (REPO / "constraints.txt").read_text()
    text, notes = tool.constraints(lock, family(torch=("2.9.0a0+nv25.08", ["sympy>=1.13.3", "filelock"])))
    pins = dict(re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)$", text, flags=re.M))
    locked = dict(re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)$", lock, flags=re.M))
    family_names = {name for name in locked if tool.TORCH_FAMILY.match(tool.normalize(name))}
    assert {"torch", "torchvision", "triton", "nvidia-nccl-cu13", "cuda-toolkit"} <= family_names
    assert pins == {**{k: v for k, v in locked.items() if k not in family_names}, "torch": "2.9.0a0+nv25.08"}
    assert notes == []
    assert all(line in text for line in lock.splitlines() if line.startswith("#"))  # the lock's comments too


def test_a_pin_the_kept_torch_forbids_is_dropped_with_a_note():
    lock = "# lock\nsympy==1.14.0\nJinja2==3.1.6\ntyping_extensions==4.16.0\ntorch==2.14.1\n"
    requires = ["sympy==1.13.1; python_version >= '3.9'", "jinja2", "typing-extensions>=5.0",
                "triton==3.1.0; extra == 'never'"]
    text, notes = tool.constraints(lock, family(torch=("2.5.1", requires)))
    assert text.splitlines()[2:] == ["torch==2.5.1", "# lock", "Jinja2==3.1.6"]
    assert [note.split(":")[0] for note in notes] == ["dropping sympy==1.14.0 from the constraints",
                                                      "dropping typing-extensions==4.16.0 from the constraints"]


def test_a_dropped_setuptools_pin_keeps_a_floor_for_the_editable_install():
    """torch 2.11 requires setuptools<82: without a floor pip keeps a venv's bundled 65.5, which has no bdist_wheel."""
    lock = "setuptools==84.2.1\ntqdm==4.70.1\ntorch==2.14.1\n"
    text, notes = tool.constraints(lock, family(torch=("2.11.0", ["setuptools<82", "sympy>=1.13.3"])))
    assert text.splitlines()[2:] == ["torch==2.11.0", "tqdm==4.70.1", "setuptools>=70.1"]
    assert notes == ["dropping setuptools==84.2.1 from the constraints: torch requires setuptools<82; "
                     "setuptools>=70.1 instead"]


def test_the_pth_line_adds_a_site_dir_with_its_own_pth_files(tmp_path):
    parent, venv_site = tmp_path / "parent-site", tmp_path / "venv-site"
    parent.mkdir(), venv_site.mkdir()
    (parent / "editable.pth").write_text(str(tmp_path / "src") + "\n")  # as an editable install writes
    (tmp_path / "src").mkdir()
    (venv_site / tool.PTH_NAME).write_text(tool.pth_text([str(parent)]))
    shown = subprocess.run([sys.executable, "-c", f"import site, sys; site.addsitedir({str(venv_site)!r}); "
                            "print('\\n'.join(sys.path))"], check=True, capture_output=True, text=True)
    path = shown.stdout.splitlines()
    assert shown.stderr == ""
    assert path.index(str(venv_site)) < path.index(str(parent)) < path.index(str(tmp_path / "src"))


def test_site_dirs_are_this_interpreters_each_once():
    dirs = tool.site_dirs()
    assert len(dirs) == len(set(dirs))
    assert importlib.util.find_spec("pytest").origin.startswith(tuple(dirs))


@pytest.mark.parametrize("version, floor_ok", [("2.14.1", True), ("2.7.0", True), ("2.10.0a0+git1234", True),
                                               ("2.6.0a0+ecf3bae40a.nv25.01", False), ("1.13.1", False)])
def test_the_torch_floor(monkeypatch, version, floor_ok):
    monkeypatch.setattr(tool.importlib.metadata, "version", lambda name: version)
    if floor_ok:
        assert tool.torch_version_or_fail() == version
    else:
        with pytest.raises(tool.SetupError, match=rf"has torch {re.escape(version)}; megarank needs torch>=2\.7"):
            tool.torch_version_or_fail()


def test_no_torch_is_a_one_line_error(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tool.importlib.metadata, "version", missing)
    with pytest.raises(tool.SetupError, match="has no torch: install torch>=2.7 into it, or make install TORCH=pinned"):
        tool.torch_version_or_fail()


def test_offline_names_the_pins_no_file_provides():
    constraints = "# c\nhjson==3.1.0\nPyYAML==6.0.3\ndeepspeed==0.19.8\nfilelock==4.2.12\npip==26.3\ntorch==2.13.0+cpu\n"
    files = ["pyyaml-6.0.3-cp311-cp311-manylinux_2_17_x86_64.whl", "deepspeed-0.19.8.tar.gz", "hjson-3.0.0-py3-none-any.whl"]
    installed = {"torch": "2.13.0+cpu", "filelock": "4.3.1", "pip": "23.2.1"}
    assert tool.missing_files(constraints, installed, files) == ["hjson==3.1.0", "filelock==4.2.12"]


def test_setup_py_and_the_readme_state_the_scripts_torch_floor():
    floor = ".".join(map(str, tool.MIN_TORCH))
    assert re.findall(r'"torch>=([\d.]+)"', (REPO / "setup.py").read_text()) == [floor]
    readme = " ".join((REPO / "README.md").read_text().split())  # the claim may wrap across lines
    assert re.findall(r"megarank supports torch ≥ ([\d.]+)", readme) == [floor]
