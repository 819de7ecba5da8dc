"""The ``sdetool finetune`` command: SDE fine-tuning and its InfoNCE baseline.

Registered on :data:`sdetool.cli.app` when :mod:`sdetool.cli` is imported; same conventions as the other
commands (parse -> one library call -> render; errors -> exit codes in :func:`sdetool.cli.handles_errors`).
"""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer
from rich.console import Console

from sdetool.cli import NoiseEstimator, Precision, StrongRule, app, fail, handles_errors, stderr_console
from sdetool.progressbar import progress_for


class Loss(str, Enum):
    sde = "sde"
    infonce = "infonce"


class TargetKind(str, Enum):
    model = "model"
    head = "head"


class HeadKind(str, Enum):
    linear = "linear"
    mlp = "mlp"


class Positives(str, Enum):
    auto = "auto"
    pair = "pair"
    text = "text"
    class_ = "class"


class Perturbation(str, Enum):
    adversarial = "adversarial"
    random = "random"


class Ramp(str, Enum):
    linear = "linear"
    cosine = "cosine"


SDE_HELP = "SDE method (with --loss sde)"


@app.command()
@handles_errors
def finetune(
    out: str = typer.Option(..., "--out", "-o", help="The run folder (config, checkpoint, metrics.jsonl, eval.json).", metavar="FOLDER"),
    loss: Loss = typer.Option(Loss.sde, "--loss", help="sde: spectral enhancement + dual-domain loss; infonce: the baseline, "
                              "everything else identical."),
    target: TargetKind = typer.Option(TargetKind.model, "--target", help="model: fine-tune the dual encoder; head: a linear "
                                      "or MLP head per modality on cached pairs (--embeddings)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="builtin:lit-fmnist (default) or hf:ORG/NAME / hf:/folder (CLIP-like)."),
    embeddings: Optional[str] = typer.Option(None, "--embeddings", help="A store with 'image' and 'text' sets (from "
                                             "sdetool extract) for --target head.", metavar="STORE"),
    images: Optional[str] = typer.Option(None, "--images", help="A folder of images with captions.jsonl.", metavar="FOLDER"),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="A CSV/TSV, JSONL or Parquet table of image-text pairs.", metavar="FILE"),
    data: Optional[str] = typer.Option(None, "--data", help="builtin:fashion-mnist (default): train split for training, "
                                       "test split held out; builtin:fashion-mnist:train or :test: one split, held out by id.",
                                       metavar="NAME"),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps.", min=1),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Pairs per step (over all ranks).", min=2),
    learning_rate: float = typer.Option(2e-4, "--learning-rate", "--lr", help="Peak AdamW learning rate (linear warm-up, cosine decay)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="AdamW weight decay."),
    seed: int = typer.Option(0, "--seed", help="Fixes data order, initialisation and enhancement noise."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="Autocast precision of the model; spectra are always float32."),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when present), cpu, cuda or cuda:N."),
    positives: Positives = typer.Option(Positives.auto, "--positives", help="InfoNCE positives: pair (only the pair), text "
                                        "(pairs with the same text), class (same label); auto: class when the data has labels, else text."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", help="Share of pairs held out (by id hash) when the data has no test split."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Evaluate on at most this many held-out pairs."),
    train_blocks: int = typer.Option(2, "--train-blocks", help="hf: models: transformer blocks trained at the top of each tower.", min=0),
    freeze_text: bool = typer.Option(True, "--freeze-text/--train-text", help="Keep the text tower frozen (projections still train)."),
    head: HeadKind = typer.Option(HeadKind.linear, "--head", help="--target head: linear (identity at start) or residual mlp."),
    head_dim: Optional[int] = typer.Option(None, "--head-dim", help="--target head: output dimension (default: the larger input)."),
    export_embeddings: bool = typer.Option(False, "--export-embeddings", help="Write embeddings_before.h5 and embeddings_after.h5 "
                                           "of the held-out pairs."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint (same configuration)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    log_every: int = typer.Option(10, "--log-every", help="Steps between metrics.jsonl records.", min=1),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints.", min=1),
    enhance: bool = typer.Option(True, "--enhance/--no-enhance", rich_help_panel="SDE method", help=f"{SDE_HELP}: curriculum spectral enhancement of the features."),
    perturbation: Perturbation = typer.Option(Perturbation.adversarial, "--perturbation", rich_help_panel="SDE method", help=f"{SDE_HELP}: signs of the strong-band perturbation."),
    alpha_max: float = typer.Option(0.2, "--alpha-max", rich_help_panel="SDE method", help=f"{SDE_HELP}: enhancement strength alpha at the end of the ramp."),
    epsilon: float = typer.Option(1.0, "--epsilon", rich_help_panel="SDE method", help=f"{SDE_HELP}: relative size of the strong perturbation."),
    gamma_weak: float = typer.Option(0.5, "--gamma-weak", rich_help_panel="SDE method", help=f"{SDE_HELP}: weak-band attenuation factor."),
    rho_0: float = typer.Option(0.5, "--rho0", rich_help_panel="SDE method", help=f"{SDE_HELP}: initial noise attenuation / SNR weight rho."),
    rho_min: float = typer.Option(0.05, "--rho-min", rich_help_panel="SDE method", help=f"{SDE_HELP}: final rho."),
    eta: float = typer.Option(0.2, "--eta", rich_help_panel="SDE method", help=f"{SDE_HELP}: bound ||Delta||_F <= eta ||S||_F."),
    lambda_0: float = typer.Option(1.0, "--lambda0", rich_help_panel="SDE method", help=f"{SDE_HELP}: initial weight of the spectral alignment terms."),
    lambda_min: float = typer.Option(0.1, "--lambda-min", rich_help_panel="SDE method", help=f"{SDE_HELP}: final lambda."),
    w_hellinger: float = typer.Option(1.0, "--w-hellinger", rich_help_panel="SDE method", help=f"{SDE_HELP}: weight of the Hellinger spectral term (0: off)."),
    w_subspace: float = typer.Option(1.0, "--w-subspace", rich_help_panel="SDE method", help=f"{SDE_HELP}: weight of the subspace term (0: off)."),
    w_snr: float = typer.Option(1.0, "--w-snr", rich_help_panel="SDE method", help=f"{SDE_HELP}: weight of the noise-energy term (0: off)."),
    subspace_k: int = typer.Option(8, "--subspace-k", rich_help_panel="SDE method", help=f"{SDE_HELP}: top directions of the subspace term.", min=1),
    ramp: Ramp = typer.Option(Ramp.linear, "--ramp", rich_help_panel="SDE method", help=f"{SDE_HELP}: shape of the curriculum ramp r(t)."),
    warmup: float = typer.Option(0.5, "--warmup", rich_help_panel="SDE method", help=f"{SDE_HELP}: fraction of training over which r(t) rises to 1."),
    momentum: float = typer.Option(0.9, "--momentum", rich_help_panel="SDE method", help=f"{SDE_HELP}: EMA factor of the batch noise edge and strong threshold."),
    noise_estimator: NoiseEstimator = typer.Option(NoiseEstimator.median, "--noise-estimator", rich_help_panel="SDE method", help="Noise level of the batch partition (as in analyze)."),
    strong_rule: StrongRule = typer.Option(StrongRule.iqr, "--strong-rule", rich_help_panel="SDE method", help="Strong threshold of the batch partition (as in analyze)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the result as JSON here ('-' for stdout).", metavar="PATH"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary table."),
) -> None:
    """Fine-tune with SDE (or the InfoNCE baseline); evaluate before and after (resumable; data-parallel under torchrun)."""
    from sdetool import report
    from sdetool.data.items import open_source
    from sdetool.distributed import current_world
    from sdetool.finetune import FinetuneOptions, finetune as run_finetune
    from sdetool.sde import SDEConfig
    from sdetool.spectrum import PartitionOptions

    report.check_output_path(json_path, "--json")
    try:
        method = SDEConfig(enhance=enhance, perturbation=perturbation.value, alpha_max=alpha_max, epsilon=epsilon,
                           gamma_weak=gamma_weak, rho_0=rho_0, rho_min=rho_min, eta=eta, lambda_0=lambda_0,
                           lambda_min=lambda_min, hellinger_weight=w_hellinger, subspace_weight=w_subspace,
                           snr_weight=w_snr, subspace_k=subspace_k, ramp=ramp.value, warmup=warmup, momentum=momentum,
                           partition=PartitionOptions(noise_estimator=noise_estimator.value, strong_rule=strong_rule.value))
    except ValueError as error:
        fail(f"SDE option: {error}")
    options = FinetuneOptions(loss=loss.value, target=target.value, steps=steps, batch_size=batch_size,
                              learning_rate=learning_rate, weight_decay=weight_decay, seed=seed, precision=precision.value,
                              positives=positives.value, eval_fraction=eval_fraction, eval_limit=eval_limit,
                              train_blocks=train_blocks, freeze_text=freeze_text, head=head.value, head_dim=head_dim,
                              sde=method, device=device, log_every=log_every, checkpoint_every=checkpoint_every,
                              export_embeddings=export_embeddings, resume=resume, overwrite=overwrite)
    options.validate()
    source = None
    if target == TargetKind.model and (images or manifest or (data and data != "builtin:fashion-mnist")):
        source = open_source(images=images, manifest_path=manifest, data=data)  # else: the built-in train/test pairs
    elif images or manifest or data:
        fail("--target head trains on cached pairs (--embeddings); --images, --manifest and --data are for --target model")
    world = current_world()
    console_err = stderr_console()
    progress = progress_for(console_err, quiet, "steps", main=world.is_main)
    result = run_finetune(out, options, model=model, source=source, embeddings=embeddings, progress=progress)
    if not world.is_main:
        return
    if json_path:
        report.write_json(result.to_dict(), json_path)
    if not quiet:
        report.render_finetune(result.to_dict(), console_err if json_path == "-" else Console())
