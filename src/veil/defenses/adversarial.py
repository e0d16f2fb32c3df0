"""The adversarial objective (issue 9 §2a): noise fitted against a reconstruction adversary trained alongside.

``veil fit-noise --objective adversarial``. The NSR objective rewards noise *power*; this one rewards what
an attacker fails to recover. Min-max, on non-FDDB photos (the fitting folders):

* each step a small :class:`~veil.privacy.decoders.Decoder` (the *in-loop adversary*) takes one step to
  reconstruct the crop from the freshly obfuscated activation (detached), minimising the privacy term;
* the noise (μ, σ, or an input-conditioned net) takes one step on
  ``(1-ALPHA)·distortion + ALPHA·(privacy_weight·NSR term + adversary_weight·term)``, the term being
  minus what the fixed adversary recovers.

Faces count more (``face_weight``): the photos' face boxes (WIDER-style ``gt`` text files, dlib/imglab
XML; :func:`face_boxes`) follow each crop's zoom and offset into a weight map ``1 + face_weight·mask``.

Privacy terms (``privacy_term``), each a ratio to the same measure for a flat mean-colour guess (so ≈ 1
when the adversary learns nothing, 0 for a perfect copy), capped at 1 in the noise's loss: against a
*fixed* adversary the noise could otherwise win by driving its output astray (a ratio far above 1),
which the next adversary step undoes and a scoring attacker never suffers:

* ``l1``: face-weighted pixel L1;
* ``perceptual``: the mean of that and a face-weighted distance in the frozen detector's own features
  (``veil.privacy.train.ModelFeatures``);
* ``identity``: the identity-aware term of the feasibility note. veil's identity model (dlib's ResNet,
  :mod:`veil.privacy.identity`) is not differentiable from Python, so the in-loop adversary is instead an
  :class:`~veil.privacy.regressor.IdentityRegressor`: it reads the obfuscated activation around each face
  box (``roi_cells``) and is trained to predict the dlib embedding of that face in the original crop
  (:func:`identity_targets`, embedded once per bank). The term is its squared error relative to the
  mean-embedding guess's (:func:`identity_ratio`: ≈ 1 when it predicts no better than the mean identity);
* ``identity+l1``: the mean of the ``identity`` and ``l1`` terms, each with its own adversary.

Independence: each adversary's initial-weights seed (OS-drawn unless given), its data-order seed and the
SHA-256 of its final weights go into the noise file's metadata (``adversary``; ``adversaries`` lists both of
``identity+l1``), so the audit can refuse a scoring attacker that shares any of them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from veil.data.boxes import face_boxes
from veil.models import as_split_model
from veil.obfuscate.crops import DEFAULT_CROP, DEFAULT_SCALE_RANGE, ImageCrops
from veil.obfuscate.fit import FitConfig, FitResult, Outputs, fit_noise
from veil.obfuscate.noise import Obfuscator
from veil.privacy import train as _train
from veil.privacy.decoders import PIXEL_SCALE, Decoder
from veil.privacy.identity import EMBEDDING_DIM
from veil.privacy.train import state_sha256

if TYPE_CHECKING:
    from veil.privacy.regressor import IdentityRegressor

#: The frozen detector's features (``ModelFeatures``; ``FaceFeatures`` before the model registry).
_Features: Any = getattr(_train, "ModelFeatures", None) or getattr(_train, "FaceFeatures")  # noqa: B009

PRIVACY_TERMS = ("l1", "perceptual", "identity", "identity+l1")
#: The identity term's regressor reads at most this many faces per step (crowded WIDER crops hold dozens).
MAX_FACES_PER_STEP = 64
#: Its Adam learning rate: at the decoder's 2e-3 its first steps throw the prediction far from the targets
#: (error ×100 the mean guess's) and 80 steps on 57 faces stay at the mean guess; at 1e-4 it learns them.
REGRESSOR_LR = 1e-4
#: The in-loop adversary is smaller than the scoring attackers' decoder (128, 64, 32, 16): it must train
#: alongside the noise within a CPU fit's budget.
ADVERSARY_WIDTHS = (64, 32, 16, 8)
DEFAULT_FACE_WEIGHT = 4.0
#: The adversary reads a window of this many activation cells per side (× the split's stride in px): cheaper
#: than whole crops.
DEFAULT_WINDOW = 8


# -- the bank: crops, their activations, the tail's clean outputs and face weights ------------------
@dataclass
class FaceBank:
    acts: torch.Tensor
    outs: Outputs
    images: torch.Tensor  # [N,3,crop,crop] network-input units
    weights: torch.Tensor  # [N,1,crop,crop] 1 + face_weight · face mask
    #: Input pixels per activation cell (the split's stride, from the model's config): windows of cells ↔ pixels.
    stride: int
    describe: dict = field(default_factory=dict)
    #: ``[F,5]`` every annotated face that reaches a crop: ``(bank row, x1, y1, x2, y2)`` in crop pixels, not
    #: clipped to the crop (the identity term keeps the faces wholly inside it: :func:`identity_targets`).
    faces: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 5))


@torch.no_grad()
def build_face_bank(
    model: Any,
    dirs: Sequence[str | Path],
    *,
    crop: int = DEFAULT_CROP,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    crops_per_image: int = 1,
    seed: int = 0,
    face_weight: float = DEFAULT_FACE_WEIGHT,
    batch: int = 8,
    progress: bool = True,
) -> FaceBank:
    """The fitting crops (:class:`ImageCrops`, FDDB refused) with their clean activations, the tail's clean
    outputs and face-weight maps (the boxes follow each crop's zoom and offset)."""
    stride = as_split_model(model).stride  # a bare FaceBoxes network: where its head ends
    data = ImageCrops(dirs, crop=crop, scale_range=scale_range, crops_per_image=crops_per_image, seed=seed)
    boxes = face_boxes(dirs)
    model.eval()
    acts, outs, imgs, wts = [], [], [], []
    faces: list[list[float]] = []
    n_faces = 0
    idx = list(range(len(data)))
    for start in tqdm(range(0, len(idx), batch), desc="face bank", unit="batch", disable=not progress):
        xs, ws = [], []
        for i in idx[start : start + batch]:
            x, (sx, sy, y0, x0) = data.sample(i)
            w = torch.ones(1, crop, crop)
            for x1, y1, x2, y2 in boxes.get(data.files[i // data.crops_per_image].resolve(), np.zeros((0, 4))):
                a, b = round(x1 * sx) - x0, round(y1 * sy) - y0
                c, d = round(x2 * sx) - x0, round(y2 * sy) - y0
                if min(c, crop) > max(a, 0) and min(d, crop) > max(b, 0):
                    faces.append([float(i), float(a), float(b), float(c), float(d)])
                a, b, c, d = max(a, 0), max(b, 0), min(c, crop), min(d, crop)
                if c > a and d > b:
                    w[:, b:d, a:c] = 1.0 + face_weight
                    n_faces += 1
            xs.append(x)
            ws.append(w)
        x = torch.stack(xs)
        a = model.head(x)
        acts.append(a)
        outs.append(tuple(model.tail(a)))
        imgs.append(x)
        wts.append(torch.stack(ws))
    weights = torch.cat(wts)
    return FaceBank(
        torch.cat(acts),
        tuple(torch.cat(p) for p in zip(*outs)),
        torch.cat(imgs),
        weights,
        stride,
        {
            **data.describe(),
            "dirs": [str(Path(d)) for d in dirs],
            "annotated_images": sum(1 for f in data.files if f.resolve() in boxes),
            "faces_in_crops": n_faces,
            "face_weight": face_weight,
            "face_area_fraction": round(float((weights > 1).float().mean()), 4),
        },
        torch.tensor(faces, dtype=torch.float32).reshape(-1, 5),
    )


# -- identity targets: dlib embeddings of the bank's faces ---------------------------------------------
@dataclass
class IdentityTargets:
    """What the identity term's in-loop regressor is trained to predict: the dlib embedding
    (:func:`veil.privacy.identity.embed_faces`) of each face wholly inside a crop and at least ``min_face`` px
    (dlib's recogniser needs some pixels), computed once per bank (its crops are a fixed function of the fit's
    seed, so this is the per-photo-and-crop cache)."""

    rois: torch.Tensor  # [F,5] (bank row, x1, y1, x2, y2) in crop pixels
    embeddings: torch.Tensor  # [F,128]
    #: The mean embedding: the guess of a predictor that learned nothing about the face (the term's 1).
    mean: torch.Tensor
    describe: dict = field(default_factory=dict)


#: Faces smaller than this (shorter side, crop pixels) get no identity target.
MIN_IDENTITY_FACE = 24


def identity_targets(bank: FaceBank, *, min_face: int = MIN_IDENTITY_FACE, progress: bool = True) -> IdentityTargets:
    """dlib embeddings of the bank's faces wholly inside their crop with a shorter side ≥ ``min_face`` px, each
    embedded in its original (clean) crop at its annotated box."""
    from veil.preprocess import to_image
    from veil.privacy.identity import embed_faces

    t0 = time.monotonic()
    f = bank.faces
    side = torch.minimum(f[:, 3] - f[:, 1], f[:, 4] - f[:, 2])
    crop = bank.images.shape[-1]
    keep = (side >= min_face) & (f[:, 1] >= 0) & (f[:, 2] >= 0) & (f[:, 3] <= crop) & (f[:, 4] <= bank.images.shape[-2])
    rois = f[keep]
    rows = sorted({int(r) for r in rois[:, 0]})
    embs = torch.zeros(len(rois), EMBEDDING_DIM)
    for r in tqdm(rows, desc="identity targets", unit="crop", disable=not progress):
        sel = (rois[:, 0] == r).nonzero().flatten()
        e = embed_faces(to_image(bank.images[r]), rois[sel, 1:].numpy())
        embs[sel] = torch.from_numpy(e).float()
    if not len(rois):
        raise ValueError(
            f"no face of at least {min_face} px lies wholly inside a fitting crop: the identity term needs "
            "annotated faces (WIDER-style gt files or imglab XML beside the photos; see face_boxes)"
        )
    return IdentityTargets(
        rois,
        embs,
        embs.mean(0),
        {
            "faces": len(rois),
            "crops": len(rows),
            "min_face_px": min_face,
            "median_face_px": round(float(side[keep].median()), 1),
            "seconds": round(time.monotonic() - t0, 1),
        },
    )


def identity_ratio(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """How little of the identity a prediction carries: ``Σ‖pred − target‖² / Σ‖mean − target‖²`` over the faces,
    ≈ 1 for the mean-embedding guess (nothing learned about these faces), 0 for the exact embeddings."""
    base = (mean.to(target) - target).pow(2).sum()
    return (pred - target).pow(2).sum() / base.clamp_min(1e-8)


# -- the in-loop adversary ------------------------------------------------------------------------
def _ratio(err: torch.Tensor, base: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (w * err).sum() / (w * base).sum().clamp_min(1e-6)


class InLoopAdversary:
    """The adversaries trained alongside the noise; :meth:`term` is the privacy term the fit minimises.

    * ``l1`` / ``perceptual``: a small decoder reconstructing a window of the crop;
    * ``identity``: an :class:`~veil.privacy.regressor.IdentityRegressor` reading the noisy activation around
      each face box and predicting its dlib embedding (``targets``, :func:`identity_targets`);
    * ``identity+l1``: both, the term the mean of the two.

    ``observe`` maps clean activations to what the adversaries read when that is not the activation plus noise
    (a bottleneck's padded code, :mod:`veil.defenses.bottleneck`): the regressor's input normalisation is
    computed on it. ``seed`` sets the first adversary's initial weights (the regressor of ``identity+l1`` takes
    ``seed + 1``),
    ``data_order_seed`` the windows and faces they read (the minibatches are the fit's); each adversary's seeds
    are recorded with its final weights' SHA-256 (:meth:`records`).
    """

    def __init__(
        self,
        bank: FaceBank,
        privacy_term: str = "l1",
        *,
        model: Any = None,
        seed: int | None = None,
        data_order_seed: int = 0,
        lr: float = 2e-3,
        window: int = DEFAULT_WINDOW,
        targets: IdentityTargets | None = None,
        regressor_lr: float = REGRESSOR_LR,
        max_faces: int = MAX_FACES_PER_STEP,
        observe: Callable[[torch.Tensor], torch.Tensor] | None = None,
        progress: bool = False,
    ) -> None:
        if privacy_term not in PRIVACY_TERMS:
            raise ValueError(
                f"unknown privacy term {privacy_term!r}; choose one of {', '.join(PRIVACY_TERMS)} (l1: pixels; "
                "perceptual: + the detector's features; identity: an identity regressor's dlib-embedding error)"
            )
        if privacy_term == "perceptual" and model is None:
            raise ValueError("the perceptual term needs the detector (its frozen features)")
        self.bank, self.kind, self.window = bank, privacy_term, int(window)
        self.seed = secrets.randbits(31) if seed is None else int(seed)
        self.data_order_seed = int(data_order_seed)
        self.rng = torch.Generator().manual_seed(self.data_order_seed)
        self.curve: list[float] = []
        self.decoder: Decoder | None = None
        self.regressor: IdentityRegressor | None = None
        if privacy_term != "identity":
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                # shaped for the bank's activation (the split's channels and stride); FaceBoxes: 128, 32
                self.decoder = Decoder(ADVERSARY_WIDTHS, channels=int(bank.acts.shape[1]), stride=bank.stride)
            self.opt = torch.optim.Adam(self.decoder.parameters(), lr=lr)
        self.features = _Features(model) if privacy_term == "perceptual" and model is not None else None
        if privacy_term.startswith("identity"):
            from veil.privacy.regressor import IdentityRegressor, roi_cells

            self.targets = targets if targets is not None else identity_targets(bank, progress=progress)
            self.regressor_seed = self.seed if self.decoder is None else (self.seed + 1) % 2**31
            with torch.random.fork_rng():
                torch.manual_seed(self.regressor_seed)
                # the split's channels and stride (the bank's, from the SplitModel): any split point
                reg = IdentityRegressor(int(bank.acts.shape[1]))
            reg.stride = bank.stride
            rois = self.targets.rois
            one_each = torch.cat([torch.arange(len(rois), dtype=rois.dtype)[:, None], rois[:, 1:]], 1)
            with torch.no_grad():  # its input normalisation: what it reads (the clean activation) at the faces
                seen = bank.acts[rois[:, 0].long()]
                seen = observe(seen) if observe is not None else seen
                clean = roi_cells(seen, one_each, bank.stride, reg.cells, reg.context)
                reg.set_normalisation(list(clean.split(1)))
                # start at the mean-embedding guess (the term's 1), so the capped term has a gradient from the
                # first steps instead of waiting for a random output to come down to the targets' spread
                last = [m for m in reg.modules() if isinstance(m, nn.Linear)][-1]
                last.weight.mul_(0.01)
                if last.bias is not None:
                    last.bias.copy_(self.targets.mean)
            self.regressor = reg
            self.regressor_lr = float(regressor_lr)
            self.regressor_opt = torch.optim.Adam(reg.parameters(), lr=self.regressor_lr)
            self.max_faces = int(max_faces)
            self.identity_curve: list[float] = []
            rows = rois[:, 0].long()
            self._faces_of = {int(r): (rows == r).nonzero().flatten() for r in rows.unique()}

    def _window(self, idx: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = noisy.shape[2:]
        k = min(self.window, h, w)
        y = int(torch.randint(0, h - k + 1, (1,), generator=self.rng))
        x = int(torch.randint(0, w - k + 1, (1,), generator=self.rng))
        s = self.bank.stride
        img = self.bank.images[idx][:, :, y * s : (y + k) * s, x * s : (x + k) * s]
        wt = self.bank.weights[idx][:, :, y * s : (y + k) * s, x * s : (x + k) * s]
        return noisy[:, :, y : y + k, x : x + k], img, wt

    def _measure(self, rec: torch.Tensor, target: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
        """What the adversary recovers, as an error ratio (1 ≈ nothing, 0 = everything)."""
        pix = _ratio((rec - target).abs(), target.abs(), wt)
        if self.features is None:
            return pix
        with torch.no_grad():
            ft = self.features(target * PIXEL_SCALE)
        fr = self.features(rec * PIXEL_SCALE)
        feat = []
        for r, t in zip(fr, ft):
            wd = F.adaptive_avg_pool2d(wt, t.shape[2:])
            feat.append(_ratio((r - t).abs(), t.abs(), wd))
        return 0.5 * (pix + torch.stack(feat).mean())

    def _faces(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's faces with targets: boxes ``[M,5]`` (batch position, x1, y1, x2, y2) and target rows ``[M]``;
        at most ``max_faces`` of them, drawn by the data-order generator."""
        pos, rows = [], []
        for j, r in enumerate(idx.tolist()):
            k = self._faces_of.get(int(r))
            if k is not None:
                pos.append(torch.full((len(k),), j))
                rows.append(k)
        if not rows:
            return torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)
        p, k = torch.cat(pos), torch.cat(rows)
        if len(k) > self.max_faces:
            pick = torch.randperm(len(k), generator=self.rng)[: self.max_faces]
            p, k = p[pick], k[pick]
        boxes = torch.cat([p[:, None].float(), self.targets.rois[k, 1:]], 1)
        return boxes, k

    def _through_fixed(self, net: nn.Module, fn: Any) -> torch.Tensor:
        """``fn()`` through ``net`` as it just trained: fixed weights, BatchNorm on the batch's statistics as in
        its own step. (Eval mode would use running statistics that lag the noise while both move: the output is
        then worse than a flat guess and the capped term gives no gradient.) Capped at 1 (nothing recovered):
        no reward for driving a fixed adversary's output astray."""
        for p in net.parameters():
            p.requires_grad_(False)
        for m in net.modules():  # dropout only adds noise to what the adversary recovers
            if isinstance(m, nn.Dropout):
                m.eval()
        try:
            return -fn().clamp(max=1.0)
        finally:
            for p in net.parameters():
                p.requires_grad_(True)
            net.eval()

    def _decoder_term(self, idx: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        assert self.decoder is not None
        obs, img, wt = self._window(idx, noisy)
        target = img / PIXEL_SCALE
        self.decoder.train()
        loss = self._measure(self.decoder(obs.detach()), target, wt)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.curve.append(round(loss.item(), 4))
        dec = self.decoder
        return self._through_fixed(dec, lambda: self._measure(dec(obs), target, wt))

    def _identity_term(self, idx: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """One step of the regressor on the batch's faces (the attackers' loss, ``regression_loss``), then the
        capped :func:`identity_ratio` of its prediction through the fixed regressor."""
        from veil.privacy.regressor import regression_loss, roi_cells

        reg = self.regressor
        assert reg is not None
        boxes, k = self._faces(idx)
        if not len(k):  # no face in this minibatch: nothing to learn, no gradient; logged as the last value
            return noisy.sum() * 0 - min(self.identity_curve[-1] if self.identity_curve else 1.0, 1.0)
        target, mean = self.targets.embeddings[k], self.targets.mean

        def predict(act: torch.Tensor) -> torch.Tensor:
            return reg(roi_cells(act, boxes, self.bank.stride, reg.cells, reg.context))

        reg.train()
        loss = regression_loss(predict(noisy.detach()), target)
        self.regressor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.regressor_opt.step()
        seen: list[torch.Tensor] = []

        def ratio() -> torch.Tensor:
            seen.append(identity_ratio(predict(noisy), target, mean))
            return seen[-1]

        term = self._through_fixed(reg, ratio)
        # the curve: its error ratio as the noise sees it (before the cap; above 1 = worse than the mean guess)
        self.identity_curve.append(round(float(seen[-1].detach()), 4))
        return term

    def term(self, step: int, idx: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        """One step of each adversary on the detached ``noisy`` activation, then minus what it recovers through
        it (to minimise), each capped: the mean over the adversaries of the privacy term."""
        parts = []
        if self.decoder is not None:
            parts.append(self._decoder_term(idx, noisy))
        if self.regressor is not None:
            parts.append(self._identity_term(idx, noisy))
        return torch.stack(parts).mean()

    def records(self) -> list[dict[str, Any]]:
        """One entry per adversary for the noise file (``adversary``: the first; ``adversaries``: all): seeds,
        final weights' SHA-256, architecture, learning curve (the error ratio each step)."""
        out = []
        if self.decoder is not None:
            out.append(
                {
                    "kind": "pixel-decoder",
                    "seed": self.seed,
                    "data_order_seed": self.data_order_seed,
                    "weights_sha256": state_sha256(self.decoder),
                    "privacy_term": self.kind,
                    "widths": list(ADVERSARY_WIDTHS),
                    "window_px": self.window * self.bank.stride,
                    "steps": len(self.curve),
                    "curve_error_ratio": self.curve[:: max(1, len(self.curve) // 100)],
                }
            )
        if self.regressor is not None:
            c = self.identity_curve
            out.append(
                {
                    "kind": "identity-regressor",
                    "seed": self.regressor_seed,
                    "data_order_seed": self.data_order_seed,
                    "weights_sha256": state_sha256(self.regressor),
                    "privacy_term": self.kind,
                    "targets": self.targets.describe,
                    "max_faces_per_step": self.max_faces,
                    "lr": self.regressor_lr,
                    "steps": len(c),
                    "curve_error_ratio": c[:: max(1, len(c) // 100)],
                }
            )
        return out

    def record(self) -> dict[str, Any]:
        """The noise file's ``adversary`` entry: the first adversary's (:meth:`records`)."""
        return self.records()[0]


def fit_adversarial(
    model: Any,
    config: FitConfig,
    bank: FaceBank,
    *,
    privacy_term: str = "l1",
    adversary_seed: int | None = None,
    adversary_lr: float = 2e-3,
    window: int = DEFAULT_WINDOW,
    obfuscator: Obfuscator | None = None,
    net_lr: float = 1e-3,
    targets: IdentityTargets | None = None,
    min_face: int = MIN_IDENTITY_FACE,
    regressor_lr: float = REGRESSOR_LR,
    progress: bool = True,
) -> tuple[FitResult, InLoopAdversary]:
    """Fit noise for ``config`` (objective ``adversarial``) on ``bank`` against a fresh in-loop adversary.

    The adversary's data order follows ``config.seed`` (the fit's minibatches); ``obfuscator`` fits a given
    module instead of per-channel noise (input-conditioned: :mod:`veil.defenses.conditioned`). The identity
    terms embed the bank's faces of at least ``min_face`` px once, unless ``targets`` gives them.
    """
    if config.objective != "adversarial":
        raise ValueError("fit_adversarial needs a FitConfig with objective='adversarial'")
    if privacy_term.startswith("identity") and targets is None:
        targets = identity_targets(bank, min_face=min_face, progress=progress)
    adv = InLoopAdversary(
        bank,
        privacy_term,
        model=model,
        seed=adversary_seed,
        data_order_seed=config.seed,
        lr=adversary_lr,
        window=window,
        targets=targets,
        regressor_lr=regressor_lr,
    )
    result = fit_noise(
        model.head,
        model.tail,
        None,
        config,
        progress=progress,
        bank=(bank.acts, bank.outs),
        privacy_term=adv.term,
        obfuscator=obfuscator,
        net_lr=net_lr,
    )
    return result, adv


@torch.no_grad()
def reconstruction_error(
    bank: FaceBank, obfuscate: nn.Module, decoder: Decoder, *, window: int = DEFAULT_WINDOW, seed: int = 1
) -> float:
    """Face-weighted L1 ratio (1 ≈ nothing recovered) of ``decoder`` on obfuscated windows of ``bank``."""
    rng = torch.Generator().manual_seed(seed)
    decoder.eval()
    errs, bases = [], []
    for i in range(0, len(bank.acts), 8):
        noisy = obfuscate(bank.acts[i : i + 8])
        h, w = noisy.shape[2:]
        k = min(window, h, w)
        y = int(torch.randint(0, h - k + 1, (1,), generator=rng))
        x = int(torch.randint(0, w - k + 1, (1,), generator=rng))
        s = bank.stride
        img = bank.images[i : i + 8, :, y * s : (y + k) * s, x * s : (x + k) * s] / PIXEL_SCALE
        wt = bank.weights[i : i + 8, :, y * s : (y + k) * s, x * s : (x + k) * s]
        rec = decoder(noisy[:, :, y : y + k, x : x + k])
        errs.append(float((wt * (rec - img).abs()).sum()))
        bases.append(float((wt * img.abs()).sum()))
    return sum(errs) / max(sum(bases), 1e-6)


NOISE_MODELS = ("per-channel", "conditioned")


@torch.no_grad()
def _mean_variance(obf: Obfuscator, acts: torch.Tensor) -> torch.Tensor:
    """Per-channel mean σ(a)² of input-conditioned noise over ``acts`` (what its file is judged by)."""
    of = getattr(obf, "noise_variance_of", None)
    if of is None:
        return obf.noise_variance()
    parts = [of(acts[i : i + 16]) * len(acts[i : i + 16]) for i in range(0, len(acts), 16)]
    return torch.stack(parts).sum(0) / len(acts)


def fit_and_save(
    model: Any,
    weights_sha256: str,
    images: Sequence[str | Path],
    out: str | Path,
    config: FitConfig,
    *,
    noise_model: str = "per-channel",
    init_noise: Obfuscator | None = None,
    init_noise_sha256: str | None = None,
    hidden: int = 32,
    net_lr: float = 1e-3,
    privacy_term: str = "l1",
    face_weight: float = DEFAULT_FACE_WEIGHT,
    adversary_seed: int | None = None,
    adversary_lr: float = 2e-3,
    window: int = DEFAULT_WINDOW,
    min_face: int = MIN_IDENTITY_FACE,
    crop: int = DEFAULT_CROP,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    crops_per_image: int = 1,
    progress: bool = True,
) -> tuple[FitResult, dict[str, Any]]:
    """``veil fit-noise`` beyond the default recipe: the adversarial objective and/or input-conditioned noise.

    Writes a noise file :func:`veil.obfuscate.load_obfuscator` reads: plain per-channel μ, σ
    (``veil-noise/1``) or, for ``noise_model="conditioned"``, the net too (``veil-conditioned-noise/1``,
    started from ``init_noise``, a per-channel fit). The metadata records the objective, the privacy term
    and each in-loop adversary's seeds and weights' SHA-256 (``adversary``; ``adversaries`` when there are two).
    """
    from veil.obfuscate.artifact import save_obfuscator
    from veil.obfuscate.conditioned import ConditionedObfuscator

    split = as_split_model(model, weights_sha256)
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {noise_model!r}; choose one of {', '.join(NOISE_MODELS)}")
    obf = None
    if noise_model == "conditioned":
        if init_noise is None:
            raise ValueError("input-conditioned noise starts from a per-channel fit: give init_noise")
        obf = ConditionedObfuscator.from_base(init_noise, hidden=hidden)
    bank = build_face_bank(
        split,
        images,
        crop=crop,
        scale_range=scale_range,
        crops_per_image=crops_per_image,
        seed=config.seed,
        face_weight=face_weight,
        progress=progress,
    )
    adv: InLoopAdversary | None = None
    if config.objective == "adversarial":
        result, adv = fit_adversarial(
            split,
            config,
            bank,
            privacy_term=privacy_term,
            adversary_seed=adversary_seed,
            adversary_lr=adversary_lr,
            window=window,
            obfuscator=obf,
            net_lr=net_lr,
            min_face=min_face,
            progress=progress,
        )
    else:
        result = fit_noise(
            split.head,
            split.tail,
            None,
            config,
            progress=progress,
            bank=(bank.acts, bank.outs),
            obfuscator=obf,
            net_lr=net_lr,
        )
    fitted = result.obfuscator
    if isinstance(fitted, ConditionedObfuscator):
        fitted.batch_log_variance = None
        fitted.mean_variance.copy_(_mean_variance(fitted, bank.acts))
    meta: dict[str, Any] = {
        "alpha": config.alpha,
        "model": split.name,
        "split_point": split.split_point,
        "weights_sha256": weights_sha256,
        "fit": dict(vars(config)),
        "fit_seconds": round(result.seconds, 1),
        "data": bank.describe,
        "activation_stats": result.activation_stats,
        "loss_log": result.log,
        "objective": config.objective,
        "noise_model": noise_model,
    }
    if adv is not None:
        meta["privacy_term"] = privacy_term
        records = adv.records()
        meta["adversary"] = records[0]
        if len(records) > 1:  # identity+l1: the audit's independence rule reads every entry
            meta["adversaries"] = records
    if obf is not None:
        meta["conditioned"] = {"hidden": hidden, "net_lr": net_lr, "init_noise_sha256": init_noise_sha256}
    save_obfuscator(fitted, out, meta)
    return result, meta


__all__ = [
    "MIN_IDENTITY_FACE",
    "NOISE_MODELS",
    "PRIVACY_TERMS",
    "FaceBank",
    "IdentityTargets",
    "InLoopAdversary",
    "build_face_bank",
    "face_boxes",
    "fit_adversarial",
    "fit_and_save",
    "identity_ratio",
    "identity_targets",
    "reconstruction_error",
]
