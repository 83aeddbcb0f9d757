"""Run metrics to TensorBoard and <run_dir>/metrics.jsonl, from rank 0 only.

On resume from step N, records after N (written by the attempt that was cut off) are dropped from
metrics.jsonl and TensorBoard is told to purge them, so every step appears once (cf. Megatron #6237). A line
that is not JSON (the half-written last record of an attempt killed mid-write) is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from megarank.files import atomic_write_text

log = logging.getLogger("megarank")


class MetricsLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._drop_records_after(start_step)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self._file = self.path.open("a")

    def _drop_records_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step_of_record = record.get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                log.warning("%s line %d is not a complete JSON record (a write cut short by a kill?); dropped it: "
                            "%.80s", self.path, number, line)
                continue
            if step_of_record <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict) -> None:
        """record holds 'step' and scalar values; each scalar also goes to TensorBoard under its key."""
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                if "/" in key:  # 'rank/qk_mean/layer0' and the like name their own TensorBoard section
                    tag = key
                elif key.startswith("val_"):
                    tag = f"val/{key[4:]}"
                else:
                    tag = f"train/{key}"
                self._tb.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
