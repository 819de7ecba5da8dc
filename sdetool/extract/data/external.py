"""Items from the formats other tools keep data in: webdataset tar shards and Hugging Face ``datasets``
``save_to_disk`` folders (each read through its own library, an optional extra). Both give an
:class:`~sdetool.extract.data.items.ItemSource` whose images are read on demand (``image_data``)."""

from __future__ import annotations

import hashlib
import json
import os

from sdetool.errors import BadInputError
from sdetool.extract.data.items import IMAGE_COLUMNS, ItemError, ItemSource, _pick_columns, _present, _row_ids

WEBDATASET_IMAGES = ("jpg", "jpeg", "png", "webp")


class TarMembers:
    """Images inside tar shards, read on demand: item ``i`` -> the bytes of its member (picklable: workers
    reopen the shard)."""

    def __init__(self, members: list[tuple[str, int, int] | None]) -> None:
        self.members = members  # (shard, data offset, size) per item, None when the sample has no image

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index):
        member = self.members[int(index)]
        if member is None:
            raise ItemError("no image: the sample has no jpg, jpeg, png or webp member")
        shard, offset, size = member
        with open(shard, "rb") as handle:
            handle.seek(offset)
            return {"bytes": handle.read(size), "path": f"{shard}#{offset}"}


def expand_shards(patterns: list[str]) -> list[str]:
    """Shard paths from brace patterns (``shards/{00000..00009}.tar``), ``::``-separated lists and plain paths,
    expanded by ``braceexpand`` as webdataset expands them."""
    from braceexpand import braceexpand

    shards = []
    for pattern in patterns:
        for part in str(pattern).split("::"):
            if part.strip():
                shards.extend(braceexpand(part.strip()))
    return shards


def webdataset_shards(patterns: list[str]) -> ItemSource:
    """Items of webdataset tar shards: one sample per key (webdataset's own key rule: the member name up to
    the first dot of its base name), the image from jpg/jpeg/png/webp, the caption from txt or a json's
    ``caption``; the id is the key. The listing reads the tar headers only; images are read when embedded."""
    import tarfile

    try:
        from webdataset.tariterators import base_plus_ext
    except ImportError:
        raise BadInputError("--webdataset: reading tar shards needs the webdataset package "
                            "(pip install 'sdetool[webdataset]')") from None
    shards = expand_shards(patterns)
    if not shards:
        raise BadInputError(f"--webdataset {' '.join(patterns)}: names no shards")
    samples: dict[str, dict] = {}
    notes = []
    for shard in shards:
        if not os.path.isfile(shard):
            raise BadInputError(f"--webdataset {shard}: no such file")
        try:
            with tarfile.open(shard, "r:") as archive:
                for member in archive:
                    if not member.isfile():
                        continue
                    key, extension = base_plus_ext(member.name)
                    if key is None:
                        notes.append(f"{shard}: {member.name} has no extension; skipped")
                        continue
                    sample = samples.setdefault(key, {"shard": shard})
                    extension = extension.lower()
                    if extension in WEBDATASET_IMAGES and "image" not in sample:
                        sample["image"] = (shard, member.offset_data, member.size)
                    elif extension in ("txt", "json"):
                        handle = archive.extractfile(member)
                        sample[extension] = handle.read() if handle is not None else b""
        except (tarfile.TarError, OSError) as error:
            raise BadInputError(f"--webdataset {shard}: not a tar file "
                                f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    if not samples:
        raise BadInputError(f"--webdataset {' '.join(patterns)}: the shards hold no samples")
    ids = list(samples)
    members = [samples[key].get("image") for key in ids]
    texts = [_sample_caption(samples[key]) for key in ids]
    has_images = any(member is not None for member in members)
    has_texts = any(text is not None for text in texts)
    digest = hashlib.sha256()
    for shard in shards:
        status = os.stat(shard)
        digest.update(f"{os.path.abspath(shard)}:{status.st_size}:{status.st_mtime_ns}".encode())
    return ItemSource(kind="webdataset", location=" ".join(patterns), ids=ids, texts=texts if has_texts else None,
                      image_data=TarMembers(members) if has_images else None, notes=notes,
                      data_fingerprint="sha256:" + digest.hexdigest(), template="txt / json caption")


def _sample_caption(sample: dict) -> str | None:
    if "txt" in sample:
        return sample["txt"].decode("utf-8", "replace").strip() or None
    if "json" in sample:
        try:
            caption = json.loads(sample["json"]).get("caption")
        except (ValueError, AttributeError):
            return None
        return str(caption) if caption else None
    return None


class DatasetImages:
    """A ``datasets.Dataset``'s image column, read lazily: row ``i`` -> ``{"bytes", "path"}`` (not decoded)."""

    def __init__(self, dataset, column: str) -> None:
        from datasets import Image

        if isinstance(dataset.features[column], Image):
            dataset = dataset.cast_column(column, Image(decode=False))
        self.dataset = dataset.select_columns([column])
        self.column = column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[int(index)][self.column]


def hf_dataset(path: str, id_column: str | None = None, image_column: str | None = None,
               text_column: str | None = None) -> ItemSource:
    """Items of a ``datasets`` ``save_to_disk`` folder (one split; a DatasetDict's split is its subfolder),
    read through ``datasets.load_from_disk``. Images come from an Image feature (bytes or path) or a column of
    paths; without explicit columns the first Image feature and ``text``/``caption``... are used."""
    try:
        import datasets
    except ImportError:
        raise BadInputError(f"--hf-dataset {path}: reading Hugging Face datasets needs the datasets package "
                            "(pip install 'sdetool[datasets]')") from None
    if not os.path.isdir(path):
        raise BadInputError(f"--hf-dataset {path}: no such folder")
    try:
        dataset = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise BadInputError(f"--hf-dataset {path}: not a datasets save_to_disk folder "
                            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset)
        if len(splits) != 1:
            raise BadInputError(f"--hf-dataset {path}: holds the splits {', '.join(splits)}; give one as "
                                f"{os.path.join(path, splits[0])}")
        dataset = dataset[splits[0]]
    columns = list(dataset.column_names)

    features = dataset.features
    image_features = tuple(c for c in columns if isinstance(features[c], datasets.Image))
    id_column, image_column, text_column = _pick_columns("--hf-dataset", path, columns, id_column, image_column,
                                                         text_column, image_features + IMAGE_COLUMNS)
    ids = _row_ids(dataset[id_column] if id_column else None, len(dataset))
    texts = [str(v) if _present(v) else None for v in dataset[text_column]] if text_column else None
    image_data = DatasetImages(dataset, image_column) if image_column else None
    return ItemSource(kind="hf-dataset", location=os.path.abspath(path), ids=ids, texts=texts, image_data=image_data,
                      data_fingerprint=f"datasets:{dataset._fingerprint}:{image_column}",
                      template=f"column {text_column}" if text_column else "")
