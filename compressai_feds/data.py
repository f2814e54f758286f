"""Training and validation images: random crops from any folder of photographs.

Every crop is a pure function of ``(seed, position in the sample stream)``, so a
run resumed from a checkpoint, or split over several processes, sees exactly the
crops an uninterrupted single-process run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .images import find_images, load_rgb

__all__ = ["ImageCrops", "StreamSampler"]


def random_crop(image: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A ``size``×``size`` crop at a random position; smaller images are padded
    by replication first."""
    _, h, w = image.shape
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        image = F.pad(image[None].float(), (0, pad_w, 0, pad_h), mode="replicate")[0].to(torch.uint8)
        _, h, w = image.shape
    top = int(torch.randint(h - size + 1, (1,), generator=generator))
    left = int(torch.randint(w - size + 1, (1,), generator=generator))
    return image[:, top : top + size, left : left + size]


class ImageCrops(Dataset):
    """Random ``crop_size`` crops of the images under a folder, as floats in [0, 1].

    Indexed by ``(image index, crop seed)`` pairs from :class:`StreamSampler`.

    Args:
        folder: Any folder of photographs (searched recursively).
        crop_size: Side of the square crops.
        cache: Keep decoded images in memory (per data-loader worker).
    """

    def __init__(self, folder: str | Path, crop_size: int, cache: bool = False) -> None:
        self.paths = find_images(folder)
        self.crop_size = crop_size
        self.cache: dict[int, Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, index: int) -> Tensor:
        if self.cache is None:
            return load_rgb(self.paths[index])
        if index not in self.cache:
            self.cache[index] = load_rgb(self.paths[index])
        return self.cache[index]

    def __getitem__(self, item: tuple[int, int]) -> Tensor:
        index, crop_seed = item
        generator = torch.Generator().manual_seed(crop_seed)
        return random_crop(self._image(index), self.crop_size, generator).float() / 255


class StreamSampler(Sampler):
    """Endless stream of ``(image index, crop seed)``, split between processes.

    The global stream runs through a fresh permutation of the images each epoch.
    Global batch ``k`` is stream positions ``[kB, (k+1)B)``; process ``rank`` of
    ``world_size`` takes the ``rank``-th contiguous share of it, so the union of
    the processes' batches is the single-process batch (as with
    :class:`torch.utils.data.DistributedSampler`, but resumable at any batch).

    Args:
        num_images: Size of the dataset.
        global_batch: Batch size summed over processes.
        seed: Seed of the permutations and crops.
        start_batch: Global batch to start from (the step to resume at).
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(
        self,
        num_images: int,
        global_batch: int,
        seed: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} processes")
        self.num_images = num_images
        self.global_batch = global_batch
        self.seed = seed
        self.start_batch = start_batch
        self.rank = rank
        self.local_batch = global_batch // world_size

    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_images, generator=generator).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, permutation = -1, []
        batch = self.start_batch
        while True:
            first = batch * self.global_batch + self.rank * self.local_batch
            for position in range(first, first + self.local_batch):
                if position // self.num_images != epoch:
                    epoch = position // self.num_images
                    permutation = self._permutation(epoch)
                yield permutation[position % self.num_images], self.seed * 1_000_003 + position
            batch += 1
