"""Input items for ``extract``: image folders, manifests, text files and the built-in Fashion-MNIST.

An :class:`ItemSource` is a list of items, each with an id and an image, a text, or both (a pair).
Images are decoded lazily by :meth:`ItemSource.load_image` (in DataLoader workers); a file that is
missing, not an image or truncated raises :class:`ItemError` with the reason, which the extraction
records instead of stopping.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from sdetool.errors import BadInputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
CAPTIONS_FILE = "captions.jsonl"
IMAGE_COLUMNS = ("image", "path", "file", "filepath", "image_path", "filename")
TEXT_COLUMNS = ("text", "caption", "sentence", "title")
BUILTIN_DATA = {"fashion-mnist": "Fashion-MNIST test split (10k 28x28 images, paired captions); "
                                 "builtin:fashion-mnist:train for the 60k train split (both ship with sdetool)"}
DEFAULT_DATA = "builtin:fashion-mnist"


class ItemError(Exception):
    """One item cannot be read (missing, not an image, truncated); the message is the reason."""


@dataclass
class ItemSource:
    """Items to embed.

    Attributes
    ----------
    kind : str
        ``folder``, ``manifest``, ``texts`` or ``builtin``.
    location : str
        The path or built-in name it came from.
    ids : list of str
        One unique id per item.
    image_paths : list of str, optional
        Image file per item (folders and manifests).
    pixels : ndarray, optional
        In-memory grayscale images (n, h, w) uint8 (built-in data).
    texts : list of (str or None), optional
        Text per item; None marks an item whose text is missing.
    labels : ndarray, optional
        Class index per item, with ``classes`` naming them.
    template : str
        How texts were made (prompt template), for provenance.
    origin : str
        Where the bytes were read from when that is not ``location`` (provenance only).
    notes : list of str
        What was skipped while listing (non-image files, blank lines).
    image_data : sequence, optional
        Per item an image held as data rather than a file of its own: a ``{"bytes", "path"}`` struct (Hugging
        Face ``datasets``' Image feature, Parquet), raw bytes or a path; may be lazy (a dataset's column).
    data_fingerprint : str
        What identifies ``image_data`` (a dataset's own fingerprint, or a digest of the cells).
    """

    kind: str
    location: str
    ids: list[str]
    image_paths: list[str] | None = None
    pixels: np.ndarray | None = None
    texts: list[str | None] | None = None
    labels: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    template: str = ""
    origin: str = ""
    notes: list[str] = field(default_factory=list)
    image_data: object = None
    data_fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.ids:
            raise BadInputError(f"{self.location}: no items to embed (empty input)")
        seen: set[str] = set()
        for item_id in self.ids:
            if item_id in seen:
                raise BadInputError(f"{self.location}: id {item_id!r} appears more than once; ids must be unique")
            seen.add(item_id)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray, why: str) -> "ItemSource":
        """The items where boolean ``keep`` is true, in order; ``why`` is appended to the location."""
        import dataclasses

        rows = np.flatnonzero(keep)

        def pick(values):
            return None if values is None else values[rows] if isinstance(values, np.ndarray) else [values[i] for i in rows]

        return dataclasses.replace(self, location=f"{self.location} ({why})", ids=pick(self.ids),
                                   image_paths=pick(self.image_paths), pixels=pick(self.pixels), texts=pick(self.texts),
                                   labels=pick(self.labels), notes=list(self.notes), image_data=pick(self.image_data))

    @property
    def has_images(self) -> bool:
        return self.image_paths is not None or self.pixels is not None or self.image_data is not None

    @property
    def has_texts(self) -> bool:
        return self.texts is not None

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, present in (("image", self.has_images), ("text", self.has_texts)) if present)

    def load_image(self, index: int, draft: tuple | None = None):
        """The image of item ``index`` as a decoded ``PIL.Image``; :class:`ItemError` when unreadable.

        ``draft=(mode, (w, h))`` lets a JPEG be decoded at a reduced scale (1/2 to 1/8, never below
        ``(w, h)``) and straight into ``mode``: much faster for models with small inputs.
        """
        from PIL import Image, UnidentifiedImageError

        if self.pixels is not None:
            return Image.fromarray(self.pixels[index], mode="L") if self.pixels.ndim == 3 else Image.fromarray(self.pixels[index])
        if self.image_data is not None:
            data, path = image_cell(self.image_data[index])
            if data is None and not path:
                raise ItemError("no image: the struct has neither bytes nor a path")
        else:
            data, path = None, self.image_paths[index]
            if not path:
                raise ItemError("no image: the manifest's image cell is empty")
        try:
            image = Image.open(io.BytesIO(data) if data is not None else path)
            if draft is not None and image.format == "JPEG":
                image.draft(*draft)
            image.load()  # decode now: a truncated file fails here, not later in a worker's transform
            return image
        except FileNotFoundError:
            raise ItemError(f"missing file {path} (and no image bytes)" if self.image_data is not None
                            else f"missing file {path}") from None
        except UnidentifiedImageError:
            raise ItemError(f"not an image: {path or 'the image bytes'}") from None
        except (OSError, ValueError, SyntaxError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ItemError(f"corrupt image {path or '(bytes)'}: {reason}") from None

    def fingerprint(self) -> str:
        """SHA-256 over the item list (ids, image references, texts): what the data *is*, not its bytes."""
        digest = hashlib.sha256()
        for index, item_id in enumerate(self.ids):
            digest.update(item_id.encode("utf-8", "surrogatepass") + b"\0")
            if self.image_paths is not None:
                digest.update(self.image_paths[index].encode("utf-8", "surrogatepass") + b"\0")
            if self.texts is not None:
                digest.update((self.texts[index] if self.texts[index] is not None else "\x00missing").encode("utf-8", "surrogatepass") + b"\0")
        if self.pixels is not None:
            digest.update(hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).digest())
        if self.image_data is not None:
            digest.update(self.data_fingerprint.encode())
        return "sha256:" + digest.hexdigest()

    def describe(self) -> str:
        parts = [f"{len(self)} items"] + [m + "s" for m in self.modalities]
        return f"{self.kind} {self.location} ({', '.join(parts)})"


def image_folder(folder: str) -> ItemSource:
    """Every image under ``folder`` (recursive, sorted; id = path relative to the folder).

    A ``captions.jsonl`` in the folder (lines ``{"file": "rel/path.jpg", "caption": "..."}``) pairs
    each image with a caption; every image must then have one.
    """
    if not os.path.isdir(folder):
        raise BadInputError(f"--images {folder}: no such folder")
    folder = os.path.abspath(folder)  # the same folder is the same job, however it was typed
    ids, paths, skipped = [], [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped += name != CAPTIONS_FILE
                continue
            path = os.path.join(root, name)
            paths.append(path)
            ids.append(os.path.relpath(path, folder).replace(os.sep, "/"))
    if not ids:
        raise BadInputError(f"--images {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    ids, paths = (list(column) for column in zip(*sorted(zip(ids, paths))))
    captions_path = os.path.join(folder, CAPTIONS_FILE)
    texts = _read_captions(captions_path, ids) if os.path.exists(captions_path) else None
    notes = [f"{skipped} files without an image extension were not listed"] if skipped else []
    return ItemSource(kind="folder", location=folder, ids=ids, image_paths=paths, texts=texts,
                      template="captions.jsonl" if texts else "", notes=notes)


def _read_captions(path: str, ids: list[str]) -> list[str]:
    captions: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name = next(record[k] for k in ("file", "image", "path") if k in record)
                text = next(record[k] for k in ("caption", "text") if k in record)
            except (json.JSONDecodeError, StopIteration, TypeError):
                raise BadInputError(f"{path}:{number}: expected a JSON object with \"file\" and \"caption\"") from None
            captions[str(name).replace(os.sep, "/")] = str(text)
    missing = [item_id for item_id in ids if item_id not in captions]
    if missing:
        raise BadInputError(f"{path}: no caption for {len(missing)} of {len(ids)} images (first: {missing[0]}); "
                            "every image needs one, or remove the file for images only")
    return [captions[item_id] for item_id in ids]


def text_file(path: str) -> ItemSource:
    """One text per non-blank line of a UTF-8 file; id = ``line-N`` (1-based line number)."""
    if not os.path.isfile(path):
        raise BadInputError(f"--texts {path}: no such file")
    path = os.path.abspath(path)
    ids, texts, blank = [], [], 0
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not text
            for number, line in enumerate(handle, start=1):
                text = line.rstrip("\r\n")
                if not text.strip():
                    blank += 1
                    continue
                ids.append(f"line-{number}")
                texts.append(text)
    except UnicodeDecodeError as error:
        raise BadInputError(f"--texts {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    notes = [f"{blank} blank lines skipped"] if blank else []
    return ItemSource(kind="texts", location=path, ids=ids, texts=texts, notes=notes)


def _pick_columns(option: str, path: str, columns: list[str], id_column: str | None, image_column: str | None,
                  text_column: str | None, image_candidates: tuple[str, ...]) -> tuple:
    """The (id, image, text) columns of a table: the named ones (each must exist) or the first candidates found."""
    def pick(given: str | None, candidates: tuple[str, ...], name: str) -> str | None:
        if given is not None:
            if given not in columns:
                raise BadInputError(f"{name} {given!r}: no such column in {path} (columns: {', '.join(columns)})")
            return given
        return next((c for c in candidates if c in columns), None)

    chosen = (pick(id_column, ("id",), "--id-col"), pick(image_column, image_candidates, "--image-col"),
              pick(text_column, TEXT_COLUMNS, "--text-col"))
    if chosen[1] is None and chosen[2] is None:
        raise BadInputError(f"{option} {path}: no image or text column found (columns: {', '.join(columns)}); "
                            "name them with --image-col / --text-col")
    return chosen


def _row_ids(values, count: int) -> list[str]:
    """Ids from a column (an empty cell: ``row-N``), or ``row-N`` for every row."""
    if values is None:
        return [f"row-{i}" for i in range(count)]
    return [str(v) if _present(v) else f"row-{i}" for i, v in enumerate(values)]


def manifest(path: str, id_column: str | None = None, image_column: str | None = None,
             text_column: str | None = None) -> ItemSource:
    """Items from a CSV/TSV, JSON Lines or Parquet table; image paths are relative to its folder.

    Without explicit columns, ``image``/``path``/``file``... and ``text``/``caption``... are looked for.
    """
    frame = _read_table(path)
    path = os.path.abspath(path)
    columns = [str(c) for c in frame.columns]

    id_column, image_column, text_column = _pick_columns("--manifest", path, columns, id_column, image_column,
                                                         text_column, IMAGE_COLUMNS)
    ids = _row_ids(frame[id_column] if id_column else None, len(frame))
    folder = os.path.dirname(os.path.abspath(path))
    image_paths = image_data = None
    fingerprint = ""
    if image_column:
        values = list(frame[image_column])
        structs = _struct_cells(values, folder)
        if structs is not None:  # {"bytes", "path"} structs (datasets' Image feature written to Parquet), or bytes
            image_data, image_paths, fingerprint = structs
        else:
            image_paths = [os.path.join(folder, str(v)) if _present(v) else "" for v in values]
    texts = [str(v) if _present(v) else None for v in frame[text_column]] if text_column else None
    return ItemSource(kind="manifest", location=path, ids=ids, image_paths=image_paths, texts=texts,
                      template=f"column {text_column}" if text_column else "", image_data=image_data,
                      data_fingerprint=fingerprint)


def image_cell(cell) -> tuple[bytes | None, str]:
    """An image cell as ``(bytes or None, path or "")``: a ``{"bytes", "path"}`` struct (datasets' Image
    feature, Parquet), raw bytes, or a path."""
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        return (bytes(data) if data is not None and len(data) else None), (str(path) if path else "")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell), ""
    return None, (str(cell) if cell is not None and _present(cell) else "")


def _struct_cells(values, folder: str) -> tuple[list, list[str], str] | None:
    """When a manifest's image column holds structs or bytes: the cells (relative paths resolved against the
    manifest's folder), their paths, and a digest of them; None for a column of plain paths."""
    if not any(isinstance(v, (dict, bytes, bytearray)) for v in values):
        return None
    cells, paths, digest = [], [], hashlib.sha256()
    for value in values:
        data, path = image_cell(value)
        if path and not os.path.isabs(path):
            path = os.path.join(folder, path)
        cells.append({"bytes": data, "path": path})
        paths.append(path)
        digest.update(hashlib.sha256(data).digest() if data is not None else path.encode("utf-8", "surrogatepass"))
    return cells, paths, "sha256:" + digest.hexdigest()


def _present(value) -> bool:
    """False for an empty cell: None, NaN, pandas' NA/NaT, or the empty string."""
    import pandas as pd

    return value is not None and not (np.ndim(value) == 0 and pd.isna(value)) and str(value) != ""


def _read_table(path: str):
    import pandas as pd

    if not os.path.isfile(path):
        raise BadInputError(f"--manifest {path}: no such file")
    lower = path.lower()
    try:
        if lower.endswith((".csv", ".tsv", ".txt")):
            return pd.read_csv(path, sep="\t" if lower.endswith(".tsv") else ",", dtype=str, keep_default_na=False)
        if lower.endswith((".jsonl", ".ndjson")):
            return pd.read_json(path, lines=True, dtype=False)
        if lower.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
    except ImportError:  # pyarrow is a dependency; a broken install should still get one line
        raise BadInputError(f"--manifest {path}: reading Parquet needs pyarrow, which does not import here "
                            "(pip install pyarrow)") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        raise BadInputError(f"--manifest {path}: cannot parse: {str(error).splitlines()[0]}") from None
    raise BadInputError(f"--manifest {path}: expected .csv, .tsv, .jsonl or .parquet")


def builtin_data(name: str) -> ItemSource:
    """``builtin:fashion-mnist[:train|:test]``: images paired with class captions (one template per item)."""
    from sdetool.extract.data import fashion_mnist

    base, _, split = name.partition(":")
    if base not in BUILTIN_DATA:
        raise BadInputError(f"--data builtin:{name}: no such built-in data; available: "
                            + ", ".join("builtin:" + n for n in BUILTIN_DATA))
    data = fashion_mnist.load(split or "test")
    ids = [f"fashion-mnist-{data.split}-{i:05d}" for i in range(len(data.labels))]
    return ItemSource(kind="builtin", location=f"builtin:fashion-mnist:{data.split}", origin=data.source, ids=ids,
                      pixels=data.images, texts=data.captions(), labels=data.labels, classes=fashion_mnist.CLASSES,
                      template=" | ".join(fashion_mnist.TEMPLATES) + " (template i mod 6, class phrase)")


def open_source(images: str | None = None, texts: str | None = None, manifest_path: str | None = None,
                data: str | None = None, columns: tuple[str | None, str | None, str | None] = (None, None, None),
                hf_dataset_path: str | None = None, webdataset: list[str] | None = None) -> ItemSource:
    """The one source the options name (``--images``, ``--texts``, ``--manifest``, ``--hf-dataset`` or ``--data``;
    default built-in)."""
    given = [name for name, value in (("--images", images), ("--texts", texts), ("--manifest", manifest_path),
                                      ("--hf-dataset", hf_dataset_path), ("--webdataset", webdataset),
                                      ("--data", data)) if value]
    if len(given) > 1:
        raise BadInputError(f"{' and '.join(given)}: give one data source")
    if images:
        return image_folder(images)
    if texts:
        return text_file(texts)
    if manifest_path:
        return manifest(manifest_path, *columns)
    if hf_dataset_path:
        from sdetool.extract.data.external import hf_dataset

        return hf_dataset(hf_dataset_path, *columns)
    if webdataset:
        from sdetool.extract.data.external import webdataset_shards

        return webdataset_shards(list(webdataset))
    data = data or DEFAULT_DATA
    if not data.startswith("builtin:"):
        raise BadInputError(f"--data {data!r}: expected builtin:NAME; for files use --images, --texts or --manifest")
    return builtin_data(data[len("builtin:"):])
