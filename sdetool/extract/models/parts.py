"""The trainable parts of a dual encoder and how a saved state goes back into them (fine-tuning saves
them; ``run:`` models load them)."""

from __future__ import annotations

from sdetool.errors import UnknownModelError


def copy_state(modules: dict, logit_scale, state: dict) -> list[str]:
    """Copy a saved state (``logit_scale`` and ``<module>.<parameter or buffer>``) into the modules.

    Returns the keys that name nothing in ``modules`` (a state saved from another model).
    """
    import torch

    unused = []
    with torch.no_grad():
        logit_scale.copy_(state["logit_scale"])
        own = {name: dict(module.named_parameters()) | dict(module.named_buffers()) for name, module in modules.items()}
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if key == "logit_scale":
                continue
            if prefix in own and rest in own[prefix] and own[prefix][rest].shape == value.shape:
                own[prefix][rest].copy_(value)
            else:
                unused.append(key)
    return unused


def encoder_modules(encoder) -> tuple[dict, object]:
    """Every module of a dual encoder that fine-tuning may train, by state prefix, and its temperature."""
    if encoder.backend == "builtin":
        return {"network": encoder.network, "text_tower": encoder.text_tower.model}, encoder.network.logit_scale
    if encoder.backend == "hf":
        return {"model": encoder.model}, encoder.model.logit_scale
    raise UnknownModelError(f"{encoder.spec}: fine-tuning supports builtin: and hf: models, not {encoder.backend}:")
