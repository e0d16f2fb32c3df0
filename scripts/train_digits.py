"""Train the ``digits`` model's shipped weights: a documented, deterministic experiment.

    python scripts/train_digits.py                      # writes src/veil/assets/digits/{digits_cnn.pth,training.json}

Trains :class:`veil.models.digits.DigitsCNN` on the *training* split of the digits data
(:mod:`veil.data.digits`: scikit-learn's copy of the UCI handwritten digits, stratified split under a
fixed seed) and measures top-1 accuracy once, at the end, on the test split (no model selection on
it). Everything random is seeded (``--seed``), torch runs deterministic algorithms on one thread, and
the weights are serialised from memory, so the same torch version on the same kind of CPU gives the
same file, byte for byte: the SHA-256 printed at the end is the one in ``veil.models.digits``.
The settings, both accuracies, the data's hash and the file's SHA-256 go to ``training.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from veil.data.digits import load_split
from veil.digest import sha256_file
from veil.models import build
from veil.models.digits import DIGITS_CONFIG, WEIGHTS_FILENAME
from veil.pipeline import SplitPipeline

OUT = Path(__file__).resolve().parent.parent / "src" / "veil" / "assets" / "digits"


def shifted(x: torch.Tensor, shift: int, g: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``shift`` pixels in x and y (padding with the background value)."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    background = float(x.min())
    padded = F.pad(x, (shift, shift, shift, shift), value=background)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=g)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--shift", type=int, default=2, help="random translation, pixels at 32×32 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()

    train, test = load_split("train"), load_split("test")
    model = build(DIGITS_CONFIG.name)
    pipe = SplitPipeline(model)  # the one preprocessing path: the model's input spec (32×32 grey, mean, std)

    def prepared(images: np.ndarray) -> torch.Tensor:
        return torch.cat([pipe.preprocess(img).tensor for img in images])

    x_train, y_train = prepared(train.images), torch.from_numpy(train.labels)
    x_test, y_test = prepared(test.images), torch.from_numpy(test.labels)
    print(
        f"train {len(train)} / test {len(test)} images; input mean {float(x_train.mean()):.4f}, "
        f"std {float(x_train.std()):.4f} after normalisation"
    )

    net = model.network
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    steps_per_epoch = -(-len(train) // a.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps_per_epoch)
    for epoch in range(a.epochs):
        net.train()
        order = torch.randperm(len(train), generator=g)
        total = 0.0
        for i in range(0, len(train), a.batch_size):
            idx = order[i : i + a.batch_size]
            loss = F.cross_entropy(net(shifted(x_train[idx], a.shift, g)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == a.epochs - 1:
            print(
                f"epoch {epoch + 1:3d}  loss {total / len(train):.4f}  train acc {accuracy(net, x_train, y_train):.4f}"
            )
    net.eval()
    train_acc, test_acc = accuracy(net, x_train, y_train), accuracy(net, x_test, y_test)

    a.out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # from memory: the archive's inner name does not depend on the output path
    torch.save({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, buf)
    weights = a.out / WEIGHTS_FILENAME
    weights.write_bytes(buf.getvalue())
    digest = sha256_file(weights)
    record = {
        "model": DIGITS_CONFIG.name,
        "weights": WEIGHTS_FILENAME,
        "weights_sha256": digest,
        "bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in net.parameters()),
        "command": " ".join(["python", "scripts/train_digits.py", *sys.argv[1:]]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "out"},
        "optimizer": "AdamW, one-cycle learning rate, cross-entropy; deterministic algorithms, 1 thread",
        "train": train.describe(),
        "test": test.describe(),
        "train_accuracy": round(train_acc, 6),
        "test_accuracy": round(test_acc, 6),
        "test_correct": round(test_acc * len(test)),
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    (a.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} ({record['test_correct']}/{len(test)})")
    print(f"wrote {weights} ({record['bytes']} bytes), SHA-256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
