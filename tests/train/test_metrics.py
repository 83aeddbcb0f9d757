"""MetricsLogger on resume against the file an interrupted attempt left: records after the resumed step go, every
complete record up to it stays, and a torn last line (a kill in the middle of a write) is dropped with a
warning instead of crashing the resume."""

from __future__ import annotations

import json
import logging

from megarank.train.metrics import MetricsLogger

RECORDS = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "val_loss": 2.6}, {"step": 3, "loss": 2.0}]


def test_torn_last_line_is_dropped_and_complete_records_kept(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    complete = "".join(json.dumps(r) + "\n" for r in RECORDS)
    path.write_text(complete + '{"step": 4, "loss": 1.9, "lr": 0.00')  # the write of step 4 cut short

    with caplog.at_level(logging.WARNING, logger="megarank"):
        logger = MetricsLogger(tmp_path, enabled=True, start_step=3)
    logger.log({"step": 4, "loss": 1.8})
    logger.close()

    assert [json.loads(line) for line in path.read_text().splitlines()] == [*RECORDS, {"step": 4, "loss": 1.8}]
    assert any("line 5 is not a complete JSON record" in r.message for r in caplog.records)


def test_records_after_the_resumed_step_are_dropped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + '{"st')
    MetricsLogger(tmp_path, enabled=True, start_step=2).close()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == RECORDS[:3]
