"""Privacy of a defense on the common footing: a fresh scoring decoder on the defense's *output*.

Why separate from :mod:`veil.privacy.audit`: a defense may change what crosses the wire (a
bottleneck sends a few quantised channels, not the 128-channel activation), so the attacker must
be trained on exactly that (adaptive), and the scoring attacker must be independent of anything
inside the defense's fitting: its own seed, its own data order, trained longer than any in-loop
adversary. Scoring reuses the project's pieces (decoder and its training loop, FDDB face
selection, dlib identity embeddings, rank-1 and TAR) unchanged.

``observe(a)`` is what the server (the attacker) sees for a clean activation ``a``, as a
map of the split's channels the :class:`~veil.privacy.decoders.Decoder` reads: ``obfuscator(a)`` for noise
(with or without a robust tail: the tail changes nothing on the wire), ``as_decoder_input(bottleneck(a),
channels)`` for a bottleneck. Each call draws fresh noise; ``avg_k`` feeds the mean of ``k`` draws (the
averaging attack).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from veil.preprocess import FDDB_SCALE, load_image, prepare, to_image

Observe = Callable[[torch.Tensor], torch.Tensor]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95 % score interval of a proportion ``hits / n``."""
    if n <= 0:
        return (0.0, 1.0)
    p = hits / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


class ObservedHead(nn.Module):
    """``observe(head(x))``: lets :func:`veil.privacy.train.train_decoder` train on what the server sees."""

    def __init__(self, head: nn.Module, observe: Observe) -> None:
        super().__init__()
        self.head = head
        self.observe = observe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.observe(self.head(x))


def train_scoring_decoder(
    head: nn.Module,
    observe: Observe,
    dirs: Sequence[str | Path],
    *,
    minutes: float,
    seed: int = 9001,
    scale: float = FDDB_SCALE,
    crop: int = 384,
    batch: int = 8,
    max_steps: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    init=None,
):
    """A fresh adaptive decoder on ``observe(head(x))`` of non-FDDB crops: own seed, own data order.

    ``seed`` fixes the decoder's initialisation and crop order for this scoring run; use one that no
    defense's fitting used (defenses default to seed 0). ``init`` warm-starts from a public decoder
    (e.g. the naive one trained on clean activations), as the audit's adaptive attacker does.
    """

    from veil.privacy.train import photo_crops, train_decoder

    torch.manual_seed(seed)
    sampler = photo_crops(list(dirs), crop=crop, scale=scale, seed=seed)  # seed recorded as data order
    return train_decoder(
        ObservedHead(head, observe),
        sampler,
        minutes=minutes,
        batch=batch,
        max_steps=max_steps,
        init=init,
        meta={
            "kind": "defense-scoring",
            "seed": seed,
            "init": (init.meta or {}).get("seed") if init is not None else None,
        },
        progress=progress,
        seed=seed,
        device=device,
        plateau=None,  # a fixed budget: every configuration's attacker gets the same
    )


def check_scoring_independence(decoder_meta: dict, defense_meta: dict) -> list[str]:
    """Refuse a scoring decoder that shares a seed, data-order seed or starting weights with an adversary
    recorded in ``defense_meta`` (a defense or noise file's metadata): the audit's own rule
    (:func:`veil.privacy.audit.check_independence`, raising its ``IndependenceError``), applied to this
    footing. Returns the warnings (e.g. a value nobody recorded)."""
    from veil.privacy.audit import check_independence

    return check_independence({"scoring decoder": decoder_meta}, defense_meta)


def _to_orig(rec: np.ndarray, prep_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    rec = rec[: prep_hw[0], : prep_hw[1]]
    return cv2.resize(rec, (orig_hw[1], orig_hw[0]), interpolation=cv2.INTER_AREA)


@torch.no_grad()
def identity_leak(
    faces,
    head: nn.Module,
    observe: Observe,
    decoder: nn.Module,
    *,
    scale: float = FDDB_SCALE,
    ks: Sequence[int] = (1, 8),
    progress: bool = True,
    large_faces: bool = False,
    dup_ks: Sequence[int] = (),
    dup_seed: int = 0,
) -> dict:
    """Rank-1 and TAR@1 %FAR of ``decoder`` on ``observe`` of each FDDB face set image, for each ``k`` in ``ks``.

    ``faces`` is a :class:`veil.privacy.audit.FaceSet`. ``k = 1`` is one query; ``k > 1`` decodes the
    mean of ``k`` fresh observations of the same image (the averaging attack).

    ``dup_ks`` also scores the near-duplicate averaging attack (:func:`veil.privacy.audit.near_duplicate`):
    the mean of one observation of the image and ``k - 1`` of re-sent copies (JPEG q90, 1–2 px shifts,
    ±3 % zoom, video-crop shifts), each with its own fresh noise (keys ``dup<k>``).

    ``large_faces`` also scores the audit's large-face bin (one query): every face whose side at the
    network input is ≥ 192 px as it is, every smaller one as the audit's enlarged copy (a crop
    enlarged before the ×scale so the face reaches the network at 288 px:
    :func:`veil.privacy.audit.make_views`), each matched against all originals. Privacy that holds
    only because faces are small at a low scale fails there.
    """
    from veil.privacy import identity, metrics
    from veil.privacy.decoders import decode

    t0 = time.monotonic()
    originals = [load_image(p) for p in faces.images]
    orig_emb = np.concatenate([identity.embed_faces(im, b) for im, b in zip(originals, faces.boxes)])
    thr = metrics.far_threshold(orig_emb, 0.01)
    decoder.eval()
    embs: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    dups: dict[int, list[np.ndarray]] = {k: [] for k in dup_ks}
    rng = np.random.default_rng(dup_seed)
    for img, boxes in tqdm(list(zip(originals, faces.boxes)), desc="identity", unit="img", disable=not progress):
        prep = prepare(img, scale)
        hw = (prep.tensor.shape[2], prep.tensor.shape[3])
        a = head(prep.tensor)
        for k in ks:
            obs = torch.stack([observe(a) for _ in range(k)]).mean(0)
            rec = _to_orig(to_image(decode(decoder, obs)), hw, img.shape[:2])
            embs[k].append(identity.embed_faces(rec, boxes))
        for k in dup_ks:
            from veil.privacy.audit import near_duplicate

            copies = [observe(head(prepare(near_duplicate(img, rng), scale).tensor)) for _ in range(k - 1)]
            obs = torch.stack([observe(a), *copies]).mean(0)
            rec = _to_orig(to_image(decode(decoder, obs)), hw, img.shape[:2])
            dups[k].append(identity.embed_faces(rec, boxes))
    n = len(orig_emb)
    out = {"n_faces": n, "n_images": len(originals), "chance_rank1": round(1 / n, 5), "faces_digest": faces.digest()}
    attacks = [(f"k{k}", embs[k]) for k in ks] + [(f"dup{k}", dups[k]) for k in dup_ks]
    for key, e_list in attacks:
        e = np.concatenate(e_list)
        r1 = metrics.rank1_rate(orig_emb, e)
        hits = round(r1 * n)
        tar = metrics.tar_at_far(orig_emb, e, thr)
        lo, hi = wilson(hits, n)
        tlo, thi = wilson(round(tar * n), n)
        out[key] = {
            "rank1": round(r1, 4),
            "rank1_ci95": [round(lo, 4), round(hi, 4)],
            "rank1_x_chance": round(r1 * n, 2),
            "tar_at_far1": round(tar, 4),
            "tar_ci95": [round(tlo, 4), round(thi, 4)],
        }
    if large_faces:
        out["large_k1"] = _large_face_bin(
            faces, originals, orig_emb, thr, np.concatenate(embs[ks[0]]), head, observe, decoder, scale, progress
        )
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def _large_face_bin(faces, originals, orig_emb, thr, base_emb, head, observe, decoder, scale, progress) -> dict:
    """The ≥ 192 px bin for one query: natural-size faces already that large reuse ``base_emb``."""
    from veil.privacy import identity, metrics
    from veil.privacy.audit import LARGE_PX, make_views, view_image
    from veil.privacy.decoders import decode

    probes, labels, enlarged = [], [], 0
    views = make_views(faces, scale, enlarge=True)
    for v in tqdm(views, desc="large faces", unit="view", disable=not progress):
        if v.kind == "base":
            keep = v.net_px(scale) >= LARGE_PX
            probes += [base_emb[i] for i in v.faces[keep]]
            labels += [int(i) for i in v.faces[keep]]
            continue
        img = view_image(originals[v.image], v)
        prep = prepare(img, scale)
        rec = to_image(decode(decoder, observe(head(prep.tensor))))
        rec = _to_orig(rec, (prep.tensor.shape[2], prep.tensor.shape[3]), (img.shape[0], img.shape[1]))
        probes += list(identity.embed_faces(rec, v.boxes))
        labels += [int(i) for i in v.faces]
        enlarged += len(v.faces)
    e, lab = np.stack(probes), np.asarray(labels)
    n = len(lab)
    r1 = metrics.rank1_rate(orig_emb, e, labels=lab)
    tar = metrics.tar_at_far(orig_emb, e, thr, labels=lab)
    return {
        "n_probes": n,
        "n_enlarged": enlarged,
        "min_net_px": LARGE_PX,
        "rank1": round(r1, 4),
        "rank1_ci95": [round(v, 4) for v in wilson(round(r1 * n), n)],
        "rank1_x_chance": round(r1 * len(orig_emb), 2),
        "tar_at_far1": round(tar, 4),
        "tar_ci95": [round(v, 4) for v in wilson(round(tar * n), n)],
    }


def grey_reference(faces) -> dict:
    """Rank-1 and TAR@1 %FAR of a constant mean-grey picture: the floor the issue's TAR goal is relative to."""
    from veil.preprocess import BGR_MEAN
    from veil.privacy import identity, metrics

    originals = [load_image(p) for p in faces.images]
    orig = np.concatenate([identity.embed_faces(im, b) for im, b in zip(originals, faces.boxes)])
    grey = np.concatenate(
        [identity.embed_faces(np.full_like(im, BGR_MEAN, dtype=np.uint8), b) for im, b in zip(originals, faces.boxes)]
    )
    thr = metrics.far_threshold(orig, 0.01)
    n = len(orig)
    r1, tar = metrics.rank1_rate(orig, grey), metrics.tar_at_far(orig, grey, thr)
    return {
        "rank1": round(r1, 4),
        "rank1_ci95": [round(v, 4) for v in wilson(round(r1 * n), n)],
        "tar_at_far1": round(tar, 4),
        "tar_ci95": [round(v, 4) for v in wilson(round(tar * n), n)],
    }
