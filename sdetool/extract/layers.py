"""``extract --layers``: which layers become sets, and their names (``image_L3``).

The encoders give each layer's pooled hidden state (:meth:`sdetool.extract.models.base.Encoder.layer_names`,
``encode_images_layers``, ``encode_texts_layers``); this module plans which are stored and names their sets.
"""

from __future__ import annotations

from sdetool.errors import BadInputError

LAYER_SEPARATOR = "_L"


def layer_key(modality: str, index: int) -> str:
    """The set of a layer: ``image_L3``."""
    return f"{modality}{LAYER_SEPARATOR}{index}"


def base_modality(key: str) -> str:
    """``image_L3`` -> ``image``; ``image`` -> ``image``."""
    head, separator, tail = key.rpartition(LAYER_SEPARATOR)
    return head if separator and tail.isdigit() else key


def layer_plan(encoder, keys: list[str], options) -> dict:
    """``{modality: [(index, name), ...]}`` of the layers ``options`` (an ``ExtractOptions``) asks for; one line
    naming the valid range otherwise."""
    wanted = options.layer_indices()
    if wanted == []:
        return {}
    plan = {}
    for modality in keys:
        names = encoder.layer_names(modality)
        indices = list(range(len(names))) if wanted is None else wanted
        outside = [i for i in indices if i >= len(names)]
        if outside:
            raise BadInputError(f"--layers {options.layers}: {encoder.spec} has {modality} layers 0..{len(names) - 1} "
                                f"({len(names)}: {names[0]} .. {names[-1]}); {outside[0]} is not one")
        plan[modality] = [(i, names[i]) for i in indices]
    return plan
