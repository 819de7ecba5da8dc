"""The ``sdetool finetune`` command: SDE fine-tuning and its InfoNCE baseline.

Registered on :data:`sdetool.cli.app` when :mod:`sdetool.cli` is imported; same conventions as the other
commands (parse -> one library call -> render; errors -> exit codes in :func:`sdetool.cli.handles_errors`).
"""

from __future__ import annotations

from enum import Enum
from typing import List, Optional

import typer
from rich.console import Console

from sdetool.cli.common import (DEFAULT_DATA, DEFAULT_MODEL, NoiseEstimator, Null, Precision, StrongRule, app, fail,
                                handles_errors, stderr_console)
from sdetool.cli.help import HelpCommand
from sdetool.cli.progress import progress_for


class ReportTo(str, Enum):
    none = "none"
    tensorboard = "tensorboard"


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


DATA_PANEL, TRAINING_PANEL, SDE_PANEL = "Model and data", "Training", "SDE method (with --loss sde)"

# What --help leaves out for brevity: docs/cli.md adds it to each option (see sdetool.cli.docs).
OPTION_DETAILS = {
    "finetune": {
        "--out": "It holds config.json, the checkpoint, metrics.jsonl and eval.json.",
        "--gather-features": "Under torchrun each rank embeds its slice of the global batch; the slices are gathered "
                             "with gradients (as open_clip's gather_with_grad), so the InfoNCE negatives, the batch "
                             "spectrum and batch normalization see the whole batch, and K ranks train as one process "
                             "does on the same global batch. --no-gather-features: each rank's loss sees its slice only.",
        "--report-to": "tensorboard: the metrics.jsonl numbers as TensorBoard scalars in OUT/tensorboard/, as they are "
                       "logged (pip install 'sdetool[tensorboard]'; tensorboard --logdir OUT).",
        "--webdataset": "As for extract: brace patterns or lists of tars; one pair per key (image and txt/json caption).",
        "--loss": "sde: spectral enhancement and the dual-domain loss; infonce: the baseline, everything else "
                  "identical (data order, seed, steps, optimizer, schedule).",
        "--target": "model: the dual encoder itself; head: a linear or MLP head per modality, trained on cached "
                    "pairs (--embeddings).",
        "--model": "builtin:lit-fmnist, or hf:ORG/NAME or hf:/folder (a CLIP-like dual encoder).",
        "--embeddings": "A store with 'image' and 'text' sets, written by sdetool extract.",
        "--data": "builtin:fashion-mnist: the train split trains, the test split is held out; "
                  "builtin:fashion-mnist:train or :test: that split alone, held out by id.",
        "--learning-rate": "Linear warm-up, then cosine decay.",
        "--precision": "The spectra are always computed in float32.",
        "--positives": "pair: only the pair; text: every pair with the same text; class: every pair of the same "
                       "label; auto: class when the data has labels, else text.",
        "--eval-fraction": "Pairs are held out by a hash of their id.",
        "--freeze-text": "The text projection trains either way.",
        "--head": "linear: starts as the identity; mlp: a residual MLP.",
        "--head-dim": "Default: the larger input dimension.",
        "--export-embeddings": "embeddings_before.h5 and embeddings_after.h5 in the run folder.",
        "--resume": "The configuration must be the same as the run's.",
        "--enhance": "The features' spectrum is perturbed on a curriculum before the loss (docs/method.md, "
                     "section 6 has the formulas of every SDE option).",
        "--perturbation": "adversarial: the signs of the InfoNCE gradient; random: random signs.",
        "--alpha-max": "The strength alpha(t) rises along the ramp r(t) to this value.",
        "--epsilon": "Relative to each strong singular value.",
        "--rho0": "Also the initial weight of the noise-energy (SNR) term.",
        "--eta": "The perturbation Delta is rescaled to ||Delta||_F <= eta ||S||_F.",
        "--lambda0": "lambda weighs the Hellinger and subspace terms; it falls from --lambda0 to --lambda-min.",
        "--w-hellinger": "0 switches the term off.",
        "--w-subspace": "0 switches the term off.",
        "--w-snr": "0 switches the term off.",
        "--warmup": "r(t) rises from 0 to 1 over this share of training, then stays at 1.",
        "--noise-estimator": "The noise level of each batch's partition, as in analyze (iqr is not offered).",
        "--null": "The noise null of each batch's partition, as in analyze --null; computed from the batch itself "
                  "(its column variances and singular vectors; permutation: 10 column permutations of the batch, "
                  "about 10 eigendecompositions more per step). Repeated rows (a batch of captions often repeats "
                  "some) count once.",
        "--strong-rule": "The strong threshold of each batch's partition, as in analyze.",
        "--momentum": "The momentum of the moving averages of the batch noise edge and strong threshold.",
    },
}


@app.command(cls=HelpCommand, short_help="Fine-tune with SDE or the InfoNCE baseline; evaluate before and after.")
@handles_errors
def finetune(
    out: str = typer.Option(..., "--out", "-o", help="The run folder.", metavar="FOLDER"),
    loss: Loss = typer.Option(Loss.sde, "--loss", help="SDE, or the InfoNCE baseline."),
    target: TargetKind = typer.Option(TargetKind.model, "--target", help="Train the model, or heads on cached pairs."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the result as JSON here ('-': stdout).",
                                            metavar="PATH"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary table."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="SPEC", show_default=DEFAULT_MODEL,
                                        help="Model to train.", rich_help_panel=DATA_PANEL),
    embeddings: Optional[str] = typer.Option(None, "--embeddings", metavar="STORE", rich_help_panel=DATA_PANEL,
                                             help="Cached pairs for --target head."),
    images: Optional[str] = typer.Option(None, "--images", help="A folder of images with captions.jsonl.",
                                         metavar="FOLDER", rich_help_panel=DATA_PANEL),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="A table of image-text pairs (CSV, JSONL...).",
                                           metavar="FILE", rich_help_panel=DATA_PANEL),
    webdataset: Optional[List[str]] = typer.Option(None, "--webdataset", metavar="SHARDS", rich_help_panel=DATA_PANEL,
                                                   help="webdataset tar shards of pairs (brace patterns)."),
    hf_dataset: Optional[str] = typer.Option(None, "--hf-dataset", metavar="DIR", rich_help_panel=DATA_PANEL,
                                             help="A Hugging Face datasets save_to_disk folder of pairs."),
    data: Optional[str] = typer.Option(None, "--data", help="Built-in pairs.", metavar="NAME",
                                       show_default=DEFAULT_DATA, rich_help_panel=DATA_PANEL),
    steps: int = typer.Option(300, "--steps", help="Optimizer steps.", min=1, rich_help_panel=TRAINING_PANEL),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="Pairs per step (all ranks).", min=2,
                                   rich_help_panel=TRAINING_PANEL),
    learning_rate: float = typer.Option(2e-4, "--learning-rate", "--lr", help="Peak AdamW learning rate.",
                                        rich_help_panel=TRAINING_PANEL),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="AdamW weight decay.", rich_help_panel=TRAINING_PANEL),
    seed: int = typer.Option(0, "--seed", help="Seed of data order, init and noise.", rich_help_panel=TRAINING_PANEL),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="Autocast precision.",
                                        rich_help_panel=TRAINING_PANEL),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.",
                               rich_help_panel=TRAINING_PANEL),
    positives: Positives = typer.Option(Positives.auto, "--positives", help="InfoNCE positives.",
                                        rich_help_panel=TRAINING_PANEL),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", help="Held-out share (no test split).",
                                        rich_help_panel=TRAINING_PANEL),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", metavar="N", help="Evaluate on at most N pairs.",
                                             rich_help_panel=TRAINING_PANEL),
    train_blocks: int = typer.Option(2, "--train-blocks", help="hf: top blocks trained per tower.", min=0,
                                     rich_help_panel=TRAINING_PANEL),
    freeze_text: bool = typer.Option(True, "--freeze-text/--train-text", help="Freeze the text tower.",
                                     rich_help_panel=TRAINING_PANEL),
    head: HeadKind = typer.Option(HeadKind.linear, "--head", help="--target head: the head.", rich_help_panel=TRAINING_PANEL),
    head_dim: Optional[int] = typer.Option(None, "--head-dim", metavar="N", help="--target head: output dimension.",
                                           rich_help_panel=TRAINING_PANEL),
    export_embeddings: bool = typer.Option(False, "--export-embeddings", help="Also write held-out embeddings.",
                                           rich_help_panel=TRAINING_PANEL),
    log_every: int = typer.Option(10, "--log-every", help="Steps between metrics records.", min=1,
                                  rich_help_panel=TRAINING_PANEL),
    report_to: ReportTo = typer.Option(ReportTo.none, "--report-to", help="Also write the metrics for a tracker.",
                                       rich_help_panel=TRAINING_PANEL),
    gather_features: bool = typer.Option(True, "--gather-features/--no-gather-features", rich_help_panel=TRAINING_PANEL,
                                         help="torchrun: loss and batch spectrum over the global batch."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every", help="Steps between checkpoints.", min=1,
                                         rich_help_panel=TRAINING_PANEL),
    enhance: bool = typer.Option(True, "--enhance/--no-enhance", rich_help_panel=SDE_PANEL, help="Spectral enhancement."),
    perturbation: Perturbation = typer.Option(Perturbation.adversarial, "--perturbation", rich_help_panel=SDE_PANEL,
                                              help="Strong-band signs."),
    alpha_max: float = typer.Option(0.2, "--alpha-max", rich_help_panel=SDE_PANEL, help="Final enhancement strength."),
    epsilon: float = typer.Option(1.0, "--epsilon", rich_help_panel=SDE_PANEL, help="Strong perturbation size."),
    gamma_weak: float = typer.Option(0.5, "--gamma-weak", rich_help_panel=SDE_PANEL, help="Weak-band attenuation."),
    rho_0: float = typer.Option(0.5, "--rho0", rich_help_panel=SDE_PANEL, help="Initial noise attenuation rho."),
    rho_min: float = typer.Option(0.05, "--rho-min", rich_help_panel=SDE_PANEL, help="Final rho."),
    eta: float = typer.Option(0.2, "--eta", rich_help_panel=SDE_PANEL, help="Bound on the perturbation's norm."),
    lambda_0: float = typer.Option(1.0, "--lambda0", rich_help_panel=SDE_PANEL, help="Initial spectral weight lambda."),
    lambda_min: float = typer.Option(0.1, "--lambda-min", rich_help_panel=SDE_PANEL, help="Final lambda."),
    w_hellinger: float = typer.Option(1.0, "--w-hellinger", rich_help_panel=SDE_PANEL, help="Hellinger term weight."),
    w_subspace: float = typer.Option(1.0, "--w-subspace", rich_help_panel=SDE_PANEL, help="Subspace term weight."),
    w_snr: float = typer.Option(1.0, "--w-snr", rich_help_panel=SDE_PANEL, help="Noise-energy term weight."),
    subspace_k: int = typer.Option(8, "--subspace-k", rich_help_panel=SDE_PANEL, help="Subspace term directions.", min=1),
    ramp: Ramp = typer.Option(Ramp.linear, "--ramp", rich_help_panel=SDE_PANEL, help="Curriculum ramp r(t)."),
    warmup: float = typer.Option(0.5, "--warmup", rich_help_panel=SDE_PANEL, help="Share of training to r(t) = 1."),
    momentum: float = typer.Option(0.9, "--momentum", rich_help_panel=SDE_PANEL, help="EMA of the batch thresholds."),
    noise_estimator: NoiseEstimator = typer.Option(NoiseEstimator.median, "--noise-estimator", rich_help_panel=SDE_PANEL,
                                                   help="Batch noise estimator."),
    null: Null = typer.Option(Null.ddpa, "--null", rich_help_panel=SDE_PANEL,
                              help="Noise null of the batch partition (as in analyze)."),
    strong_rule: StrongRule = typer.Option(StrongRule.iqr, "--strong-rule", rich_help_panel=SDE_PANEL,
                                           help="Batch strong rule."),
) -> None:
    """Fine-tune with SDE (or the InfoNCE baseline); evaluate before and after (resumable; data-parallel under torchrun).

    The SDE method and its options: docs/method.md, section 6.
    """
    from sdetool import api
    from sdetool.api import FinetuneOptions, PartitionOptions, SDEConfig, current_world
    from sdetool.api import finetune as run_finetune
    from sdetool.api import open_source

    api.check_output_path(json_path, "--json")
    try:
        method = SDEConfig(enhance=enhance, perturbation=perturbation.value, alpha_max=alpha_max, epsilon=epsilon,
                           gamma_weak=gamma_weak, rho_0=rho_0, rho_min=rho_min, eta=eta, lambda_0=lambda_0,
                           lambda_min=lambda_min, hellinger_weight=w_hellinger, subspace_weight=w_subspace,
                           snr_weight=w_snr, subspace_k=subspace_k, ramp=ramp.value, warmup=warmup, momentum=momentum,
                           partition=PartitionOptions(noise_estimator=noise_estimator.value, strong_rule=strong_rule.value,
                                                      null=null.value))
    except ValueError as error:
        fail(f"SDE option: {error}")
    options = FinetuneOptions(loss=loss.value, target=target.value, steps=steps, batch_size=batch_size,
                              learning_rate=learning_rate, weight_decay=weight_decay, seed=seed, precision=precision.value,
                              positives=positives.value, eval_fraction=eval_fraction, eval_limit=eval_limit,
                              train_blocks=train_blocks, freeze_text=freeze_text, head=head.value, head_dim=head_dim,
                              sde=method, device=device, log_every=log_every, checkpoint_every=checkpoint_every,
                              export_embeddings=export_embeddings, resume=resume, overwrite=overwrite,
                              report_to=report_to.value, gather_features=gather_features)
    options.validate()
    if target == TargetKind.head and (images or manifest or webdataset or hf_dataset or data):
        fail("--target head trains on cached pairs (--embeddings); --images, --manifest, --webdataset, --hf-dataset "
             "and --data are for --target model")
    source = None  # the built-in pairs: the train split trains, the test split is held out
    if images or manifest or webdataset or hf_dataset or (data and data != DEFAULT_DATA):
        source = open_source(images=images, manifest_path=manifest, data=data, webdataset=webdataset or None,
                             hf_dataset_path=hf_dataset)
    world = current_world()
    console_err = stderr_console()
    progress = progress_for(console_err, quiet, "steps", main=world.is_main)
    result = run_finetune(out, options, model=model or DEFAULT_MODEL, source=source, embeddings=embeddings, progress=progress)
    if not world.is_main:
        return
    if json_path:
        api.write_json(result.to_dict(), json_path)
    if not quiet:
        api.render_finetune(result.to_dict(), console_err if json_path == "-" else Console())
