"""``sdetool export``: a store out to the formats other tools read (clip-retrieval's folder, .npy, Parquet)."""

from __future__ import annotations

from enum import Enum
from typing import List, Optional

import typer
from rich.console import Console

from sdetool.cli.common import app, handles_errors, stderr_console
from sdetool.cli.help import HelpCommand
from sdetool.cli.progress import progress_for

# What --help leaves out for brevity: docs/cli.md adds it to each option (see sdetool.cli.docs).
OPTION_DETAILS = {
    "export": {
        "--format": "clip-retrieval: img_emb/img_emb_0.npy, text_emb/text_emb_0.npy and metadata/metadata_0.parquet "
                    "(id, caption, image_path), row-aligned, as clip-retrieval's inference writes them (its index "
                    "step and autofaiss read the folder as it is). npy: <key>.npy per set and metadata.parquet. "
                    "parquet: embeddings.parquet, one row per item with the metadata and one vector column per set.",
        "--dtype": "auto: float16 for clip-retrieval (as it writes them), else the store's own dtype.",
        "--overwrite": "Default: a folder that is not empty is refused. With it, the export's files replace files of "
                       "the same names; other files stay.",
    },
}


class ExportFormat(str, Enum):
    clip_retrieval = "clip-retrieval"
    npy = "npy"
    parquet = "parquet"


class ExportDtype(str, Enum):
    auto = "auto"
    float16 = "float16"
    float32 = "float32"


@app.command(cls=HelpCommand, short_help="Write a store as clip-retrieval's folder, .npy files or Parquet.")
@handles_errors
def export(
    store_path: str = typer.Argument(..., metavar="STORE", show_default=False, help="The HDF5 store to export."),
    out: str = typer.Option(..., "--out", "-o", help="The folder to write.", metavar="FOLDER"),
    format: ExportFormat = typer.Option(ExportFormat.clip_retrieval, "--format", "-f", help="What to write."),
    dtype: ExportDtype = typer.Option(ExportDtype.auto, "--dtype", help="Precision of the written vectors."),
    key: Optional[List[str]] = typer.Option(None, "--key", "-k", metavar="NAME",
                                            help="Sets to export (repeatable; default: all, or image and text)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that is not empty."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON here ('-': stdout).",
                                            metavar="PATH"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no confirmation line."),
) -> None:
    """Write the embedding sets of a store, with their ids, captions and image paths, in a format other tools
    read: clip-retrieval's output folder, plain .npy files, or one Parquet table."""
    from sdetool import api

    api.check_output_path(json_path, "--json")
    console_err = stderr_console()
    result = api.export(store_path, out, format=format.value, dtype=dtype.value, keys=key or None, overwrite=overwrite,
                        progress=progress_for(console_err, quiet))
    if json_path:
        api.write_json(result.to_dict(), json_path)
    if not quiet and json_path != "-":
        Console().print(f"wrote {result.rows:,} rows of {', '.join(result.sets)} to {out} ({result.format}): "
                        f"{', '.join(result.files)}", soft_wrap=True, highlight=False)
