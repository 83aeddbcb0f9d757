"""The figures of a rank analysis: matplotlib Figures rendered by Agg (no pyplot, no display, no global state).

    rank_per_head  Fig 3 style: the numerical rank of W_QᵀW_K and W_O W_V per head, for chosen layers
    rank_heatmap   every layer × head at a glance, both products
    balance        Fig 4 style: per head, ‖A‖²+‖B‖² against 2‖ABᵀ‖_*; balanced factors sit on the diagonal,
                   and no head can lie above it (‖ABᵀ‖_* <= ‖A‖_F‖B‖_F <= (‖A‖²+‖B‖²)/2)
    spectra        each head's σ_i / σ_max for chosen layers, with the --rtol line that `rank` counts above
    compare        mean rank over checkpoints, against wd_attn or the training step
"""

from __future__ import annotations

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from megarank.analysis.spectra import PRODUCTS

LABELS = {"qk": "W_Qᵀ W_K", "ov": "W_O W_V"}
COLORS = {"qk": "tab:blue", "ov": "tab:orange"}


def default_layers(n_layers: int) -> list[int]:
    """First, middle and last layer."""
    return sorted({0, n_layers // 2, n_layers - 1})


def rank_per_head(table, layers: list[int]) -> Figure:
    d_head, n_heads = table.info.d_head, table.info.n_heads
    fig = Figure(figsize=(max(6.0, 0.35 * n_heads + 2), 2.4 * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), 1, squeeze=False)[:, 0]
    heads = np.arange(n_heads)
    for ax, layer in zip(axes, layers):
        for i, product in enumerate(PRODUCTS):
            ax.bar(heads + (i - 0.5) * 0.4, table.metrics[product]["rank"][layer], width=0.4,
                   color=COLORS[product], label=LABELS[product])
        ax.axhline(d_head, color="gray", linestyle="--", linewidth=1, label=f"d_head = {d_head}")
        ax.set_ylim(0, d_head * 1.1)
        if n_heads <= 32:
            ax.set_xticks(heads)
        ax.set_title(f"layer {layer}")
        ax.set_ylabel("rank")
    axes[-1].set_xlabel("head")
    axes[0].legend(loc="lower right", fontsize="small")
    fig.suptitle(f"rank per head (σ > {table.settings['rtol']:g}·σ_max)")
    return fig


def rank_heatmap(table) -> Figure:
    fig = Figure(figsize=(10, max(3.0, 0.25 * table.info.n_layers + 1.5)), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, product in zip(axes, PRODUCTS):
        image = ax.imshow(table.metrics[product]["rank"], aspect="auto", vmin=0, vmax=table.info.d_head,
                          cmap="viridis", interpolation="nearest")
        ax.set_title(f"rank of {LABELS[product]}")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(image, ax=list(axes), label="rank")
    return fig


def balance(table) -> Figure:
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    top = 0.0
    for product in PRODUCTS:
        x = 2 * table.metrics[product]["l2_half"].ravel()
        y = 2 * table.metrics[product]["nuclear"].ravel()
        ax.scatter(x, y, s=10, alpha=0.7, color=COLORS[product], label=LABELS[product])
        top = max(top, float(np.nanmax(x, initial=0.0)))
    ax.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="balanced")
    ax.set_xlabel("‖A‖²_F + ‖B‖²_F")
    ax.set_ylabel("2 ‖ABᵀ‖_*")
    ax.set_title("factor balance per head")
    ax.legend(fontsize="small")
    return fig


def spectra(table, layers: list[int]) -> Figure:
    fig = Figure(figsize=(10, 2.6 * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), 2, squeeze=False)
    index = np.arange(1, table.info.d_head + 1)
    for row, layer in zip(axes, layers):
        for ax, product in zip(row, PRODUCTS):
            sv = table.sv[product][layer]  # (n_heads, d_head)
            sv = sv[sv[:, 0] > 0]
            shown = sv / sv[:, :1]
            floor = min(table.settings["rtol"] / 10, float(shown[shown > 0].min(initial=1.0)))
            # one collection for all heads: far faster to draw than a line per head
            lines = [np.column_stack([index, np.maximum(s, floor)]) for s in shown]
            ax.add_collection(LineCollection(lines, linewidths=0.8, alpha=0.6, colors=COLORS[product]))
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())  # minor log ticks dominate the drawing time
            ax.set_xlim(1, max(table.info.d_head, 2))
            ax.set_ylim(floor, 1.5)
            ax.axhline(table.settings["rtol"], color="gray", linestyle="--", linewidth=1)
            ax.set_title(f"layer {layer}: {LABELS[product]}")
            ax.set_ylabel("σ_i / σ_max")
    for ax in axes[-1]:
        ax.set_xlabel("i")
    return fig


def report_figures(table, layers: list[int] | None) -> dict[str, Figure]:
    """The figures written next to ranks.csv, by file stem."""
    layers = default_layers(table.info.n_layers) if layers is None else layers
    return {"rank_per_head": rank_per_head(table, layers), "rank_heatmap": rank_heatmap(table),
            "balance": balance(table), "spectra": spectra(table, layers)}


def compare(x: list, labels: list[str], groups: list[str], means: dict[str, dict[str, list[float]]], x_name: str,
            d_head: int | None) -> Figure:
    """One panel per product: mean rank (solid) and effective rank (dashed) over checkpoints, a line per group
    (the run when x is the step, the step when x is wd_attn); x numeric, or the checkpoints' order with their
    labels when x_name is 'index'."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    positions = np.arange(len(labels)) if x_name == "index" else np.asarray(x, dtype=float)
    colors = [f"C{i}" for i in range(10)]
    for ax, product in zip(axes, PRODUCTS):
        for i, group in enumerate(dict.fromkeys(groups)):
            members = np.array([g == group for g in groups])
            order = np.argsort(positions[members], kind="stable")
            for metric, style in (("rank", "-"), ("effective_rank", "--")):
                values = np.asarray(means[product][metric], dtype=float)[members]
                name = f"{group}: {metric.replace('_', ' ')}" if group else metric.replace("_", " ")
                ax.plot(positions[members][order], values[order], style, marker="o", color=colors[i % 10],
                        label=name)
        if d_head:
            ax.axhline(d_head, color="gray", linestyle=":", linewidth=1, label=f"d_head = {d_head}")
        if x_name == "index":
            ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize="small")
        ax.set_xlabel({"wd_attn": "λ_attn (optim.wd_attn)", "step": "step", "index": "checkpoint"}[x_name])
        ax.set_title(f"{LABELS[product]}: mean over layers and heads")
    axes[0].set_ylabel("rank")
    axes[1].legend(fontsize="small")
    return fig
