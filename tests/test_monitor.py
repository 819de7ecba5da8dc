"""sdetool.monitor.BandMonitor: batch bands every N steps into JSON Lines, with the batch partition of
sdetool finetune (the same labels for the same batches and trackers), bad batches as one sentence, and the
TensorBoard and Hugging Face adapters against their real libraries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdetool.errors import BadInputError
from sdetool.monitor import BandMonitor


def _batches(steps: int, n: int = 256, d: int = 48, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(6, d, generator=generator) * 4
    for _ in range(steps):
        signal = torch.randn(n, 6, generator=generator) @ mixing
        yield signal + torch.randn(n, d, generator=generator), torch.randn(n, 16, generator=generator)


def test_every_nth_step_is_one_json_line(tmp_path):
    monitor = BandMonitor(str(tmp_path / "run" / "bands.jsonl"), every=3)
    records = [monitor.update(step, image=image, text=text) for step, (image, text) in enumerate(_batches(7))]
    assert [r is not None for r in records] == [True, False, False, True, False, False, True]
    lines = [json.loads(line) for line in (tmp_path / "run" / "bands.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 3, 6]
    for line in lines:
        for name in ("image", "text"):
            entry = line[name]
            assert sum(entry[band]["count"] for band in ("strong", "weak", "noise")) == {"image": 48, "text": 16}[name]
            assert sum(entry[band]["energy_share"] for band in ("strong", "weak", "noise")) == pytest.approx(1.0)
            assert entry["effective_rank"] > 0
    assert lines[-1]["image"]["strong"]["count"] + lines[-1]["image"]["weak"]["count"] == 6  # the planted rank


def test_it_is_finetunes_partition(tmp_path):
    """The same batches through finetune's observe_bands (the InfoNCE run's logging) give the same shares."""
    from sdetool.finetune.sde import SDEConfig, SDEState, observe_bands

    monitor = BandMonitor(str(tmp_path / "b.jsonl"), every=1)
    state = SDEState.create(SDEConfig(), seed=0)
    for step, (image, text) in enumerate(_batches(4, d=48, seed=3)):
        record = monitor.update(step, image=image, text=text[:, :16])
        shares = observe_bands(image, text[:, :16], state)
        for name in ("image", "text"):
            ours = [record[name][band]["energy_share"] for band in ("strong", "weak", "noise")]
            np.testing.assert_allclose(ours, shares[f"{name}_shares"], rtol=1e-12)


def test_arrays_and_tensors_with_gradients(tmp_path):
    monitor = BandMonitor(str(tmp_path / "b.jsonl"), every=1)
    image, text = next(_batches(1))
    with_grad = image.clone().requires_grad_(True)
    assert monitor.update(0, image=with_grad.numpy(force=True), text=text)["image"]
    assert monitor.update(1, image=with_grad * 2, text=text)["image"]
    assert with_grad.grad is None


@pytest.mark.parametrize("bad,fragment", [
    (torch.ones(4, 3, 2), "image: is 3-D"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "image: holds non-finite values"),
    ("not a tensor", "image: expected a tensor or array"),
])
def test_bad_batches_are_one_sentence(tmp_path, bad, fragment):
    with pytest.raises(BadInputError, match=fragment):
        BandMonitor(str(tmp_path / "b.jsonl"), every=1).update(0, image=bad)


def test_a_width_that_changes_is_refused(tmp_path):
    monitor = BandMonitor(str(tmp_path / "b.jsonl"), every=1)
    monitor.update(0, image=torch.randn(64, 16))
    with pytest.raises(BadInputError, match="image: batch embeddings of width 8 at step 1, but 16 before"):
        monitor.update(1, image=torch.randn(64, 8))


def test_tensorboard_writer(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sdetool.monitor import TensorBoardWriter

    monitor = BandMonitor(str(tmp_path / "b.jsonl"), every=2)
    monitor.writers.append(TensorBoardWriter(str(tmp_path / "tb")))
    for step, (image, text) in enumerate(_batches(5)):
        monitor.update(step, image=image, text=text)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("bands/image/noise/energy_share")] == [0, 2, 4]


def test_hugging_face_trainer_callback(tmp_path):
    """A real transformers.Trainer training a tiny CLIPModel (built here, no hub) reports to the monitor."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers.Trainer needs it (in the test extra)
    from extract_fixtures import build_tiny_clip

    from sdetool.monitor import HFCallback

    folder = build_tiny_clip(tmp_path / "clip")
    model = transformers.CLIPModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(1000, 2000, (8,), generator=generator),
             "pixel_values": torch.randn(3, 32, 32, generator=generator)} for _ in range(64)]

    def collate(batch):
        return {"input_ids": torch.stack([row["input_ids"] for row in batch]),
                "pixel_values": torch.stack([row["pixel_values"] for row in batch]), "return_loss": True}

    monitor = BandMonitor(str(tmp_path / "bands.jsonl"), every=1)
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16,
                                               max_steps=3, report_to=[], use_cpu=True, save_strategy="no",
                                               logging_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=rows, data_collator=collate,
                                   callbacks=[HFCallback(monitor)])
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "bands.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert set(lines[0]) == {"step", "image", "text"}


def test_lightning_callback(tmp_path):
    """A real PyTorch Lightning Trainer (CPU, no logger) whose training_step returns the batch embeddings."""
    lightning = pytest.importorskip("lightning.pytorch")
    from sdetool.monitor import LightningCallback

    class DualEncoder(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.image = torch.nn.Linear(24, 16)
            self.text = torch.nn.Linear(12, 16)

        def training_step(self, batch, batch_idx):
            image, text = self.image(batch[0]), self.text(batch[1])
            logits = torch.nn.functional.normalize(image, dim=1) @ torch.nn.functional.normalize(text, dim=1).T
            loss = torch.nn.functional.cross_entropy(10 * logits, torch.arange(len(image)))
            return {"loss": loss, "image_embeds": image, "text_embeds": text}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(256, 24, generator=generator), torch.randn(256, 12, generator=generator))
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    monitor = BandMonitor(str(tmp_path / "bands.jsonl"), every=2)
    trainer = lightning.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[LightningCallback(monitor)], default_root_dir=str(tmp_path))
    trainer.fit(DualEncoder(), loader)
    lines = [json.loads(line) for line in (tmp_path / "bands.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]  # the global step after each optimizer step, every 2nd
    for line in lines:
        assert set(line) == {"step", "image", "text"}
        for name in ("image", "text"):
            assert line[name]["strong"]["count"] + line[name]["weak"]["count"] + line[name]["noise"]["count"] <= 16
            assert sum(line[name][band]["energy_share"] for band in ("strong", "weak", "noise")) == pytest.approx(1.0)
