"""Accuracy of the ``digits`` model against ALPHA: mean ± sd over fresh fits × fresh noise draws.

    python benchmarks/digits_alpha.py --alphas 0.5 0.8 0.9 0.95 --fits 3 --draws 5

For each ALPHA: ``--fits`` fits on the digits *training* split (fit seeds 0…fits−1, the CLI's fitting
defaults, :func:`veil.obfuscate.whole.fit_whole_images`), each measured on the *test* split under
``--draws`` fresh noise draws (:func:`veil.evaluation.classification.evaluate_classification`), beside
isotropic noise of the same power (one σ for every channel, μ = 0). Writes
``benchmarks/results/digits_alpha.json`` (every fit's accuracies and NSR, and the machine's load).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import RESULTS, machine, uptime

from veil.data import builtin
from veil.evaluation.classification import evaluate_classification
from veil.jsonio import write_json
from veil.models import create
from veil.obfuscate.fit import FitConfig
from veil.obfuscate.noise import isotropic_like
from veil.obfuscate.whole import fit_whole_images
from veil.pipeline import SplitPipeline


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "n": len(values),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.8, 0.9, 0.95])
    p.add_argument("--fits", type=int, default=3)
    p.add_argument("--draws", type=int, default=5)
    p.add_argument("--split", default=None, help="model split (default: the model's first, block1)")
    p.add_argument("--out", type=Path, default=RESULTS / "digits_alpha.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    load_before = uptime()
    model = create("digits", a.split)
    train_images, _, train_data = builtin.load("digits", "train")
    test_images, test_labels, _ = builtin.load("digits", "test")
    pipe = SplitPipeline(model)
    clean = evaluate_classification(pipe, test_images, test_labels, "digits-test", progress=False).clean_accuracy

    def noisy(obfuscator, alpha: float):
        """The test accuracy over ``a.draws`` noise draws of ``obfuscator`` (the pipeline is left clean)."""
        pipe.obfuscator = obfuscator
        r = evaluate_classification(
            pipe, test_images, test_labels, "digits-test", draws=a.draws, progress=False, settings={"alpha": alpha}
        )
        pipe.obfuscator = None
        return r

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in a.alphas:
            fits = []
            for seed in range(a.fits):
                t0 = time.perf_counter()
                out = Path(tmp) / f"alpha-{alpha:g}-seed-{seed}.safetensors"
                result, _ = fit_whole_images(
                    model, train_images, out, FitConfig(alpha=alpha, seed=seed), train_data, progress=False
                )
                fit_s = time.perf_counter() - t0
                r = noisy(result.obfuscator, alpha)
                iso = noisy(isotropic_like(result.obfuscator), alpha)
                fits.append(
                    {
                        "fit_seed": seed,
                        "fit_seconds": round(fit_s, 1),
                        "accuracies": r.noisy_accuracies,
                        "nsr_db": r.nsr["nsr_db"] if r.nsr else None,
                        "nsr_channel_min_db": r.nsr["channels"]["min"] if r.nsr else None,
                        "isotropic_accuracies": iso.noisy_accuracies,
                    }
                )
                print(
                    f"ALPHA {alpha:g} fit {seed}: accuracy {r.noisy_mean:.4f} ± {r.noisy_sd:.4f}, NSR "
                    f"{fits[-1]['nsr_db']:+.2f} dB; isotropic {iso.noisy_mean:.4f}",
                    flush=True,
                )
            acc = [x for f in fits for x in f["accuracies"]]
            iso_acc = [x for f in fits for x in f["isotropic_accuracies"]]
            nsr = [f["nsr_db"] for f in fits]
            rows.append(
                {
                    "alpha": alpha,
                    "accuracy": _ms(acc),
                    "drop_points": round(100 * (clean - statistics.fmean(acc)), 2),
                    "nsr_db": _ms(nsr),
                    "isotropic_accuracy": _ms(iso_acc),
                    "fits": fits,
                }
            )
    report = {
        "model": model.name,
        "split_point": model.split_point,
        "weights_sha256": model.weights_sha256,
        "clean_accuracy": round(clean, 4),
        "test_images": len(test_images),
        "fit": {"data": train_data, "config": dict(vars(FitConfig(alpha=0.0))), "fits": a.fits, "draws": a.draws},
        "rows": rows,
        "uptime_before": load_before,
        "uptime_after": uptime(),
        "machine": machine(),
    }
    print(f"clean {clean:.4f}")
    for r in rows:
        m, n, i = r["accuracy"], r["nsr_db"], r["isotropic_accuracy"]
        print(
            f"ALPHA {r['alpha']:g}: {m['mean']:.4f} ± {m['sd']:.4f} ({m['min']:.4f}–{m['max']:.4f}), NSR "
            f"{n['mean']:+.2f} ± {n['sd']:.2f} dB, isotropic {i['mean']:.4f} ± {i['sd']:.4f}"
        )
    print(f"wrote {write_json(a.out, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
