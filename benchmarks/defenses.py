"""One frontier point of a defense (issue 9 §2) on the common footing: FDDB mAP and identity leak.

For one configuration — clean, noise (per-channel, fitted), noise + robust tail, or bottleneck —
this measures

* FDDB mAP (the project's evaluator, all images under --dataset) over --map-draws fresh noise draws,
  as mean, min and max, and the drop against the clean detector's mAP;
* privacy: a *fresh* scoring decoder trained on what crosses the wire for this configuration
  (own seed, own data order, non-FDDB photos, --decoder-minutes of wall time or --decoder-steps),
  scored by dlib identity rank-1 and TAR@1 %FAR on the first --faces FDDB faces ≥ 48 px (Wilson 95 %
  intervals), for one query and for the mean of 8 fresh queries of the same image (averaging).

    python benchmarks/defenses.py --defense noise --alpha 0.9 --noise N.safetensors --out J.json
    python benchmarks/defenses.py --defense robust-tail --alpha 0.9 --noise N.safetensors \
        --tail T.safetensors --out J.json
    python benchmarks/defenses.py --defense bottleneck --alpha 0.8 --bottleneck B.safetensors --out J.json
    python benchmarks/defenses.py --defense clean --out J.json     # the clean reference (naive attacker)
    python benchmarks/defenses.py --defense bottleneck --split inception3 --alpha 0.6 --bottleneck B.safetensors \
        --out J.json                      # a bottleneck trained at another split (defenses_train.py --split)
    python benchmarks/defenses.py --defense robust-tail --scale 2 --alpha 0.9 --noise N.safetensors \
        --tail T.safetensors --original-tail-map --out J.json    # levers combined: noise fitted at ×2 + its tail

Away from the default deployment (the RDCL, ×3) the row is named ``DEFENSE @ SPLIT ×SCALE`` and carries
``knob: {split, scale}``, so ``veil frontier`` judges it against the same attacker recipe on that split's
clean activation (``benchmarks/knobs.py --competence``), as it does the knob cells.

Short decoder training makes every leak number a *lower bound* on what a patient attacker recovers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from veil.settings import settings


@torch.no_grad()
def code_nsr_db(head, fitted, dataset: Path, scale: float, images: int = 30) -> float:
    """A bottleneck's NSR: its noise power over its quantised code's power on the first FDDB images (as
    ``benchmarks/knobs.py --client-cost`` measures it at the RDCL): privacy there is the code's, not the noise's."""
    from veil.data.fddb import read_fddb
    from veil.defenses.bottleneck import deterministic_copy
    from veil.obfuscate.nsr import nsr_report, nsr_sums
    from veil.preprocess import load_image, prepare

    ds = read_fddb(dataset)
    code, total = deterministic_copy(fitted), None
    for im in [im for im, ok in zip(ds.images, ds.present) if ok][:images]:
        sums = nsr_sums(code(head(prepare(load_image(im.path), scale).tensor)), fitted.bottleneck.noise)
        total = sums if total is None else total + sums
    return nsr_report(total)["nsr_db"]


def wire_bytes(fitted, scale: float, frame_hw: tuple[int, int] = (1080, 1920)) -> tuple[int, int]:
    """Bytes of the wire code for one 1920×1080 frame at ``scale``: as FP32 (how it is sent) and packed at
    log2(levels) bits per element; the activation is ⌈H/32⌉ × ⌈W/32⌉ cells at every split."""
    import math

    h, w = (math.ceil(math.ceil(v * scale) / 32) for v in frame_hw)
    n = fitted.spec.channels * h * w
    return 4 * n, math.ceil(n * math.log2(fitted.spec.levels) / 8)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common beside this script, also when loaded by path
    from _common import Stages, git_commit, uptime  # beside this script (run as a script)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--defense",
        choices=["clean", "noise", "adversarial", "adversarial-identity", "conditioned", "robust-tail", "bottleneck"],
        required=True,
        help="adversarial / adversarial-identity / conditioned: a noise file from `veil fit-noise --objective "
        "adversarial` (--privacy-term identity) / `--noise-model conditioned` (loaded like any noise file; named "
        "apart on the frontier)",
    )
    p.add_argument("--alpha", type=float)
    p.add_argument(
        "--split",
        default="rdcl",
        choices=("rdcl", "inception1", "inception2", "inception3"),
        help="where FaceBoxes' head ends (the defense files must be trained there) (default: %(default)s)",
    )
    p.add_argument("--scale", type=float, default=3.0, help="input scale of FDDB and of the attacker (default: 3)")
    p.add_argument("--label", help="the row's defense name on the frontier (default: DEFENSE, + ' @ SPLIT ×SCALE')")
    p.add_argument(
        "--original-tail-map",
        action="store_true",
        help="robust-tail: also evaluate the same noise read by the original tail (what the robust tail adds)",
    )
    p.add_argument("--noise", help="fitted noise file (noise, robust-tail)")
    p.add_argument("--tail", help="robust tail file (robust-tail)")
    p.add_argument("--bottleneck", help="bottleneck file (bottleneck)")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    p.add_argument("--dataset", help="FDDB root (default: $VEIL_DATASET)")
    p.add_argument("--images", nargs="+", help="non-FDDB photos for the scoring decoder (default: $VEIL_FIT_IMAGES)")
    p.add_argument("--map-draws", type=int, default=2, help="FDDB evaluations, each with fresh noise (default: 2)")
    p.add_argument("--skip-map", action="store_true", help="privacy only")
    p.add_argument(
        "--clean-map",
        action="store_true",
        help="also evaluate this configuration's tail on clean activations (robust tail: how it does without noise)",
    )
    p.add_argument("--skip-privacy", action="store_true", help="mAP only")
    p.add_argument("--decoder", help="use this trained scoring decoder instead of training one")
    p.add_argument("--decoder-minutes", type=float, default=8.0)
    p.add_argument("--decoder-steps", type=int, help="train the scoring decoder for exactly this many steps")
    p.add_argument("--decoder-seed", type=int, default=9001, help="seed of the scoring decoder (not 0: defenses use 0)")
    p.add_argument("--init-decoder", help="warm-start the scoring decoder from this public (naive) decoder file")
    p.add_argument("--save-decoder", help="write the trained scoring decoder here")
    p.add_argument("--faces", type=int, default=100, help="FDDB faces scored (default: 100)")
    p.add_argument(
        "--near-duplicates",
        type=int,
        default=8,
        metavar="K",
        help="also average K observations of near-duplicates of each image (JPEG q90, 1-2 px shifts, ±3 %% zoom, "
        "video crops), each with fresh noise; 0 skips it (default: %(default)s)",
    )
    p.add_argument(
        "--no-large-faces",
        action="store_true",
        help="skip the large-face bin (faces ≥ 192 px at the network, small ones enlarged: the audit's rule)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON result file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from veil.defenses.files import file_sha256
    from veil.detector import Detector
    from veil.obfuscate import load_obfuscator

    s = settings()
    dataset = Path(args.dataset) if args.dataset else s.dataset
    dirs = [Path(d) for d in args.images] if args.images else list(s.fit_images)
    det = Detector.from_weights(args.weights or s.weights, split=args.split, scale=args.scale)
    head = det.model.head
    base_model = det.model
    default = args.split == "rdcl" and args.scale == 3.0
    label = args.label or (args.defense if default else f"{args.defense} @ {args.split} ×{args.scale:g}")
    meta: dict = {"defense": label, "alpha": args.alpha, "split": args.split, "scale": args.scale}
    if not default:  # judged by the frontier against the same recipe on this split's clean activation
        meta["knob"] = {"split": args.split, "scale": args.scale}
    stage = Stages()

    if args.defense in ("noise", "adversarial", "adversarial-identity", "conditioned"):
        from veil.obfuscate.artifact import read_metadata

        obf, nmeta = load_obfuscator(args.alpha, noise=args.noise, model=det.model)
        det.obfuscator = obf
        meta["noise_sha256"] = file_sha256(args.noise)
        meta["adversary"] = read_metadata(args.noise).get("adversary")  # an adversarial fit's in-loop decoder
        if read_metadata(args.noise).get("adversaries"):  # identity+l1: decoder and identity regressor
            meta["adversaries"] = read_metadata(args.noise)["adversaries"]
        meta["noise_file"] = args.noise
        meta["noise_fit"] = {
            k: nmeta.get(k)
            for k in ("format", "objective", "noise_model", "privacy_term", "conditioned", "fit_seconds")
        }
        meta["noise_fit"]["steps"] = (nmeta.get("fit") or {}).get("steps")
        meta["noise_fit"]["adversary_weight"] = (nmeta.get("fit") or {}).get("adversary_weight")
        observe = obf
    elif args.defense == "robust-tail":
        from veil.defenses import robust_tail
        from veil.obfuscate.artifact import read_metadata

        tmeta = robust_tail.attach(det, args.tail, args.noise, args.alpha)
        observe = det.obfuscator  # the wire is the noise's: the tail changes nothing the server sees
        meta["noise_sha256"] = file_sha256(args.noise)
        nmeta = read_metadata(args.noise)
        meta["adversary"] = nmeta.get("adversary")  # the noise's in-loop decoder, if it was fitted against one
        meta["noise_fit"] = {k: nmeta.get(k) for k in ("format", "objective", "noise_model", "fit_seconds")}
        meta["noise_file"] = args.noise
        meta["tail_file"] = args.tail
        meta["combination"] = [
            f"{nmeta.get('noise_model') or 'per-channel'} noise ({nmeta.get('objective') or 'nsr'} objective)",
            "robust tail",
        ]
        meta["tail_sha256"] = file_sha256(args.tail)
        meta["tail_distill"] = {
            "steps": tmeta["log"][-1]["step"],
            "seconds": tmeta["log"][-1]["seconds"],
            "crop": tmeta["data"].get("crop"),
            "held_out_distortion": [
                tmeta["log"][0].get("held_out_distortion"),
                tmeta["log"][-1].get("held_out_distortion"),
            ],
        }
    elif args.defense == "bottleneck":
        from veil.defenses import bottleneck

        fb, bmeta = bottleneck.attach(det, args.bottleneck, args.alpha)
        meta["bottleneck_sha256"] = file_sha256(args.bottleneck)
        meta["bottleneck_file"] = args.bottleneck  # re-score: load_bottleneck(file, model at split).path.wire
        meta["wire"] = "veil.defenses.bottleneck.load_bottleneck(bottleneck_file, model at split)[0].observe"
        meta["nsr_db"] = code_nsr_db(head, fb, dataset, args.scale)
        meta["bytes_per_request"], meta["bytes_packed"] = wire_bytes(fb, args.scale)
        meta["spec"] = bmeta["spec"]
        meta["adversary_weight"] = bmeta.get("adversary_weight")
        meta["adversary"] = bmeta.get("adversary")  # {seed, data_order_seed, weights_sha256} when one was trained
        meta["fit"] = {
            "steps": bmeta["log"][-1]["step"],
            "seconds": bmeta["log"][-1]["seconds"],
            "crop": bmeta["data"].get("crop"),
            "held_out_distortion": [
                bmeta["log"][0].get("held_out_distortion"),
                bmeta["log"][-1].get("held_out_distortion"),
            ],
        }

        observe = fb.observe  # the wire code, padded to the split's channels for the decoder

        stage("load and code NSR")
    else:

        def observe(a: torch.Tensor) -> torch.Tensor:
            return a

    load = os.getloadavg()
    result: dict = {
        **meta,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "load_at_start": [round(x, 2) for x in load]},
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]] if argv is None else argv),
        "uptime": uptime(),
    }
    if not args.skip_map:
        from veil.evaluation import evaluate_fddb

        maps = []
        for i in range(args.map_draws if det.obfuscator is not None else 1):
            noisy = det.obfuscator is not None and args.defense != "bottleneck"  # the code's NSR: code_nsr_db
            r = evaluate_fddb(det, dataset, progress=True, nsr=noisy)
            maps.append(r.mAP)
            if r.nsr is not None:
                result.setdefault("nsr_fddb", []).append(r.nsr)
                result["nsr_db"] = r.nsr["nsr_db"]  # the frontier's NSR column (last draw)
            print(f"FDDB mAP draw {i}: {maps[-1]:.4f}", flush=True)
        result["map"] = {
            "draws": [round(m, 4) for m in maps],
            "mean": round(statistics.mean(maps), 4),
            "min": round(min(maps), 4),
            "max": round(max(maps), 4),
        }
        if args.clean_map and args.defense == "robust-tail":
            obf_kept, det.obfuscator = det.obfuscator, None
            result["map_clean_input"] = round(evaluate_fddb(det, dataset, progress=True).mAP, 4)
            det.obfuscator = obf_kept
            print(f"FDDB mAP on clean activations: {result['map_clean_input']:.4f}", flush=True)
        if args.original_tail_map and args.defense == "robust-tail":
            robust_kept, det.model = det.model, base_model
            draws = [evaluate_fddb(det, dataset, progress=True).mAP for _ in range(args.map_draws)]
            det.model = robust_kept
            result["map_original_tail"] = {
                "draws": [round(m, 4) for m in draws],
                "mean": round(statistics.mean(draws), 4),
            }
            print(f"FDDB mAP, same noise, original tail: {result['map_original_tail']['mean']:.4f}", flush=True)
        stage("FDDB mAP")
    if not args.skip_privacy:
        from veil.defenses.measure import grey_reference, identity_leak, train_scoring_decoder
        from veil.privacy.audit import select_fddb_faces
        from veil.privacy.decoders import read_decoder, save_decoder

        t0 = time.monotonic()
        if args.decoder:
            dec = read_decoder(args.decoder)
        else:
            init = read_decoder(args.init_decoder) if args.init_decoder else None
            dec = train_scoring_decoder(
                head,
                observe,
                dirs,
                minutes=args.decoder_minutes,
                seed=args.decoder_seed,
                max_steps=args.decoder_steps,
                scale=args.scale,
                init=init,
            )
            if args.save_decoder:
                save_decoder(dec, args.save_decoder, dec.meta)
        stage("scoring decoder")
        keys = ("steps", "seconds", "final_l1_px", "seed", "data_order_seed", "init_sha256", "batch", "crop")
        result["decoder"] = {k: dec.meta.get(k) for k in keys}
        result["decoder"]["file"] = args.decoder or args.save_decoder
        if result.get("adversary"):  # never score with the defense's own adversary (seed, data order, weights)
            from veil.defenses.measure import check_scoring_independence

            result["independence_notes"] = check_scoring_independence(result["decoder"], result)
        faces = select_fddb_faces(dataset, max_faces=args.faces)
        result["identity"] = identity_leak(
            faces,
            head,
            observe,
            dec,
            scale=args.scale,
            large_faces=not args.no_large_faces,
            dup_ks=(args.near_duplicates,) if args.near_duplicates > 1 else (),
        )
        result["identity"]["grey_reference"] = grey_reference(faces)
        result["privacy_seconds"] = round(time.monotonic() - t0, 1)
        stage("identity")
    result["stage_seconds"] = stage.seconds
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result.get(k) for k in ("defense", "alpha", "map", "identity")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
