"""Image transforms with torchvision's semantics, in numpy/PIL.

The official code's pre-processing is ``Resize((256, 256))`` (PIL bilinear) → ``RandomCrop(224)`` or
``CenterCrop(224)`` → ``RandomHorizontalFlip`` → ``ToTensor`` + ImageNet ``Normalize``. Here every
step is a pure function of a uint8 ``[H, W, C]`` array; the random ones take an explicit
``np.random.Generator``, so the pipeline can seed each example by ``(seed, epoch, index)`` and
stay reproducible whatever the number of worker processes. Output is float32 ``[H, W, 3]``
(channels last, the layout of the JAX models).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Literal

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageValueError(ValueError):
    """An image whose pixel values have no 8-bit meaning (refused rather than clipped)."""


def _from_16_bit(values: np.ndarray) -> np.ndarray:
    """16-bit values ``[0, 65535]`` → uint8 ``round(v / 257)`` (65535 → 255, 257·k → k; never a
    tie, as 257 is odd)."""
    values = np.asarray(values, np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageValueError(
            f"integer image with values in [{values.min()}, {values.max()}], outside the 16-bit "
            "range [0, 65535]; save it as an 8-bit or 16-bit image"
        )
    return ((values + 128) // 257).astype(np.uint8)


def _from_float(values: np.ndarray) -> np.ndarray:
    """Float values in ``[0, 1]`` → uint8 ``round(255 v)`` (halves up). Values at most half an
    8-bit step outside ``[0, 1]`` (rounding noise) become 0 or 255; anything else — NaN, inf,
    ``[0, 255]`` floats, negative values — is refused, never clipped."""
    values = np.asarray(values, np.float64)
    slack = 0.5 / 255.0
    if values.size and not (
        np.all(np.isfinite(values)) and values.min() >= -slack and values.max() <= 1.0 + slack
    ):
        finite = values[np.isfinite(values)]
        seen = (
            f"[{finite.min():g}, {finite.max():g}]" if finite.size == values.size else "NaN or inf"
        )
        raise ImageValueError(
            f"float image with values in {seen}, outside [0, 1]; scale it to [0, 1] or save it "
            "as an 8-bit image"
        )
    return np.clip(np.floor(values * 255.0 + 0.5), 0, 255).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode → uint8 ``[H, W, 3]``, every bit depth scaled to 8 bits.

    - 8-bit modes (``L``, ``RGB``, ``P``, ``CMYK``, ``YCbCr``, ``1``, ``LA``, ``RGBA``, ``PA``,
      ...): PIL's ``.convert("RGB")``, as the official code's loaders: grey is repeated, a palette
      looked up, CMYK becomes ``255·(1 − C)(1 − K)``, 1-bit 0/255. **Alpha is dropped** (the
      colour stored under a transparent pixel is kept, as in the official code; it is not
      composited onto a background).
    - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit integer ``I`` (read as
      16-bit): ``round(v / 257)``, repeated to RGB; ``I`` values outside ``[0, 65535]`` are
      refused. (Pillow decodes 16-bit RGB(A) PNGs to 8-bit itself, keeping each high byte.)
    - 32-bit float ``F``: values in ``[0, 1]`` → ``round(255 v)``, rounding noise up to half an
      8-bit step outside ``[0, 1]`` clipped; other values (NaN, floats in ``[0, 255]``, ...)
      are refused.

    Raises:
      ImageValueError: integer or float pixel values outside the ranges above.
      ValueError: a mode PIL cannot convert to RGB.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        grey = _from_16_bit(np.asarray(image))
    elif mode == "F":
        grey = _from_float(np.asarray(image))
    else:
        return np.asarray(image.convert("RGB"))
    return np.repeat(grey[:, :, None], 3, axis=2)


def decode_rgb(data: bytes | str) -> np.ndarray:
    """Decodes encoded image bytes or a file path to uint8 ``[H, W, 3]`` with
    :func:`pil_to_rgb` (8-bit images exactly as PIL ``.convert("RGB")`` in the official code's
    loaders: grey and palette images become RGB, alpha is dropped; 16-bit and float images are
    scaled to 8 bits, not clipped)."""
    source = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    with Image.open(source) as image:
        return pil_to_rgb(image)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``[H, W]``/``[H, W, 1]``/``[H, W, 3]``/``[H, W, 4]`` → uint8 ``[H, W, 3]`` (alpha dropped).

    uint8 is used as it is; uint16 is 16-bit (``round(v / 257)``); bool is 0/255; floats must be
    in ``[0, 1]`` (``round(255 v)``); other integer types must hold 8-bit values ``[0, 255]``.

    Raises:
      ImageValueError: values outside those ranges (never wrapped or clipped).
      ValueError: another number of channels, or a non-numeric array.
    """
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = _from_16_bit(image)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * np.uint8(255)
    elif np.issubdtype(image.dtype, np.floating):
        image = _from_float(image)
    elif np.issubdtype(image.dtype, np.integer) and image.dtype != np.uint8:
        if image.size and (image.min() < 0 or image.max() > 255):
            raise ImageValueError(
                f"{image.dtype} image with values in [{image.min()}, {image.max()}], outside the "
                "8-bit range [0, 255]; give uint8 (or uint16, or float in [0, 1]) images"
            )
        image = image.astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"expected a numeric image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got image shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        return image[:, :, :3]
    if image.shape[2] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got image shape {image.shape}")
    return image


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes uint8 ``[H, W, 3]`` to ``size = (height, width)`` with PIL bilinear filtering —
    what torchvision's ``Resize((h, w))`` does on a PIL image (antialiased when shrinking)."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def center_crop_box(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """``(top, left)`` of torchvision's ``CenterCrop(size)``: ``int(round((H - size) / 2))``
    (Python's round, half to even), likewise for the width."""
    height, width = shape[:2]
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the image {height}x{width}")
    return round((height - size) / 2.0), round((width - size) / 2.0)


def random_crop_box(shape: tuple[int, ...], size: int, rng: np.random.Generator) -> tuple:
    """``(top, left)`` of torchvision's ``RandomCrop(size)``: uniform in ``[0, H - size]``,
    ``[0, W - size]`` (top drawn first)."""
    height, width = shape[:2]
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the image {height}x{width}")
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return top, left


def crop(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """The ``size`` × ``size`` window at ``(top, left)``."""
    return image[top : top + size, left : left + size]


def normalize(
    image: np.ndarray,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """uint8 → float32 ``(x / 255 - mean) / std`` per channel (``ToTensor`` + ``Normalize``,
    computed in float32 in the same order)."""
    x = image.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Resize → crop → optional random horizontal flip → normalise, as one picklable callable.

    ``resize``: ``(height, width)``; an int ``n`` means ``(n, n)`` (the official code's
    ``Resize((256, 256))``, not torchvision's shorter-edge meaning of ``Resize(n)``); ``None``
    keeps the size. ``crop``: ``"random"``, ``"center"`` or ``"none"`` with ``crop_size``.
    ``flip``: a horizontal flip with probability 1/2.
    """

    resize: int | tuple[int, int] | None = (256, 256)
    crop_size: int = 224
    crop: Literal["random", "center", "none"] = "center"
    flip: bool = False
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if self.crop not in ("random", "center", "none"):
            raise ValueError(f"crop must be 'random', 'center' or 'none', got {self.crop!r}")
        if isinstance(self.resize, int):
            object.__setattr__(self, "resize", (self.resize, self.resize))

    @property
    def is_random(self) -> bool:
        """Whether the output depends on the generator."""
        return self.flip or self.crop == "random"

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of every output, or ``None`` if it depends on the input."""
        if self.crop != "none":
            return (self.crop_size, self.crop_size)
        return None if self.resize is None else tuple(self.resize)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """uint8 ``[H, W, C]`` (or any depth :func:`to_rgb` scales) → float32 ``[h, w, 3]``;
        ``rng`` is required when random."""
        if self.is_random and rng is None:
            raise ValueError("a random transform needs an np.random.Generator")
        image = to_rgb(image)
        if self.resize is not None:
            image = resize(image, self.resize)
        if self.crop == "random":
            image = crop(image, *random_crop_box(image.shape, self.crop_size, rng), self.crop_size)
        elif self.crop == "center":
            image = crop(image, *center_crop_box(image.shape, self.crop_size), self.crop_size)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return normalize(image, self.mean, self.std)


def train_transform(
    resize: int | tuple[int, int] = 256, crop_size: int = 224, crop: str = "random"
) -> ImageTransform:
    """The official code's training transform (MetaAlign ``image_target``, CGDM ImageCLEF):
    resize → random crop → random horizontal flip → ImageNet normalisation. ``crop="center"``
    gives CGDM's VisDA/DomainNet variant."""
    return ImageTransform(resize=resize, crop_size=crop_size, crop=crop, flip=True)


def eval_transform(
    resize: int | tuple[int, int] = 256, crop_size: int = 224, *, stochastic: bool = False
) -> ImageTransform:
    """Evaluation: resize → center crop, deterministic (MetaAlign ``image_test``).

    ``stochastic=True`` reproduces CGDM's test transform, which keeps the random flip (and, for
    ImageCLEF, the random crop: pass ``crop="random"`` to :class:`ImageTransform` directly).
    """
    return ImageTransform(resize=resize, crop_size=crop_size, crop="center", flip=stochastic)
