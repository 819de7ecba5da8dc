"""Train the image tower of ``builtin:lit-fmnist`` against the locked MiniLM text tower (LiT-style).

    python -m sdetool.finetune.train_lit                      # the recipe of the shipped weights
    python -m sdetool.finetune.train_lit --out /tmp/lit.safetensors --epochs 2

Data: Fashion-MNIST train (60k images, shipped with sdetool), each image paired with
its class phrase in a template drawn at random every step (``fashion_mnist.TEMPLATES``). The text
tower's features of the 60 distinct captions are computed once; only the CNN, both projections and
the temperature train. Loss: symmetric contrastive cross-entropy in which every caption of the
image's class is a positive (a batch of 256 holds ~25 images of each class, so one-hot targets would
punish correct matches). Evaluation: zero-shot accuracy on the 10k test images against the ten class
prompts averaged over the templates. Results go to ``<out>.json`` beside the weights; the model card
(``lit_fmnist.md``) quotes them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from sdetool.extract.data import fashion_mnist


@dataclass(frozen=True)
class Recipe:
    epochs: int = 3
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    train_limit: int | None = None  # use the first N train images (tests); None = all 60k
    threads: int = 2


def caption_features(text_tower) -> "object":
    """MiniLM features of every class phrase in every template, shape (classes, templates, 384)."""
    import torch

    captions = [template.format(phrase) for phrase in fashion_mnist.PHRASES for template in fashion_mnist.TEMPLATES]
    with torch.no_grad():
        features = text_tower.encode_texts(captions).float()
    return features.reshape(len(fashion_mnist.PHRASES), len(fashion_mnist.TEMPLATES), -1)


def standardize(images: np.ndarray):
    """uint8 (n, 28, 28) -> float tensor (n, 1, 28, 28), as ``GrayscaleTransform`` does."""
    import torch

    from sdetool.extract.models.lit import standardize_pixels

    return torch.from_numpy(standardize_pixels(images)).unsqueeze(1)


def contrastive_loss(image_embeddings, text_embeddings, labels, logit_scale):
    """Symmetric cross-entropy with every same-class pair as a positive (:func:`sdetool.finetune.sde.info_nce`)."""
    from sdetool.finetune.sde import info_nce

    return info_nce(image_embeddings, text_embeddings, labels, logit_scale)


def class_prototypes(network, features):
    """Zero-shot classifier: per class, the mean of its normalised caption embeddings, renormalised (K, d)."""
    import torch.nn.functional as F

    per_caption = F.normalize(network.encode_text_features(features), dim=-1)  # (K, T, d)
    return F.normalize(per_caption.mean(dim=1), dim=-1)


def zero_shot_accuracy(network, features, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Share of ``images`` whose nearest class prototype is their label."""
    import torch
    import torch.nn.functional as F

    network.eval()
    with torch.no_grad():
        prototypes = class_prototypes(network, features)
        correct = 0
        for start in range(0, len(images), batch):
            embeddings, _ = network.encode_image(standardize(images[start:start + batch]))
            predicted = (F.normalize(embeddings, dim=-1) @ prototypes.T).argmax(dim=1).numpy()
            correct += int((predicted == labels[start:start + batch]).sum())
    return correct / len(images)


def train(recipe: Recipe, log=print):
    """Train from scratch; returns the network and a dict of results (accuracy, loss, time)."""
    import torch

    from sdetool.extract.models.lit import build_network, minilm_folder
    from sdetool.extract.models.st import SentenceEncoder, read_sentence_config

    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    generator = np.random.default_rng(recipe.seed)
    train_split, test_split = fashion_mnist.load("train"), fashion_mnist.load("test")
    images, labels = train_split.images, train_split.labels
    if recipe.train_limit:
        images, labels = images[: recipe.train_limit], labels[: recipe.train_limit]
    folder = minilm_folder()
    features = caption_features(SentenceEncoder("st:" + folder, folder, read_sentence_config(folder)))
    network = build_network()
    steps_per_epoch = len(images) // recipe.batch_size
    total = steps_per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(network.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.learning_rate, total_steps=max(total, 1))
    started, last_loss = time.perf_counter(), float("nan")
    for epoch in range(recipe.epochs):
        network.train()
        order = generator.permutation(len(images))
        for step in range(steps_per_epoch):
            index = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            batch_labels = torch.from_numpy(labels[index])
            templates = torch.from_numpy(generator.integers(0, len(fashion_mnist.TEMPLATES), len(index)))
            image_embeddings, _ = network.encode_image(standardize(images[index]))
            text_embeddings = network.encode_text_features(features[batch_labels, templates])
            loss = contrastive_loss(torch.nn.functional.normalize(image_embeddings, dim=-1),
                                    torch.nn.functional.normalize(text_embeddings, dim=-1),
                                    batch_labels, network.logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            last_loss = loss.item()
            if step % 50 == 0:
                log(f"epoch {epoch} step {step}/{steps_per_epoch} loss {last_loss:.4f}")
    seconds = time.perf_counter() - started
    accuracy = zero_shot_accuracy(network, features, test_split.images, test_split.labels)
    results = {"zero_shot_accuracy_test": round(accuracy, 4), "final_loss": round(last_loss, 4),
               "train_seconds": round(seconds, 1), "train_images": int(len(images)), "steps": int(total)}
    return network.eval(), results


def tensor_digest(state: dict) -> str:
    """SHA-256 over the tensors (names, shapes, bytes) in name order: the weights' revision."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def save(network, recipe: Recipe, results: dict, path: str) -> None:
    """Write the weights (safetensors, recipe and digest in the metadata) and ``<path>.json``."""
    from safetensors.torch import save_file

    from sdetool.extract.models.lit import EMBED_DIM

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    metadata = {"embed_dim": str(EMBED_DIM), "recipe": json.dumps(asdict(recipe)), "sha256": tensor_digest(state),
                "results": json.dumps(results)}
    save_file(state, path, metadata=metadata)
    with open(path.rsplit(".", 1)[0] + ".json", "w") as handle:
        json.dump({"recipe": asdict(recipe), "results": results, "sha256": metadata["sha256"]}, handle, indent=2)
        handle.write("\n")


def main(argv: list[str] | None = None) -> int:
    from sdetool.extract.models.lit import WEIGHTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=WEIGHTS, help="Where to write the weights (default: the shipped file).")
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    parser.add_argument("--learning-rate", type=float, default=Recipe.learning_rate)
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--train-limit", type=int, default=None, help="Train on the first N images only.")
    args = parser.parse_args(argv)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                    seed=args.seed, train_limit=args.train_limit)
    network, results = train(recipe, log=lambda line: print(line, file=sys.stderr))
    save(network, recipe, results, args.out)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
