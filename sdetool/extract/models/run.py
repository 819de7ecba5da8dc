"""``run:FOLDER``: the dual encoder a ``sdetool finetune --target model`` run produced.

The run folder's ``config.json`` names the base model; its ``model.safetensors`` holds the trained
parameters (and buffers) under the prefixes of :func:`sdetool.extract.models.parts.encoder_modules`.
The base model is loaded through its own backend and the trained tensors are copied in, so the
result embeds exactly as the run's "after" evaluation did.
"""

from __future__ import annotations

import json
import os

from sdetool.errors import UnknownModelError


def read_run_config(folder: str, spec: str) -> dict:
    """The ``training`` section of a run's config.json; UnknownModelError when it is not a finished model run."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as handle:
            training = json.load(handle)["training"]
    except FileNotFoundError:
        raise UnknownModelError(f"--model {spec}: {folder} is not a fine-tuning run folder (no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UnknownModelError(f"--model {spec}: {path} is unreadable ({error})") from None
    if training.get("target") != "model":
        raise UnknownModelError(f"--model {spec}: {folder} trained heads on cached embeddings (--target head); only "
                                f"--target model runs hold an encoder to embed with")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        raise UnknownModelError(f"--model {spec}: {folder} has not finished (no model.safetensors); run its finetune "
                                f"command again with --resume")
    return training


def load_run_encoder(spec: str, folder: str):
    """The base encoder of run ``folder`` with the run's trained weights in place."""
    from safetensors.torch import load_file

    from sdetool.extract.models import DEFAULT_MODEL, load_model
    from sdetool.extract.models.base import file_fingerprint
    from sdetool.extract.models.parts import copy_state, encoder_modules

    folder = os.path.expanduser(folder)
    training = read_run_config(folder, spec)
    base = training.get("model") or DEFAULT_MODEL
    if base.startswith("run:"):
        raise UnknownModelError(f"--model {spec}: the run's base model {base} is itself a run; use that run's base")
    encoder = load_model(base)
    weights = os.path.join(folder, "model.safetensors")
    modules, logit_scale = encoder_modules(encoder)
    tensors = load_file(weights)
    if "logit_scale" not in tensors:
        raise UnknownModelError(f"--model {spec}: {weights} does not fit {base} (it has no logit_scale tensor; "
                                f"sdetool finetune always saves one)")
    unused = copy_state(modules, logit_scale, tensors)
    if unused:
        raise UnknownModelError(f"--model {spec}: {weights} does not fit {base} ({len(unused)} tensors match no "
                                f"parameter, e.g. {unused[0]})")
    encoder.spec = spec
    fingerprint = file_fingerprint(weights)
    # the revision names the weights, so a store extracted before the run was retrained is not "complete"
    encoder.provenance.update({"revision": f"{encoder.provenance.get('revision') or base}+{fingerprint}",
                               "base_model": base, "finetune_run": os.path.abspath(folder),
                               "finetune_weights": fingerprint, "finetune_loss": training.get("loss"),
                               "finetune_steps": training.get("steps"), "finetune_seed": training.get("seed")})
    return encoder
