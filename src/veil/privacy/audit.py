"""The privacy audit: run every attacker on FDDB faces and measure what leaks.

Everything is scored on the deployed data path (:func:`veil.privacy.datapath.data_path`: the
model's own preprocessing at ×``scale``, its head, its obfuscator); reconstructions (at ×scale) are
resized back to the view's size (area) and compared with the original there, at the annotated face
boxes. Identity applies where the model's task has faces (``face-detection``); every other model
gets the reconstruction audit of :mod:`veil.privacy.reconstruction`.

**Faces** (:func:`select_fddb_faces`): every FDDB face present whose dlib-style box is ≥ 48 px
and inside its image, in fold order; the same faces for every configuration (their digest is
in the report). **Views** (:func:`make_views`): each whole image, plus an *enlarged* copy of
every face that reaches the network smaller than :data:`LARGE_PX` — a crop around the face
(one face side of context each way) enlarged *before* the configuration's own scaling so the
face reaches the network at :data:`ENLARGE_TARGET` px. So every face is scored once at its
natural size and, in the large-face bin, once at 200–400 px: privacy cannot come from faces
merely being small.

**Scores**: the gallery is the N original faces (dlib embeddings at the annotated boxes);
every probe (a reconstruction of one face in one view) is matched against all N, so chance
rank-1 is 1/N in every bin. Rank-1 and TAR carry Wilson 95 % intervals. Per-bin rank-1 is over
the probes whose face side *at the network input* falls in the bin.

Attackers (``attackers`` in the report; on clean activations in ``clean_baseline``):
``naive`` (decoder trained on clean activations), ``adaptive`` (trained on activations
obfuscated with the audited noise), ``perceptual`` (the same with a feature-space loss),
``adaptive_avgK`` (the adaptive decoder on the mean of K obfuscations of the same image),
``adaptive_dupK`` (on the mean of K obfuscated *near-duplicates*: re-encoded, shifted,
rescaled) and ``whitebox`` (likelihood-weighted inversion of the public head, around each face,
batched across faces); with an identity regressor (``Attacks.regressor``: :mod:`veil.privacy.regressor`)
also ``regressor``, ``regressor_avgK`` and ``regressor_dupK`` (its predicted embeddings, no pixels);
at a deep split with a layer-wise chain (``Attacks.layerwise``: :mod:`veil.privacy.layerwise`, the deep
activation mapped back to the first split's and read by that split's decoder) also ``layerwise``,
``layerwise_avgK`` and ``layerwise_dupK``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from veil import jsonio
from veil.models import SplitModel
from veil.preprocess import ImageReadError, load_image
from veil.privacy import identity, metrics
from veil.privacy.datapath import data_path, mean_colour
from veil.privacy.decoders import decode, decoder_arch, to_pixels
from veil.privacy.report import GRID_CELL, clip_box, crop_cell, face_grid, learning_curves_plot, write_markdown
from veil.privacy.verdict import BINS, competence, privacy_columns
from veil.privacy.whitebox import cell_window, channel_weights, input_args, invert_windows

#: Faces smaller than this at the network input get an enlarged copy …
LARGE_PX = 192.0
#: … reaching the network at this size (inside the 200–400 px the issue asks for).
ENLARGE_TARGET = 288.0
#: Context kept around a face in its enlarged crop, in face sides on each side.
ENLARGE_CONTEXT = 1.0
#: Wall and CPU seconds and calls per stage of the current audit (see :func:`_stage`), for the cost benchmark.
STAGES: dict[str, list[float]] = {}


class _stage:  # noqa: N801 - used as a context manager, reads as a label
    """Accumulate wall and process-CPU seconds of a block into :data:`STAGES` under ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.t, self.c = time.monotonic(), time.process_time()

    def __exit__(self, *exc) -> None:
        s = STAGES.setdefault(self.name, [0.0, 0.0, 0])
        s[0] += time.monotonic() - self.t
        s[1] += time.process_time() - self.c
        s[2] += 1  # calls (e.g. white-box batches done)


@dataclass
class FaceSet:
    """The evaluated faces: per image, its path and dlib-style boxes in original pixels."""

    images: list[Path]
    boxes: list[np.ndarray]  # per image [F,4]
    names: list[str] = field(default_factory=list)

    @property
    def n_faces(self) -> int:
        return int(sum(len(b) for b in self.boxes))

    def digest(self) -> str:
        h = hashlib.sha256()
        for p, b in zip(self.images, self.boxes):
            h.update(str(p.name).encode())
            h.update(np.round(b, 1).tobytes())
        return h.hexdigest()[:16]

    def first_index(self) -> np.ndarray:
        """Global index of each image's first face."""
        return np.cumsum([0] + [len(b) for b in self.boxes])[:-1]


def select_fddb_faces(root: str | Path, max_faces: int | None = None, min_side: float = 48.0) -> FaceSet:
    """FDDB faces (in fold order) whose dlib-style box is ≥ ``min_side`` px and inside the image.

    ``max_faces=None`` takes every qualifying face. Faces smaller than ``min_side`` are too
    small for the recogniser to identify even in the original. A bad image is skipped, with
    its reason printed.
    """
    from veil.data import read_fddb

    ds = read_fddb(root)
    images, boxes, names = [], [], []
    n = 0
    limit = math.inf if max_faces is None else max_faces
    for im in ds.available():
        if n >= limit:
            break
        try:
            h, w = load_image(im.path).shape[:2]
        except ImageReadError as exc:
            print(f"skipped: {exc}")
            continue
        keep = []
        for e in im.ellipses:
            b = identity.ellipse_to_box(e)
            if b[2] - b[0] >= min_side and b[0] >= 0 and b[1] >= 0 and b[2] < w and b[3] < h and n < limit:
                keep.append(b)
                n += 1
        if keep:
            images.append(im.path)
            boxes.append(np.stack(keep))
            names.append(im.name)
    if n < 2:
        raise ValueError(f"only {n} usable faces in {root}; the audit needs at least 2")
    return FaceSet(images, boxes, names)


# -- views: whole images and enlarged crops ---------------------------------------------------------------------


@dataclass
class View:
    """One input of the deployed path: a whole image, or an enlarged crop around one face.

    ``crop`` is ``x0, y0, x1, y1`` in the original image (None: whole image); the crop is
    resized by ``factor`` before the configuration's own ×scale. ``boxes`` are in view pixels.
    """

    image: int
    faces: np.ndarray
    boxes: np.ndarray
    kind: str = "base"
    crop: tuple[int, int, int, int] | None = None
    factor: float = 1.0

    def net_px(self, scale: float) -> np.ndarray:
        """Each face's box side at the network input."""
        return (self.boxes[:, 2] - self.boxes[:, 0]) * scale


def make_views(faces: FaceSet, scale: float, enlarge: bool = True, target: float = ENLARGE_TARGET) -> list[View]:
    """The whole images, then (``enlarge``) an enlarged crop for each face below :data:`LARGE_PX` at the network."""
    views, first = [], faces.first_index()
    for i, bx in enumerate(faces.boxes):
        views.append(View(i, first[i] + np.arange(len(bx)), bx.astype(float)))
    if not enlarge:
        return views
    sizes = {}
    for i, bx in enumerate(faces.boxes):
        for j, b in enumerate(bx):
            side = float(b[2] - b[0])
            if side * scale >= LARGE_PX:
                continue
            if i not in sizes:
                sizes[i] = _image_hw(faces.images[i])
            h, w = sizes[i]
            m = ENLARGE_CONTEXT * side
            x0, y0 = max(0, int(b[0] - m)), max(0, int(b[1] - m))
            x1, y1 = min(w, math.ceil(b[2] + m)), min(h, math.ceil(b[3] + m))
            f = target / (side * scale)
            box = (b[:4] - np.array([x0, y0, x0, y0])) * f
            views.append(View(i, np.array([first[i] + j]), box[None], "enlarged", (x0, y0, x1, y1), f))
    return views


def _image_hw(path: Path) -> tuple[int, int]:
    h, w = load_image(path).shape[:2]
    return h, w


def view_image(image: np.ndarray, view: View) -> np.ndarray:
    """The view's pixels: the image itself, or its crop enlarged (bilinear) by ``view.factor``."""
    if view.crop is None:
        return image
    x0, y0, x1, y1 = view.crop
    c = image[y0:y1, x0:x1]
    size = (max(1, round((x1 - x0) * view.factor)), max(1, round((y1 - y0) * view.factor)))
    return cv2.resize(c, size, interpolation=cv2.INTER_LINEAR)


def face_bin(net_px: float) -> str | None:
    """The bin of a face side at the network input (None below the smallest bin)."""
    for name, (lo, hi) in BINS.items():
        if lo <= net_px < hi:
            return name
    return None


# -- near-duplicates ------------------------------------------------------------------------------------------


NEAR_DUPLICATE_KINDS = ("jpeg", "shift", "zoom", "crop")


def near_duplicate(image: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """The same photo as a client might send it again: re-encoded as JPEG q90, shifted 1–2 px, rescaled
    ±3 % about the centre (a zoom, same size), or the next crop of a video (a 1–2 px crop shift).

    The output has the original's size, so the attacker can average activations cell by cell.
    ``kind`` (one of :data:`NEAR_DUPLICATE_KINDS`) is drawn at random unless given.
    """
    kind = NEAR_DUPLICATE_KINDS[int(rng.integers(len(NEAR_DUPLICATE_KINDS)))] if kind is None else kind
    if kind not in NEAR_DUPLICATE_KINDS:
        raise ValueError(f"unknown near-duplicate kind {kind!r}; choose one of {', '.join(NEAR_DUPLICATE_KINDS)}")
    h, w = image.shape[:2]
    if kind == "jpeg":
        _ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if kind in ("shift", "crop"):  # a shift of the photo, or of the crop window (video): both move content 1-2 px
        dx, dy = (int(rng.integers(1, 3)) * int(rng.choice([-1, 1])) for _ in range(2))
        m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    else:
        s = float(rng.uniform(0.97, 1.03))
        while abs(s - 1.0) < 0.005:
            s = float(rng.uniform(0.97, 1.03))
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, s).astype(np.float32)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# -- attackers ------------------------------------------------------------------------------------------------


@dataclass
class Attacks:
    """What an adversary has: the public model (its head), decoders, the public obfuscator (if any)."""

    model: SplitModel
    naive: nn.Module
    adaptive: nn.Module | None = None
    obfuscator: nn.Module | None = None
    perceptual: nn.Module | None = None
    #: the perceptual decoder trained on clean activations (the clean pass's ``perceptual``)
    perceptual_clean: nn.Module | None = None
    whitebox_steps: int = 100
    tv_weight: float = 0.05
    ks: tuple[int, ...] = (4, 16)
    #: near-duplicate averaging: K near-duplicates per image (empty: off)
    dup_ks: tuple[int, ...] = (16,)
    #: Faces (the first ones, in order; with their enlarged copies) that the white-box attacker inverts.
    whitebox_faces: int = 40
    #: Faces inverted together in one batch.
    whitebox_batch: int = 8
    #: a decoder of clean activations whose reconstruction starts the white-box search (the hybrid attack:
    #: a learned prior, then the optimisation corrects it against the activation; None: the mean colour)
    whitebox_init: nn.Module | None = None
    #: the same for the obfuscated pass (a decoder trained on the audited obfuscation; else ``whitebox_init``)
    whitebox_init_adaptive: nn.Module | None = None
    #: what the white-box inverts in the obfuscated pass (default: the model's head; a defense with a public,
    #: deterministic client-side step after the head, such as a bottleneck's code, puts it here)
    whitebox_head: nn.Module | None = None
    #: identity regressor (:mod:`veil.privacy.regressor`) trained on clean activations (None: not run)
    regressor: nn.Module | None = None
    #: the regressor trained on the audited obfuscation (the obfuscated pass uses it, else ``regressor``)
    regressor_adaptive: nn.Module | None = None
    #: layer-wise chain (:mod:`veil.privacy.layerwise`) trained on clean activations of a deep split (None: not run)
    layerwise: nn.Module | None = None
    #: the chain trained on the audited obfuscation (the obfuscated pass uses it, else ``layerwise``)
    layerwise_adaptive: nn.Module | None = None


def _to_view(rec: np.ndarray, prep_hw: tuple[int, int], view_hw: tuple[int, int]) -> np.ndarray:
    rec = rec[: prep_hw[0], : prep_hw[1]]
    return cv2.resize(rec, (view_hw[1], view_hw[0]), interpolation=cv2.INTER_AREA)


@dataclass
class Leak:
    """What one attacker recovered, per probe (one face in one view) and per whole-image view.

    Arrays, so a clean pass can be cached (npz) and scored again against any gallery.
    """

    face: list[int] = field(default_factory=list)
    net_px: list[float] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    emb: list[np.ndarray] = field(default_factory=list)
    face_ssim: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    grid: dict[int, np.ndarray] = field(default_factory=dict)

    def add(
        self,
        view: View,
        scale: float,
        original: np.ndarray,
        rec: np.ndarray,
        sel: list[int] | None = None,
        region: tuple[int, int, int, int] | None = None,
        grid_faces: int = 0,
    ) -> None:
        """Score reconstruction ``rec`` of ``original`` (view pixels) at the view's faces ``sel``.

        ``region`` (x0, y0, x1, y1) limits whole-image SSIM/PSNR to what was reconstructed.
        """
        sel = list(range(len(view.faces))) if sel is None else sel
        if not sel:
            return
        with _stage("identity+ssim"):
            self._add(view, scale, original, rec, sel, region, grid_faces)

    def add_embedding(self, view: View, scale: float, emb: np.ndarray, sel: list[int] | None = None) -> None:
        """Record embeddings an attacker predicted directly (no image, e.g. the identity regressor of
        :mod:`veil.privacy.regressor`) for the view's faces ``sel``; it has no pixel scores (NaN SSIM)."""
        sel = list(range(len(view.faces))) if sel is None else sel
        if len(emb) != len(sel):
            raise ValueError(f"{len(emb)} embeddings for {len(sel)} faces")
        if not sel:
            return
        self.emb.append(np.asarray(emb, np.float64).reshape(len(sel), identity.EMBEDDING_DIM))
        px = view.net_px(scale)
        for j in sel:
            self.face.append(int(view.faces[j]))
            self.net_px.append(float(px[j]))
            self.kind.append(view.kind)
            self.face_ssim.append(math.nan)

    def _add(
        self,
        view: View,
        scale: float,
        original: np.ndarray,
        rec: np.ndarray,
        sel: list[int],
        region: tuple[int, int, int, int] | None,
        grid_faces: int,
    ) -> None:
        bx = view.boxes[sel]
        self.emb.append(identity.embed_faces(rec, bx))
        px = view.net_px(scale)
        for j, b in zip(sel, bx):
            x1, y1, x2, y2 = clip_box(b, (original.shape[0], original.shape[1]))
            self.face.append(int(view.faces[j]))
            self.net_px.append(float(px[j]))
            self.kind.append(view.kind)
            self.face_ssim.append(metrics.ssim(original[y1:y2, x1:x2], rec[y1:y2, x1:x2]))
            if view.kind == "base" and int(view.faces[j]) < grid_faces:
                self.grid[int(view.faces[j])] = crop_cell(rec, b)
        if view.kind == "base":
            sl = (
                (slice(None), slice(None))
                if region is None
                else (slice(region[1], region[3]), slice(region[0], region[2]))
            )
            self.ssim.append(metrics.ssim(original[sl], rec[sl]))
            self.psnr.append(metrics.psnr(original[sl], rec[sl]))

    # -- persistence (npz, no pickle) --
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        ids = sorted(self.grid)
        return {
            f"{prefix}.face": np.asarray(self.face, np.int64),
            f"{prefix}.net_px": np.asarray(self.net_px),
            f"{prefix}.kind": np.asarray(self.kind, dtype="U8"),
            f"{prefix}.emb": np.concatenate(self.emb) if self.emb else np.zeros((0, identity.EMBEDDING_DIM)),
            f"{prefix}.face_ssim": np.asarray(self.face_ssim),
            f"{prefix}.ssim": np.asarray(self.ssim),
            f"{prefix}.psnr": np.asarray(self.psnr),
            f"{prefix}.grid_ids": np.asarray(ids, np.int64),
            f"{prefix}.grid": (
                np.stack([self.grid[i] for i in ids]) if ids else np.zeros((0, GRID_CELL, GRID_CELL, 3), np.uint8)
            ),
        }

    @classmethod
    def from_arrays(cls, z, prefix: str) -> Leak:
        g = z[f"{prefix}.grid"]
        return cls(
            face=z[f"{prefix}.face"].tolist(),
            net_px=z[f"{prefix}.net_px"].tolist(),
            kind=[str(k) for k in z[f"{prefix}.kind"]],
            emb=[z[f"{prefix}.emb"]],
            face_ssim=z[f"{prefix}.face_ssim"].tolist(),
            ssim=z[f"{prefix}.ssim"].tolist(),
            psnr=z[f"{prefix}.psnr"].tolist(),
            grid={int(i): g[k] for k, i in enumerate(z[f"{prefix}.grid_ids"])},
        )


def _activation(path: Any, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """The clean activation of ``image`` through the data path, and the network input's size."""
    with _stage("head"):
        a, prep = path.head_activation(image)
        return a, (prep.tensor.shape[2], prep.tensor.shape[3])


@dataclass
class _WBItem:
    view: int
    face: int  # index within the view
    window: tuple[int, int, int, int]
    act_hw: tuple[int, int]
    target: torch.Tensor  # the observed activation of the whole view
    prep_hw: tuple[int, int]


def run_attacks(
    faces: FaceSet,
    views: list[View],
    attacks: Attacks,
    scale: float,
    noisy: bool,
    progress: bool = True,
    desc: str = "",
    grid_faces: int = 6,
) -> dict[str, Leak]:
    """Every attacker on every view (clean or obfuscated activations); returns name → :class:`Leak`."""
    leaks: dict[str, Leak] = {}
    wb_items: list[_WBItem] = []
    adaptive = attacks.adaptive if attacks.adaptive is not None else attacks.naive
    if noisy and attacks.obfuscator is None:
        raise ValueError("an obfuscated pass needs the obfuscator (Attacks.obfuscator)")
    path = data_path(attacks.model, scale, attacks.obfuscator if noisy else None)
    arch = decoder_arch(attacks.model)
    stride = arch["stride"]
    reg = attacks.regressor_adaptive if noisy and attacks.regressor_adaptive is not None else attacks.regressor
    chain = attacks.layerwise_adaptive if noisy and attacks.layerwise_adaptive is not None else attacks.layerwise

    def noise(a: torch.Tensor) -> torch.Tensor:
        """The data path's obfuscation of a clean activation (fresh noise each call)."""
        with torch.no_grad():
            return path.obfuscator(a) if path.obfuscator is not None else a

    rng = np.random.default_rng()
    cache: dict[int, np.ndarray] = {}

    def original(v: View) -> np.ndarray:
        if v.image not in cache:
            cache.clear()
            cache[v.image] = load_image(faces.images[v.image])
        return view_image(cache[v.image], v)

    def leak(name: str) -> Leak:
        return leaks.setdefault(name, Leak())

    for vi, v in enumerate(
        tqdm(views, desc=desc or ("attack obfuscated" if noisy else "attack clean"), unit="view", disable=not progress)
    ):
        with _stage("load"):
            img = original(v)
        vhw = img.shape[:2]
        a, phw = _activation(path, img)
        with _stage("noise"):
            obs = noise(a)

        def dec(model: nn.Module, act: torch.Tensor, phw=phw, vhw=vhw) -> np.ndarray:
            with _stage("decode"):
                return _to_view(to_pixels(decode(model, act), arch["mean"], arch["std"]), phw, vhw)

        leak("naive").add(v, scale, img, dec(attacks.naive, obs), grid_faces=grid_faces)
        if attacks.perceptual is not None:
            leak("perceptual").add(v, scale, img, dec(attacks.perceptual, obs), grid_faces=grid_faces)

        def regress(name: str, act: torch.Tensor, v=v, reg=reg) -> None:
            """The identity regressor (veil.privacy.regressor) on the same observation as the decoders."""
            if reg is not None:
                with _stage("regressor"):
                    leak(name).add_embedding(v, scale, reg.predict(act, v.boxes * scale))

        regress("regressor", obs)

        def layerwise(name: str, act: torch.Tensor, v=v, img=img, dec=dec) -> None:
            """The layer-wise chain (veil.privacy.layerwise) on the same observation as the decoders."""
            if chain is not None:
                leak(name).add(v, scale, img, dec(chain, act), grid_faces=grid_faces)

        layerwise("layerwise", obs)
        if noisy:
            leak("adaptive").add(v, scale, img, dec(adaptive, obs), grid_faces=grid_faces)
            with torch.no_grad():
                for k in attacks.ks:
                    with _stage("noise"):
                        avg = torch.stack([noise(a) for _ in range(k)]).mean(0)
                    leak(f"adaptive_avg{k}").add(v, scale, img, dec(adaptive, avg), grid_faces=grid_faces)
                    regress(f"regressor_avg{k}", avg)
                    layerwise(f"layerwise_avg{k}", avg)
                for k in attacks.dup_ks:
                    with _stage("near-duplicates"):
                        acts = [obs] + [noise(_activation(path, near_duplicate(img, rng))[0]) for _ in range(k - 1)]
                    dup = torch.stack(acts).mean(0)
                    leak(f"adaptive_dup{k}").add(v, scale, img, dec(adaptive, dup), grid_faces=grid_faces)
                    regress(f"regressor_dup{k}", dup)
                    layerwise(f"layerwise_dup{k}", dup)
        for j, f in enumerate(v.faces):
            if f < attacks.whitebox_faces:
                wb_items.append(
                    _WBItem(
                        vi,
                        j,
                        cell_window(v.boxes[j] * scale, (a.shape[2], a.shape[3]), stride=stride),
                        (a.shape[2], a.shape[3]),
                        obs,
                        phw,
                    )
                )
    if wb_items:
        leaks["whitebox"] = _whitebox(faces, views, wb_items, attacks, scale, noisy, original, progress, grid_faces)
    return leaks


def _whitebox(
    faces: FaceSet,
    views: list[View],
    items: list[_WBItem],
    attacks: Attacks,
    scale: float,
    noisy: bool,
    original,
    progress: bool,
    grid_faces: int,
) -> Leak:
    """Invert every white-box face window, ``whitebox_batch`` at a time (similar sizes together); score each
    face on its own window, mapped back to view pixels."""
    mu, wt = channel_weights(attacks.obfuscator if noisy else None)
    inputs = input_args(attacks.model)
    stride = int(inputs["stride"])
    out = Leak()
    order = sorted(
        range(len(items)),
        key=lambda i: (items[i].window[1] - items[i].window[0]) * (items[i].window[3] - items[i].window[2]),
    )
    patches: dict[int, torch.Tensor] = {}
    starts: dict[int, torch.Tensor] = {}  # item → the init decoder's reconstruction of its window
    init_dec = attacks.whitebox_init_adaptive if noisy and attacks.whitebox_init_adaptive is not None else None
    init_dec = init_dec if init_dec is not None else attacks.whitebox_init
    if init_dec is not None:
        recon, last = None, -1
        for i, it in enumerate(items):  # items come in view order: one decode per view
            if it.view != last:
                with _stage("decode"):
                    recon, last = decode(init_dec, it.target), it.view
            r0, r1, c0, c1 = it.window
            starts[i] = recon[:, :, r0 * stride : r1 * stride, c0 * stride : c1 * stride].clone()  # type: ignore[index]

    bs = max(1, attacks.whitebox_batch)
    for start in tqdm(range(0, len(order), bs), desc="white-box", unit="batch", disable=not progress):
        chunk = [items[i] for i in order[start : start + bs]]
        init = [starts[i] for i in order[start : start + bs]] if starts else None
        with _stage("whitebox-inversion"):
            res = invert_windows(
                attacks.whitebox_head if noisy and attacks.whitebox_head is not None else attacks.model.head,
                [c.target for c in chunk],
                [c.window for c in chunk],
                [c.act_hw for c in chunk],
                steps=attacks.whitebox_steps,
                tv_weight=attacks.tv_weight,
                mu=mu,
                weight=wt,
                upscale=scale,
                init=init,
                **inputs,
            )
        for i, p in zip(order[start : start + bs], res):
            patches[i] = p
    for i, it in enumerate(items):
        v = views[it.view]
        img = original(v)
        vhw = img.shape[:2]
        r0, r1, c0, c1 = it.window
        # the window in view pixels (the prepared image is ×scale, not padded)
        sy, sx = it.prep_hw[0] / vhw[0], it.prep_hw[1] / vhw[1]
        py1, px1 = min(r1 * stride, it.prep_hw[0]), min(c1 * stride, it.prep_hw[1])
        patch = to_pixels(patches[i], inputs["input_mean"], inputs["input_std"])
        patch = patch[: py1 - r0 * stride, : px1 - c0 * stride]
        y0, x0 = round(r0 * stride / sy), round(c0 * stride / sx)
        y1, x1 = round(py1 / sy), round(px1 / sx)
        rec = np.empty_like(img)  # the mean colour outside the inverted window: no original pixels
        rec[:] = mean_colour(attacks.model)
        rec[y0:y1, x0:x1] = cv2.resize(patch, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        out.add(v, scale, img, rec, sel=[it.face], region=(x0, y0, x1, y1), grid_faces=grid_faces)
    return out


# -- scoring --------------------------------------------------------------------------------------------------


@dataclass
class Gallery:
    """The original faces' embeddings and the FAR-1 % threshold set on pairs of different originals."""

    emb: np.ndarray
    threshold: float
    far: float = 0.01


def gallery_for(faces: FaceSet, far: float = 0.01) -> Gallery:
    """Embed every original face at its annotated box."""
    emb = np.concatenate([identity.embed_faces(load_image(p), b) for p, b in zip(faces.images, faces.boxes)])
    return Gallery(emb, metrics.far_threshold(emb, far), far)


def _rate(hits: np.ndarray) -> dict:
    k, n = int(hits.sum()), len(hits)
    lo, hi = metrics.wilson_interval(k, n)
    return {"rate": round(k / n, 4) if n else None, "ci95": [round(lo, 4), round(hi, 4)], "k": k, "n": n}


def summarize(leak: Leak, gallery: Gallery) -> dict:
    """Scores of one attacker: over the base probes (each face at its natural size) ``rank1``, ``tar_at_far1``
    with intervals; per face-size bin (all probes, enlarged copies included) and for the enlarged copies alone."""
    emb = np.concatenate(leak.emb) if leak.emb else np.zeros((0, identity.EMBEDDING_DIM))
    face = np.asarray(leak.face, int)
    r1 = metrics.rank1_hits(gallery.emb, emb, face)
    ta = metrics.tar_hits(gallery.emb, emb, gallery.threshold, face)
    kind = np.asarray(leak.kind)
    px = np.asarray(leak.net_px)
    base = kind == "base"
    fs = np.asarray(leak.face_ssim)
    finite = [p for p in leak.psnr if math.isfinite(p)]
    out: dict[str, Any] = {
        "ssim": round(float(np.mean(leak.ssim)), 4) if leak.ssim else None,
        "psnr": round(float(np.mean(finite)), 2) if finite else None,
        "face_ssim": round(float(fs[base].mean()), 4) if base.any() else None,
    }
    r, t = _rate(r1[base]), _rate(ta[base])
    out.update(rank1=r["rate"], rank1_ci95=r["ci95"], tar_at_far1=t["rate"], tar_ci95=t["ci95"], n_probes=r["n"])
    bins: dict[str, dict[str, Any]] = {}
    for name in BINS:
        m = np.asarray([face_bin(p) == name for p in px], bool)
        rb, tb = _rate(r1[m]), _rate(ta[m])
        bins[name] = {
            "n": rb["n"],
            "rank1": rb["rate"],
            "rank1_ci95": rb["ci95"],
            "tar_at_far1": tb["rate"],
            "tar_ci95": tb["ci95"],
            "n_enlarged": int((m & ~base).sum()),
        }
    out["bins"] = bins
    if (~base).any():
        re = _rate(r1[~base])
        out["enlarged"] = {"n": re["n"], "rank1": re["rate"], "rank1_ci95": re["ci95"]}
    return out


# -- the clean-pass cache -------------------------------------------------------------------------------------


def cache_key(faces: FaceSet, scale: float, attacks: Attacks, enlarge: bool) -> str:
    """Clean-pass key: face-set digest, the model's key (model, split, weights SHA-256), scale, the
    decoders' weights and white-box settings."""
    from veil.privacy.train import state_sha256

    pairs = (
        ("naive", attacks.naive),
        ("perceptual", attacks.perceptual_clean),
        ("regressor", attacks.regressor),
        ("layerwise", attacks.layerwise),
        ("whitebox_init", attacks.whitebox_init),
    )
    decs = {k: state_sha256(m) for k, m in pairs if m}
    return hashlib.sha256(
        json.dumps(
            [
                faces.digest(),
                attacks.model.key,
                float(scale),
                decs,
                attacks.whitebox_steps,
                attacks.whitebox_faces,
                attacks.tv_weight,
                enlarge,
                ENLARGE_TARGET,
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]


def save_leaks(path: Path, leaks: dict[str, Leak], gallery: Gallery | None = None) -> Path:
    """Write leaks (and the gallery) as one ``.npz`` (plain arrays; read back with ``allow_pickle=False``)."""
    arrs: dict[str, np.ndarray] = {"names": np.asarray(sorted(leaks), dtype="U32")}
    for name, lk in leaks.items():
        arrs.update(lk.arrays(name))
    if gallery is not None:
        arrs.update(
            {
                "gallery.emb": gallery.emb,
                "gallery.threshold": np.asarray(gallery.threshold),
                "gallery.far": np.asarray(gallery.far),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npz")
    np.savez_compressed(tmp, **arrs)
    tmp.replace(path)
    return path


def load_leaks(path: Path) -> tuple[dict[str, Leak], Gallery | None]:
    with np.load(path, allow_pickle=False) as z:
        leaks = {str(n): Leak.from_arrays(z, str(n)) for n in z["names"]}
        g = (
            Gallery(z["gallery.emb"], float(z["gallery.threshold"]), float(z["gallery.far"]))
            if "gallery.emb" in z.files
            else None
        )
    return leaks, g


def clean_pass(
    faces: FaceSet,
    views: list[View],
    attacks: Attacks,
    scale: float,
    key: str | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[dict[str, Leak], Gallery, bool]:
    """Clean-activation leaks, the references and the gallery, from the cache when ``key`` is there.

    Returns ``(leaks, gallery, from_cache)``. References (``ref:original``, ``ref:constant``,
    ``ref:blur_to_activation``) are stored as leaks too.
    """
    path = None if key is None or cache_dir is None else Path(cache_dir) / f"clean-{key}.npz"
    if path is not None and path.is_file():
        leaks, gallery = load_leaks(path)
        if gallery is not None:
            return leaks, gallery, True
    with _stage("gallery"):
        gallery = gallery_for(faces)
    clean_attacks = Attacks(
        **{
            **attacks.__dict__,
            "obfuscator": None,
            "adaptive": None,
            "perceptual": attacks.perceptual_clean,
            "regressor_adaptive": None,
            "layerwise_adaptive": None,
        }
    )
    leaks = run_attacks(faces, views, clean_attacks, scale, noisy=False, progress=progress)
    leaks.update(references(faces, views, scale, attacks.model))
    if path is not None:
        save_leaks(path, leaks, gallery)
    return leaks, gallery, False


def references(faces: FaceSet, views: list[View], scale: float, model: SplitModel) -> dict[str, Leak]:
    """The original, a constant image of the model's mean colour, and the original reduced to the
    activation's resolution and back."""
    stride = model.stride
    grey = mean_colour(model)
    refs = {n: Leak() for n in ("ref:original", "ref:constant", "ref:blur_to_activation")}
    img_cache: dict[int, np.ndarray] = {}
    for v in views:
        if v.image not in img_cache:
            img_cache.clear()
            img_cache[v.image] = load_image(faces.images[v.image])
        img = view_image(img_cache[v.image], v)
        refs["ref:original"].add(v, scale, img, img)
        const = np.empty_like(img)
        const[:] = grey
        refs["ref:constant"].add(v, scale, img, const)
        refs["ref:blur_to_activation"].add(v, scale, img, blur_reference(img, scale, stride))
    return refs


def blur_reference(image: np.ndarray, scale: float, stride: int) -> np.ndarray:
    """The original reduced to the activation's resolution (×scale/stride) and back: what a 1-px-per-cell
    image shows."""
    h, w = image.shape[:2]
    sh, sw = max(1, math.ceil(h * scale / stride)), max(1, math.ceil(w * scale / stride))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# -- independence ---------------------------------------------------------------------------------------------


class IndependenceError(ValueError):
    """A scoring attacker shares a seed, data order or weights with an adversary used inside the defense."""


def defense_adversaries(noise_meta: dict) -> list[dict]:
    """Adversaries a noise file records as used in its fitting: ``adversary`` / ``adversaries`` entries with
    ``seed``, ``data_order_seed`` and ``weights_sha256`` (the keys a defense that trains one must write)."""
    out = []
    for key in ("adversary", "adversaries"):
        v = noise_meta.get(key)
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                continue
        if isinstance(v, dict):
            out.append(v)
        elif isinstance(v, list):
            out.extend(x for x in v if isinstance(x, dict))
    flat = {k.removeprefix("adversary_"): noise_meta[k] for k in noise_meta if k.startswith("adversary_")}
    if flat and not (flat.get("weight") in (0, 0.0) and not {"seed", "data_order_seed", "weights_sha256"} & set(flat)):
        out.append(flat)  # (an ``adversary_weight`` of 0 alone says no adversary was used)
    return out


def check_independence(decoders: dict[str, dict], noise_meta: dict) -> list[str]:
    """Refuse scoring decoders that share a seed, data-order seed or initial weights with a defense's adversary.

    ``decoders``: name → decoder metadata. Returns warnings (e.g. a decoder without a recorded seed,
    or a defense's adversary without one); raises :class:`IndependenceError` on a shared one.
    """
    notes = []
    for adv in defense_adversaries(noise_meta):
        for name, md in decoders.items():
            for key in ("seed", "data_order_seed"):
                a, d = adv.get(key), md.get(key)
                if a is None or d is None:
                    notes.append(f"cannot verify {key} of {name} against the defense's adversary (not recorded)")
                elif int(a) == int(d):
                    raise IndependenceError(
                        f"scoring attacker {name} has {key} {d}, the same as the adversary used "
                        f"inside the defense's fitting: retrain it (another seed) to score fairly"
                    )
            w = adv.get("weights_sha256")
            if w and w in (md.get("init_sha256"), md.get("state_sha256")):
                raise IndependenceError(f"scoring attacker {name} starts from the defense's own adversary weights")
    for name, md in decoders.items():
        if md.get("seed") is None:
            notes.append(f"{name}: no recorded seed (trained before seeds were recorded)")
    for n in notes:
        warnings.warn(n, stacklevel=2)
    return notes


# -- the audit ------------------------------------------------------------------------------------------------


def audit(
    faces: FaceSet,
    attacks: Attacks,
    alpha: float,
    scale: float | None = None,
    grid_faces: int = 6,
    out_dir: str | Path | None = None,
    progress: bool = True,
    meta: dict | None = None,
    clean: tuple[dict[str, Leak], Gallery] | None = None,
    views: list[View] | None = None,
    cache_dir: Path | None = None,
    enlarge: bool = True,
) -> dict:
    """Run every attacker on ``faces``, clean and (if an obfuscator is given) obfuscated; return the report.
    ``scale``: the deployed input scale (default: the model's, ×3 for FaceBoxes).

    For models whose task has faces (``face-detection``); any other model gets
    :func:`veil.privacy.reconstruction.reconstruction_audit`. The clean pass (and the originals'
    embeddings) comes from ``clean`` or the cache in ``cache_dir`` (keyed by face digest, the model's
    key, scale, decoders, white-box settings), so several configurations share it. Stage timings
    are in ``report["timing_s"]``.
    """
    require_faces(attacks.model)
    scale = attacks.model.config.input.scale if scale is None else float(scale)
    t0, c0 = time.monotonic(), time.process_time()
    STAGES.clear()
    timing: dict = {}
    views = views if views is not None else make_views(faces, scale, enlarge)
    noisy = attacks.obfuscator is not None
    from_cache = clean is not None
    if clean is None:
        key = cache_key(faces, scale, attacks, enlarge) if cache_dir is not None else None
        c_leaks, gallery, from_cache = clean_pass(faces, views, attacks, scale, key, cache_dir, progress)
    else:
        c_leaks, gallery = clean
    timing["clean_pass"] = round(time.monotonic() - t0, 1)
    timing["clean_pass_cpu"] = round(time.process_time() - c0, 1)
    t1, c1 = time.monotonic(), time.process_time()
    n_leaks = (
        run_attacks(
            faces,
            views,
            attacks,
            scale,
            noisy=True,
            progress=progress,
            desc=f"attack α={alpha:g}",
            grid_faces=grid_faces,
        )
        if noisy
        else {}
    )
    timing["obfuscated_pass"] = round(time.monotonic() - t1, 1)
    timing["obfuscated_pass_cpu"] = round(time.process_time() - c1, 1)
    t2 = time.monotonic()
    refs = {k.removeprefix("ref:"): summarize(v, gallery) for k, v in c_leaks.items() if k.startswith("ref:")}
    clean_s = {k: summarize(v, gallery) for k, v in c_leaks.items() if not k.startswith("ref:")}
    attackers = {k: summarize(v, gallery) for k, v in n_leaks.items()} if noisy else dict(clean_s)
    # Without noise the adaptive decoder *is* the naive one and averaging changes nothing.
    extra = ("adaptive", *(f"adaptive_avg{k}" for k in attacks.ks), *(f"adaptive_dup{k}" for k in attacks.dup_ks))
    for e in extra:
        clean_s.setdefault(e, clean_s["naive"])
        attackers.setdefault(e, clean_s["naive"])
    for fam in ("regressor", "layerwise"):  # likewise their averages on clean activations
        if fam in clean_s:
            for e in (*(f"{fam}_avg{k}" for k in attacks.ks), *(f"{fam}_dup{k}" for k in attacks.dup_ks)):
                clean_s.setdefault(e, clean_s[fam])
                attackers.setdefault(e, clean_s[fam])
    timing["scoring"] = round(time.monotonic() - t2, 1)
    timing["stages_wall_cpu"] = {k: [round(v[0], 1), round(v[1], 1)] for k, v in STAGES.items()}
    n = faces.n_faces
    chance = 1.0 / n
    report = {
        "alpha": alpha,
        "scale": scale,
        "model": attacks.model.name,
        "split_point": attacks.model.split_point,
        "model_key": attacks.model.key,
        "preprocessing": f"{attacks.model.name}'s own at ×{scale:g} (input mean "
        f"{list(attacks.model.config.input.mean)}, std {list(attacks.model.config.input.std)}); "
        "scored at the view's size",
        "n_faces": n,
        "n_images": len(faces.images),
        "faces_digest": faces.digest(),
        "n_views": len(views),
        "n_enlarged": sum(v.kind == "enlarged" for v in views),
        "enlarge_target_px": ENLARGE_TARGET if enlarge else None,
        "bins_px": {k: list(v) for k, v in BINS.items()},
        "chance_rank1": round(chance, 5),
        "chance_definition": "every probe is matched against the gallery of all N original faces: chance = 1/N "
        "overall and in every face-size bin",
        "far": gallery.far,
        "far_threshold": round(gallery.threshold, 4),
        "attackers": attackers,
        "clean_baseline": clean_s,
        "references": refs,
        "whitebox_steps": attacks.whitebox_steps,
        "whitebox_faces": min(attacks.whitebox_faces, n),
        "averaging_k": [1, *attacks.ks],
        "near_duplicate_k": list(attacks.dup_ks),
        "clean_pass_cached": bool(from_cache),
        "timing_s": timing,
        **(meta or {}),
    }
    report.update(competence(report))
    report.update(privacy_columns(report))
    report["seconds"] = round(time.monotonic() - t0, 1)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        grid = face_grid(faces, c_leaks, n_leaks, grid_faces)
        if grid is not None:
            cv2.imwrite(str(out / "grid_faces.png"), grid)
        curves = {k: v["curve_l1_px"] for k, v in (meta or {}).get("decoders", {}).items() if v.get("curve_l1_px")}
        if curves:
            learning_curves_plot(curves, out / "learning_curves.png")
        jsonio.write_json(out / "report.json", report)
        (out / "report.md").write_text(write_markdown(report))
    return report


def blur_leak_by_scale(
    faces: FaceSet, model: SplitModel, scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
) -> dict[float, dict]:
    """Identity left in the activation *grid* alone, per input scale: the original reduced to the
    split's grid resolution (its stride) at that scale and back, scored like an attacker (no attack needed).

    Shows how the deployed input scale sets how much a perfect decoder could recover.
    """
    require_faces(model)
    gallery = gallery_for(faces)
    out = {}
    for s in scales:
        views = make_views(faces, s, enlarge=False)
        out[s] = summarize(references(faces, views, s, model)["ref:blur_to_activation"], gallery)
    return out


#: Tasks whose inputs hold faces: the identity attacks apply to them.
FACE_TASKS = ("face-detection",)


def require_faces(model: SplitModel) -> None:
    """Identity attacks need faces: refuse a model whose task has none, naming the audit that applies."""
    if model.config.task not in FACE_TASKS:
        raise ValueError(
            f"model {model.name!r} ({model.config.task}) sees no faces: identity attacks do not apply to it; "
            "its audit is the reconstruction audit (veil.privacy.reconstruction.reconstruction_audit)"
        )
