"""`megarank-rank`: the rank structure of every attention head of a checkpoint (Figures 3 and 4; docs/paper.md,
"Per-head products and how megarank measures them").

    megarank-rank PATH --out DIR [--rtol 0.01] [--atol 0.001] [--weights module|fp32] [--plot-layers 0,5]
    megarank-rank compare PATH PATH ... --out DIR [--x auto|wd_attn|step|index] [--all-steps]

PATH is a megarank run dir, checkpoint dir or global_step<N> tag, or a Hugging Face safetensors directory of any
layout in megarank/analysis/readers/hf_layouts.py (LLaMA/Mistral/Qwen2/Qwen3/Gemma/OPT, BERT, GPT-2, GPT-NeoX/
Pythia, Falcon, Phi-3).
Thin: parse, open the source, analyse (megarank/analysis/report.py), write. A user error prints one line,
`error: ...`, on stderr and exits 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from megarank.analysis.compare import STEP_HELP, X_CHOICES, write_compare
from megarank.analysis.readers import open_source
from megarank.analysis.readers.hf_layouts import families
from megarank.analysis.report import analyse, write_report
from megarank.analysis.spectra import DEFAULT_ATOL, DEFAULT_RTOL, QR_METHODS
from megarank.ckpt.resolve import looks_like_checkpoint, tags_at
from megarank.errors import MegarankError

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"rank counts σ > rtol·σ_max (default {DEFAULT_RTOL:g}: above bf16 storage noise)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"rank_atol counts σ > atol (default {DEFAULT_ATOL:g}; scale-dependent)")
    parser.add_argument("--weights", choices=("module", "fp32"), default="module",
                        help="megarank checkpoints: the module's weights as trained (default) or ZeRO's fp32 "
                             "master copy")
    parser.add_argument("--n-heads", type=int, default=None,
                        help="query heads per layer, for a safetensors model without config.json")
    parser.add_argument("--prefix", default=None,
                        help="safetensors: the name prefix of the attention stack to read when there are several")
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="float64", help="arithmetic precision")
    parser.add_argument("--qr", choices=QR_METHODS, default="cholesky",
                        help="how each factor's R is computed: CholeskyQR with Householder for ill-conditioned "
                             "heads (default, fast), or Householder for all")
    parser.add_argument("--device", default="cpu", help="where the QRs and SVDs run (cpu, cuda, cuda:1)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megarank-rank", description="Per-head rank of W_Q^T W_K and W_O W_V in a checkpoint; "
                                          "`megarank-rank compare -h` compares several.")
    parser.add_argument("path", type=Path,
                        help=f"run dir, checkpoint dir, global_step<N>, or HF safetensors dir ({families()})")
    parser.add_argument("--plot-layers", default=None,
                        help="comma-separated layers for the per-head figures (default: first, middle, last)")
    _common(parser)
    return parser


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megarank-rank compare", description="The rank metrics of several checkpoints in one table and plot "
                                                  "(rank vs wd_attn for a sweep, rank vs step for one run).")
    parser.add_argument("paths", nargs="+", type=Path,
                        help="checkpoints, as for megarank-rank PATH: e.g. one Hugging Face directory per training "
                             "step of one model (Pythia-style) for rank vs step")
    parser.add_argument("--x", default="auto", choices=X_CHOICES,
                        help="x axis: auto (wd_attn if it varies, else step, else command-line order). The step is "
                             f"{STEP_HELP}")
    parser.add_argument("--all-steps", action="store_true",
                        help="expand each megarank run or checkpoint dir into all its complete checkpoints")
    _common(parser)
    return parser


def _check(args: argparse.Namespace) -> None:
    if not 0 < args.rtol < 1:
        raise MegarankError(f"--rtol must be in (0, 1), got {args.rtol}")
    if args.atol < 0:
        raise MegarankError(f"--atol must be >= 0, got {args.atol}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise MegarankError(f"--device {args.device}: no CUDA device is available; use --device cpu")
    if args.out.exists() and not args.out.is_dir():
        raise MegarankError(f"--out '{args.out}' exists and is not a directory")


def _plot_layers(spec: str | None, n_layers: int) -> list[int] | None:
    if spec is None:
        return None
    try:
        layers = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise MegarankError(f"--plot-layers must be comma-separated layer numbers, got '{spec}'") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise MegarankError(f"--plot-layers {spec}: the model has layers 0..{n_layers - 1}")
    return layers


def _analyse_path(path: Path, args: argparse.Namespace):
    with open_source(path, weights=args.weights, n_heads=args.n_heads, prefix=args.prefix) as source:
        layers = _plot_layers(getattr(args, "plot_layers", None), source.info.n_layers)
        table = analyse(source, rtol=args.rtol, atol=args.atol, dtype=_DTYPES[args.dtype], device=args.device,
                        qr=args.qr, progress=not args.no_progress)
    return table, layers


def _describe(table) -> str:
    means = table.means()
    parts = [f"{p} rank {means[p]['rank']:.2f} (effective {means[p]['effective_rank']:.2f}, balance "
             f"{means[p]['balance']:.3f})" for p in means]
    return (f"{table.info.n_layers} layers x {table.info.n_heads} heads of d_head {table.info.d_head}; mean "
            + "; ".join(parts))


def run_analyse(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    _check(args)
    table, layers = _analyse_path(args.path, args)
    written = write_report(table, args.out, plots=not args.no_plots, plot_layers=layers)
    print(f"{table.info.source}: {_describe(table)}")
    if "qk_norm" in table.info.details:
        print(f"note: {table.info.details['qk_norm']}")
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def run_compare(argv: list[str]) -> int:
    args = _compare_parser().parse_args(argv)
    _check(args)
    paths = []
    for path in args.paths:
        if args.all_steps and looks_like_checkpoint(path):
            paths.extend(tags_at(path))
        else:
            paths.append(path)
    tables = [_analyse_path(path, args)[0] for path in paths]
    written = write_compare(tables, args.out, x=args.x, plots=not args.no_plots)
    for table in tables:
        print(f"{table.info.source}: {_describe(table)}")
    if "qk_norm" in table.info.details:
        print(f"note: {table.info.details['qk_norm']}")
    print(f"wrote {', '.join(p.name for p in written)} to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """megarank-rank PATH --out DIR ... | megarank-rank compare PATH ... --out DIR ..."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["compare"]:
            return run_compare(argv[1:])
        return run_analyse(argv)
    except MegarankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
