"""Rank analysis of attention (docs/paper.md, "Per-head products and how megarank measures them"): per layer
and head, the spectrum of W_Q,hᵀW_K,h and W_O,h W_V,h and how balanced their factors are, from saved
checkpoints or a model in memory.

    spectra.py   the factor trick (QR of both factors, SVD of the d_head × d_head core) and per-head metrics
    readers/     weights, one layer at a time: megarank/DeepSpeed checkpoints, Hugging Face safetensors
    report.py    a checkpoint's RankTable and its files (ranks.csv, singular_values.npz, summary.json)
    plots.py     the figures (Fig 3 and Fig 4 style)
    compare.py   several checkpoints in one table and plot (a λ sweep, or steps of a run)
    live.py      a summary of a model in memory, for logging during training
    cli.py       the `megarank-rank` entry point

Runs offline: no process group, no GPU, no download. Weights are analysed as stored: the LayerNorm gain in
front of attention is not folded into W_Q, W_K, W_V.
"""
