"""One checkpoint's per-head rank table, and its files: ranks.csv, singular_values.npz, plots, summary.json.

ranks.csv is a public contract: one row per layer, head and product (layers and heads counted from 0, 'qk'
before 'ov'), with the columns of COLUMNS (definitions in megarank/analysis/spectra.py). singular_values.npz
holds arrays 'qk' and 'ov' of shape (n_layers, n_heads, d_head), each head's σ in descending order.

No partial result is ever presented as complete: the whole analysis runs before the first file is written;
each file is written under a temp name in the output directory and renamed into place (megarank/files.py), so
no reader sees half a file; summary.json is removed first and written last, listing the other files, so a
directory without it holds no finished result (a crash between two renames leaves no summary).
"""

from __future__ import annotations

import csv
import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from megarank import __version__
from megarank.analysis.readers import ModelInfo, WeightSource
from megarank.analysis.spectra import METRICS, PRODUCTS, head_metrics, layer_spectra
from megarank.errors import MegarankError
from megarank.files import atomic_write

COLUMNS = ("layer", "head", "product", *METRICS)
_INTEGER = ("rank", "rank_atol")


@dataclass
class RankTable:
    """Every head's metrics and singular values for one checkpoint."""

    info: ModelInfo
    settings: dict  # rtol, atol, dtype, device
    metrics: dict[str, dict[str, np.ndarray]]  # product -> metric -> (n_layers, n_heads)
    sv: dict[str, np.ndarray]  # product -> (n_layers, n_heads, d_head), descending
    seconds: float

    def rows(self) -> list[dict]:
        """ranks.csv's rows, in file order."""
        rows = []
        for layer in range(self.info.n_layers):
            for head in range(self.info.n_heads):
                for product in PRODUCTS:
                    row = {"layer": layer, "head": head, "product": product}
                    for name in METRICS:
                        value = self.metrics[product][name][layer, head]
                        row[name] = int(value) if name in _INTEGER else float(value)
                    rows.append(row)
        return rows

    def layer_means(self) -> dict[str, dict[str, list[float]]]:
        """product -> metric -> mean over each layer's heads (NaN balances of all-zero heads left out)."""
        return {p: {m: [_mean(v[layer]) for layer in range(v.shape[0])] for m, v in self.metrics[p].items()}
                for p in PRODUCTS}

    def means(self) -> dict[str, dict[str, float]]:
        """product -> metric -> mean over all layers and heads."""
        return {p: {m: _mean(v) for m, v in self.metrics[p].items()} for p in PRODUCTS}

    def summary(self, files: list[str]) -> dict:
        info = self.info
        return {
            "tool": "megarank-rank", "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(self.seconds, 3),
            "source": info.source, "format": info.format,
            "model": {"family": info.family, "n_layers": info.n_layers, "n_heads": info.n_heads,
                      "n_kv_heads": info.n_kv_heads, "d_model": info.d_model, "d_head": info.d_head},
            "details": info.details, "settings": self.settings,
            "means": self.means(), "layer_means": self.layer_means(), "files": files,
        }


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def json_ready(value):
    """value with NaN/inf floats as None, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """items, produced by a background thread up to `depth` ahead: the next layer is read from disk while this
    one is decomposed (torch releases the GIL in its kernels). An exception in the producer is re-raised here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(item)
            slots.put(done)
        except BaseException as err:  # handed to the consumer, which raises it
            slots.put(err)

    thread = threading.Thread(target=produce, name="megarank-rank-reader", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                slots.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


def analyse(source: WeightSource, *, rtol: float, atol: float, dtype: torch.dtype = torch.float64,
            device: str = "cpu", qr: str = "cholesky", progress: bool = True) -> RankTable:
    """Run the factor trick over every layer of `source`, with at most three layers' attention weights in memory:
    the one being decomposed and up to two read ahead (see prefetched)."""
    info, start = source.info, time.perf_counter()
    shape = (info.n_layers, info.n_heads)
    metrics = {p: {m: np.zeros(shape, dtype=np.int64 if m in _INTEGER else np.float64) for m in METRICS}
               for p in PRODUCTS}
    sv = {p: np.zeros((*shape, info.d_head)) for p in PRODUCTS}
    seen = np.zeros(shape, dtype=bool)
    bar = tqdm(prefetched(source.layers()), total=info.n_layers, desc=f"rank {Path(info.source).name}", unit="layer",
               disable=not progress)
    for shards in bar:
        for shard in shards:
            try:
                spectra = layer_spectra(shard.q, shard.k, shard.v, shard.o, info.d_head, dtype=dtype, device=device,
                                        qr=qr)
            except ValueError as err:
                raise MegarankError(f"'{info.source}': layer {shard.layer}: {err}") from None
            heads = slice(shard.first_head, shard.first_head + shard.q.shape[0] // info.d_head)
            seen[shard.layer, heads] = True
            for product, s in spectra.items():
                sv[product][shard.layer, heads] = s.sv.numpy()
                for name, values in head_metrics(s, rtol=rtol, atol=atol).items():
                    metrics[product][name][shard.layer, heads] = values
    if not seen.all():
        layer, head = map(int, np.argwhere(~seen)[0])
        raise MegarankError(f"'{info.source}': no weights were read for layer {layer} head {head}; the "
                            "checkpoint's shards do not cover every head")
    settings = {"rtol": rtol, "atol": atol, "dtype": str(dtype).removeprefix("torch."), "device": str(device),
                "qr": qr, "method": "thin QR of both d_model x d_head factors, SVD of the d_head x d_head core"}
    return RankTable(info=info, settings=settings, metrics=metrics, sv=sv, seconds=time.perf_counter() - start)


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


def write_figure(path: Path, figure) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=120), binary=True)


def write_report(table: RankTable, out_dir: Path, *, plots: bool = True,
                 plot_layers: list[int] | None = None) -> list[Path]:
    """The result files of one analysis in out_dir (created if needed); returns their paths, summary last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = out_dir / "summary.json"
    summary.unlink(missing_ok=True)  # the directory holds no complete result until the new summary lands
    written = [out_dir / "singular_values.npz", out_dir / "ranks.csv"]
    atomic_write(written[0], lambda f: np.savez(f, **table.sv), binary=True)
    write_csv(written[1], COLUMNS, table.rows())
    if plots:
        from megarank.analysis import plots as plotting

        for name, figure in plotting.report_figures(table, plot_layers).items():
            written.append(out_dir / f"{name}.png")
            write_figure(written[-1], figure)
    text = json.dumps(json_ready(table.summary([p.name for p in written])), indent=2)
    atomic_write(summary, lambda f: f.write(text + "\n"))
    return [*written, summary]
