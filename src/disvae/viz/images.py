"""Image arrays: conversion to uint8, grids with padding, labels, upsampling, PNG/GIF bytes.

Conventions used throughout `disvae.viz`: a *batch* of images is float ``(N, C, H, W)`` in
[0, 1] (what ``torch.sigmoid(model.decode(z))`` gives, as NumPy); a *picture* (what a figure
function returns) is uint8 ``(H, W, C)`` with C = 1 (grayscale) or 3 (RGB).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from disvae.utils import atomic_write_bytes

PAD_VALUE = 128  # mid-grey between cells: visible on black (dSprites) and on white backgrounds


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (any shape) to uint8 0..255; uint8 input is returned unchanged.

    Values outside [0, 1] are clipped; non-finite ones (a model whose weights diverged) are
    mapped without a warning: NaN to 0 (black), +inf to 255 and -inf to 0.
    """
    if images.dtype == np.uint8:
        return images
    finite = np.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(finite, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def tile_patches(images: np.ndarray, n_patches: int) -> np.ndarray:
    """Multi-patch samples ``(N, P*C, S, S)`` (patch i in channels [i*C, (i+1)*C)) as pictures
    of their patches side by side, ``(N, C, S, P*S)``; ``n_patches`` 1 returns ``images``."""
    if n_patches == 1:
        return images
    n, pc, h, w = images.shape
    if pc % n_patches:
        raise ValueError(f"{pc} channels do not split into {n_patches} patches")
    parts = images.reshape(n, n_patches, pc // n_patches, h, w)
    return parts.transpose(0, 2, 3, 1, 4).reshape(n, pc // n_patches, h, n_patches * w)


def make_grid(images: np.ndarray, n_cols: int, pad: int = 2) -> np.ndarray:
    """Tile images into a grid, row by row.

    Args:
        images: ``(N, C, H, W)`` float in [0, 1] or uint8.
        n_cols: images per row; the last row is padded with blank cells.
        pad: pixels of mid-grey between and around cells.

    Returns:
        uint8 ``(rows*(H+pad)+pad, n_cols*(W+pad)+pad, C)``.
    """
    images = to_uint8(np.asarray(images))
    n, c, h, w = images.shape
    n_rows = max(1, -(-n // n_cols))
    out = np.full(
        (n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, c), PAD_VALUE, dtype=np.uint8
    )
    for i in range(n):
        r, k = divmod(i, n_cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        out[top : top + h, left : left + w] = images[i].transpose(1, 2, 0)
    return out


def upsample(picture: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of a picture ``(H, W, C)`` by an integer ``factor``."""
    if factor <= 1:
        return picture
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


def stack_rows(pictures: Sequence[np.ndarray], pad: int = 0) -> np.ndarray:
    """Pictures ``(H_i, W_i, C)`` one above the other, right-padded to the widest."""
    width = max(p.shape[1] for p in pictures)
    c = pictures[0].shape[2]
    parts = []
    for p in pictures:
        row = np.full((p.shape[0], width, c), PAD_VALUE, dtype=np.uint8)
        row[:, : p.shape[1]] = p
        parts.append(row)
        if pad:
            parts.append(np.full((pad, width, c), PAD_VALUE, dtype=np.uint8))
    return np.concatenate(parts[:-1] if pad else parts, axis=0)


def label_rows(
    picture: np.ndarray, labels: Sequence[str], row_height: int, pad: int, width: int = 0
) -> np.ndarray:
    """Write one text label left of each row of a grid.

    Args:
        picture: uint8 ``(H, W, C)`` grid whose rows are ``row_height`` pixels apart after an
            initial ``pad`` (as `make_grid` lays them out).
        labels: one string per row (top to bottom).
        width: width of the label strip in pixels (0: fit the longest label).

    Returns:
        uint8 ``(H, width + W, C)``: a white strip with black text, then the picture.
    """
    strip = label_strip(picture.shape[0], picture.shape[2], labels, row_height, pad, width)
    return np.concatenate([strip, picture], axis=1)


def label_width(labels: Sequence[str]) -> int:
    """Width in pixels of the strip `label_strip` draws for ``labels`` (its default)."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    return 8 + max((int(font.getlength(t)) for t in labels), default=0)


def label_strip(
    height: int, channels: int, labels: Sequence[str], row_height: int, pad: int, width: int = 0
) -> np.ndarray:
    """The strip of row labels that `label_rows` puts left of a grid ``height`` pixels high.

    Drawn once, it can be put beside every frame of an animation of that grid (the frames
    then all have the same width).

    Returns:
        uint8 ``(height, width, channels)``: white, with each label in black, vertically
        centred on its row.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = width or label_width(labels)
    strip = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(labels):
        top = pad + i * row_height + row_height // 2 - 6
        draw.text((4, top), text, fill=0, font=font)
    return np.asarray(strip)[:, :, None].repeat(channels, axis=2)


def caption(picture: np.ndarray, text: str) -> np.ndarray:
    """A picture ``(H, W, C)`` with a white band of black ``text`` on top."""
    from PIL import Image, ImageDraw

    band = Image.new("L", (picture.shape[1], 14), 255)
    ImageDraw.Draw(band).text((3, 1), text, fill=0)
    band_arr = np.asarray(band)[:, :, None].repeat(picture.shape[2], axis=2)
    return np.concatenate([band_arr, picture], axis=0)


def _pil(picture: np.ndarray):
    from PIL import Image

    picture = to_uint8(np.asarray(picture))
    if picture.ndim == 3 and picture.shape[2] == 1:
        return Image.fromarray(picture[:, :, 0], mode="L")
    if picture.ndim == 2:
        return Image.fromarray(picture, mode="L")
    return Image.fromarray(picture[:, :, :3], mode="RGB")


def posterize(picture: np.ndarray, levels: int) -> np.ndarray:
    """A uint8 picture with each channel rounded to ``levels`` evenly spaced values.

    Used for long GIFs: decoded grey levels compress poorly under GIF's LZW, while 16 levels look
    the same at a glance and make the file several times smaller.
    """
    step = 255 / (levels - 1)
    return (np.round(to_uint8(np.asarray(picture)) / step) * step).round().astype(np.uint8)


def png_bytes(picture: np.ndarray) -> bytes:
    """PNG encoding of a picture ``(H, W, C)`` (C = 1: grayscale, 3: RGB)."""
    buf = io.BytesIO()
    _pil(picture).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (parent folders created) through a temporary file renamed over
    it: an interrupted or failed write leaves the old file (or none), never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    """Write a picture ``(H, W, C)`` to ``path`` as PNG (parent folders created, atomically)."""
    return _write(path, png_bytes(picture))


def read_png(path: str | Path) -> np.ndarray:
    """A PNG file as a picture uint8 ``(H, W, C)``."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L" if im.mode in ("L", "1", "P") else "RGB"))
    return arr[:, :, None] if arr.ndim == 2 else arr


def gif_bytes(frames: Sequence[np.ndarray], fps: float = 10.0, loop: int = 0) -> bytes:
    """An animated GIF of pictures ``(H, W, C)`` (all the same shape); ``loop=0`` loops forever.

    Pillow merges consecutive identical frames (their durations add up), so a GIF of an unused
    latent may hold fewer frames than were given; its total duration is unchanged.
    """
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    images = [_pil(f) for f in frames]
    buf = io.BytesIO()
    duration = max(20, round(1000 / fps))
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=loop
    )
    return buf.getvalue()


def save_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 10.0) -> Path:
    """Write an endlessly looping GIF of pictures ``(H, W, C)`` to ``path`` (atomically)."""
    return _write(path, gif_bytes(frames, fps))
