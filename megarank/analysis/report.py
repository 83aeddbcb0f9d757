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

import collections
import contextlib
import csv
import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    timing: dict = field(default_factory=dict)  # read_s (reader thread), compute_cpu_s (summed over workers)

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
            "timing": self.timing,
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


@contextmanager
def _single_threaded_kernels():
    """torch's intra-op threads set to 1 inside, restored after: the analysis runs one layer per worker thread
    instead, since a 128 × 128 LAPACK call split over cores spends more time synchronising than computing."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def analyse(source: WeightSource, *, rtol: float, atol: float, dtype: torch.dtype = torch.float64,
            device: str = "cpu", qr: str = "cholesky", mixed: bool = True, workers: int | None = None,
            progress: bool = True) -> RankTable:
    """Run the factor trick over every layer of `source`: a reader thread reads the next layer from disk while
    `workers` threads (default: torch's thread count, i.e. the cores; 1 on a GPU) each decompose one layer
    with single-threaded kernels. At most workers + 2 layers' attention weights are in memory at once."""
    info, start = source.info, time.perf_counter()
    shape = (info.n_layers, info.n_heads)
    metrics = {p: {m: np.zeros(shape, dtype=np.int64 if m in _INTEGER else np.float64) for m in METRICS}
               for p in PRODUCTS}
    sv = {p: np.zeros((*shape, info.d_head)) for p in PRODUCTS}
    seen = np.zeros(shape, dtype=bool)
    float64_heads = 0
    on_cpu = torch.device(device).type == "cpu"
    workers = max(1, workers if workers is not None else (torch.get_num_threads() if on_cpu else 1))
    read_s = 0.0

    def timed_layers() -> Iterator:
        nonlocal read_s
        layers = iter(source.layers())
        while True:
            t0 = time.perf_counter()
            shards = next(layers, None)
            read_s += time.perf_counter() - t0
            if shards is None:
                return
            yield shards

    def decompose(shard) -> tuple:
        t0 = time.thread_time()
        try:
            spectra = layer_spectra(shard.q, shard.k, shard.v, shard.o, info.d_head, dtype=dtype, device=device,
                                    qr=qr, mixed=mixed)
        except ValueError as err:
            raise MegarankError(f"'{info.source}': layer {shard.layer}: {err}") from None
        return shard, spectra, time.thread_time() - t0

    compute_s = 0.0
    bar = tqdm(total=info.n_layers, desc=f"rank {Path(info.source).name}", unit="layer", disable=not progress)
    kernels = _single_threaded_kernels() if on_cpu and workers > 1 else contextlib.nullcontext()
    with kernels, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="megarank-rank") as pool:
        pending: collections.deque = collections.deque()

        def collect() -> None:
            nonlocal float64_heads, compute_s
            for shard, spectra, seconds in pending.popleft().result():
                compute_s += seconds
                heads = slice(shard.first_head, shard.first_head + shard.q.shape[0] // info.d_head)
                seen[shard.layer, heads] = True
                for product, s in spectra.items():
                    sv[product][shard.layer, heads] = s.sv.numpy()
                    float64_heads += int(s.float64_gram.sum()) if s.float64_gram is not None else s.sv.shape[0]
                    for name, values in head_metrics(s, rtol=rtol, atol=atol).items():
                        metrics[product][name][shard.layer, heads] = values
            bar.update(1)

        for shards in prefetched(timed_layers()):
            pending.append(pool.submit(lambda shards=shards: [decompose(shard) for shard in shards]))
            while len(pending) > workers:  # in order, and no more layers in flight than workers
                collect()
        while pending:
            collect()
    bar.close()
    if not seen.all():
        layer, head = map(int, np.argwhere(~seen)[0])
        raise MegarankError(f"'{info.source}': no weights were read for layer {layer} head {head}; the "
                            "checkpoint's shards do not cover every head")
    settings = {"rtol": rtol, "atol": atol, "dtype": str(dtype).removeprefix("torch."), "device": str(device),
                "qr": qr, "mixed": mixed, "float64_gram_products": float64_heads,
                "method": "thin QR of both d_model x d_head factors, SVD of the d_head x d_head core"}
    seconds = time.perf_counter() - start
    timing = {"read_s": round(read_s, 3), "compute_cpu_s": round(compute_s, 3), "workers": workers}
    return RankTable(info=info, settings=settings, metrics=metrics, sv=sv, seconds=seconds, timing=timing)


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
