"""Random zoomed crops of unlabeled photo folders, network-ready: the data noise and attackers are fitted on.

Faces in the deployed path are large: FDDB's protocol upscales ×3, so its faces are
about 180–750 px (median ≈ 380 px) at the network input, while the WIDER subset's
faces are small (median ≈ 11 px in its 416×416 stretched frames) and the dlib photos'
are medium. Each sample is therefore the image resized by a random factor drawn
log-uniformly from ``scale_range`` and cropped to ``crop``×``crop``: at the default
×2–×6 WIDER faces become ≈ 20–650 px and dlib faces ≈ 120–600 px, covering the sizes
the tail sees on FDDB. FDDB itself is evaluation data and is refused here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from veil.data.images import list_images
from veil.models import InputSpec
from veil.preprocess import BGR_MEAN, ImageReadError, load_image, prepare

DEFAULT_SCALE_RANGE = (2.0, 6.0)
DEFAULT_CROP = 512


class ImageCrops(Dataset):
    """``crops_per_image`` random zoomed crops per image: ``[C, crop, crop]`` network-ready tensors,
    normalised as ``input`` says (a model's input spec; default FaceBoxes': mean-subtracted BGR).

    Crops are a fixed function of ``(seed, index)``, so a fit's data is reproducible and
    recorded by its settings. Corrupt images are reported once and skipped.
    """

    def __init__(
        self,
        dirs: Sequence[str | Path],
        crop: int = DEFAULT_CROP,
        scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
        crops_per_image: int = 1,
        seed: int = 0,
        input: InputSpec | None = None,
    ) -> None:
        if input is not None and input.size is not None:
            raise ValueError(
                f"zoomed crops are for models that take any input size; this one takes a fixed {input.size} input "
                "(give its own network-ready data instead)"
            )
        self.input = input
        if crop < 32 or crop % 32:
            raise ValueError(f"crop must be a positive multiple of 32 (the head's stride), got {crop}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {scale_range}")
        self.files: list[Path] = []
        for f in list_images(dirs):
            try:  # decode once up front so a corrupt file is reported, not a crash mid-fit
                load_image(f)
                self.files.append(f)
            except ImageReadError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
        if not self.files:
            raise ValueError("no readable images to fit on")
        self.crop, self.scale_range = crop, (float(lo), float(hi))
        self.crops_per_image, self.seed = int(crops_per_image), int(seed)

    def __len__(self) -> int:
        return len(self.files) * self.crops_per_image

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.sample(i)[0]

    def sample(self, i: int) -> tuple[torch.Tensor, tuple[float, float, int, int]]:
        """Crop ``i`` and where it came from: ``(sx, sy, y, x)``, the resize factors (network px per
        original px) and the crop's top-left corner in the resized image, so boxes can follow it."""
        rng = np.random.default_rng([self.seed, i])
        image = load_image(self.files[i // self.crops_per_image])
        lo, hi = self.scale_range
        scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        spec = self.input or InputSpec(mean=BGR_MEAN)  # default: FaceBoxes' normalisation
        t = prepare(image, scale, mean=spec.mean, std=spec.std, channels=spec.channels).tensor[0]
        sx, sy = t.shape[2] / image.shape[1], t.shape[1] / image.shape[0]
        c = self.crop
        _, h, w = t.shape
        # Pad with zeros (= the mean colour after mean subtraction) when the image is smaller than the crop.
        if h < c or w < c:
            t = torch.nn.functional.pad(t, (0, max(0, c - w), 0, max(0, c - h)))
            _, h, w = t.shape
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        return t[:, y : y + c, x : x + c].contiguous(), (sx, sy, y, x)

    def describe(self) -> dict:
        """What the fit saw, for the artifact's metadata."""
        return {
            "images": len(self.files),
            "crop": self.crop,
            "scale_range": list(self.scale_range),
            "crops_per_image": self.crops_per_image,
            "seed": self.seed,
        }
