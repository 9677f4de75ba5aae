"""Image I/O and conversions shared by every stage (uint8 HWC on disk, float BCHW in methods)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from harness.errors import HarnessError


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; a broken file is a one-line error."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos: apply the EXIF orientation
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise HarnessError(f"image not found: {path}") from None
    except OSError as exc:
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
    """Write via a temporary file and rename, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(path: Path, image: np.ndarray) -> None:
    """Save uint8 (H, W, 3) as PNG, atomically."""
    import io

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
