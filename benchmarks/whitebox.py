"""White-box and hybrid inversion against a split (issue 9): can anybody read the deep splits?

After inception3 the pixel decoders, the identity regressor and the layer-wise chain (RDCL decoder
behind a learned inception3 → RDCL map) all identify ≤ 5 % of faces from the *clean* activation, so
every defense there made no claim. The head is public, so the attacker can also search for an image
whose activation matches what it saw (``veil.privacy.whitebox``, no training data), and start that
search from a trained decoder's reconstruction (the *hybrid*: the learned prior gets the face roughly
right, the optimisation then corrects it against the activation itself). One *cell* = (split, scale,
clean or one defense):

* ``--inverter`` (a ``benchmarks/layerwise.py --save`` file, refused for another split or weights)
  with ``--decoder`` (the shallow split's decoder; a ``--save-chain`` file trained end to end carries its
  own copy of it) is the start: the ``hybrid`` attacker, scored
  beside the chain itself (``layerwise``); without it the search starts grey (``whitebox``);
* ``--noise FILE``: the noisy pass; the search weights each channel by its noise (the Gaussian
  likelihood); ``--bottleneck FILE``: the wire code; the search inverts the public head *and* the
  bottleneck's deterministic code (straight-through quantisation), against the code seen with fresh
  noise; the chain must be the adaptive one trained on that observation (``layerwise.py --bottleneck``);
* scored through the audit's views on the first ``--faces`` FDDB faces ≥ 48 px (chance 1/N; every face
  inverted, its enlarged copy too: the large-face bin), rank-1 and TAR@1 %FAR with Wilson 95 %
  intervals per face-size bin; a picture of the first faces beside the JSON.

    R=benchmarks/results/whitebox L=benchmarks/results/layerwise   # inverters: layerwise.py --save
    python benchmarks/whitebox.py --split inception3 --inverter I3.safetensors --decoder NAIVE --out $R/clean-i3.json
    python benchmarks/whitebox.py --split inception3 --bottleneck BN --inverter I3BN.safetensors --decoder NAIVE \\
        --out $R/bn-i3-0.6.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from veil import jsonio


class _Observe(nn.Module):
    """A defense's observation function as the module the audit's data path applies after the head."""

    def __init__(self, observe) -> None:
        super().__init__()
        self.observe = observe

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.observe(a)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import LABEL_HELP, defense_observation, run_record

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="inception3", help="the split attacked (default: %(default)s)")
    p.add_argument("--scale", type=float, default=3.0)
    obf = p.add_mutually_exclusive_group()
    obf.add_argument("--noise", help="a noise file of the split (the noisy pass)")
    obf.add_argument("--bottleneck", help="a bottleneck file of the split (the wire code)")
    p.add_argument(
        "--inverter",
        help="a layer-wise inverter (benchmarks/layerwise.py --save), or a chain trained end to end (--save-chain): "
        "the hybrid's start",
    )
    p.add_argument("--decoder", help="with --inverter: the shallow split's decoder; alone: a decoder of this split")
    p.add_argument("--faces", type=int, default=100, help="FDDB faces, all inverted (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="Adam steps per face (default: %(default)s)")
    p.add_argument("--tv", type=float, default=0.05, help="total-variation weight (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="faces inverted together (default: %(default)s)")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    p.add_argument("--dataset", help="FDDB root (default: $VEIL_DATASET)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--label", help=LABEL_HELP)
    p.add_argument("--out", required=True, help="JSON result file (the face picture goes beside it, .png)")
    args = p.parse_args(argv)
    if args.inverter and not args.decoder:
        p.error("--inverter needs --decoder (the shallow split's decoder the chain ends in)")
    torch.set_num_threads(args.threads)

    import cv2

    from veil.models.pretrained import create
    from veil.privacy.audit import Attacks, gallery_for, make_views, run_attacks, select_fddb_faces, summarize
    from veil.privacy.decoders import read_decoder
    from veil.privacy.report import face_grid
    from veil.settings import settings
    from veil.weights import resolve_weights, verify

    s = settings()
    t0 = time.monotonic()
    result: dict = {**run_record(argv, args.threads), "split": args.split, "scale": args.scale}
    path = resolve_weights(args.weights)
    digest = verify(path)
    model = create("faceboxes", args.split, weights=path)
    model.network.eval()
    observe, fitted, result["defense"] = defense_observation(model, digest, args.noise, args.bottleneck, args.label)
    obfuscator: nn.Module | None = observe if isinstance(observe, nn.Module) or observe is None else _Observe(observe)
    wb_head: nn.Module | None = None
    if fitted is not None:  # the search inverts the head and the bottleneck's public, deterministic code
        from veil.defenses.bottleneck import as_decoder_input
        from veil.defenses.measure import ObservedHead

        code = fitted.bottleneck
        wb_head = ObservedHead(model.network.head, lambda a: as_decoder_input(code.code(a), code.in_channels))
    result["alpha"] = result["defense"].get("alpha")

    start: nn.Module | None = None
    if args.inverter:
        from veil.privacy.layerwise import read_chain

        start = read_chain(args.inverter, model, read_decoder(args.decoder))  # refused for another split or weights
        inv_meta = start.meta["inverter"]
        if bool(inv_meta.get("adaptive")) != (obfuscator is not None):
            p.error(f"{args.inverter} was trained for another observation (adaptive={inv_meta.get('adaptive')})")
        result["inverter"] = {"file": args.inverter, **{k: v for k, v in inv_meta.items() if "curve" not in k}}
        result["decoder"] = {"file": args.decoder}
        naive: nn.Module = start
    elif args.decoder:
        naive = read_decoder(args.decoder, model)  # refused for another split or weights
        result["decoder"] = {"file": args.decoder}
    else:
        p.error("give --decoder (and --inverter for the hybrid)")
    family = "hybrid" if start is not None else "whitebox"
    result["attacker_family"] = family
    result["whitebox"] = {"steps": args.steps, "tv_weight": args.tv, "batch": args.batch, "start": family}

    faces = select_fddb_faces(Path(args.dataset) if args.dataset else s.dataset, max_faces=args.faces)
    views = make_views(faces, args.scale, True)
    attacks = Attacks(
        model=model,
        naive=naive,
        obfuscator=obfuscator,
        whitebox_steps=args.steps,
        tv_weight=args.tv,
        whitebox_faces=faces.n_faces,
        whitebox_batch=args.batch,
        whitebox_init=start,
        whitebox_head=wb_head,
        ks=(),
        dup_ks=(),
    )
    leaks = run_attacks(faces, views, attacks, args.scale, noisy=obfuscator is not None, progress=not args.quiet)
    gallery = gallery_for(faces)
    named = {family: leaks["whitebox"], "layerwise" if start is not None else "decoder": leaks["naive"]}
    result["attackers"] = {k: summarize(v, gallery) for k, v in named.items()}
    result["chance_rank1"] = round(1.0 / faces.n_faces, 5)
    result["n_faces"], result["faces_digest"], result["n_views"] = faces.n_faces, faces.digest(), len(views)
    result["seconds"] = round(time.monotonic() - t0, 1)
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["weights_sha256"] = digest
    out = Path(args.out)
    jsonio.write_json(out, result)
    grid = face_grid(faces, {} if obfuscator is not None else named, named if obfuscator is not None else {}, 8)
    if grid is not None:
        cv2.imwrite(str(out.with_suffix(".png")), grid)
    print(jsonio.dumps({k: [v["rank1"], v["bins"][">=192"]["rank1"]] for k, v in result["attackers"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
