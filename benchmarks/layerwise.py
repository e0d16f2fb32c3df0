"""Layer-wise inversion attacker at a deep split: is the "no claim" of the deep splits a weak attacker?

The audit's pixel decoders identify 2–3 % from the clean inception2/3 activation, so a low leak
there makes no claim (issue 9's competence rule: ≥ 10× chance on the clean activation, in the
large-face bin too). This script trains a :class:`veil.privacy.layerwise.FeatureInverter` (deep
split → RDCL activation, non-FDDB photo crops, fresh noise every step when ``--noise`` or
``--bottleneck`` is given) and chains it with an existing RDCL decoder (``--decoder``), then scores
the chain like every other scoring decoder (:func:`veil.defenses.measure.identity_leak`: the first
``--faces`` FDDB faces ≥ 48 px, one query and the mean of 8, and the large-face bin).

    python benchmarks/layerwise.py --split inception3 --decoder NAIVE_RDCL --minutes 8 --out R.json
    python benchmarks/layerwise.py --split inception3 --bottleneck BN.safetensors --decoder NAIVE_RDCL --out R.json

The decoder's own rank-1 on the clean RDCL activation bounds what the chain can reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from veil import jsonio


def add_cells(result: dict) -> dict:
    """The frontier's attacker-cell fields (as ``benchmarks/regressor.py``'s): ``attackers`` (one query with
    its large-face bin, the mean of 8 when obfuscated), ``chance_rank1`` and the defense's ALPHA."""
    ident = result["identity"]
    result["alpha"] = result["defense"].get("alpha")
    result["chance_rank1"] = ident["chance_rank1"]
    result["attacker_family"] = "layerwise"
    result["attackers"] = {
        "layerwise": {**ident["k1"], "bins": {">=192": ident["large_k1"]}},
        **({"layerwise_avg8": ident["k8"]} if "k8" in ident else {}),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common beside this script, also when loaded by path
    from _common import LABEL_HELP, defense_observation, run_record

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", help="the deep split attacked (e.g. inception3)")
    p.add_argument(
        "--add-cells", nargs="+", metavar="JSON", help="add the attacker-cell fields to results written before them"
    )
    p.add_argument("--shallow", default="rdcl", help="the split whose decoder is reused (default: %(default)s)")
    p.add_argument("--scale", type=float, default=3.0)
    p.add_argument("--decoder", help="a decoder of the shallow split (e.g. the naive one)")
    obf = p.add_mutually_exclusive_group()
    obf.add_argument("--noise", help="a noise file of the deep split: the adaptive inverter sees its output")
    obf.add_argument("--bottleneck", help="a bottleneck file of the deep split: the inverter reads its wire code")
    p.add_argument("--minutes", type=float, default=8.0, help="inverter wall budget (default: %(default)s)")
    p.add_argument("--max-steps", type=int)
    p.add_argument(
        "--finetune-minutes",
        type=float,
        default=0.0,
        help="then train the whole chain end to end for this long (default: %(default)s)",
    )
    p.add_argument(
        "--finetune-loss",
        choices=("l1", "perceptual"),
        default="l1",
        help="the end-to-end loss: pixel L1, or L1 plus the head's features of the reconstruction against the "
        "original's (the audit's perceptual decoders' loss: rewards what the head sees, not the blurry average) "
        "(default: %(default)s)",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--seed", type=int, help="inverter seed (default: drawn from the OS)")
    p.add_argument("--images", nargs="+", help="non-FDDB photos (default: $VEIL_FIT_IMAGES)")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    p.add_argument("--dataset", help="FDDB root (default: $VEIL_DATASET)")
    p.add_argument("--faces", type=int, default=100)
    p.add_argument("--save", help="write the trained inverter (safetensors) here")
    p.add_argument("--inverter", help="start from this saved inverter (--save) instead of a fresh one")
    p.add_argument(
        "--save-chain",
        help="with --finetune-minutes: write the whole chain trained end to end here (benchmarks/whitebox.py "
        "--inverter reads it as the hybrid's start)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--label", help=LABEL_HELP)
    p.add_argument("--out", help="JSON result file")
    args = p.parse_args(argv)
    if args.add_cells:
        for f in args.add_cells:
            jsonio.write_json(f, add_cells(json.loads(Path(f).read_text())))
        return 0
    if not (args.split and args.decoder and args.out):
        p.error("--split, --decoder and --out are required")
    if args.save_chain and args.finetune_minutes <= 0:
        p.error("--save-chain needs --finetune-minutes (without it, --save writes the inverter)")
    torch.set_num_threads(args.threads)

    from veil.defenses.measure import identity_leak
    from veil.models.pretrained import create
    from veil.privacy.audit import select_fddb_faces
    from veil.privacy.decoders import model_meta, read_decoder
    from veil.privacy.layerwise import (
        ChainedDecoder,
        check_pair,
        read_inverter,
        save_inverter,
        train_inverter,
    )
    from veil.privacy.train import photo_crops
    from veil.settings import settings
    from veil.weights import resolve_weights, verify

    s = settings()
    progress = not args.quiet
    t0 = time.monotonic()
    result: dict = {**run_record(argv, args.threads), "split": args.split, "shallow": args.shallow, "scale": args.scale}
    path = resolve_weights(args.weights)
    digest = verify(path)
    models = {split: create("faceboxes", split, weights=path) for split in (args.split, args.shallow)}
    for sm in models.values():
        sm.network.eval()
    deep, shallow = models[args.split], models[args.shallow]
    check_pair(deep, shallow)

    wire, _fitted, result["defense"] = defense_observation(deep, digest, args.noise, args.bottleneck, args.label)

    def observe(a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return wire(a) if wire is not None else a

    dirs = [Path(d) for d in args.images] if args.images else list(s.fit_images)
    sampler = photo_crops(dirs, scale=args.scale)
    channels_in = int(observe(deep.network.head(sampler.batch(1))).shape[1])
    if args.inverter:
        inv = read_inverter(args.inverter, deep)  # refused for another split or weights
        if inv.meta.get("adaptive") != (wire is not None) or inv.in_channels != channels_in:
            p.error(f"{args.inverter} was trained for another observation (adaptive={inv.meta.get('adaptive')})")
        inv.meta = {**inv.meta, "file": args.inverter}
    else:
        inv = train_inverter(
            deep.network.head,
            shallow.network.head,
            sampler,
            in_channels=channels_in,
            out_channels=shallow.channels,
            wire=wire,
            minutes=args.minutes,
            max_steps=args.max_steps,
            batch=args.batch,
            width=args.width,
            depth=args.depth,
            seed=args.seed,
            progress=progress,
        )
    result["inverter"] = inv.meta
    result["stage_seconds"] = {"inverter": round(time.monotonic() - t0, 1)}
    if args.save:
        save_inverter(inv, args.save, {**model_meta(deep), **{k: v for k, v in inv.meta.items() if "curve" not in k}})
    dec = read_decoder(args.decoder)
    result["decoder"] = {
        "file": args.decoder,
        **{k: dec.meta.get(k) for k in ("steps", "seed", "data_order_seed", "loss")},
    }
    chain = ChainedDecoder(inv, dec)
    if args.finetune_minutes > 0:
        from veil.defenses.measure import ObservedHead
        from veil.privacy.train import ModelFeatures, train_decoder

        t1 = time.monotonic()
        chain = train_decoder(  # duck-typed warm start: the chain is deep-copied and trained whole
            ObservedHead(deep.network.head, observe),
            photo_crops(dirs, scale=args.scale),
            minutes=args.finetune_minutes,
            init=chain,  # type: ignore[arg-type]
            lr=5e-4,
            progress=progress,
            loss=args.finetune_loss,
            features=ModelFeatures(deep) if args.finetune_loss == "perceptual" else None,
        )
        result["finetune"] = {k: v for k, v in chain.meta.items() if k not in ("inverter", "decoder")}
        result["stage_seconds"]["finetune"] = round(time.monotonic() - t1, 1)
        if args.save_chain:
            info = {k: v for k, v in result["finetune"].items() if "curve" not in k}
            kept = {k: v for k, v in inv.meta.items() if "curve" not in k}
            save_inverter(chain, args.save_chain, {**model_meta(deep), **kept, **inv.arch(), "finetune": info})
    faces = select_fddb_faces(Path(args.dataset) if args.dataset else s.dataset, max_faces=args.faces)
    t1 = time.monotonic()
    result["identity"] = identity_leak(
        faces,
        deep.network.head,
        observe,
        chain,
        scale=args.scale,
        ks=(1, 8) if wire is not None else (1,),
        progress=progress,
        large_faces=True,
    )
    result["stage_seconds"]["identity"] = round(time.monotonic() - t1, 1)
    add_cells(result)
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["weights_sha256"] = digest
    jsonio.write_json(args.out, result)
    print(jsonio.dumps({k: v["rank1"] for k, v in result["attackers"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
