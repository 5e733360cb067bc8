"""Measurements behind `rebalance bench retrieval`: every ratio is taken side by side in one run.

- `bench_encode`: encode latency of the exported towers under onnxruntime against the same student in torch
  (eval mode, `torch.inference_mode`), at each batch size, same inputs, same thread count.
- `bench_search`: exact top-k (`exports.serving.search.ExactIndex`) over random unit galleries (N x D):
  at query batch 1 against one pass over the gallery at the read bandwidth measured in the same run on the same
  buffer (BLAS `sdot` of its two halves: a pure streaming read); at a larger query batch
  against the bare similarity product into a preallocated (Q, N) output; FAISS `IndexFlatIP` (its BLAS threshold
  lowered to 20) when faiss is importable.
- `bench_codes`: exact Hamming top-k (`exports.serving.codes.HammingIndex`) over random packed codes of each
  length, at the query batch, against the exact float search of a gallery of the same size and against FAISS
  `IndexBinaryFlat` when faiss is importable; memory per item of codes and of float32 embeddings.
- peak memory: the process's peak resident set, and the extra memory one batched search allocates (tracemalloc).

Timing goes through `rebalance_ref.timing`: samples of the compared calls alternate, so that a busy neighbour
slows both sides alike; times are medians over the samples, and each ratio is the median of the ratios of samples
taken next to each other. The clock is wall time by default; `clock="cpu"` counts this process's CPU time, which
a neighbour's processes on a shared machine disturb much less.
"""

from __future__ import annotations

import resource
import tempfile
import tracemalloc

import numpy as np

from exports.serving.codes import HammingIndex
from exports.serving.search import ExactIndex, FaissFlatIndex, faiss_available
from rebalance_ref.threads import set_threads
from rebalance_ref.timing import median, paired_ratio, side_by_side

_GOALS = {"encode_b1_ratio": 0.35, "search_b1_bandwidth_fraction": 0.85, "search_batch_matmul_ratio": 1.2,
          "faiss_speedup": 1.1, "codes_float_speedup": 10.0, "codes_faiss_speedup": 1.0}


def random_columns(n: int, dim: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """A dimension-major gallery float32 (dim, n) of random unit vectors, made in chunks (no 2x temporaries)."""
    rng = np.random.default_rng(seed)
    columns = np.empty((dim, n), np.float32)
    for lo in range(0, n, chunk):
        block = rng.standard_normal((dim, min(chunk, n - lo)), dtype=np.float32)
        block /= np.linalg.norm(block, axis=0, keepdims=True)
        columns[:, lo:lo + block.shape[1]] = block
    return columns


def _unit_queries(q: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((q, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_search(sizes: tuple[int, ...], dim: int, k: int, batch: int, repeats: int, threads: int,
                 seed: int = 0, clock: str = "wall") -> list[dict]:
    """Per gallery size: batch-1 search vs bandwidth, batched search vs bare product, FAISS if importable."""
    set_threads(threads)
    return [_search_row(n, dim, k, batch, repeats, threads, seed, clock) for n in sizes]


def _search_row(n: int, dim: int, k: int, batch: int, repeats: int, threads: int, seed: int, clock: str) -> dict:
    columns = random_columns(n, dim, seed)
    index = ExactIndex.from_columns(columns)
    one, many = _unit_queries(1, dim, seed + 1), _unit_queries(batch, dim, seed + 2)
    flat = columns.reshape(-1)
    half = flat.size // 2
    # One pass over the gallery at read bandwidth: BLAS sdot of its two halves, sampled next to the search.
    t1 = side_by_side({"search": lambda: index.search(one, k), "pass": lambda: np.dot(flat[:half], flat[half:2 * half]),
                       "gemv": lambda: one @ columns}, repeats, clock)
    product = np.empty((batch, n), np.float32)
    tb = side_by_side({"search": lambda: index.search(many, k),
                       "matmul": lambda: np.matmul(many, columns, out=product)}, repeats, clock)
    product = None  # free the (batch, n) product before the next measurements
    row = {"gallery": n, "dim": dim, "k": k, "gallery_bytes": columns.nbytes,
           "read_bandwidth_gbs": columns.nbytes / min(t1["pass"]) / 1e9,
           "b1_pass_ms": median(t1["pass"]) * 1e3, "b1_search_ms": median(t1["search"]) * 1e3,
           "b1_gemv_ms": median(t1["gemv"]) * 1e3, "b1_bandwidth_fraction": paired_ratio(t1["pass"], t1["search"]),
           "batch": batch, "batch_search_ms": median(tb["search"]) * 1e3, "batch_matmul_ms": median(tb["matmul"]) * 1e3,
           "batch_matmul_ratio": paired_ratio(tb["search"], tb["matmul"]), "batch_qps": batch / median(tb["search"])}
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    index.search(many, k)
    row["batch_search_extra_mib"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    if faiss_available():
        faiss_index = FaissFlatIndex(np.ascontiguousarray(columns.T), threads=threads, blas_threshold=20)
        tf = side_by_side({"faiss_b1": lambda: faiss_index.search(one, k), "ours_b1": lambda: index.search(one, k),
                           "faiss_batch": lambda: faiss_index.search(many, k),
                           "ours_batch": lambda: index.search(many, k)}, repeats, clock)
        row.update({"faiss_b1_ms": median(tf["faiss_b1"]) * 1e3, "faiss_batch_ms": median(tf["faiss_batch"]) * 1e3,
                    "faiss_b1_speedup": paired_ratio(tf["faiss_b1"], tf["ours_b1"]),
                    "faiss_batch_speedup": paired_ratio(tf["faiss_batch"], tf["ours_batch"])})
    return row


def bench_codes(sizes: tuple[int, ...], bits: tuple[int, ...], dim: int, k: int, batch: int, repeats: int,
                threads: int, seed: int = 0, clock: str = "wall") -> list[dict]:
    """Per gallery size and code length: Hamming top-k vs the exact float search (dim D) and FAISS, batch `batch`."""
    set_threads(threads)
    return [row for n in sizes for row in _codes_rows(n, bits, dim, k, batch, repeats, threads, seed, clock)]


def _codes_rows(n: int, bits: tuple[int, ...], dim: int, k: int, batch: int, repeats: int, threads: int, seed: int,
                clock: str) -> list[dict]:
    index = ExactIndex.from_columns(random_columns(n, dim, seed))
    many = _unit_queries(batch, dim, seed + 2)
    rng = np.random.default_rng(seed + 3)
    rows = []
    for b in bits:
        codes = rng.integers(0, 256, (n, b // 8), dtype=np.uint8)
        queries = rng.integers(0, 256, (batch, b // 8), dtype=np.uint8)
        hamming = HammingIndex(codes)
        calls = {"hamming": lambda h=hamming, q=queries: h.search(q, k), "float": lambda: index.search(many, k)}
        if faiss_available():
            import faiss

            faiss.omp_set_num_threads(int(threads))
            binary = faiss.IndexBinaryFlat(b)
            binary.add(codes)
            calls["faiss"] = lambda f=binary, q=queries: f.search(q, k)
        t = side_by_side(calls, repeats, clock)
        row = {"gallery": n, "bits": b, "batch": batch, "k": k, "dim": dim,
               "code_bytes_per_item": hamming.bytes_per_item, "float_bytes_per_item": 4 * dim,
               "hamming_ms": median(t["hamming"]) * 1e3, "float_ms": median(t["float"]) * 1e3,
               "float_speedup": paired_ratio(t["float"], t["hamming"])}
        if "faiss" in t:
            row.update({"faiss_ms": median(t["faiss"]) * 1e3,
                        "faiss_speedup": paired_ratio(t["faiss"], t["hamming"])})
        rows.append(row)
    return rows


def bench_encode(preset: str, batches: tuple[int, ...], length: int, repeats: int, threads: int,
                 seed: int = 0, clock: str = "wall") -> list[dict]:
    """onnxruntime vs torch latency of the image and text towers of a seeded `preset` student."""
    import torch

    from exports.exporter.export import export_student
    from exports.serving.runtime import Retriever
    from rebalance_ref.tokenizer import SPECIALS, Tokenizer
    from rebalance_torch.models import ImageEmbedder, ModelConfig, Student, TextEmbedder

    set_threads(threads)
    tokenizer = Tokenizer(list(SPECIALS) + [f"w{i}" for i in range(200)], max_len=max(length, 2))
    config = ModelConfig.preset(preset, vocab_size=tokenizer.vocab_size, max_len=max(length, 2))
    student = Student(config, seed=seed).eval()
    rng = np.random.default_rng(seed)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        export_student(student, tokenizer, f"{folder}/bundle")
        retriever = Retriever.load(f"{folder}/bundle", threads=threads)
        image_session, text_session = retriever.sessions["image_encoder"], retriever.sessions["text_encoder"]
        image_tower, text_tower = ImageEmbedder(student), TextEmbedder(student)
        for b in batches:
            images = rng.random((b, 3, config.image_size, config.image_size), dtype=np.float32)
            ids = rng.integers(3, config.vocab_size, (b, length)).astype(np.int64)
            ids[:, 0] = tokenizer.cls_id
            mask = np.ones_like(ids)
            ti, tt, tm = torch.from_numpy(images), torch.from_numpy(ids), torch.from_numpy(mask)

            def torch_image(x=ti):
                with torch.inference_mode():
                    return image_tower(x)

            def torch_text(i=tt, m=tm):
                with torch.inference_mode():
                    return text_tower(i, m)

            times = side_by_side({
                "ort_image": lambda x=images: image_session.run(None, {"images": x}),
                "torch_image": torch_image,
                "ort_text": lambda i=ids, m=mask: text_session.run(None, {"ids": i, "mask": m}),
                "torch_text": torch_text}, repeats, clock)
            for tower in ("image", "text"):
                rows.append({"tower": tower, "preset": preset, "batch": b,
                             "length": length if tower == "text" else None,
                             "ort_ms": median(times[f"ort_{tower}"]) * 1e3,
                             "torch_ms": median(times[f"torch_{tower}"]) * 1e3,
                             "ratio": paired_ratio(times[f"ort_{tower}"], times[f"torch_{tower}"])})
    return rows


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def goals() -> dict[str, float]:
    """The issue's goals, by name (see docs/export.md)."""
    return dict(_GOALS)
