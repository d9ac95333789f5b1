"""A small ImageNet-shaped classifier for tests that need image jobs but not AlexNet's cost:
224x224x3 in, 1000 scores out, about as long per query as AlexNet but in 0.5 MB instead of
244 MB (building, storing and loading AlexNet was the slowest part of a test module's set-up)."""

from __future__ import annotations

from idunno.inference.zoo import IMAGENET_CLASSES, INPUT_NAME, OUTPUT_NAME, _GraphBuilder


def build_tiny_imagenet(seed: int = 0) -> bytes:
    """conv7x7/2 (3->64) and conv3x3 (64->96) at 112x112, each with a relu, maxpool, global
    average pool, fc: about AlexNet's time per query on one thread in 0.5 MB of weights."""
    g = _GraphBuilder(seed)
    x = g.relu(g.conv(INPUT_NAME, 3, 64, 7, stride=2, pad=3))
    x = g.maxpool(g.relu(g.conv(x, 64, 96, 3, pad=1)), 3, 2, pad=1)
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    logits = g.gemm(x, 96, IMAGENET_CLASSES, relu_follows=False)
    g.op("Identity", [logits], output=OUTPUT_NAME)
    return g.model("tinynet", seed, OUTPUT_NAME, "a small ImageNet-shaped test model; untrained")
