"""Check data the user fetched: an FDDB copy (evaluation) and the photo folders used for fitting.

Where the data come from:

- **FDDB** (Jain and Learned-Miller, UMass Amherst, 2010; research use): download
  ``FDDB-folds.tgz`` (annotations) and ``originalPics.tar.gz`` (2845 images) from
  ``http://vis-www.cs.umass.edu/fddb/`` and unpack both into one directory, giving
  ``DIR/FDDB-folds/FDDB-fold-NN.txt``, ``DIR/FDDB-folds/FDDB-fold-NN-ellipseList.txt`` and
  ``DIR/originalPics/<year>/<month>/<day>/big/img_N.jpg``. The fold files are checked against the
  official files' SHA-256 below; images are counted per fold (a partial copy evaluates the
  images present and says so).
- **Fitting photos** (noise fitting, attacker training): any folders of ordinary photos with faces
  at various sizes that are *not* the evaluation set, e.g. the WIDER FACE validation images
  (``http://shuoyang1213.me/WIDERFACE/``) or your own. FDDB is refused. veil's shipped noise was
  fitted on 200 WIDER FACE validation photos and 9 dlib example photos (PASCAL VOC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from veil.data.fddb import FDDB_TOTAL_IMAGES
from veil.data.images import IMAGE_SUFFIXES, looks_like_fddb
from veil.digest import sha256_file

FDDB_URL = "http://vis-www.cs.umass.edu/fddb/"
FDDB_ARCHIVES = ("FDDB-folds.tgz", "originalPics.tar.gz")
FDDB_FOLDS = 10
#: Faces annotated in the complete benchmark.
FDDB_TOTAL_FACES = 5171
#: SHA-256 of the official FDDB fold files (from FDDB-folds.tgz).
FDDB_FOLD_SHA256 = {
    "FDDB-fold-01-ellipseList.txt": "004a3b7bbdc74f016aa1bd9986f92404a9f28a4757622b1a24ec5971311deec1",
    "FDDB-fold-01.txt": "755e046643b1f967d8ff31c2318c1ef52dcce129e001f74937623dbd5721fd88",
    "FDDB-fold-02-ellipseList.txt": "2232f8fd1f65d4c7a2a60981281eb17b28ddca3d4aebe79ae2d66b0624ee85f4",
    "FDDB-fold-02.txt": "86d70c1b8820a4e54233577ea83b1082de20809cc670c907f0759e57e69a9ab1",
    "FDDB-fold-03-ellipseList.txt": "06172e3c7b69fb9df34c16f1f1056072d8c1226fee63ccd22879ba01d870646c",
    "FDDB-fold-03.txt": "13c542d252023e21cab708b768668ea9509852e36bece758c60f76ef51a4079e",
    "FDDB-fold-04-ellipseList.txt": "b2f90f7e766cf08882c73f319140cf1b5422c7df210a1ab837b5c21d7c65f155",
    "FDDB-fold-04.txt": "48e2345f5a42ebb0cd66dee0cd1f6098305a98bb52ad998f2d3688889873da5a",
    "FDDB-fold-05-ellipseList.txt": "e88ffa5bde969b66fd83849cbd810bc0203d3cbac35bb3333476ebbff0e90312",
    "FDDB-fold-05.txt": "337b616c4036d0586530f5e427f539e460b241a785bc445ca6b09a769cb451df",
    "FDDB-fold-06-ellipseList.txt": "b4f95ee702d521a23aec283bddfe05a9379cc1353652e872c5c7b551ad14e8cf",
    "FDDB-fold-06.txt": "aeec1138186356e91f47848832416f8da57914a6337022a3f0561c78c4b15a2f",
    "FDDB-fold-07-ellipseList.txt": "5d611ce67c320a776ee64d3be4f56d5e41b0408546d8eab83fdde84a09e368eb",
    "FDDB-fold-07.txt": "12e91a9f4e910691465cd6c0b007c8fe36b1c36cc4fcf23622614d33e17eeecd",
    "FDDB-fold-08-ellipseList.txt": "5c79e5656973a4d6cd4a028b56435438a9b298814ed37c8207c0ebe8b3d12ccd",
    "FDDB-fold-08.txt": "6da3f688b600447005740f5d20bf94465fc288cbeee62379a252290c8b169a9f",
    "FDDB-fold-09-ellipseList.txt": "f04b6da77c924ebed06621550ed2f4b5c7a486035c0e5ba795f571dc39c95f4e",
    "FDDB-fold-09.txt": "8c3b328de4b51a953f55cf29ee65648643e0c3c0965ee55a19aa7fbfee58aa30",
    "FDDB-fold-10-ellipseList.txt": "9f63bf350f049100edec9f7ec3b29d00a271aa476f3bf0e53a851a7daab2555f",
    "FDDB-fold-10.txt": "936b1178949f26d8b05e18582c82e44fc1c94e040ac5c52fe81eb1492e2beaff",
}
#: Fewer fitting photos than this fit noise that generalises poorly (a warning, not an error).
MIN_FIT_PHOTOS = 50


@dataclass
class CheckReport:
    """What a check found: ``ok`` (usable), ``complete`` (nothing missing), and the lines to print."""

    what: str
    ok: bool
    complete: bool
    lines: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def text(self) -> str:
        verdict = ("complete" if self.complete else "usable, incomplete") if self.ok else "NOT usable"
        return "\n".join([f"{self.what}: {verdict}", *[f"  {ln}" for ln in self.lines]]) + "\n"


def check_fddb(root: str | Path, max_listed: int = 10) -> CheckReport:
    """Verify an FDDB copy: fold files present and identical to the official ones, images per fold.

    ``ok`` when every fold file is present and intact and at least one image is there (the
    evaluation runs on the images present); ``complete`` when all 2845 images are there too.
    """
    from veil.data.fddb import DatasetError, read_fddb

    root = Path(root).expanduser()
    rep = CheckReport(what=f"FDDB at {root}", ok=False, complete=False)
    get = f"download {' and '.join(FDDB_ARCHIVES)} from {FDDB_URL} and unpack both into {root}"
    if not root.is_dir():
        rep.lines += [f"{root} is not a directory", get]
        rep.missing.append(str(root))
        return rep
    folds_dir, pics = root / "FDDB-folds", root / "originalPics"
    for d in (folds_dir, pics):
        if not d.is_dir():
            rep.missing.append(f"{d.name}/")
    bad: list[str] = []
    for name, digest in FDDB_FOLD_SHA256.items():
        p = folds_dir / name
        if not p.is_file():
            rep.missing.append(f"FDDB-folds/{name}")
        elif sha256_file(p) != digest:
            bad.append(name)
    n_fold_files = len(FDDB_FOLD_SHA256) - sum(m.startswith("FDDB-folds/") for m in rep.missing)
    rep.counts["fold_files"] = n_fold_files
    rep.lines.append(
        f"fold files: {n_fold_files} of {len(FDDB_FOLD_SHA256)} present, "
        f"{n_fold_files - len(bad)} match the official SHA-256"
    )
    if bad:
        rep.lines.append(
            f"differ from the official files (corrupt or edited; unpack FDDB-folds.tgz again): {', '.join(bad)}"
        )
    if rep.missing and (not folds_dir.is_dir() or not pics.is_dir()):
        rep.lines.append(
            f"missing: {', '.join(rep.missing[:max_listed])}"
            + (f" and {len(rep.missing) - max_listed} more" if len(rep.missing) > max_listed else "")
        )
        rep.lines.append(get)
        return rep
    try:
        ds = read_fddb(root)
    except DatasetError as exc:
        rep.lines += [str(exc), get]
        return rep
    counts = ds.fold_counts()
    present = sum(c["present"] for c in counts.values())
    faces = sum(im.n_faces for im, ok in zip(ds.images, ds.present) if ok)
    rep.counts.update(images_present=present, images_annotated=len(ds.images), faces_present=faces)
    rep.lines.append(f"images: {present} of {FDDB_TOTAL_IMAGES} present ({faces} of {FDDB_TOTAL_FACES} faces)")
    for fold in range(1, FDDB_FOLDS + 1):
        c = counts.get(fold)
        if c is None:
            rep.lines.append(f"  fold {fold:2d}: no annotations")
        elif c["missing"]:
            rep.lines.append(f"  fold {fold:2d}: {c['present']} of {c['annotated_images']} images present")
    missing_images = [f"originalPics/{im.name}.jpg" for im, ok in zip(ds.images, ds.present) if not ok]
    empty = [
        f"originalPics/{im.name}.jpg" for im, ok in zip(ds.images, ds.present) if ok and im.path.stat().st_size == 0
    ]
    rep.missing += missing_images + [f"{e} (empty file)" for e in empty]
    if rep.missing:
        shown = rep.missing[:max_listed]
        rep.lines.append(
            f"missing ({len(rep.missing)}): {', '.join(shown)}"
            + (f" and {len(rep.missing) - len(shown)} more" if len(rep.missing) > len(shown) else "")
        )
    rep.ok = not bad and n_fold_files == len(FDDB_FOLD_SHA256) and present > 0 and not empty
    rep.complete = rep.ok and not rep.missing
    if rep.ok and not rep.complete:
        rep.lines.append(
            f"evaluation will run on the {present} images present and report that it did; for the full benchmark: {get}"
        )
    elif not rep.ok:
        rep.lines.append(get)
    return rep


def check_fit_images(dirs: Sequence[str | Path]) -> CheckReport:
    """Verify photo folders for noise fitting / attacker training: they exist, hold photos, are not FDDB."""
    import cv2

    rep = CheckReport(what=f"fitting photos in {', '.join(map(str, dirs)) or '(none given)'}", ok=False, complete=False)
    if not dirs:
        rep.lines.append(
            "no folders given: pass DIR… or set VEIL_FIT_IMAGES (any folders of photos with faces "
            "that are not the evaluation set, e.g. WIDER FACE validation images)"
        )
        return rep
    total, unreadable, problems = 0, [], []
    for d in map(Path, dirs):
        if not d.exists():
            problems.append(f"{d}: does not exist")
            rep.missing.append(str(d))
            continue
        if looks_like_fddb(d):
            problems.append(f"{d}: is FDDB (evaluation data; never fitted on)")
            continue
        files = [d] if d.is_file() else sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        bad = [p for p in files if cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None]
        unreadable += bad
        n = len(files) - len(bad)
        total += n
        rep.lines.append(f"{d}: {n} readable photos" + (f", {len(bad)} unreadable (skipped)" if bad else ""))
        if not n:
            problems.append(f"{d}: no readable photos ({', '.join(IMAGE_SUFFIXES)})")
    rep.counts.update(photos=total, unreadable=len(unreadable))
    rep.lines += problems
    if unreadable:
        rep.lines.append(f"unreadable: {', '.join(map(str, unreadable[:10]))}")
    rep.ok = total > 0 and not problems
    rep.complete = rep.ok and not unreadable and total >= MIN_FIT_PHOTOS
    if rep.ok and total < MIN_FIT_PHOTOS:
        rep.lines.append(f"only {total} photos: fits work, but {MIN_FIT_PHOTOS}+ varied photos generalise better")
    return rep
