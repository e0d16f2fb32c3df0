"""The main job end to end on what ships with veil: sample photos → obfuscated activation → Triton → boxes.

The trust-zone client obfuscates each photo's head activation at ALPHA with the shipped noise,
sends only that activation to a real Triton server started here on loopback (the bundled
``tritonserver`` of nvidia-pytriton), post-processes the boxes it gets back, and stops the
server. For each photo it writes the boxes (JSON) and one picture with three panels: the clean
detection (computed locally, as a reference), the obfuscated detection (through the server), and
the shipped decoder's reconstruction of exactly the tensor that was sent. ``report.md`` and
``report.json`` summarise it. Nothing needs downloading: weights, noise and decoder ship in
``veil.assets`` (the user's own, in the veil cache, take precedence).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from veil import assets, jsonio
from veil.preprocess import ImageReadError, load_image
from veil.viz import draw_boxes, side_by_side

#: Score at or above which a box counts as a face in the pictures and the report.
MIN_SCORE = 0.5


@dataclass
class DemoImage:
    """One photo's outcome."""

    name: str
    faces_clean: int
    faces_obfuscated: int
    bytes_sent: int
    sent_shape: list[int]
    picture: str
    boxes: str


@dataclass
class DemoReport:
    """What the demo did, for people (``report.md``) and programs (``report.json``)."""

    alpha: float
    weights_sha256: str
    noise: str
    decoder: str | None
    server: str
    protocol: str
    seconds: float
    images: list[DemoImage] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            f"# veil demo: ALPHA {self.alpha:g}",
            "",
            f"Triton server on {self.server} ({self.protocol}), started and stopped by the demo; it received "
            "only the obfuscated head activation of each photo, as binary tensor data.",
            "",
            f"- weights SHA-256 `{self.weights_sha256}`",
            f"- noise `{self.noise}`",
            f"- decoder `{self.decoder or 'none (no reconstruction panel)'}`",
            f"- {len(self.images)} photos in {self.seconds:.1f} s",
            "",
            "| photo | faces, clean (local) | faces, obfuscated (Triton) | bytes sent | picture |",
            "|---|---:|---:|---:|---|",
        ]
        for im in self.images:
            lines.append(f"| {im.name} | {im.faces_clean} | {im.faces_obfuscated} | {im.bytes_sent} | {im.picture} |")
        lines += [
            "",
            f"Faces: boxes with score ≥ {MIN_SCORE}. Panels: clean detection | obfuscated detection | "
            "decoder's reconstruction of what was sent.",
        ]
        return "\n".join(lines) + "\n"


def faces(n: int) -> str:
    """``1 face``, ``2 faces``."""
    return f"{n} face" if n == 1 else f"{n} faces"


def export_repository(model, weights_sha256: str, out: Path) -> Path:
    """The python-backend Triton repository for this model (split, weights) under ``out``, reused when it matches."""
    from veil.models import as_split_model
    from veil.serving.repository import MANIFEST, write_repository

    model = as_split_model(model)
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            same = m.get("weights_sha256") == weights_sha256 and m.get("split_point") == model.split_point
            if same and (out / "python").is_dir():
                return out / "python"
        except json.JSONDecodeError:
            pass
    write_repository(model, out, weights_sha256, formats=("python",))
    return out / "python"


def _describe_noise(path: Path, meta: dict) -> str:
    fit, images = meta.get("fit", {}), meta.get("data", {}).get("images", "?")
    return f"{path} (ALPHA {meta['alpha']:g}, {fit.get('steps', '?')} steps on {images} non-FDDB images)"


def _describe_decoder(dec) -> str | None:
    if dec is None:
        return None
    m = dec.meta
    sources = m.get("sources") or ["?"]
    return f"{m.get('kind', '?')} decoder, {m.get('steps', '?')} steps, trained on {'; '.join(map(str, sources))}"


def _load(images: list[str | Path] | None, log) -> dict[str, np.ndarray]:
    """The sample photos, or the user's: an unreadable one is reported and skipped, the rest go on."""
    if not images:
        return assets.sample_images()
    photos = {}
    for p in images:
        if Path(p).stem in photos:
            raise ValueError(f"two images named {Path(p).stem!r} would write the same outputs: rename one")
        try:
            photos[Path(p).stem] = load_image(p)
        except ImageReadError as exc:
            log(f"skipped: {exc}")
    if not photos:
        raise ImageReadError(f"none of the {len(images)} images could be read")
    return photos


def run_demo(
    out: str | Path,
    alpha: float = assets.DEFAULT_ALPHA,
    images: list[str | Path] | None = None,
    weights: str | Path | None = None,
    noise: str | Path | None = None,
    decoder: str | Path | None = None,
    protocol: str = "grpc",
    fp16: bool = True,
    timeout: float = 180.0,
    log=print,
) -> DemoReport:
    """Run the demo into ``out`` (created); return its report. The server is always stopped."""
    from veil.privacy.decoders import load_decoder, reconstruct
    from veil.private import PrivateDetector, make_private
    from veil.serving.client import TritonDetector
    from veil.serving.repository import model_name, served_prefix
    from veil.serving.server import ServerError, TritonServer, unsupported_reason

    why = unsupported_reason()
    if why:
        raise ServerError(f"cannot run the bundled tritonserver here: {why}")
    t0 = time.monotonic()
    out = Path(out)
    (out / "boxes").mkdir(parents=True, exist_ok=True)
    photos = _load(images, log)
    det = make_private("faceboxes", alpha, noise, weights=weights)  # every check inside (veil.private)
    assert isinstance(det, PrivateDetector) and det.noise_file is not None  # FaceBoxes: a face detector
    noise_file, meta = det.noise_file, det.noise_meta  # named in the report
    dec = load_decoder(decoder)
    log(f"exporting the tail for Triton → {out / 'triton-repo'}")
    repo = export_repository(det.model, det.weights_sha256, out / "triton-repo")
    served = model_name(noisy=True, fp16=fp16, prefix=served_prefix(det.model))
    report = DemoReport(
        alpha=alpha,
        weights_sha256=det.weights_sha256,
        noise=_describe_noise(noise_file, meta),
        decoder=_describe_decoder(dec),
        server="",
        protocol=protocol,
        seconds=0.0,
    )
    log(f"starting tritonserver on loopback ({served}) ...")
    server = TritonServer(repo, models=[served], log_file=out / "tritonserver.log")
    try:
        server.start(timeout)  # loopback, free ports
        report.server = server.url(protocol)
        log(f"ready at {report.server}")
        with TritonDetector(det, report.server, protocol, fp16=fp16) as client:
            for name, image in photos.items():
                clean = det.detect(image, obfuscate=False)  # the local, unobfuscated reference
                boxes, sent = client.detect_with_activation(image)
                panels = [draw_boxes(image, clean, MIN_SCORE), draw_boxes(image, boxes, MIN_SCORE)]
                labels = ["clean (local)", f"obfuscated, ALPHA {alpha:g} (Triton)"]
                if dec is not None:
                    rec = reconstruct(dec, sent.float())
                    h, w = image.shape[:2]
                    s = det.scale
                    panels.append(cv2.resize(rec[: round(h * s), : round(w * s)], (w, h), interpolation=cv2.INTER_AREA))
                    labels.append("what was sent, decoded")
                pic = out / f"{name}.jpg"
                cv2.imwrite(str(pic), side_by_side(panels, labels, height=min(480, image.shape[0])))
                rows = [{"box": [round(float(v), 2) for v in b[:4]], "score": round(float(b[4]), 4)} for b in boxes]
                bfile = out / "boxes" / f"{name}.json"
                nbytes = sent.numel() * sent.element_size()
                jsonio.write_json(
                    bfile,
                    {
                        "image": name,
                        "alpha": alpha,
                        "server": report.server,
                        "sent": {
                            "shape": list(sent.shape),
                            "dtype": str(sent.dtype).split(".")[-1],
                            "bytes": nbytes,
                        },
                        "detections": rows,
                    },
                )
                n_clean, n_obf = int((clean[:, 4] >= MIN_SCORE).sum()), int((boxes[:, 4] >= MIN_SCORE).sum())
                report.images.append(
                    DemoImage(name, n_clean, n_obf, nbytes, list(sent.shape), pic.name, str(bfile.relative_to(out)))
                )
                log(
                    f"{name}: {faces(n_clean)} clean, {faces(n_obf)} obfuscated through Triton; "
                    f"sent {nbytes} bytes {tuple(sent.shape)} → {pic}"
                )
    finally:
        server.stop()  # always, also when a photo fails
    log("tritonserver stopped")
    report.seconds = round(time.monotonic() - t0, 1)
    (out / "report.md").write_text(report.markdown())
    jsonio.write_json(out / "report.json", asdict(report))
    return report


__all__ = ["MIN_SCORE", "DemoImage", "DemoReport", "export_repository", "faces", "run_demo"]
