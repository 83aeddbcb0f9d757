"""`megarank-ckpt verify` on the checkpoints a real run wrote (tests/conftest.py `reference_run`): each tag's
line and the exit code, after damaging one file, for a run dir, a checkpoint dir and one tag, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess

from megarank.ckpt.cli import main
from megarank.ckpt.tags import COMPLETE_MARKER
from tests.helpers import VENV_BIN


def verify(capsys, path):
    code = main(["verify", str(path)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_verify_names_the_damaged_file(reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    ckpt = run / "checkpoints"
    code, lines, _ = verify(capsys, run)
    assert code == 0 and [line.split(" (")[0] for line in lines] == ["global_step4: ok", "global_step8: ok"]

    optim = ckpt / "global_step8" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    size = optim.stat().st_size
    optim.write_bytes(optim.read_bytes()[:-100])
    code, lines, _ = verify(capsys, ckpt)
    assert code == 1 and lines[0].startswith("global_step4: ok")
    assert lines[1] == (f"global_step8: FAILED 'zero_pp_rank_0_mp_rank_00_optim_states.pt' has {size - 100} bytes, "
                        f"the marker records {size} (truncated or partly copied)")
    assert verify(capsys, ckpt / "global_step4")[:2] == (0, lines[:1])

    marker = json.loads((ckpt / "global_step4" / COMPLETE_MARKER).read_text())
    del marker["files"]  # as written before file records
    (ckpt / "global_step4" / COMPLETE_MARKER).write_text(json.dumps(marker))
    (ckpt / "global_step9").mkdir()  # cut short mid-save
    code, lines, _ = verify(capsys, ckpt)
    assert code == 1 and lines[0] == "global_step4: not verifiable (its marker predates file records)"
    assert lines[2].startswith("global_step9: incomplete")


def test_console_script_exit_codes(reference_run, tmp_path):
    script = str(VENV_BIN / "megarank-ckpt")
    ok = subprocess.run([script, "verify", str(reference_run)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.count(": ok (") == 2
    bad = subprocess.run([script, "verify", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (f"error: '{tmp_path}' holds no checkpoint (no global_step<N>/ under "
                          f"'{tmp_path / 'checkpoints'}')\n")
    (tmp_path / "global_step3").mkdir()
    cut = subprocess.run([script, "verify", str(tmp_path / "global_step3")], capture_output=True, text=True, timeout=60)
    assert cut.returncode == 2 and "is an incomplete checkpoint" in cut.stderr and cut.stderr.count("\n") == 1
