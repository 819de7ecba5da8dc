"""``sdetool extract`` and ``sdetool models``: embed items with a model into a store; list the backends."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.console import Console

from sdetool.cli.common import (DEFAULT_DATA, DEFAULT_MODEL, Precision, StoreDtype, app, fail, handles_errors,
                                stderr_console)
from sdetool.cli.help import HelpCommand
from sdetool.cli.progress import progress_for

# What --help leaves out for brevity: docs/cli.md adds it to each option (see sdetool.cli.docs).
OPTION_DETAILS = {
    "extract": {
        "--out": "Its work folder OUT.partial/ holds the finished chunks until the end, so that a run that stops "
                 "resumes where it was.",
        "--model": "hf:ORG/NAME or hf:/folder (CLIP, SigLIP...), st:/folder (a text encoder), open_clip:ARCH@WEIGHTS "
                   "or builtin:lit-fmnist.",
        "--images": "A captions.jsonl beside them pairs each image with a caption.",
        "--manifest": "Image paths are relative to the manifest's folder. An image column of {bytes, path} structs "
                      "(as datasets writes its Image feature to Parquet) or of bytes works too.",
        "--webdataset": "Brace patterns, '::'-separated lists or plain paths, as webdataset and clip-retrieval read them "
                        "(pip install 'sdetool[webdataset]'). One sample per key: the image from jpg/jpeg/png/webp, the "
                        "caption from txt or a json's caption; the id is the key. Images are read from the tars as "
                        "they are embedded; a member that does not decode is a failed item. Resumable, and split "
                        "between ranks under torchrun like any source.",
        "--hf-dataset": "Read through datasets.load_from_disk (pip install 'sdetool[datasets]'). A DatasetDict's "
                        "split is its subfolder (DIR/train). Images: an Image feature (bytes or path) or a column of "
                        "paths; --image-col/--text-col/--id-col name the columns.",
        "--data": "builtin:fashion-mnist: the test split; builtin:fashion-mnist:train: the train split.",
        "--id-col": "Default: 'id' when the table has it, else the row number.",
        "--image-col": "Default: (--hf-dataset) the first Image feature, else the first of image, path, file, filepath, "
                       "image_path, filename that the table has.",
        "--text-col": "Default: the first of text, caption, sentence, title that the table has.",
        "--precision": "Embeddings are stored as float32 unless --store-dtype float16.",
        "--num-workers": "DataLoader workers that decode and preprocess images; default: one per spare core, at "
                         "most 8; 0: in this process.",
        "--device": "auto: a GPU when one is present.",
        "--normalize": "Default: store what the model outputs.",
        "--tokens": "Written as /<key>/tokens (n, h, w, c) float16; analyze --spatial-bands reads it.",
        "--layers": "all, or indices counted from 0 at the input side (0,6,12). Each layer's hidden states, pooled as "
                    "the model pools its last layer and without the final projection, become an ordinary set "
                    "image_L<i> / text_L<i> beside image and text (attributes layer, layer_name, pooling), from the "
                    "same forward pass. hf: CLIP/SigLIP towers (index 0: the embeddings); st: the transformer "
                    "layers through the model's Pooling module; the built-in model: the CNN stages of the image "
                    "tower (globally average-pooled) and the MiniLM layers.",
        "--strict": "Default: an unreadable item is recorded in /<key>/failed and the run goes on.",
        "--allow-missing-weights": "Default: a checkpoint with missing, unexpected or mis-shaped weights is refused, "
                                   "naming them (transformers would fill missing ones with random values). With it "
                                   "the run goes on and the store's attributes list them (weights_not_loaded).",
    },
}


@app.command(cls=HelpCommand, short_help="Embed images and/or texts with a model into an HDF5 store.")
@handles_errors
def extract(
    out: str = typer.Option(..., "--out", "-o", help="The HDF5 store to write.", metavar="PATH"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", metavar="SPEC",
                              help="The model ('sdetool models' lists them)."),
    images: Optional[str] = typer.Option(None, "--images", help="A folder of images (recursive).", metavar="FOLDER"),
    texts: Optional[str] = typer.Option(None, "--texts", help="A UTF-8 text file, one item per line.", metavar="FILE"),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="A CSV/TSV, JSONL or Parquet table of items.",
                                           metavar="FILE"),
    hf_dataset: Optional[str] = typer.Option(None, "--hf-dataset", metavar="DIR",
                                             help="A Hugging Face datasets save_to_disk folder."),
    webdataset: Optional[List[str]] = typer.Option(None, "--webdataset", metavar="SHARDS",
                                                   help="webdataset tar shards: 'shards/{00000..00009}.tar' (repeatable)."),
    data: Optional[str] = typer.Option(None, "--data", help="Built-in data (when no other source).",
                                       metavar="NAME", show_default=DEFAULT_DATA),
    id_col: Optional[str] = typer.Option(None, "--id-col", metavar="COLUMN", help="Column of item ids."),
    image_col: Optional[str] = typer.Option(None, "--image-col", metavar="COLUMN", help="Column of images."),
    text_col: Optional[str] = typer.Option(None, "--text-col", metavar="COLUMN", help="Column of texts."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="Compute precision (autocast)."),
    store_dtype: StoreDtype = typer.Option(StoreDtype.float32, "--store-dtype", help="Precision of the stored embeddings."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Items per model call.", min=1),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", metavar="N", min=0,
                                              help="Image decoding workers (default: spare cores)."),
    normalize: bool = typer.Option(False, "--normalize/--no-normalize", help="L2-normalise first."),
    tokens: bool = typer.Option(False, "--tokens", help="Also store the vision tower's patch-token grid."),
    layers: Optional[str] = typer.Option(None, "--layers", metavar="all|LIST",
                                         help="Also each layer's pooled hidden state (sets image_L<i>, text_L<i>)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable item."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output of another model or data."),
    chunk_items: int = typer.Option(2048, "--chunk-items", help="Items per resumable chunk.", min=1),
    allow_missing_weights: bool = typer.Option(False, "--allow-missing-weights",
                                               help="Load a checkpoint that lacks weights of the model."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON here ('-': stdout).",
                                            metavar="PATH"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary table."),
) -> None:
    """Embed images and/or texts with a model into an HDF5 store (resumable; data-parallel under torchrun)."""
    from sdetool import api
    from sdetool.api import ExtractOptions, current_world
    from sdetool.api import extract as run_extract
    from sdetool.api import open_source

    api.check_output_path(json_path, "--json")
    options = ExtractOptions(device=device, precision=precision.value, batch_size=batch_size, num_workers=num_workers,
                             normalize=normalize, store_dtype=store_dtype.value, tokens=tokens, strict=strict,
                             overwrite=overwrite, chunk_items=chunk_items, allow_missing_weights=allow_missing_weights,
                             layers=layers)
    options.validate()
    source = open_source(images=images, texts=texts, manifest_path=manifest, data=data, columns=(id_col, image_col, text_col),
                         hf_dataset_path=hf_dataset, webdataset=webdataset or None)
    world = current_world()
    console_err = stderr_console()
    progress = progress_for(console_err, quiet, "items", main=world.is_main)
    try:
        result = run_extract(model, source, out, options, progress=progress)
    except KeyboardInterrupt:
        from sdetool.api import incomplete_message

        kept = incomplete_message(out)
        fail(f"interrupted; {kept.split(': ', 1)[1] if kept else 'nothing was written'}", 130)
    if not world.is_main:
        return
    if json_path:
        api.write_json(result.to_dict(), json_path)
    if not quiet:
        api.render_extract(result.to_dict(), console_err if json_path == "-" else Console())


@app.command(cls=HelpCommand, short_help="List the model backends and whether each can load here.")
@handles_errors
def models(
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the list as JSON here ('-': stdout).", metavar="PATH"),
) -> None:
    """List the model backends and built-in models, and whether each can load here."""
    from sdetool import api
    from sdetool.api import backend_status

    rows = backend_status()
    if json_path:
        api.check_output_path(json_path, "--json")
        api.write_json({"models": rows}, json_path)
    if json_path != "-":
        api.render_models(rows, Console())

