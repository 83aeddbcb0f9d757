"""`make install TORCH=system`: a .venv that sees an existing interpreter's packages and keeps its torch.

Clusters ship PyTorch in an NGC-style container or a module (a CUDA build, often another version than
constraints.txt pins, sometimes on nodes with no internet). This script makes .venv over such an interpreter:

- `detect` (run by that interpreter): prints `system` when it imports a CUDA build of torch, else `pinned`;
  the Makefile's default for TORCH when no .venv exists yet.
- `create VENV` (run by that interpreter): checks its torch against MIN_TORCH, makes VENV, and adds a .pth
  file to VENV's site-packages that adds the interpreter's own site-packages dirs after VENV's.
  `python -m venv --system-site-packages` is not enough: run from a venv (NGC images often are one, e.g.
  /opt/torch/.venv/bin/python3) it exposes the *base* python's site-packages, not that venv's, and torch
  is in the venv's. site.addsitedir (not a bare path line) so the parent's own .pth files are read too.
- `constraints LOCK` (run by VENV's python): LOCK without the torch family's lines, plus the versions the
  interpreter has of them, so pip keeps them (it cannot reinstall or shadow them: a package that needs
  another torch is a resolution error instead). A pin the kept torch family forbids (say, torch
  requiring an exact sympy) is dropped, with a note on stderr; setuptools' keeps a floor instead.
  Offline (PIP_NO_INDEX set), it also names the pins PIP_FIND_LINKS has no file for, before pip stops at one.
- `check` (run by VENV's python, after the install): torch still comes from the interpreter, not VENV.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

# The oldest torch megarank runs on, as setup.py's install_requires and the README say: train.compile sets
# torch._dynamo.config.recompile_limit (named so from torch 2.7; megarank/parallel/compile.py), and the pinned
# transformers (tests, pretrained experiment) needs torch >= 2.6. 2.7.1 is the oldest run through this script
# (docs/parallelism.md, "Which torch"). Major and minor only: NGC's 2.7 builds are 2.7.0a0+...
MIN_TORCH = (2, 7)
# What stays the interpreter's: torch, the libraries built against it, and the CUDA wheels it loads.
TORCH_FAMILY = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton(-.*)?|nvidia-.*|cuda-.*)$")
PTH_NAME = "_megarank_system_site.pth"
# What a dropped pin falls back to. The editable install of megarank runs with --no-build-isolation and needs
# setuptools' own bdist_wheel (in it from 70.1): with its pin dropped (torch 2.11 requires setuptools<82), pip
# would keep the setuptools 65.5 that a Python 3.11 venv bundles, and the install stops at
# "invalid command 'bdist_wheel'".
DROPPED_PIN_FLOORS = {"setuptools": "setuptools>=70.1"}
MODE_FILE = ".torch-mode"  # "system" or "pinned": which way .venv was made (the Makefile reads it)


class SetupError(Exception):
    """A problem and its fix, in one line: main prints it and exits 2."""


def normalize(name: str) -> str:
    """PEP 503 name: Jinja2 == jinja2, typing_extensions == typing-extensions."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, int]:
    """Major and minor of a version: 2.6.0a0+ecf3bae40a.nv25.01 (an NGC build) -> (2, 6)."""
    major, minor = re.match(r"^(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def site_dirs() -> list[str]:
    """This interpreter's site-packages dirs (purelib, platlib, then site's list), each once, in order."""
    paths = sysconfig.get_paths()
    found = [paths["purelib"], paths["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE and Path(site.getusersitepackages()).is_dir():
        found.append(site.getusersitepackages())
    return [d for i, d in enumerate(found) if d not in found[:i] and Path(d).is_dir()]


def pth_text(dirs: list[str]) -> str:
    """A .pth whose one import line adds dirs as site dirs (their own .pth files included), after .venv's."""
    # map, not a comprehension: site exec()s the line, and a comprehension's scope cannot see the import
    return f"import site; list(map(site.addsitedir, {dirs!r}))\n"


def detect() -> str:
    """`system` when this interpreter imports a CUDA build of torch."""
    try:
        import torch
    except Exception:  # no torch, or one that does not load: nothing to keep
        return "pinned"
    return "system" if torch.version.cuda is not None else "pinned"


def torch_version_or_fail() -> str:
    """This interpreter's torch version; a one-line error when there is none or it is too old."""
    floor = ".".join(map(str, MIN_TORCH))
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        raise SetupError(f"TORCH=system but {sys.executable} has no torch: install torch>={floor} into it, "
                         f"or make install TORCH=pinned") from None
    if release(version) < MIN_TORCH:
        raise SetupError(f"TORCH=system but {sys.executable} has torch {version}; megarank needs torch>={floor}: "
                         f"use a newer one, or run make install TORCH=pinned")
    return version


def create(venv_dir: Path) -> None:
    """Make venv_dir over this interpreter and check that it sees this interpreter's torch."""
    version = torch_version_or_fail()
    origin = importlib.util.find_spec("torch").origin
    venv.EnvBuilder(with_pip=True, symlinks=sys.platform != "win32").create(venv_dir)
    venv_python = venv_dir / "bin" / "python"
    venv_site = subprocess.run([venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    (Path(venv_site) / PTH_NAME).write_text(pth_text(site_dirs()))
    seen = subprocess.run([venv_python, "-c", "import importlib.util; print(importlib.util.find_spec('torch').origin)"],
                          capture_output=True, text=True).stdout.strip()
    if Path(seen) != Path(origin):
        raise SetupError(f"{venv_dir} does not see {sys.executable}'s torch ({origin}; it sees {seen or 'none'}): "
                         f"remove {venv_dir} and report this interpreter's layout")
    (venv_dir / MODE_FILE).write_text("system\n")
    print(f"{venv_dir}: over {sys.executable}, keeping its torch {version} ({Path(origin).parent})")


def installed_family() -> dict[str, tuple[str, importlib.metadata.Distribution]]:
    """The torch family as this interpreter sees it: normalized name -> (version, distribution)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = normalize(dist.metadata["Name"] or "")
        if TORCH_FAMILY.match(name) and name not in found:  # the first on sys.path is the one imported
            found[name] = (dist.version, dist)
    return found


def forbidden_pins(pins: dict[str, str], family: dict) -> dict[str, str]:
    """Pins (name -> version) that a kept family member's requirements exclude: name -> the requirement."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare interpreter; pip (always in .venv) vendors the same module
        from pip._vendor.packaging.requirements import Requirement
    forbidden = {}
    for _, dist in family.values():
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = normalize(req.name)
            if name in pins and not req.specifier.contains(pins[name], prereleases=True):
                forbidden[name] = f"{dist.metadata['Name']} requires {req}"
    return forbidden


def constraints(lock_text: str, family: dict) -> tuple[str, list[str]]:
    """lock_text without torch-family pins, with the family's installed versions; and notes on what changed."""
    lines = []  # (line, normalized name or None for comments)
    for line in lock_text.splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line)
        name = normalize(match.group(1)) if match else None
        if name is None or not TORCH_FAMILY.match(name):
            lines.append((line, name))
    pins = {name: line.split("==", 1)[1].strip() for line, name in lines if name}
    forbidden = forbidden_pins(pins, family)
    notes = [f"dropping {name}=={pins[name]} from the constraints: {why}"
             + (f"; {DROPPED_PIN_FLOORS[name]} instead" if name in DROPPED_PIN_FLOORS else "")
             for name, why in sorted(forbidden.items())]
    header = ["# Generated by tools/venv_over_system.py from constraints.txt for make install TORCH=system:",
              "# the torch family is the interpreter's own, pinned to what it has."]
    ours = [f"{name}=={version}" for name, (version, _) in sorted(family.items())]
    kept = [line for line, name in lines if name not in forbidden]
    kept += [DROPPED_PIN_FLOORS[name] for name in sorted(forbidden) if name in DROPPED_PIN_FLOORS]
    return "\n".join(header + ours + kept) + "\n", notes


def missing_files(constraints_text: str, installed: dict[str, str], files: list[str]) -> list[str]:
    """Pins that neither the environment has at that version nor a wheel/sdist in files (names only) provides."""
    provided = set()
    for name in files:
        stem = re.sub(r"\.(whl|tar\.gz|zip)$", "", name)
        parts = stem.split("-") if name.endswith(".whl") else stem.rsplit("-", 1)
        if len(parts) >= 2:
            provided.add((normalize(parts[0]), parts[1]))
    missing = []
    for name, version in re.findall(r"^([A-Za-z0-9][\w.-]*)==(\S+)$", constraints_text, flags=re.M):
        key = normalize(name)
        if key != "pip" and installed.get(key) != version and (key, version) not in provided:
            missing.append(f"{name}=={version}")
    return missing


def offline_note(constraints_text: str) -> str | None:
    """With PIP_NO_INDEX set, a note naming the pins the PIP_FIND_LINKS dirs lack (None when nothing is)."""
    if os.environ.get("PIP_NO_INDEX", "").lower() not in {"1", "true", "yes", "on"}:
        return None
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    files = [f.name for d in dirs if Path(d).is_dir() for f in Path(d).iterdir()]
    installed = {normalize(d.metadata["Name"] or ""): d.version for d in importlib.metadata.distributions()}
    missing = missing_files(constraints_text, installed, files)
    if not missing:
        return None
    return (f"offline (PIP_NO_INDEX), and PIP_FIND_LINKS={' '.join(dirs) or '(unset)'} has no file for "
            f"{', '.join(missing)}: pip will stop at the first it needs; add them "
            f"(docs/parallelism.md#installing-into-the-clusters-pytorch)")


def check() -> None:
    """After the install: torch (and torchvision) still load from outside .venv."""
    import torch

    prefix = Path(sys.prefix).resolve()
    modules = [torch]
    if importlib.util.find_spec("torchvision"):
        try:
            import torchvision
            modules.append(torchvision)
        except Exception as error:  # only the ViT's image data needs it: say so, keep the install
            print(f"note: the interpreter's torchvision does not load with its torch {torch.__version__} "
                  f"({type(error).__name__}: {error}); the ViT needs one that does", file=sys.stderr)
    else:
        print("note: the interpreter has no torchvision; the ViT needs it", file=sys.stderr)
    for module in modules:
        if prefix in Path(module.__file__).resolve().parents:
            raise SetupError(f"{module.__name__} {module.__version__} was installed into {prefix}, shadowing the "
                             f"interpreter's: make clean-venv, then make install TORCH=system again")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) from {Path(torch.__file__).parent}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("detect")
    sub.add_parser("create").add_argument("venv", type=Path)
    sub.add_parser("constraints").add_argument("lock", type=Path)
    sub.add_parser("check")
    args = parser.parse_args(argv)
    try:
        run(args)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run(args: argparse.Namespace) -> None:
    if args.command == "detect":
        print(detect())
    elif args.command == "create":
        create(args.venv)
    elif args.command == "constraints":
        text, notes = constraints(args.lock.read_text(), installed_family())
        offline = offline_note(text)
        for note in notes + ([offline] if offline else []):
            print(f"note: {note}", file=sys.stderr)
        sys.stdout.write(text)
    else:
        check()


if __name__ == "__main__":
    main()
