"""Models and datasets for inference jobs, all made offline.

- `zoo`: `resnet18` and `alexnet` (torchvision architectures, seeded UNTRAINED weights: true
  compute cost, meaningless labels) and `MODEL_INFO`; `inspect_model` for a user's ONNX file.
- `digits`: scikit-learn's digits data and two classifiers trained on it for real.
- `images`: distinct sample photos from scikit-learn's bundled images, and the ImageNet
  preprocessing workers apply.

`digits` imports scikit-learn (about a second), so it is not imported here.
"""

from idunno.inference.images import (
    ImageDecodeError,
    decode_imagenet,
    preprocess_imagenet,
    sample_images,
)
from idunno.inference.zoo import (
    MODEL_INFO,
    ModelInfo,
    build_alexnet,
    build_model,
    build_resnet18,
    inspect_model,
    read_metadata,
)

__all__ = [
    "MODEL_INFO",
    "ImageDecodeError",
    "ModelInfo",
    "build_alexnet",
    "build_model",
    "build_resnet18",
    "decode_imagenet",
    "inspect_model",
    "preprocess_imagenet",
    "read_metadata",
    "sample_images",
]
