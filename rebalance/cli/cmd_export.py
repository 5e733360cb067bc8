"""`rebalance export`, `rebalance index`, `rebalance search`: bundle a trained student and serve it.

`export` needs torch (it reads the run's checkpoint); `index` and `search` run on numpy + onnxruntime (and
Pillow for `--grid`) alone, so a bundle copied to a machine without torch can be indexed and searched there.
`export` and `index` hold the bundle's writer lock, and replace an existing bundle or gallery only with --force.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from exports.serving.gallery import MODALITIES
from rebalance.cli.options import json_option, set_threads, threads_option


@click.command("export", short_help="Export a run's student to an ONNX bundle.")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Training run folder.")
@click.option("--out", "out", required=True, type=click.Path(),
              help="Bundle folder to write: absent, empty, or a bundle to replace with --force.")
@click.option("--force", is_flag=True,
              help="Replace the bundle in --out (only files it lists are removed; other files make export stop).")
@click.option("--which", default="best", show_default=True, help="Checkpoint: best, last, stage1-best, ...")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch.onnx exporter (dynamo=False or True); see docs/export.md.")
@click.option("--opset", type=click.IntRange(min=17), default=17, show_default=True, help="ONNX opset.")
@click.option("--verify", "verify", is_flag=True, help="Check the bundle against torch; exit 1 if it fails.")
@click.option("--code-bits", type=click.IntRange(min=8), default=None,
              help="Width of the binary codes to bundle, from the run's hash heads (`rebalance codes train`) "
                   "[default: 64 when trained, else the widest; none when the run has no heads].")
@click.option("--no-codes", is_flag=True, help="Leave the run's hash heads out of the bundle.")
@threads_option
@json_option
def export(run_dir: str, out: str, force: bool, which: str, exporter: str, opset: int, verify: bool,
           code_bits: int | None, no_codes: bool, threads: int, as_json: bool) -> None:
    """Export a run's student to an ONNX bundle (image/text encoders, ITM scorer, tokenizer, manifest; the code
    graphs too when the run has trained hash heads)."""
    if no_codes and code_bits is not None:
        raise click.UsageError("give --code-bits or --no-codes, not both")
    set_threads(threads)
    from exports.exporter.export import export_bundle
    from exports.exporter.verify import verify_run_bundle
    from exports.serving.manifest import read_manifest

    bundle = export_bundle(run_dir, out, which=which, exporter=exporter, opset=opset, force=force,
                           code_bits=None if no_codes else code_bits if code_bits is not None else "auto")
    codes = read_manifest(bundle, verify_files=False).get("codes")
    report = verify_run_bundle(bundle, run_dir, which=which, threads=threads) if verify else None
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), "codes": codes, "verify": report.to_dict() if report else None},
                              indent=2))
    else:
        click.echo(f"bundle written to {bundle}" + (f" (with {codes['bits']}-bit codes)" if codes else ""))
        if report is not None:
            click.echo(report.table())
    if report is not None and not report.ok:
        sys.exit(1)


@click.command("index", short_help="Embed a data split as a bundle's gallery.")
@click.option("--bundle", "bundle", required=True, type=click.Path(file_okay=False), help="Bundle folder.")
@click.option("--data", "data", required=True, type=click.Path(file_okay=False),
              help="Data folder (Karpathy-style JSON + images, e.g. from `rebalance data make`).")
@click.option("--split", default="test", show_default=True, help="Split of the data folder to index.")
@click.option("--what", type=click.Choice(["both", "images", "captions"]), default="both", show_default=True,
              help="Gallery items: images, captions, or both (mixed retrieval).")
@click.option("--pixels/--no-pixels", default=True, show_default=True,
              help="Keep the images' pixels in the bundle (needed to re-rank image candidates and to show hits).")
@click.option("--force", is_flag=True, help="Replace the gallery the bundle already holds.")
@threads_option
@json_option
def index(bundle: str, data: str, split: str, what: str, pixels: bool, force: bool, threads: int,
          as_json: bool) -> None:
    """Embed a dataset split into the bundle's gallery (numpy + onnxruntime only).

    Holds the bundle's writer lock from start to end: a second `index` or `export` into the same bundle stops
    with a message instead of mixing its files with these."""
    set_threads(threads)
    from exports.serving.manifest import bundle_lock
    from exports.serving.runtime import Retriever, index_split
    from rebalance_ref.karpathy import read_dataset

    with bundle_lock(bundle):
        retriever = Retriever.load(bundle, threads=threads, load_gallery=False)
        if retriever.manifest.get("gallery") and not force:
            raise click.UsageError(f"bundle {bundle} already holds a gallery; pass --force to replace it")
        splits = read_dataset(data, image_size=retriever.image_size, splits=(split,), expect_captions=None)
        if split not in splits:
            raise click.BadParameter(f"{data} has no {split} split", param_hint="--split")
        gallery = index_split(retriever, splits[split], what=what, keep_pixels=pixels)
        retriever.save_gallery()
    summary = {"bundle": bundle, "images": gallery.n_images, "captions": gallery.n_captions,
               "pixels": gallery.pixels is not None, "code_bits": gallery.code_bits}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"indexed {gallery.n_images} images and {gallery.n_captions} captions into {bundle}"
                   + (f" with {gallery.code_bits}-bit codes" if gallery.code_bits else ""))


@click.command("search", short_help="Search a bundle's gallery by text or image.")
@click.option("--bundle", "bundle", required=True, type=click.Path(file_okay=False), help="Bundle folder.")
@click.option("--text", "text", default=None, help="Query text.")
@click.option("--image", "image", default=None, type=click.Path(dir_okay=False), help="Query image file.")
@click.option("--k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Results to return.")
@click.option("--modality", type=click.Choice(MODALITIES), default=None,
              help="Gallery items to search: image, text, or all (mixed) [default: the other modality — images "
                   "for --text, captions for --image — or the query's own if the gallery has no other].")
@click.option("--grid", "grid", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG contact sheet of the query and its hits, with ranks and scores.")
@click.option("--force", is_flag=True, help="Replace the --grid file if it exists.")
@click.option("--rerank", is_flag=True, help="Re-score the top candidates with the ITM head.")
@click.option("--rerank-k", type=click.IntRange(min=1), default=None,
              help="Candidates to re-score [default: the run's k_test].")
@click.option("--backend", type=click.Choice(["numpy", "faiss"]), default="numpy", show_default=True,
              help="Exact search backend (faiss needs the faiss package).")
@click.option("--codes", "codes", is_flag=True,
              help="Search by Hamming distance over the gallery's binary codes (a bundle exported with codes).")
@click.option("--shortlist", type=click.IntRange(min=1), default=None,
              help="With --codes: re-rank the Hamming top M exactly with the float embeddings.")
@threads_option
@json_option
def search(bundle: str, text: str | None, image: str | None, k: int, modality: str | None, grid: Path | None,
           force: bool, rerank: bool, rerank_k: int | None, backend: str, codes: bool, shortlist: int | None,
           threads: int, as_json: bool) -> None:
    """Search the bundle's gallery with a text or an image (numpy + onnxruntime only).

    Hits are ranked from 1; an image hit names the row of the bundle's gallery/images.npy that holds its pixels,
    so it can be shown from the bundle alone (--grid does)."""
    if (text is None) == (image is None):
        raise click.UsageError("give exactly one of --text or --image")
    if grid is not None and grid.exists() and not force:
        raise click.UsageError(f"--grid {grid} exists; pass --force to replace it")
    if shortlist is not None and not codes:
        raise click.UsageError("--shortlist re-ranks the Hamming candidates of a code search: add --codes")
    set_threads(threads)
    from exports.serving.runtime import Retriever, format_hits, search_method

    retriever = Retriever.load(bundle, threads=threads, backend=backend)
    unknown = retriever.unknown_words(text)[0] if text is not None else []
    if unknown:
        click.echo(f"warning: the vocabulary does not know {', '.join(map(repr, unknown))}; those words are "
                   f"encoded as [UNK]", err=True)
    if codes:
        retriever.check_codes()
    options = {"k": k, "modality": modality, "rerank": rerank, "rerank_k": rerank_k, "codes": codes,
               "shortlist": shortlist}
    hits = retriever.search_text(text, **options) if text is not None else retriever.search_image(image, **options)
    query = {"text": text} if text is not None else {"image": image}
    if grid is not None:
        from rebalance.contact_sheet import write_contact_sheet
        from rebalance_ref.images import load_image

        query_pixels = None if image is None else load_image(image, retriever.image_size)
        write_contact_sheet(grid, retriever, hits, query_text=text, query_image=query_pixels,
                            title=f"{Path(bundle).name}: top {len(hits)} of the gallery")
    if as_json:
        method = {"method": search_method(codes, shortlist), "bits": retriever.code_bits if codes else None,
                  "shortlist": shortlist}
        click.echo(json.dumps({"query": query, "k": k, "search": method, "rerank": rerank, "unknown_words": unknown,
                               "grid": None if grid is None else str(grid),
                               "hits": [h.to_dict() for h in hits]}, indent=2))
    else:
        how = "" if not codes else f" ({search_method(codes, shortlist)}, {retriever.code_bits}-bit codes" + (
            f", shortlist {shortlist})" if shortlist else ")")
        click.echo(f"query: {text if text is not None else image}{how}")
        click.echo(format_hits(hits))
        if grid is not None:
            click.echo(f"contact sheet: {grid}")


COMMANDS = [export, index, search]
