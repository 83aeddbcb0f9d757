"""`make gpu-check`'s report: report.json (everything measured, as recorded) and report.md (the same for a reader),
written from one results dict so the two never disagree.

The results dict, as tools/gpu_check.py records it:
    environment: gpu (name), gpus (count), driver, cuda, torch, deepspeed, flash_attn, python, date
    stages: name -> {ok: bool, seconds: float, summary: str, error?: str, ...the stage's own figures}
    left_out: the stages --stages did not select (absent or empty: every stage was selected)
    complete: every selected stage has run (a report is rewritten after each stage, so a check cut short leaves one)
    ok: complete, and every stage that ran passed
"""

from __future__ import annotations

import json
from pathlib import Path

from megarank.files import atomic_write_text

ENVIRONMENT_FIELDS = ("gpu", "gpus", "driver", "cuda", "torch", "deepspeed", "flash_attn", "python", "date")


def _figure(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _bench_tables(bench: dict) -> list[str]:
    """make bench's training rows (megarank and each lever) and attention kernels as markdown tables."""
    lines = ["", "### make bench", "",
             "| variant | tokens/s | MFU | of the matmul ceiling | peak memory | estimate | peak / estimate |",
             "|---|---|---|---|---|---|---|"]
    for row in bench.get("levers") or [{"variant": "megarank", **bench.get("training", {})}]:
        lines.append(
            f"| {row.get('variant', '?')} | {_figure(row.get('tokens_per_s', float('nan')))} | "
            f"{row.get('mfu', float('nan')):.1%} | {row.get('vs_matmul_ceiling', float('nan')):.1%} | "
            f"{row.get('peak_mem_gb', float('nan')):.2f} GB | {row.get('estimated_mem_gb', float('nan')):.2f} GB | "
            f"{row.get('peak_vs_estimate', float('nan')):.2f} |")
    matmul = bench.get("matmul")
    if matmul:
        lines += ["", f"Matmul ceiling: {matmul['tflops']:.0f} TFLOP/s ({matmul['dtype']}, "
                      f"{'×'.join(map(str, matmul['shape']))})."]
    if bench.get("attention"):
        lines += ["", "| attention kernel | dtype | shape | fwd+bwd ms | TFLOP/s | max abs diff vs math |",
                  "|---|---|---|---|---|---|"]
        for row in bench["attention"]:
            lines.append(f"| {row['backend']} | {row['dtype']} | {'×'.join(map(str, row['shape']))} | "
                         f"{row['fwd_bwd_ms']:.2f} | {row['tflops']:.1f} | {row['max_abs_diff_vs_math']:.1e} |")
    return lines


def _error_line(error: str) -> str:
    """The line that says what went wrong: megarank's own `error:` line when the log has one, else the last."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")


def render_markdown(results: dict) -> str:
    env = results["environment"]
    verdict = ("INCOMPLETE (cut short)" if not results.get("complete", True)
               else "PASSED" if results["ok"] else "FAILED")
    lines = [f"# make gpu-check: {verdict}", "",
             f"{env.get('gpus', '?')} × {env.get('gpu', '?')}, driver {env.get('driver', '?')}, CUDA "
             f"{env.get('cuda', '?')}, torch {env.get('torch', '?')}, DeepSpeed {env.get('deepspeed', '?')}, "
             f"flash_attn {env.get('flash_attn') or 'not installed'}, Python {env.get('python', '?')}; "
             f"{env.get('date', '')}.", ""]
    if results.get("left_out"):
        lines += [f"Only some stages were selected (--stages); left out: {', '.join(results['left_out'])}.", ""]
    lines += ["| stage | result | seconds | summary |", "|---|---|---|---|"]
    for name, stage in results["stages"].items():
        result = "pass" if stage["ok"] else "FAIL"
        summary = stage.get("summary", "")
        if not stage["ok"] and stage.get("error"):
            summary = f"{summary} — {_error_line(stage['error'])}"
        lines.append(f"| {name} | {result} | {stage.get('seconds', 0):.0f} | {summary.replace('|', '/')} |")
    bench = results["stages"].get("bench", {}).get("results")
    if bench:
        lines += _bench_tables(bench)
    failed = [(name, stage) for name, stage in results["stages"].items() if not stage["ok"] and stage.get("error")]
    for name, stage in failed:
        lines += ["", f"### {name}: what failed", "", "```", stage["error"].strip()[-3000:], "```"]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """report.json and report.md in out_dir (each written whole, then renamed into place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(results))
    return json_path, md_path
