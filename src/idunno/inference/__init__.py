"""Models and datasets for inference jobs, all made offline.

- `zoo`: `resnet18` and `alexnet` (torchvision architectures, seeded UNTRAINED weights: true
  compute cost, meaningless labels) and `MODEL_INFO`; `inspect_model` for a user's ONNX file.
- `digits`: scikit-learn's digits data and two classifiers trained on it for real.
- `images`: distinct sample photos from scikit-learn's bundled images, and the ImageNet
  preprocessing workers apply.

Nothing is imported here: a node or a CLI command that needs only the catalog must not pay
for ONNX, Pillow and NumPy (nor `digits` for scikit-learn, about a second).
"""
