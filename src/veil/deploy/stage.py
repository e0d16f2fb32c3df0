"""Copy a dataset from any fsspec URL (``s3://…``, ``gs://…``, ``file://…``, a local path) onto a volume.

The reference design copies FDDB onto its data volume by hand. ``veil k8s stage URL DEST`` does it
from wherever the data lives, inside a pod that mounts the volume (``veil k8s render --scenario
batch --loader``), so the evaluation itself keeps reading a plain directory. Remote protocols need
their fsspec driver (``s3fs`` for s3://, ``gcsfs`` for gs://); local paths and file:// need nothing.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm


def _filesystem(url: str):
    try:
        import fsspec
    except ImportError as exc:  # the k8s extra brings it
        raise RuntimeError("fsspec is not installed: pip install 'veil[k8s]'") from exc
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        proto = url.split("://", 1)[0]
        raise RuntimeError(
            f"no fsspec driver for {proto}:// ({exc}); install it, e.g. pip install s3fs for s3://"
        ) from exc
    return fs, root


def stage(url: str, dest: str | Path, overwrite: bool = False, progress: bool = True) -> tuple[int, int]:
    """Copy every file under ``url`` into ``dest`` (same relative layout); return (files, bytes) copied.

    Files already present with the same size are skipped unless ``overwrite``, so an interrupted copy
    resumes. Each file is written under a temporary name and renamed, never left half-written.
    """
    fs, root = _filesystem(url)
    if not fs.exists(root):
        raise FileNotFoundError(f"nothing at {url}")
    root = root.rstrip("/")
    files = [root] if fs.isfile(root) else sorted(fs.find(root))
    if not files:
        raise FileNotFoundError(f"{url} holds no files")
    dest = Path(dest)
    copied = nbytes = 0
    for src in tqdm(files, desc="stage", unit="file", disable=not progress):
        rel = Path(src).name if src == root else str(Path(src).relative_to(root))
        target = dest / rel
        size = fs.size(src)
        if not overwrite and target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        fs.get_file(src, str(tmp))
        tmp.replace(target)
        copied += 1
        nbytes += size
    return copied, nbytes
