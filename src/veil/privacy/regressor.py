"""Identity regression: predict a face's dlib embedding directly from the activation around its box.

Why: a pixel decoder must invert the head before the identity model can read anything, which is
hard from stride-32 semantic features (after FaceBoxes' Inception blocks the audit's decoders
identify 2–3 % even from the *clean* activation). An attacker who wants identity needs no
pixels: a small network reads the activation cells at the face box (:func:`roi_cells`, a
bilinear ROI-align) and regresses the embedding the audit's identity model
(:func:`veil.privacy.identity.embed_faces`) gives the original face. It is scored like any
attacker: the predicted embedding is matched against the gallery of original faces (rank-1,
chance 1/N).

Training data are **non-FDDB faces only** (the WIDER subset, the dlib photos: boxes from
:func:`veil.data.boxes.face_boxes`), built the way the audit builds its enlarged views
(:func:`veil.privacy.audit.make_views`): a crop with one face side of context, resized so the face
reaches the network at a size drawn log-uniformly over the audit's bins (48–400 px), several sizes
per face, half of them mirrored. The head runs once per sample and the activation window around
the ROI is cached with the target embedding (:func:`build_samples`, under the model's key), so
training is cheap: the obfuscation (``wire``: any callable on the clean activation — per-channel
noise, conditioned noise, a bottleneck's client side) is applied on the fly, fresh every step.

What it reaches (``benchmarks/regressor.py``, results in ``benchmarks/results/regressor``): 6–10 % of
139 held-out WIDER faces at every split, but only 3–7 % of 100 FDDB faces from the *clean*
activation, after the RDCL as after the Inception blocks — below the audit's competence bar
(10× chance) even where the pixel decoder identifies 43 %. Its limit is the training identities
(about 400 small WIDER faces), not the split: it makes no claim about the deeper splits either way.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from veil import jsonio
from veil.privacy.identity import EMBEDDING_DIM

if TYPE_CHECKING:
    from veil.models import SplitModel
    from veil.privacy.audit import FaceSet, Leak, View

#: ROI-align output: cells × cells per face.
ROI_CELLS = 6
#: Context around the face box read by the regressor, in face sides on each side.
ROI_CONTEXT = 0.25
#: Face sizes at the network input that training samples are drawn over (the audit's bins).
SIZE_RANGE = (48.0, 400.0)
#: What is applied to a clean activation before the regressor reads it (None: the clean activation).
Wire = Callable[[torch.Tensor], torch.Tensor]


class RegressorMismatchError(ValueError):
    """A regressor file made for another model, split, weights or activation shape."""


# -- ROI-align --------------------------------------------------------------------------------------------------


def roi_cells(
    activation: torch.Tensor,
    boxes: torch.Tensor,
    stride: int,
    cells: int = ROI_CELLS,
    context: float = ROI_CONTEXT,
    samples: int = 2,
) -> torch.Tensor:
    """Bilinear ROI-align of each face box, enlarged by ``context`` face sides on each side.

    ``activation`` ``[B,C,h,w]``; ``boxes`` ``[N,5]`` rows ``(batch_index, x1, y1, x2, y2)`` in
    network-input pixels. Cell ``(i, j)`` of the activation covers input pixels
    ``[j·stride, (j+1)·stride)`` (its centre at ``(j+½)·stride``). Each of the ``cells × cells``
    bins averages ``samples × samples`` bilinear samples (zero outside the activation), so a large
    face is not aliased. Returns ``[N,C,cells,cells]``; differentiable in the activation.
    """
    if activation.ndim != 4:
        raise ValueError(f"expected an activation [B,C,h,w], got {tuple(activation.shape)}")
    boxes = torch.as_tensor(boxes, dtype=activation.dtype, device=activation.device)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"expected boxes [N,5] (batch_index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    _, c, h, w = activation.shape
    if n == 0:
        return activation.new_zeros((0, c, cells, cells))
    bi = boxes[:, 0].long()
    if (bi < 0).any() or (bi >= activation.shape[0]).any():
        raise ValueError(f"box batch indices must be in [0, {activation.shape[0]})")
    x1, y1, x2, y2 = boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    bw, bh = (x2 - x1).clamp_min(1e-3), (y2 - y1).clamp_min(1e-3)
    x1, x2 = x1 - context * bw, x2 + context * bw
    y1, y2 = y1 - context * bh, y2 + context * bh
    k = cells * samples
    t = (torch.arange(k, dtype=activation.dtype, device=activation.device) + 0.5) / k  # sample centres in [0,1]
    xs = x1[:, None] + t[None] * (x2 - x1)[:, None]  # [N,k] input pixels
    ys = y1[:, None] + t[None] * (y2 - y1)[:, None]
    # input pixel p sits at cell coordinate p/stride − ½; grid_sample (align_corners=False) maps cell
    # coordinate u of a size-w axis to (2u + 1)/w − 1, so p → 2p/(stride·w) − 1.
    gx = 2 * xs / (stride * w) - 1
    gy = 2 * ys / (stride * h) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [N,k,k,2] (x, y)
    out = F.grid_sample(activation[bi], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(out, samples) if samples > 1 else out


# -- the regressor --------------------------------------------------------------------------------------------


class IdentityRegressor(nn.Module):
    """ROI cells ``[N,C,cells,cells]`` → a predicted dlib embedding ``[N,dim]``.

    Per-channel input normalisation (buffers set from the training data), ``depth`` convolution
    blocks (a 1×1 reduction to ``width`` channels, then 3×3), dropout, and a linear map to the
    embedding (through a ``hidden`` layer if non-zero). ``depth=0`` is a linear (ridge-like)
    regressor on the normalised cells. Small by design: there are only a few hundred non-FDDB
    identities to train on, and a wide network memorises them (held-out rank-1 at chance).
    """

    def __init__(
        self,
        channels: int,
        cells: int = ROI_CELLS,
        dim: int = EMBEDDING_DIM,
        width: int = 64,
        hidden: int = 0,
        depth: int = 1,
        dropout: float = 0.3,
        context: float = ROI_CONTEXT,
    ) -> None:
        super().__init__()
        if cells < 1:
            raise ValueError(f"cells must be ≥ 1, got {cells}")
        self.channels, self.cells, self.dim, self.width, self.hidden = channels, cells, dim, width, hidden
        self.depth, self.dropout, self.context = depth, dropout, float(context)
        self.stride = 0  # input pixels per activation cell, set by for_model (0: unknown)
        self.in_mean: torch.Tensor
        self.in_std: torch.Tensor
        self.register_buffer("in_mean", torch.zeros(channels))
        self.register_buffer("in_std", torch.ones(channels))
        layers: list[nn.Module] = []
        c = channels
        for i in range(depth):
            k = 1 if i == 0 else 3
            layers += [nn.Conv2d(c, width, k, padding=k // 2), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        self.body = nn.Sequential(*layers)
        flat = c * cells * cells
        head: list[nn.Module] = [nn.Flatten(), nn.Dropout(dropout)]
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, dim)]
        else:
            head += [nn.Linear(flat, dim)]
        self.head = nn.Sequential(*head)
        self.meta: dict[str, Any] = {}

    @classmethod
    def for_model(cls, model: SplitModel, **kw: Any) -> IdentityRegressor:
        """A fresh regressor for ``model``'s split (its channels and stride)."""
        reg = cls(model.channels, **kw)
        reg.stride = int(model.stride)
        return reg

    def arch(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "cells": self.cells,
            "dim": self.dim,
            "width": self.width,
            "hidden": self.hidden,
            "depth": self.depth,
            "dropout": self.dropout,
            "stride": self.stride,
            "context": self.context,
        }

    def set_normalisation(self, acts: Sequence[torch.Tensor]) -> None:
        """Per-channel mean and std of what the regressor will read (e.g. wire outputs of training windows)."""
        x = torch.cat([a.float().flatten(2).squeeze(0) for a in acts], dim=1)  # [C, cells]
        self.in_mean.copy_(x.mean(1))
        self.in_std.copy_(x.std(1).clamp_min(1e-4))

    def forward(self, rois: torch.Tensor) -> torch.Tensor:
        x = (rois - self.in_mean.view(1, -1, 1, 1)) / self.in_std.view(1, -1, 1, 1)
        return self.head(self.body(x))

    def predict(self, activation: torch.Tensor, boxes_px: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embeddings ``[F,dim]`` (float64) of the faces at ``boxes_px`` (``x1,y1,x2,y2`` network pixels) of a
        one-image activation ``[1,C,h,w]``."""
        if self.stride <= 0:
            raise ValueError("the regressor does not know its split's stride (build it with for_model)")
        b = torch.as_tensor(np.asarray(boxes_px, dtype=np.float32)[:, :4])
        rows = torch.cat([torch.zeros(len(b), 1), b], 1)
        was = self.training
        self.eval()
        with torch.no_grad():
            e = self(roi_cells(activation.float(), rows, self.stride, self.cells, self.context))
        self.train(was)
        return e.double().numpy()


# -- training data ----------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Cached training samples of one split: activation windows around each ROI, boxes in window
    pixels, target embeddings, and which face (and whether held out) each sample shows."""

    windows: list[torch.Tensor]  # each [1,C,h,w] float32
    boxes: torch.Tensor  # [N,4] x1,y1,x2,y2 network pixels, relative to the window's top-left cell
    targets: torch.Tensor  # [N,dim]
    face: np.ndarray  # [N] face index
    held_out: np.ndarray  # [N] bool: the face is in the validation split
    net_px: np.ndarray  # [N] face side at the network input
    stride: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.windows)

    def indices(self, held_out: bool) -> np.ndarray:
        return np.flatnonzero(self.held_out == held_out)

    def rois(
        self,
        idx: Sequence[int] | np.ndarray,
        wire: Wire | None,
        cells: int,
        context: float,
        jitter: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> torch.Tensor:
        """ROI cells of samples ``idx``, each window passed through ``wire`` (fresh noise per call).

        ``jitter`` (training): each box is shifted by up to ±``jitter`` of its side and rescaled by up
        to ±``jitter`` (drawn from ``rng``), so the regressor does not depend on one annotation style
        (WIDER's boxes for training, FDDB's ellipse-derived squares for scoring).
        """
        out = []
        for i in idx:
            a = self.windows[int(i)]
            if wire is not None:
                with torch.no_grad():
                    a = wire(a)
            b = self.boxes[int(i)].clone()
            if jitter > 0 and rng is not None:
                w, h = float(b[2] - b[0]), float(b[3] - b[1])
                cx, cy = (
                    float(b[0] + b[2]) / 2 + rng.uniform(-jitter, jitter) * w,
                    float(b[1] + b[3]) / 2 + rng.uniform(-jitter, jitter) * h,
                )
                f = float(np.exp(rng.uniform(-jitter, jitter)))
                b = torch.tensor([cx - f * w / 2, cy - f * h / 2, cx + f * w / 2, cy + f * h / 2])
            row = torch.cat([torch.zeros(1), b])[None]
            out.append(roi_cells(a.float(), row, self.stride, cells, context))
        return torch.cat(out)


def training_faces(
    dirs: Sequence[str | Path], min_side: float = 16.0, held_out: float = 0.15
) -> list[tuple[Path, np.ndarray, bool]]:
    """``(photo, box, held_out)`` for every annotated face ≥ ``min_side`` px under ``dirs`` (FDDB refused).

    Boxes come from the project's one box reader (:func:`veil.data.boxes.face_boxes`). The
    held-out split is by photo (a hash of its name), so no held-out face shares a photo with a
    training one.
    """
    from veil.data.boxes import face_boxes
    from veil.data.images import list_images

    list_images(dirs)  # refuses FDDB folders, with the reason
    out = []
    for p, bx in sorted(face_boxes(dirs).items()):
        h = int(hashlib.sha256(p.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        for b in bx:
            if min(b[2] - b[0], b[3] - b[1]) >= min_side:
                out.append((p, np.asarray(b[:4], float), h < held_out))
    if not out:
        raise ValueError(f"no annotated faces ≥ {min_side:g} px under {', '.join(map(str, dirs))}")
    return out


#: A folder's list of its photos' original sizes (the WIDER subset's: photos stretched to 416×416).
ORIGINAL_SIZES = "estimated_original_sizes.tsv"


@lru_cache(maxsize=8)
def _original_sizes(tsv: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for line in tsv.read_text().splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) >= 3:
            out[parts[0]] = (float(parts[1]), float(parts[2]))
    return out


def unstretch_factors(photo: Path, hw: tuple[int, int]) -> tuple[float, float]:
    """``(fx, fy)`` that give a stretched photo back its original aspect ratio (width kept), where a folder
    above it lists original sizes (:data:`ORIGINAL_SIZES`); ``(1, 1)`` elsewhere. Identity features
    depend on face geometry: a regressor trained on faces stretched by ±25 % learns stretched faces."""
    for root in list(photo.parents)[:3]:
        tsv = root / ORIGINAL_SIZES
        if tsv.is_file():
            for base in (root / "images", root):
                try:
                    rel = photo.resolve().relative_to(base.resolve()).as_posix()
                except ValueError:
                    continue
                size = _original_sizes(tsv).get(rel)
                if size:
                    h, w = hw
                    return 1.0, (w * size[1] / size[0]) / h
    return 1.0, 1.0


def _heads(models: Sequence[SplitModel]) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """One function giving every model's activation of a network input: for FaceBoxes splits of the same
    weights the RDCL runs once and the Inception blocks follow in turn (consecutive splits)."""
    from veil.models.faceboxes import FaceBoxes

    nets: list[Any] = [m.network for m in models]  # FaceBoxes, checked below
    same = len({m.weights_sha256 for m in models}) == 1
    if same and all(isinstance(n, FaceBoxes) for n in nets):
        net = nets[0]
        depths = [n.head.depth for n in nets]

        def chain(x: torch.Tensor) -> list[torch.Tensor]:
            a = F.max_pool2d(net.conv1(x), kernel_size=3, stride=2, padding=1)
            a = F.max_pool2d(net.conv2(a), kernel_size=3, stride=2, padding=1)
            outs = {0: a}
            for i in range(1, max(depths) + 1):
                a = getattr(net, f"inception{i}")(a)
                outs[i] = a
            return [outs[d] for d in depths]

        return chain
    return lambda x: [m.head(x) for m in models]


def sample_path(model: SplitModel, scale: float, settings: dict[str, Any]) -> Path:
    """Cache file of a split's training samples, under the model's key (model, split, weights)."""
    from veil.privacy.decoders import attackers_dir

    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return attackers_dir(model) / f"regressor-samples-x{scale:g}-{tag}.safetensors"


def build_samples(
    models: Sequence[SplitModel],
    dirs: Sequence[str | Path],
    scale: float | None = None,
    sizes_per_face: int = 4,
    min_side: float = 16.0,
    held_out: float = 0.15,
    seed: int = 0,
    size_range: tuple[float, float] = SIZE_RANGE,
    context: float = 0.5,
    jittered_per_face: int = 0,
    patches_per_photo: int = 0,
    extra_sizes: int = 2,
    unstretch: bool = True,
    progress: bool = True,
    cache: bool = True,
) -> dict[str, Samples]:
    """Training samples for every model in ``models`` (splits of one network), from the cache if present.

    Per face (:func:`training_faces`): its dlib embedding at its box in the photo (the target), then
    ``sizes_per_face`` views, each the audit's enlarged crop (:func:`veil.privacy.audit.view_image`,
    one face side of context) resized so the face reaches the network at a size drawn log-uniformly
    over ``size_range``, every second one mirrored. The head runs once per view (the data path's
    preprocessing at ×``scale``); each split keeps only the activation window around the face box
    enlarged by ``context`` face sides (the most a regressor may read), plus one cell of margin.
    ``seed`` fixes the sizes and mirrors (the samples are data, not an attacker's secret).
    Returns split name → :class:`Samples`.

    More data than the few hundred identities (training faces only, never held-out photos), each
    with its *own* target (the dlib embedding of the photo at that box) and face index −1:
    ``jittered_per_face`` boxes per face shifted and rescaled by up to ±30 % (how the embedding moves
    with framing), and ``patches_per_photo`` random square boxes per photo (the regressor learns what
    the identity model computes from any content, as a pixel decoder learns inversion from any crop);
    ``extra_sizes`` views each. ``unstretch``: photos stretched to a square (the WIDER subset) get their
    original aspect ratio back first (:func:`unstretch_factors`), boxes with them.
    """
    from veil.preprocess import ImageReadError, load_image
    from veil.privacy import identity
    from veil.privacy.audit import ENLARGE_CONTEXT, View, view_image
    from veil.privacy.datapath import data_path

    if not models:
        raise ValueError("no models to build samples for")
    scale = models[0].config.input.scale if scale is None else float(scale)
    settings = {
        "dirs": sorted(str(Path(d).resolve()) for d in dirs),
        "sizes_per_face": sizes_per_face,
        "min_side": min_side,
        "held_out": held_out,
        "seed": seed,
        "size_range": list(size_range),
        "window_context": context,
        "enlarge_context": ENLARGE_CONTEXT,
    }
    if unstretch:
        settings["unstretch"] = ORIGINAL_SIZES
        # (samples built before patch boxes were drawn in stored-photo pixels had them scaled twice)
        settings["patch_boxes"] = "stored-pixels"
    if jittered_per_face or patches_per_photo:
        settings.update(
            jittered_per_face=jittered_per_face, patches_per_photo=patches_per_photo, extra_sizes=extra_sizes
        )
    paths = {m.split: sample_path(m, scale, settings) for m in models}
    if cache and all(p.is_file() for p in paths.values()):
        return {m.split: load_samples(paths[m.split], m) for m in models}
    faces = training_faces(dirs, min_side, held_out)
    rng = np.random.default_rng(seed)
    # (photo, box, held out, face index or -1, views)
    entries = [(p, b, ho, i, sizes_per_face) for i, (p, b, ho) in enumerate(faces)]
    for p, b, ho in faces:
        if ho:
            continue
        w, h = b[2] - b[0], b[3] - b[1]
        for _ in range(jittered_per_face):
            cx, cy = (b[0] + b[2]) / 2 + rng.uniform(-0.3, 0.3) * w, (b[1] + b[3]) / 2 + rng.uniform(-0.3, 0.3) * h
            f = math.exp(rng.uniform(-0.3, 0.3))
            entries.append(
                (p, np.array([cx - f * w / 2, cy - f * h / 2, cx + f * w / 2, cy + f * h / 2]), False, -1, extra_sizes)
            )
    if patches_per_photo:
        for p in sorted({p for p, _b, ho in faces if not ho}):
            try:
                ph, pw = load_image(p).shape[:2]  # boxes in the photo as stored: unstretched below with the faces'
            except ImageReadError:
                continue  # reported when its faces are read
            for _ in range(patches_per_photo):
                side = math.exp(rng.uniform(math.log(min_side), math.log(max(min_side + 1, min(pw, ph) / 2))))
                x0, y0 = rng.uniform(0, pw - side), rng.uniform(0, ph - side)
                entries.append((p, np.array([x0, y0, x0 + side, y0 + side]), False, -1, extra_sizes))
    entries.sort(key=lambda e: str(e[0]))
    path = data_path(models[0], scale)
    heads = _heads(models)
    stride = int(models[0].stride)
    per: dict[str, dict[str, list]] = {m.split: {"windows": [], "boxes": []} for m in models}
    targets, face_ids, held, net_px = [], [], [], []
    skipped: list[str] = []
    t0 = time.monotonic()
    photo, img = None, None
    lo, hi = math.log(size_range[0]), math.log(size_range[1])
    for p, box, ho, fi, n_views in tqdm(entries, desc="regressor samples", unit="box", disable=not progress):
        if p != photo:
            photo = p
            fx = fy = 1.0
            try:
                img = load_image(p)
                if unstretch:
                    fx, fy = unstretch_factors(p, (img.shape[0], img.shape[1]))
                    if (fx, fy) != (1.0, 1.0):
                        size = (round(img.shape[1] * fx), round(img.shape[0] * fy))
                        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if fy < 1 else cv2.INTER_LINEAR)
            except ImageReadError as exc:
                skipped.append(str(exc))
                img = None
        if img is None:
            continue
        h, w = img.shape[:2]
        x1, y1, x2, y2 = np.clip(np.asarray(box) * [fx, fy, fx, fy], 0, [w - 1, h - 1, w, h])
        if x2 - x1 < 2 or y2 - y1 < 2:
            skipped.append(f"{p.name}: a face box outside the photo")
            continue
        target = identity.embed_faces(img, np.array([[x1, y1, x2, y2]]))[0]
        side = float(x2 - x1)
        m = ENLARGE_CONTEXT * side
        cx0, cy0 = max(0, int(x1 - m)), max(0, int(y1 - m))
        cx1, cy1 = min(w, math.ceil(x2 + m)), min(h, math.ceil(y2 + m))
        for s in range(n_views):
            net_side = math.exp(rng.uniform(lo, hi))
            f = net_side / (side * scale)
            vb = (np.array([x1, y1, x2, y2]) - np.array([cx0, cy0, cx0, cy0])) * f
            view = View(0, np.array([max(fi, 0)]), vb[None], "enlarged", (cx0, cy0, cx1, cy1), f)
            vimg = view_image(img, view)
            if s % 2 == 1:  # mirrored
                vimg = np.ascontiguousarray(vimg[:, ::-1])
                vb = np.array([vimg.shape[1] - vb[2], vb[1], vimg.shape[1] - vb[0], vb[3]])
            prep = path.preprocess(vimg)
            with torch.inference_mode():
                acts = heads(prep.tensor)
            nb = vb * prep.scale  # network pixels
            bw, bh = nb[2] - nb[0], nb[3] - nb[1]
            ah, aw = acts[0].shape[2], acts[0].shape[3]
            c0 = max(0, math.floor((nb[0] - context * bw) / stride) - 1)
            r0 = max(0, math.floor((nb[1] - context * bh) / stride) - 1)
            c1 = min(aw, math.ceil((nb[2] + context * bw) / stride) + 1)
            r1 = min(ah, math.ceil((nb[3] + context * bh) / stride) + 1)
            rel = nb - np.array([c0, r0, c0, r0]) * stride
            for mdl, a in zip(models, acts):
                per[mdl.split]["windows"].append(a[:, :, r0:r1, c0:c1].clone())
                per[mdl.split]["boxes"].append(rel.astype(np.float32))
            targets.append(target)
            face_ids.append(fi)
            held.append(ho)
            net_px.append(float(bw))
    if not targets:
        raise ValueError("no training samples could be built (every photo unreadable?)")
    info = {
        **settings,
        "scale": scale,
        "faces": len({f for f in face_ids if f >= 0}),
        "faces_held_out": len({f for f, h in zip(face_ids, held) if h}),
        "extra_samples": sum(f < 0 for f in face_ids),
        "samples": len(targets),
        "skipped": skipped,
        "seconds": round(time.monotonic() - t0, 1),
    }
    out = {}
    for mdl in models:
        smp = Samples(
            per[mdl.split]["windows"],
            torch.as_tensor(np.stack(per[mdl.split]["boxes"])),
            torch.as_tensor(np.stack(targets), dtype=torch.float32),
            np.asarray(face_ids),
            np.asarray(held, bool),
            np.asarray(net_px),
            stride,
            info,
        )
        if cache:
            save_samples(paths[mdl.split], smp, mdl)
        out[mdl.split] = smp
    return out


def save_samples(path: Path, smp: Samples, model: SplitModel) -> Path:
    """Write samples as one safetensors file (windows flattened, FP16; shapes alongside) with the model's
    metadata, atomically."""
    from safetensors.torch import save_file

    from veil.privacy.decoders import model_meta

    shapes = torch.tensor([list(w.shape[2:]) for w in smp.windows], dtype=torch.int64)
    flat = torch.cat([w.reshape(-1) for w in smp.windows]).to(torch.float16)
    tensors = {
        "windows": flat,
        "shapes": shapes,
        "boxes": smp.boxes.float(),
        "targets": smp.targets.float(),
        "face": torch.as_tensor(smp.face, dtype=torch.int64),
        "held_out": torch.as_tensor(smp.held_out.astype(np.uint8)),
        "net_px": torch.as_tensor(smp.net_px, dtype=torch.float32),
    }
    md = {k: jsonio.dumps(v, indent=None) for k, v in {**model_meta(model), **smp.meta, "stride": smp.stride}.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    save_file(tensors, str(tmp), metadata=md)
    tmp.replace(path)
    return path


def load_samples(path: Path, model: SplitModel) -> Samples:
    """Read cached samples, refusing a file made for another model, split or weights."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    _check(md, model, f"samples file {path}")
    c = model.channels
    windows, off = [], 0
    for h, w in t["shapes"].tolist():
        n = c * h * w
        windows.append(t["windows"][off : off + n].float().view(1, c, h, w))
        off += n
    return Samples(
        windows,
        t["boxes"],
        t["targets"],
        t["face"].numpy(),
        t["held_out"].numpy().astype(bool),
        t["net_px"].numpy(),
        int(md["stride"]),
        md,
    )


# -- training ---------------------------------------------------------------------------------------------------


def regression_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    gallery: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    contrastive: float = 0.0,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Squared distance (what rank-1 ranks by) plus cosine distance (direction, scale-free); with
    ``contrastive`` > 0, plus that weight times a retrieval term: cross-entropy of the softmax over
    ``−‖pred − g‖² / temperature`` for every training target ``g`` in ``gallery``, the right one at
    ``labels`` (rank-1 is a retrieval, and a few hundred identities are too few to learn it from
    the distance to one's own target alone)."""
    loss = ((pred - target) ** 2).sum(1).mean() + (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    if contrastive > 0 and gallery is not None and labels is not None:
        logits = -torch.cdist(pred, gallery).pow(2) / temperature
        loss = loss + contrastive * F.cross_entropy(logits, labels)
    return loss


def held_out_rank1(reg: IdentityRegressor, smp: Samples, wire: Wire | None = None, batch: int = 64) -> float | None:
    """Rank-1 of predictions on the held-out faces' samples against the held-out faces' own targets
    (one gallery entry per face; chance = 1 / held-out faces)."""
    idx = smp.indices(True)
    if len(idx) == 0:
        return None
    faces, first = np.unique(smp.face[idx], return_index=True)
    gallery = smp.targets[idx[first]].double().numpy()
    preds = []
    reg.eval()
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            preds.append(reg(smp.rois(idx[s : s + batch], wire, reg.cells, reg.context)).double().numpy())
    from veil.privacy.metrics import rank1_hits

    labels = np.searchsorted(faces, smp.face[idx])
    return float(rank1_hits(gallery, np.concatenate(preds), labels).mean())


def train_regressor(
    samples: Samples,
    model: SplitModel,
    wire: Wire | None = None,
    *,
    regressor: IdentityRegressor | None = None,
    minutes: float = 10.0,
    max_steps: int | None = None,
    batch: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int | None = None,
    data_order_seed: int | None = None,
    plateau: Any = None,
    eval_every: int = 100,
    jitter: float = 0.1,
    contrastive: float = 0.0,
    temperature: float = 0.05,
    keep_best: bool = False,
    out: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    arch: dict[str, Any] | None = None,
) -> IdentityRegressor:
    """Train an identity regressor on ``wire`` of the cached clean windows (fresh noise every step) until
    its loss plateaus (``plateau``, a :class:`veil.privacy.train.Plateau`), ``minutes`` pass or
    ``max_steps`` are done.

    ``seed`` (initial weights) and ``data_order_seed`` (which samples, in which order) are drawn
    from the OS unless given; both are recorded in ``.meta`` with the per-step loss curve, the
    held-out rank-1 every ``eval_every`` steps, the stop reason, and the weights' SHA-256
    (:func:`veil.privacy.train.state_sha256`). ``regressor`` warm-starts from another one (its
    weights' hash recorded as ``init_sha256``). ``keep_best`` returns the weights of the evaluation
    with the best held-out rank-1 (model selection on held-out *training-source* faces, never on
    the audit's), recorded as ``best_step``.
    """
    from veil.privacy.decoders import model_meta
    from veil.privacy.train import budget_step, state_sha256

    seed = secrets.randbits(31) if seed is None else int(seed)
    data_order_seed = secrets.randbits(31) if data_order_seed is None else int(data_order_seed)
    train_idx = samples.indices(False)
    if len(train_idx) == 0:
        raise ValueError("no training samples (every face is held out)")
    # the retrieval gallery: one row per training target (a face's, or an extra sample's own)
    ident = np.where(samples.face >= 0, samples.face, -1 - np.arange(len(samples)))
    _uniq, first, label_of = np.unique(ident[train_idx], return_index=True, return_inverse=True)
    gallery = samples.targets[train_idx[first]]
    labels = np.zeros(len(samples), np.int64)
    labels[train_idx] = label_of
    init_sha = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if regressor is None:
            reg = IdentityRegressor.for_model(model, **(arch or {}))
            rng0 = np.random.default_rng(seed)
            probe = rng0.choice(train_idx, size=min(256, len(train_idx)), replace=False)
            with torch.no_grad():
                reg.set_normalisation([samples.rois([i], wire, reg.cells, reg.context) for i in probe])
        else:
            reg = regressor
            init_sha = state_sha256(reg)
    if reg.channels != model.channels or (reg.stride and reg.stride != model.stride):
        raise RegressorMismatchError(
            f"the regressor reads {reg.channels} channels at stride {reg.stride}; the split has "
            f"{model.channels} at stride {model.stride}"
        )
    reg.stride = int(model.stride)
    opt = torch.optim.AdamW(reg.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(data_order_seed)
    gen = torch.Generator().manual_seed(seed)
    budget = minutes * 60.0
    t0 = time.monotonic()
    step, reason = 0, "budget"
    best: tuple[float, int, dict] | None = None
    curve: list[float] = []
    val_curve: list[list[float]] = []
    bar = tqdm(total=max_steps, desc="train regressor", unit="step", disable=not progress)
    while True:
        stop = budget_step(opt, lr, step, time.monotonic() - t0, budget, max_steps, plateau, curve)
        if stop is not None:
            reason = stop
            break
        idx = rng.choice(train_idx, size=min(batch, len(train_idx)), replace=False)
        reg.train()
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))  # dropout only
            pred = reg(samples.rois(idx, wire, reg.cells, reg.context, jitter, rng))
        loss = regression_loss(
            pred, samples.targets[idx], gallery, torch.as_tensor(labels[idx]), contrastive, temperature
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        curve.append(round(loss.item(), 4))
        if eval_every and step % eval_every == 0:
            r = held_out_rank1(reg, samples, wire)
            if r is not None:
                val_curve.append([step, round(r, 4)])
                if keep_best and (best is None or r > best[0]):
                    best = (r, step, {k: v.clone() for k, v in reg.state_dict().items()})
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(curve[-20:]):.3f}", val=val_curve[-1][1] if val_curve else None)
    bar.close()
    reg.eval()
    final_val = held_out_rank1(reg, samples, wire)
    best_step = step
    if best is not None and best[0] > (final_val or 0.0):
        reg.load_state_dict(best[2])
        best_step = best[1]
        final_val = held_out_rank1(reg, samples, wire)
    info = dict(meta or {})
    info.update(
        model_meta(model),
        kind="identity-regressor",
        steps=step,
        seconds=round(time.monotonic() - t0, 1),
        batch=batch,
        lr=lr,
        weight_decay=weight_decay,
        box_jitter=jitter,
        contrastive=contrastive,
        temperature=temperature,
        keep_best=keep_best,
        best_step=best_step,
        seed=seed,
        data_order_seed=data_order_seed,
        stop_reason=reason,
        budget_minutes=minutes,
        curve_loss=curve,
        held_out_rank1_curve=val_curve,
        held_out_rank1=None if final_val is None else round(final_val, 4),
        held_out_faces=len(np.unique(samples.face[samples.held_out])),
        train_faces=len(np.unique(samples.face[~samples.held_out & (samples.face >= 0)])),
        samples=samples.meta,
        init_sha256=init_sha,
    )
    if plateau is not None:
        info["plateau"] = {"window": plateau.window, "tol": plateau.tol, "patience": plateau.patience}
    info["state_sha256"] = state_sha256(reg)
    if out is not None:
        save_regressor(reg, out, info)
    else:
        reg.meta = info
    return reg


# -- files ------------------------------------------------------------------------------------------------------


def save_regressor(reg: IdentityRegressor, path: str | Path, meta: dict) -> Path:
    """Weights, architecture and metadata (JSON values) as one safetensors file, atomically; ``meta``
    should hold :func:`veil.privacy.decoders.model_meta` so the file is refused for another model."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    md = {k: jsonio.dumps(v, indent=None) for k, v in meta.items()}
    md.update({f"arch.{k}": jsonio.dumps(v, indent=None) for k, v in reg.arch().items()})
    tmp = p.with_suffix(".part")
    save_file({k: v.contiguous() for k, v in reg.state_dict().items()}, str(tmp), metadata=md)
    tmp.replace(p)
    reg.meta = {k: json.loads(v) for k, v in md.items() if not k.startswith("arch.")}
    return p


def _check(md: dict[str, Any], model: SplitModel, what: str) -> None:
    if md.get("model") not in (None, model.name):
        raise RegressorMismatchError(f"{what} was made for model {md.get('model')!r}, not {model.name!r}")
    if md.get("split_point") != model.split_point:
        raise RegressorMismatchError(
            f"{what} was made for split point {md.get('split_point')!r}, not {model.split_point!r}: "
            "train one for this model and split"
        )
    w = md.get("weights_sha256")
    if w and model.weights_sha256 and w != model.weights_sha256:
        raise RegressorMismatchError(
            f"{what} was made on activations of other weights (SHA-256 {str(w)[:12]}…, these are "
            f"{model.weights_sha256[:12]}…)"
        )


def read_regressor(path: str | Path, model: SplitModel | None = None) -> IdentityRegressor:
    """Load a regressor file; with ``model``, refuse one made for another model, split, weights or shape."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"regressor file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            md = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for bad files
        raise ValueError(f"{p} is not a readable regressor file: {exc}") from exc
    arch = {k.removeprefix("arch."): v for k, v in md.items() if k.startswith("arch.")}
    if not arch:
        raise ValueError(f"{p} is not a regressor file (no architecture recorded)")
    if model is not None:
        _check(md, model, f"regressor {p}")
        if int(arch["channels"]) != model.channels or int(arch["stride"]) not in (0, model.stride):
            raise RegressorMismatchError(
                f"regressor {p} reads {arch['channels']} channels at stride {arch['stride']}; the split has "
                f"{model.channels} at stride {model.stride}"
            )
    reg = IdentityRegressor(
        int(arch["channels"]),
        int(arch["cells"]),
        int(arch["dim"]),
        int(arch["width"]),
        int(arch["hidden"]),
        int(arch.get("depth", 1)),
        float(arch.get("dropout", 0.3)),
        float(arch["context"]),
    )
    reg.stride = int(arch["stride"])
    try:
        reg.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{p} does not fit the regressor architecture: {exc}") from exc
    reg.meta = {k: v for k, v in md.items() if not k.startswith("arch.")}
    return reg.eval()


# -- scoring ----------------------------------------------------------------------------------------------------


def regressor_leaks(
    reg: IdentityRegressor,
    model: SplitModel,
    faces: FaceSet,
    views: list[View],
    scale: float,
    wire: Wire | None = None,
    ks: Sequence[int] = (1,),
    dup_ks: Sequence[int] = (),
    name: str = "regressor",
    progress: bool = True,
    dup_seed: int | None = None,
) -> dict[str, Leak]:
    """The regressor as an attacker on the audit's views: ``name`` (one observation), ``name_avgK`` (the
    mean of K fresh observations of the same view) and ``name_dupK`` (one observation and K − 1 of
    near-duplicates, :func:`veil.privacy.audit.near_duplicate`). Each probe's predicted embedding
    goes into a :class:`veil.privacy.audit.Leak` (scored by :func:`veil.privacy.audit.summarize`)."""
    from veil.preprocess import load_image
    from veil.privacy.audit import Leak, near_duplicate, view_image
    from veil.privacy.datapath import data_path

    path = data_path(model, scale)
    obs_fn = wire if wire is not None else (lambda a: a)
    leaks: dict[str, Leak] = {}
    rng = np.random.default_rng(dup_seed)
    cache: dict[int, np.ndarray] = {}
    for v in tqdm(views, desc=f"{name} attack", unit="view", disable=not progress):
        if v.image not in cache:
            cache.clear()
            cache[v.image] = load_image(faces.images[v.image])
        img = view_image(cache[v.image], v)
        with torch.inference_mode():
            a, prep = path.head_activation(img)
        a = a.clone()
        boxes = v.boxes * prep.scale
        with torch.no_grad():
            for k in ks:
                obs = torch.stack([obs_fn(a) for _ in range(k)]).mean(0)
                key = name if k == 1 else f"{name}_avg{k}"
                leaks.setdefault(key, Leak()).add_embedding(v, scale, reg.predict(obs, boxes))
            for k in dup_ks:
                acts = [obs_fn(a)]
                for _ in range(k - 1):
                    with torch.inference_mode():
                        d, _p = path.head_activation(near_duplicate(img, rng))
                    acts.append(obs_fn(d.clone()))
                leaks.setdefault(f"{name}_dup{k}", Leak()).add_embedding(
                    v, scale, reg.predict(torch.stack(acts).mean(0), boxes)
                )
    return leaks


# -- the audit's regressor --------------------------------------------------------------------------------------

#: The samples the audit's regressor trains on (besides the faces: jittered boxes and random patches).
SAMPLE_RECIPE: dict[str, Any] = {"sizes_per_face": 4, "jittered_per_face": 3, "patches_per_photo": 8}
#: How the audit's regressor trains (selected on held-out WIDER faces, never on FDDB).
TRAIN_RECIPE: dict[str, Any] = {"contrastive": 1.0, "keep_best": True, "weight_decay": 1e-2, "lr": 1e-3}


def regressor_path(model: SplitModel, scale: float, noise_sha256: str | None = None) -> Path:
    """Cache path of the audit's regressor under the model's key: ``regressor[-<noise sha>]-x<scale>``."""
    from veil.privacy.decoders import attackers_dir

    tag = "" if not noise_sha256 else f"-{noise_sha256[:16]}"
    return attackers_dir(model) / f"regressor{tag}-x{scale:g}.safetensors"


def ensure_regressor(
    model: SplitModel,
    dirs: Sequence[str | Path],
    scale: float | None = None,
    wire: Wire | None = None,
    noise_sha256: str | None = None,
    minutes: float = 6.0,
    progress: bool = True,
) -> IdentityRegressor:
    """The cached regressor for ``model`` at ×``scale`` on the clean activation (or, with ``wire`` and the
    noise file's ``noise_sha256``, on that obfuscation); trained from scratch (OS-drawn seeds) and cached
    if absent, on samples of the non-FDDB photos ``dirs`` (:data:`SAMPLE_RECIPE`, cached too)."""
    from veil.privacy.train import Plateau

    scale = model.config.input.scale if scale is None else float(scale)
    if wire is not None and not noise_sha256:
        raise ValueError("a regressor for an obfuscation needs the noise file's SHA-256 to be cached")
    path = regressor_path(model, scale, noise_sha256 if wire is not None else None)
    if path.is_file():
        return read_regressor(path, model)
    samples = build_samples([model], dirs, scale=scale, progress=progress, **SAMPLE_RECIPE)[model.split]
    return train_regressor(
        samples,
        model,
        wire,
        minutes=minutes,
        plateau=Plateau(window=100, tol=0.01, patience=3),
        out=path,
        meta={
            "scale": scale,
            "noise_sha256": noise_sha256,
            "trained_on": "obfuscated" if wire is not None else "clean",
        },
        progress=progress,
        **TRAIN_RECIPE,
    )
