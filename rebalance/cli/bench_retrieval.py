"""`rebalance bench retrieval`: the exported retriever's speed, ratios side by side in one run.

Encode latency onnxruntime vs torch (batch 1 and 64), exact top-k at query batch 1 vs one pass over the gallery
at the measured read bandwidth, batched top-k vs the bare similarity product, FAISS when installed, peak memory.
The measuring code is `rebalance.retrieval_bench`; this module parses options and prints.
"""

from __future__ import annotations

import json

import click

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=name) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}", param_hint=name)
    return values


def _print(report: dict) -> None:
    goals = report["goals"]
    click.echo(f"threads {report['threads']}, {report['clock']} clock, medians of {report['repeats']} alternating "
               f"samples; ratios are medians of side-by-side pairs")
    if report["encode"]:
        click.echo(f"\nencode latency, preset {report['encode'][0]['preset']} "
                   f"(goal at batch 1: onnxruntime <= {goals['encode_b1_ratio']}x torch)")
        click.echo(f"{'tower':<7}{'batch':>6}{'onnxruntime ms':>16}{'torch ms':>11}{'ratio':>8}")
        for r in report["encode"]:
            click.echo(f"{r['tower']:<7}{r['batch']:>6}{r['ort_ms']:>16.3f}{r['torch_ms']:>11.3f}{r['ratio']:>8.2f}")
    if report["search"]:
        r0 = report["search"][0]
        click.echo(f"\nexact top-{r0['k']} search, D = {r0['dim']} "
                   f"(goals: batch 1 >= {goals['search_b1_bandwidth_fraction']:.0%} of bandwidth; "
                   f"batch {r0['batch']} <= {goals['search_batch_matmul_ratio']}x the bare product)")
        click.echo(f"{'gallery':>9}{'GB/s':>7}{'pass ms':>9}{'b1 ms':>8}{'of bw':>7}"
                   f"{'b' + str(r0['batch']) + ' ms':>10}{'matmul ms':>11}{'ratio':>7}{'q/s':>9}{'extra MiB':>11}")
        for r in report["search"]:
            click.echo(f"{r['gallery']:>9}{r['read_bandwidth_gbs']:>7.1f}{r['b1_pass_ms']:>9.2f}"
                       f"{r['b1_search_ms']:>8.2f}{r['b1_bandwidth_fraction']:>7.0%}{r['batch_search_ms']:>10.1f}"
                       f"{r['batch_matmul_ms']:>11.1f}{r['batch_matmul_ratio']:>7.2f}{r['batch_qps']:>9.0f}"
                       f"{r['batch_search_extra_mib']:>11.1f}")
        if "faiss_b1_ms" in r0:
            click.echo("\nFAISS IndexFlatIP (distance_compute_blas_threshold = 20); speed-up = FAISS time / ours")
            click.echo(f"{'gallery':>9}{'faiss b1 ms':>13}{'speed-up':>10}{'faiss batch ms':>16}{'speed-up':>10}")
            for r in report["search"]:
                click.echo(f"{r['gallery']:>9}{r['faiss_b1_ms']:>13.2f}{r['faiss_b1_speedup']:>10.2f}"
                           f"{r['faiss_batch_ms']:>16.1f}{r['faiss_batch_speedup']:>10.2f}")
        else:
            click.echo("\nFAISS: not installed here, no comparison (pip install faiss-cpu to add it)")
    if report.get("codes"):
        c0 = report["codes"][0]
        click.echo(f"\nexact Hamming top-{c0['k']}, batch {c0['batch']}, random codes (goals at 1M x 64 bits: "
                   f">= {goals['codes_float_speedup']:g}x the float search, >= {goals['codes_faiss_speedup']:g}x "
                   f"FAISS IndexBinaryFlat); speed-up = their time / ours")
        click.echo(f"{'gallery':>9}{'bits':>6}{'B/item':>8}{'hamming ms':>12}{'float ms':>10}{'vs float':>10}"
                   f"{'faiss ms':>10}{'vs faiss':>10}")
        for r in report["codes"]:
            faiss_ms = (f"{r['faiss_ms']:>10.1f}{r['faiss_speedup']:>10.2f}" if "faiss_ms" in r
                        else f"{'-':>10}{'-':>10}")
            click.echo(f"{r['gallery']:>9}{r['bits']:>6}{r['code_bytes_per_item']:>8}{r['hamming_ms']:>12.1f}"
                       f"{r['float_ms']:>10.1f}{r['float_speedup']:>10.1f}{faiss_ms}")
        click.echo(f"(float32 embeddings: {c0['float_bytes_per_item']} bytes an item at D = {c0['dim']})")
    click.echo(f"\npeak resident memory of this process: {report['peak_rss_mib']:.0f} MiB")


@click.command("retrieval", short_help="Encode latency and exact top-k search.")
@threads_option
@seed_option
@json_option
@click.option("--sizes", default="10000,100000,1000000", show_default=True, help="Gallery sizes N, comma-separated.")
@click.option("--dim", type=click.IntRange(min=1), default=256, show_default=True, help="Embedding dim D of galleries.")
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Top-k.")
@click.option("--batch", type=click.IntRange(min=2), default=256, show_default=True, help="Query batch.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Samples per figure.")
@click.option("--preset", default="tiny", show_default=True, help="Student preset for the encode latency.")
@click.option("--encode-batches", default="1,64", show_default=True, help="Batch sizes for encode latency.")
@click.option("--length", type=click.IntRange(min=2), default=12, show_default=True, help="Text length in tokens.")
@click.option("--skip-encode", is_flag=True, help="Skip the encoder latency (no torch needed).")
@click.option("--bits", default="32,64,128", show_default=True,
              help="Code lengths for the Hamming search, comma-separated multiples of 8 (empty: skip codes).")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared machine).")
def retrieval(threads: int, seed: int, as_json: bool, sizes: str, dim: int, k: int, batch: int, repeats: int,
              preset: str, encode_batches: str, length: int, skip_encode: bool, bits: str, clock: str) -> None:
    """Encode latency (onnxruntime vs torch) and exact top-k search speed, ratios side by side."""
    set_threads(threads)
    from rebalance import retrieval_bench as benchmark

    gallery_sizes, batches = _ints(sizes, "--sizes"), _ints(encode_batches, "--encode-batches")
    encode = [] if skip_encode else benchmark.bench_encode(preset, batches, length, repeats, threads, seed, clock)
    code_bits = _ints(bits, "--bits") if bits.strip() else ()
    if any(b % 8 for b in code_bits):
        raise click.BadParameter(f"code lengths must be multiples of 8, got {bits!r}", param_hint="--bits")
    search = benchmark.bench_search(gallery_sizes, dim, k, batch, repeats, threads, seed, clock)
    codes = benchmark.bench_codes(gallery_sizes, code_bits, dim, k, batch, repeats, threads, seed, clock)
    report = {"threads": threads, "repeats": repeats, "clock": clock, "goals": benchmark.goals(), "encode": encode,
              "search": search, "codes": codes, "peak_rss_mib": benchmark.peak_rss_mib()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)


COMMAND = retrieval
