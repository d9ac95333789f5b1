"""Sample photos made offline, and the ImageNet preprocessing a worker applies to them.

`sample_images` derives any number of distinct 224x224 JPEG photos from the two photos that
scikit-learn ships (china.jpg and flower.jpg, 640x427) with seeded random crops, flips and colour
changes (numpy + Pillow only). Each image depends only on (seed, index), so a larger count
extends a smaller one with the same images.

`preprocess_imagenet` is the torchvision evaluation transform: resize the shorter side to 256,
center-crop 224, scale to 0..1, normalize with the ImageNet mean/std, NCHW float32. An image that
is already 224x224 (all of ours) is used as it is. An unreadable image raises ImageDecodeError
(a ValueError) naming the item, so the caller can fail that query alone.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from collections.abc import Iterator, Sequence
from typing import Final

import numpy as np
from PIL import Image

SIZE: Final = 224
RESIZE: Final = 256  # shorter side before the center crop (torchvision's Resize(256))
JPEG_QUALITY: Final = 90
IMAGENET_MEAN: Final = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD: Final = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_PIXELS: Final = 64_000_000  # refuse bigger images before decoding them (memory)

_LUMA: Final = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_MAX_ATTEMPTS: Final = 100
# Fold the 0..255 scaling into the normalization: (x / 255 - mean) / std = x * scale - shift.
_SCALE: Final = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_SHIFT: Final = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; `item` names the query it belongs to."""

    def __init__(self, item: str, reason: str) -> None:
        super().__init__(f"cannot decode image {item!r}: {reason}")
        self.item = item


# --- sample photos -------------------------------------------------------------------------


@functools.cache
def _sources() -> tuple[Image.Image, ...]:
    """The photos scikit-learn ships, decoded once per process."""
    from sklearn.datasets import load_sample_images

    return tuple(
        Image.fromarray(np.asarray(a, dtype=np.uint8)) for a in load_sample_images().images
    )


def _crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """A random crop covering 10-100% of the area with aspect ratio 3:4..4:3 (like torchvision's
    RandomResizedCrop), clamped to the photo."""
    area = width * height * rng.uniform(0.10, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(width, round(math.sqrt(area * ratio)))
    h = min(height, round(math.sqrt(area / ratio)))
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    return x0, y0, x0 + w, y0 + h


def _colour_matrix(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A 3x3 RGB matrix combining brightness, saturation and a hue rotation, and a contrast
    factor; one matrix product per pixel does all of them."""
    brightness = rng.uniform(0.7, 1.3)
    saturation = rng.uniform(0.5, 1.5)
    contrast = rng.uniform(0.7, 1.3)
    theta = rng.uniform(-0.5, 0.5)  # radians around the grey axis
    u = np.full(3, 1 / math.sqrt(3))
    skew = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    hue = (
        math.cos(theta) * np.eye(3)
        + math.sin(theta) * skew
        + (1 - math.cos(theta)) * np.outer(u, u)
    )
    sat = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _LUMA)
    return (brightness * sat @ hue).astype(np.float32), contrast


def _render(rng: np.random.Generator) -> bytes:
    """One random variant of a source photo as 224x224 JPEG bytes."""
    sources = _sources()
    src = sources[int(rng.integers(len(sources)))]
    box = _crop_box(rng, src.width, src.height)
    img = src.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    matrix, contrast = _colour_matrix(rng)
    pixels = np.asarray(img, dtype=np.float32).reshape(-1, 3) @ matrix.T
    grey = np.float32((pixels @ _LUMA).mean())  # contrast pivots on the mean grey level
    pixels -= grey
    pixels *= np.float32(contrast)
    pixels += grey
    out = np.clip(pixels, 0, 255, out=pixels).astype(np.uint8).reshape(SIZE, SIZE, 3)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def sample_images(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """Yield `count` distinct (item id "img_000000.jpg", 224x224 RGB JPEG bytes), deterministic
    for a seed. About 800 images a second on one core."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    seen: set[bytes] = set()
    for index in range(count):
        for attempt in range(_MAX_ATTEMPTS):
            # Per-image streams: image i is the same whatever the count.
            rng = np.random.default_rng([seed, index, attempt])
            data = _render(rng)
            digest = hashlib.sha256(data).digest()
            if digest not in seen:
                break
        else:  # pragma: no cover - needs 100 identical random draws in a row
            raise RuntimeError(f"could not make a distinct image number {index}")
        seen.add(digest)
        yield f"img_{index:06d}.jpg", data


# --- preprocessing ---------------------------------------------------------------------------


def _open_rgb(data: bytes, item: str) -> Image.Image:
    """Decode fully (so truncation shows here), to RGB, at no more resolution than needed."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageDecodeError(item, f"{img.width}x{img.height} exceeds {MAX_PIXELS} px")
            # JPEG only: decode at a 1/2, 1/4 or 1/8 scale that still covers RESIZE; cheap.
            img.draft("RGB", (RESIZE, RESIZE))
            return img.convert("RGB")
    except ImageDecodeError:
        raise
    # Pillow signals bad data with OSError (UnidentifiedImageError, truncation), SyntaxError,
    # ValueError, or a DecompressionBomb error/warning (raised when warnings are errors).
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(item, str(exc) or type(exc).__name__) from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageDecodeError(item, str(exc)) from exc


def _center_224(img: Image.Image) -> Image.Image:
    """Resize the shorter side to 256 and crop the central 224x224, in one resampling."""
    if img.size == (SIZE, SIZE):
        return img
    scale = RESIZE / min(img.width, img.height)
    left = (img.width * scale - SIZE) / 2 / scale
    top = (img.height * scale - SIZE) / 2 / scale
    box = (left, top, left + SIZE / scale, top + SIZE / scale)
    return img.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box)


def decode_imagenet(data: bytes, item: str = "image") -> np.ndarray:
    """One image as normalized float32 [3, 224, 224]; ImageDecodeError names `item`."""
    pixels = np.asarray(_center_224(_open_rgb(data, item)), dtype=np.float32)
    return (pixels * _SCALE - _SHIFT).transpose(2, 0, 1)


def preprocess_imagenet(
    jpeg_bytes_list: Sequence[bytes], ids: Sequence[str] | None = None
) -> np.ndarray:
    """A batch as float32 [N, 3, 224, 224] (NCHW, ImageNet-normalized). An unreadable image
    raises ImageDecodeError naming ids[i] (or "item i"): decode one by one with
    decode_imagenet to keep the good ones."""
    if ids is not None and len(ids) != len(jpeg_bytes_list):
        raise ValueError(f"{len(ids)} ids for {len(jpeg_bytes_list)} images")
    batch = np.empty((len(jpeg_bytes_list), 3, SIZE, SIZE), dtype=np.float32)
    for i, data in enumerate(jpeg_bytes_list):
        batch[i] = decode_imagenet(data, ids[i] if ids is not None else f"item {i}")
    return batch
