"""Face-image folders for training, and a sampler whose position can be saved and restored.

Any folder works: flat, nested (FFHQ's ``images1024x1024/00000/00000.png``), mixed formats.
Files are listed recursively and sorted by relative path, so the order (and with it the
hold-out split and every shuffle) is the same on every machine and every rank.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from faceeval.errors import HarnessError
from faceeval.images import load_rgb, to_tensor

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_SEED_MIX = 1_000_003  # a prime that spreads (seed, epoch, index) into distinct augmentation seeds


def check_image(path: Path) -> str | None:
    """Why ``path`` cannot be trained on, or None. Reads the whole file but decodes cheaply:
    PNG chunks are checksummed (``verify``), JPEGs are decoded at 1/8 scale (a truncated
    file fails), so a bad file is found before training, not at its first batch."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if min(im.size) < 1:
                return f"empty image ({im.size[0]}x{im.size[1]})"
            im.verify()
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
    except Image.DecompressionBombError:
        return "refused as a decompression bomb"
    except Exception as exc:  # noqa: BLE001 - anything Pillow raises means the file is unusable
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return None


def check_images(files: list[Path], limit: int = 5) -> None:
    """Every training image readable, else one HarnessError that names the bad files."""
    bad = [(f, why) for f in files if (why := check_image(f)) is not None]
    if bad:
        shown = "; ".join(f"{f} ({why})" for f, why in bad[:limit])
        more = f"; ... and {len(bad) - limit} more" if len(bad) > limit else ""
        raise HarnessError(f"{len(bad)} of {len(files)} training images cannot be read: {shown}{more} "
                           "(remove or replace them)")


def list_images(root: Path, check: bool = True) -> list[Path]:
    """All image files under ``root`` (recursively, hidden files and folders skipped), sorted;
    with ``check``, every file is checked to decode (:func:`check_images`) before training."""
    root = Path(root)
    if not root.is_dir():
        raise HarnessError(f"training data folder not found: {root}")
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise HarnessError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    if check:
        check_images(files)
    return files


def center_square(image: np.ndarray) -> np.ndarray:
    """Crop an (H, W, 3) image to its central square (aligned face crops are square already)."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top : top + s, left : left + s]


class FaceFolder(Dataset):
    """Images resized to ``resolution``, as (3, R, R) float in [-1, 1].

    Items are addressed by ``(index, aug_seed)`` (what :class:`ResumableSampler` yields), so
    that the augmentation of a sample is fixed by the sampler's position, not by which worker
    process happened to load it: a resumed run sees the same flips as an uninterrupted one.
    """

    def __init__(self, files: list[Path], resolution: int, hflip: bool = True, cache: bool = False,
                 with_index: bool = False) -> None:
        if not files:
            raise HarnessError("empty image list")
        self.files = list(files)
        self.resolution = resolution
        self.hflip = hflip
        self.with_index = with_index  # items are (image, index): a trainer that looks up per-image data
        self._cache: dict[int, Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Tensor:
        """The un-augmented image ``index`` as (3, R, R) in [-1, 1]."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = center_square(load_rgb(self.files[index]))  # (S, S, 3) uint8
        x = to_tensor(image[None], size=self.resolution)[0].mul_(2.0).sub_(1.0)  # (3, R, R)
        if self._cache is not None:
            self._cache[index] = x
        return x

    def __getitem__(self, key: tuple[int, int] | int) -> Tensor | tuple[Tensor, int]:
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        x = self.load(index)
        if self.hflip and aug_seed is not None:
            g = torch.Generator().manual_seed(aug_seed)
            if torch.rand((), generator=g).item() < 0.5:
                x = x.flip(-1)  # (3, R, R), mirrored left-right
        return (x, index) if self.with_index else x


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffled, sharded across ranks, whole batches only, and restartable mid-epoch.

    Epoch ``e`` is a permutation seeded by ``seed + e``, cut to a multiple of
    ``world_size * batch_size``; rank ``r`` takes every ``world_size``-th index starting at
    ``r`` (as DistributedSampler). ``set_position(epoch, batch)`` makes the next iteration
    start at that batch of that epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True) -> None:
        if n < batch_size * world_size:
            raise HarnessError(f"{n} training images are fewer than one global batch "
                               f"({batch_size} x {world_size} ranks); add images or lower --batch-size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start_batch = epoch, batch

    def _order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self._order()
        for pos in range(self.start_batch * self.batch_size, len(mine)):
            index = mine[pos]
            aug_seed = ((self.seed * _SEED_MIX + self.epoch) * _SEED_MIX + index) % (2**63)
            yield index, aug_seed
