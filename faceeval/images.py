"""Image I/O and conversions shared by every stage (uint8 HWC on disk, float BCHW in methods)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from faceeval.errors import HarnessError, is_no_space, no_space
from faceeval.timing import stage

#: Pillow modes with more than 8 bits per sample: ``convert("RGB")`` clips them (a 16-bit
#: greyscale PNG would come out all white), so they are scaled to 8 bits here instead.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_rgb8(im: Image.Image) -> np.ndarray:
    if im.mode not in _WIDE_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    a = np.asarray(im).astype(np.float64)  # (H, W) 16-bit, 32-bit int or float samples
    if im.mode == "F":
        top = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0
    else:  # 16-bit data stored as I;16 or I: full scale is 65535 unless it fits 8 bits
        top = 65535.0 if np.max(a, initial=0) > 255 else 255.0
    grey = np.clip(np.nan_to_num(a / top * 255.0), 0, 255).round().astype(np.uint8)  # (H, W)
    return np.repeat(grey[..., None], 3, axis=2)  # (H, W, 3)


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; a broken file is a one-line error.

    16-bit and float greyscale images are scaled to 8 bits (not clipped); images over
    Pillow's decompression-bomb limit are refused with the same one-line error."""
    try:
        with stage("decode"), Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos: apply the EXIF orientation
            return _to_rgb8(im)
    except FileNotFoundError:
        raise HarnessError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise HarnessError(f"cannot read image {path}: refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises all three on corrupt files
        raise HarnessError(f"cannot read image {path}: {exc}") from None


def pixel_sha256(image: np.ndarray) -> str:
    """Content hash of decoded pixels (shape included): PNG re-encodings hash the same."""
    h = hashlib.sha256(f"{image.shape}|{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a killed run never leaves half a file. A
    full disk is a one-line error naming the folder (the previous file, if any, is intact)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    except OSError as exc:
        if is_no_space(exc):
            raise no_space(path.parent) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_no_space(exc):
            raise no_space(path.parent) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: Path, dpi: int) -> None:
    """Render a matplotlib figure to memory and write it in one rename (its format from the
    suffix, PNG by default): a kill never leaves half a file."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    atomic_write_bytes(Path(path), buf.getvalue())


def save_png(path: Path, image: np.ndarray) -> None:
    """Save uint8 (H, W, 3) as PNG, atomically."""
    import io

    with stage("write"):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=4)
        atomic_write_bytes(path, buf.getvalue())


def to_tensor(batch: np.ndarray, size: int | None = None, device: str = "cpu"):
    """uint8 (B, H, W, 3) -> float (B, 3, size, size) in [0, 1] on ``device``."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)  # (B, H, W, 3) uint8
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0)


def to_uint8(x, size: int | None = None) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, size, size, 3), rounding to nearest."""
    import torch
    import torch.nn.functional as F

    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W), got {tuple(x.shape)}")
    x = x.detach().float()
    if size is not None and (x.shape[-2] != size or x.shape[-1] != size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)  # (B, 3, H, W)
    return x.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
