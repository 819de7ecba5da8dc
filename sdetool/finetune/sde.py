"""SDE fine-tuning, the method: batch spectra, band tracking, spectral enhancement, the dual-domain loss.

Pure torch (plus the numpy partition of :mod:`sdetool.spectral.spectrum`); no files, no printing. METHOD.md
section 7 is the formulation; every term has a switch and a weight in :class:`SDEConfig`, and
``SDEConfig.baseline()`` switches all of them off, leaving plain symmetric InfoNCE.

Per step, for the projected features ``F_I``, ``F_T`` (B, d) of a batch of pairs, with training
progress ``t`` in [0, 1] and ramp ``r(t)``:

1. :func:`batch_spectrum` decomposes each centred batch through its Gram matrix (float32, even under
   autocast); :class:`BandTracker` partitions the spectrum with the same code as ``analyze``
   (:func:`sdetool.spectral.spectrum.partition_spectrum`) and smooths the noise edge and the strong threshold with
   an exponential moving average across steps (a batch is small: ``B`` may be below ``d``).
2. :func:`enhance` forms ``F' = F + U Delta V^T`` with ``U``, ``V``, ``Delta`` detached, so the gradient
   reaches ``F`` unchanged. ``Delta = c * s`` with a relative change per component: strong
   ``c_i = alpha(t) eps (s_i / s_1) xi_i`` (``xi_i`` the sign of ``dL/ds_i``, or random signs), weak
   ``c_i = -alpha(t) gamma_w``, noise ``c_i = -rho(t)``; ``||Delta||_F <= eta ||S||_F``.
3. :func:`sde_loss`: ``InfoNCE(F'_I, F'_T) + lambda(t) (w_H H^2 + w_S L_sub) + w_N rho(t) L_SNR``.

References: Marchenko & Pastur 1967; Gavish & Donoho 2014; Oord et al. 2018 (InfoNCE); Radford et al.
2021 (CLIP's symmetric loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sdetool.spectral import spectrum
from sdetool.spectral.batchspectrum import (NOISE, STRONG, WEAK, BandTracker, BatchSpectrum, SpectrumError, band_entry,
                                            band_shares, batch_spectrum, label_batch)

RAMPS = ("linear", "cosine")
PERTURBATIONS = ("adversarial", "random")


@dataclass(frozen=True)
class SDEConfig:
    """Switches and weights of the method (METHOD.md section 7). Defaults are ours, not the paper's.

    Attributes
    ----------
    enhance : bool
        Apply the curriculum spectral enhancement to the features the InfoNCE term sees.
    perturbation : {"adversarial", "random"}
        Signs ``xi`` of the strong-band perturbation: along ``dL/ds_i`` (raising the loss) or random.
    alpha_max, epsilon, gamma_weak : float
        Enhancement strength at the end of the ramp; relative size of the strong perturbation; weak
        attenuation factor.
    rho_0, rho_min : float
        Noise attenuation (and SNR-term weight) ``rho(t) = rho_0 (1 - r) + rho_min``.
    eta : float
        Bound on the enhancement: ``||Delta||_F <= eta ||S||_F``.
    lambda_0, lambda_min : float
        Weight of the spectral alignment terms ``lambda(t) = lambda_0 (1 - r) + lambda_min``.
    hellinger_weight, subspace_weight, snr_weight : float
        ``w_H``, ``w_S``, ``w_N``; 0 switches a term off.
    subspace_k : int
        Top directions compared by the subspace term.
    ramp : {"linear", "cosine"}
        Shape of ``r(t)``, which rises from 0 to 1 over the first ``warmup`` of training.
    warmup : float
        Fraction of training over which ``r`` ramps up (0: ``r = 1`` throughout).
    momentum : float
        EMA factor of the noise edge and the strong threshold across steps (0: no smoothing).
    partition : PartitionOptions
        Noise estimator, edge level and strong rule, as in ``analyze``.
    """

    enhance: bool = True
    perturbation: str = "adversarial"
    alpha_max: float = 0.2
    epsilon: float = 1.0
    gamma_weak: float = 0.5
    rho_0: float = 0.5
    rho_min: float = 0.05
    eta: float = 0.2
    lambda_0: float = 1.0
    lambda_min: float = 0.1
    hellinger_weight: float = 1.0
    subspace_weight: float = 1.0
    snr_weight: float = 1.0
    subspace_k: int = 8
    ramp: str = "linear"
    warmup: float = 0.5
    momentum: float = 0.9
    partition: spectrum.PartitionOptions = field(default_factory=spectrum.PartitionOptions)

    def __post_init__(self) -> None:
        if self.ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {', '.join(RAMPS)}; got {self.ramp!r}")
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}; got {self.perturbation!r}")
        for name in ("alpha_max", "epsilon", "gamma_weak", "rho_0", "rho_min", "eta", "lambda_0", "lambda_min",
                     "hellinger_weight", "subspace_weight", "snr_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (0.0 <= self.warmup <= 1.0 and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"warmup must be in [0, 1] and momentum in [0, 1); got {self.warmup!r}, {self.momentum!r}")
        if self.subspace_k < 1:
            raise ValueError(f"subspace_k must be >= 1, got {self.subspace_k!r}")
        if self.partition.noise_estimator == "iqr":
            raise ValueError("the batch partition estimates the noise from singular values: noise estimator 'iqr' "
                             "(which needs the matrix entries) is not available; use median, median-gd or mppca")

    @classmethod
    def baseline(cls) -> "SDEConfig":
        """Plain symmetric InfoNCE: no enhancement, no spectral terms."""
        return cls(enhance=False, hellinger_weight=0.0, subspace_weight=0.0, snr_weight=0.0)

    @property
    def spectral(self) -> bool:
        """Whether any part of the method needs the batch spectrum."""
        return self.enhance or self.hellinger_weight > 0 or self.subspace_weight > 0 or self.snr_weight > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SDEConfig":
        values = dict(values)
        values["partition"] = spectrum.PartitionOptions(**values.get("partition", {}))
        return cls(**values)


# --- schedules (pure) ----------------------------------------------------------------------------


def ramp(progress: float, kind: str = "linear", warmup: float = 0.5) -> float:
    """``r(t)``: 0 at ``t = 0``, 1 from ``t = warmup`` on; linear or half-cosine in between."""
    if warmup <= 0:
        return 1.0
    x = min(max(progress / warmup, 0.0), 1.0)
    return x if kind == "linear" else 0.5 * (1.0 - math.cos(math.pi * x))


def schedule(progress: float, config: SDEConfig) -> dict[str, float]:
    """``alpha(t)``, ``rho(t)`` and ``lambda(t)`` at training progress ``t`` in [0, 1]."""
    r = ramp(progress, config.ramp, config.warmup)
    return {"ramp": r, "alpha": config.alpha_max * r, "rho": config.rho_0 * (1.0 - r) + config.rho_min,
            "lambda": config.lambda_0 * (1.0 - r) + config.lambda_min}


# --- loss terms ----------------------------------------------------------------------------------


def info_nce(image, text, groups, logit_scale):
    """Symmetric InfoNCE over rows (B, d), normalised inside; pairs in the same group are positives.

    ``groups`` (B,) int: ``arange(B)`` is the classic one-positive loss; equal ids mark rows whose
    texts (or classes) are the same, so that a correct match is not punished.
    """
    import torch.nn.functional as F

    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    logits = logit_scale.float().exp() * image @ text.T  # (B, B)
    positives = (groups[:, None] == groups[None, :]).float()
    targets = positives / positives.sum(dim=1, keepdim=True)
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (image_to_text + text_to_image)


def hellinger_squared(values_a, values_b):
    """``H^2 = 1 - sum sqrt(p_i q_i)`` between energy spectra ``p = s^2 / sum s^2`` (differentiable).

    Computed from the singular values as ``1 - <s, t> / (||s|| ||t||)`` (``sqrt(p_i) = s_i / ||s||``),
    which has no square root of a vanishing energy in its gradient.
    """
    import torch.nn.functional as F

    return 1.0 - (F.normalize(values_a.abs(), dim=0, eps=1e-30) * F.normalize(values_b.abs(), dim=0, eps=1e-30)).sum()


def subspace_misalignment(first: BatchSpectrum, second: BatchSpectrum, k: int):
    """``1 -`` the mean share of each modality's top-``k`` energy captured by the other's top-``k`` subspace.

    A stable stand-in for ``1 - ||V_a^T V_b||_F^2 / k`` (METHOD.md section 5): the subspaces are
    detached, the gradient flows through the features, and no ``1 / (s_i^2 - s_j^2)`` term appears.
    0 when the top subspaces coincide.
    """
    k = min(k, first.energies.shape[0], second.energies.shape[0])

    def captured(source: BatchSpectrum, target: BatchSpectrum):
        projected = source.centred @ target.top_right_vectors(k)  # (B, k)
        return (projected * projected).sum() / source.energies[:k].sum().clamp_min(1e-30)

    return 1.0 - 0.5 * (captured(first, second) + captured(second, first))


def noise_share(energies, labels):
    """Noise-band share of the batch energy (the SNR regularizer), differentiable in the energies."""
    import torch

    mask = torch.as_tensor(np.asarray(labels) == NOISE, device=energies.device)
    return (energies * mask).sum() / energies.sum().clamp_min(1e-30)


def subspace_alignment(first: BatchSpectrum, second: BatchSpectrum, k: int) -> float:
    """The exact metric ``1 - ||V_a^T V_b||_F^2 / k`` of the top-``k`` right subspaces (reporting only)."""
    k = min(k, first.energies.shape[0], second.energies.shape[0])
    overlap = first.top_right_vectors(k).T @ second.top_right_vectors(k)
    return float(1.0 - (overlap * overlap).sum() / k)


# --- enhancement ---------------------------------------------------------------------------------


def relative_changes(singular_values: np.ndarray, labels: np.ndarray, signs: np.ndarray, alpha: float, rho: float,
                     config: SDEConfig) -> np.ndarray:
    """Per-component relative change ``c = Delta / s`` (pure numpy), bounded so ``||c s|| <= eta ||s||``."""
    values = np.asarray(singular_values, dtype=np.float64)
    top = values[0] if values.size and values[0] > 0 else 1.0
    changes = np.zeros_like(values)
    strong, weak, noise = labels == STRONG, labels == WEAK, labels == NOISE
    changes[strong] = alpha * config.epsilon * (values[strong] / top) * signs[strong]
    changes[weak] = -alpha * config.gamma_weak
    changes[noise] = -rho
    size, limit = np.linalg.norm(changes * values), config.eta * np.linalg.norm(values)
    if size > limit > 0:
        changes *= limit / size
    return changes


def loss_gradient_signs(spectra, features, groups, logit_scale, generator) -> list[np.ndarray]:
    """``sign(dL/ds_i)`` of the InfoNCE loss for each modality, through the detached features.

    ``dL/ds_i = u_i^T G v_i`` with ``G = dL/dF``; a zero derivative gets a random sign.
    """
    import torch

    inputs = [f.detach().float().requires_grad_(True) for f in features]
    gradients = torch.autograd.grad(info_nce(inputs[0], inputs[1], groups, logit_scale.detach()), inputs)
    signs = []
    for spec, gradient in zip(spectra, gradients):
        sign = torch.sign(spec.derivative(gradient.float())).cpu().numpy()
        random = generator.choice([-1.0, 1.0], size=sign.shape)
        signs.append(np.where(sign == 0, random, sign))
    return signs


def enhance(features, spec: BatchSpectrum, changes: np.ndarray):
    """``F' = F + U Delta V^T`` with the correction detached (the gradient reaches ``F`` unchanged)."""
    import torch

    coefficients = torch.as_tensor(changes, dtype=torch.float32, device=features.device)
    return features + spec.project(coefficients).to(features.dtype)


# --- the whole loss ------------------------------------------------------------------------------


@dataclass
class SDEState:
    """What the loss carries across steps: one band tracker per modality and the random generator."""

    trackers: list[BandTracker]
    generator: np.random.Generator

    @classmethod
    def create(cls, config: SDEConfig, seed: int) -> "SDEState":
        return cls([BandTracker(config.partition, config.momentum) for _ in range(2)], np.random.default_rng(seed))

    def state(self) -> dict:
        return {"trackers": [t.state() for t in self.trackers], "generator": self.generator.bit_generator.state}

    def load(self, state: dict) -> None:
        for tracker, saved in zip(self.trackers, state["trackers"]):
            tracker.load(saved)
        self.generator.bit_generator.state = state["generator"]


def sde_loss(image, text, groups, logit_scale, progress: float, config: SDEConfig, state: SDEState):
    """The dual-domain loss of one batch; returns ``(loss, terms)`` with ``terms`` plain floats for logging.

    Parameters
    ----------
    image, text : Tensor (B, d)
        Projected features of the paired batch (any dtype; spectra are computed in float32).
    groups : Tensor (B,) int
        Positive groups of the InfoNCE term (see :func:`info_nce`).
    logit_scale : Tensor
        Log of the inverse temperature.
    progress : float
        Training progress ``t`` in [0, 1].
    config : SDEConfig
    state : SDEState
        Band trackers and random generator, updated in place.
    """
    weights = schedule(progress, config)
    terms: dict[str, float] = {"alpha": weights["alpha"], "rho": weights["rho"], "lambda": weights["lambda"]}
    if not config.spectral:
        loss = info_nce(image, text, groups, logit_scale)
        terms.update(infonce=float(loss.detach()), loss=float(loss.detach()))
        return loss, terms
    try:
        spectra = [batch_spectrum(image), batch_spectrum(text)]
    except SpectrumError:  # diverged features: a NaN loss, which the caller stops on
        loss = info_nce(image, text, groups, logit_scale) * float("nan")
        terms.update(infonce=float("nan"), loss=float("nan"))
        return loss, terms
    batch, dim = image.shape
    labels = [_batch_labels(tracker, spec, state) for tracker, spec in zip(state.trackers, spectra)]
    terms.update(_band_terms(spectra, labels))
    enhanced = [image, text]
    if config.enhance and (weights["alpha"] > 0 or weights["rho"] > 0):
        enhanced, terms["delta_ratio"] = _enhanced(spectra, labels, (image, text), groups, logit_scale, weights, config,
                                                   state)
    contrastive = info_nce(enhanced[0], enhanced[1], groups, logit_scale)
    loss = contrastive
    terms["infonce"] = float(contrastive.detach())
    if config.hellinger_weight > 0:
        hellinger = hellinger_squared(spectra[0].values, spectra[1].values)
        loss = loss + weights["lambda"] * config.hellinger_weight * hellinger
        terms["hellinger2"] = float(hellinger.detach())
    if config.subspace_weight > 0:
        misalignment = subspace_misalignment(spectra[0], spectra[1], config.subspace_k)
        loss = loss + weights["lambda"] * config.subspace_weight * misalignment
        terms["subspace"] = float(misalignment.detach())
    if config.snr_weight > 0:
        snr = 0.5 * (noise_share(spectra[0].energies, labels[0]) + noise_share(spectra[1].energies, labels[1]))
        loss = loss + weights["rho"] * config.snr_weight * snr
        terms["snr"] = float(snr.detach())
    terms["loss"] = float(loss.detach())
    return loss, terms


def _enhanced(spectra, labels, features, groups, logit_scale, weights: dict, config: SDEConfig, state: SDEState):
    """Both modalities' enhanced features, and the larger ``||Delta||_F / ||S||_F`` of the two."""
    if config.perturbation == "adversarial":
        signs = loss_gradient_signs(spectra, features, groups, logit_scale, state.generator)
    else:
        signs = [state.generator.choice([-1.0, 1.0], size=len(label)) for label in labels]
    changes = [relative_changes(spec.singular_values, label, sign, weights["alpha"], weights["rho"], config)
               for spec, label, sign in zip(spectra, labels, signs)]
    enhanced = [enhance(f, spec, c) for f, spec, c in zip(features, spectra, changes)]
    ratio = max(np.linalg.norm(c * spec.singular_values) / max(np.linalg.norm(spec.singular_values), 1e-30)
                for c, spec in zip(changes, spectra))
    return enhanced, float(ratio)


def observe_bands(image, text, state: SDEState) -> dict[str, list[float]]:
    """Batch band shares of both modalities, without gradient, for runs whose loss needs no spectrum.

    The InfoNCE baseline calls this at logging steps, so that its ``metrics.jsonl`` shows the same
    batch view as an SDE run's (through the same partition, smoothed over the observed steps).
    """
    import torch

    with torch.no_grad():
        try:
            spectra = [batch_spectrum(features.detach()) for features in (image, text)]
        except SpectrumError:
            return {}
        return _band_terms(spectra, [_batch_labels(t, spec, state) for t, spec in zip(state.trackers, spectra)])


def _band_terms(spectra, labels) -> dict:
    """``<modality>_shares`` for metrics.jsonl and ``bands`` (the band monitor's entries) of both modalities."""
    entries = {name: band_entry(spec, label) for name, spec, label in zip(("image", "text"), spectra, labels)}
    terms: dict = {f"{name}_shares": [entry[band]["energy_share"] for band in spectrum.BANDS]
                   for name, entry in entries.items()}
    terms["bands"] = entries
    return terms


def _batch_labels(tracker: BandTracker, spec: BatchSpectrum, state: "SDEState") -> np.ndarray:
    """Band labels of one batch's spectrum (:func:`~sdetool.spectral.batchspectrum.label_batch`)."""
    return label_batch(tracker, spec, state.generator)


def with_overrides(config: SDEConfig, **overrides) -> SDEConfig:
    """``config`` with the given fields replaced (None values ignored)."""
    return replace(config, **{name: value for name, value in overrides.items() if value is not None})


__all__ = ["SDEConfig", "SpectrumError", "SDEState", "BandTracker", "BatchSpectrum", "batch_spectrum", "sde_loss", "info_nce", "ramp",
           "schedule", "enhance", "relative_changes", "hellinger_squared", "subspace_misalignment", "noise_share",
           "subspace_alignment", "band_shares", "loss_gradient_signs", "observe_bands", "with_overrides"]
