"""Differential check against the official code on the same model, data and batch order.

Runs methods through the tta_bench runner and through the official implementations, imported
from checkouts that you provide (nothing of them is part of this project): `source`, `norm`,
`tent` from DequanWang/tent (`--official`), `eta`, `eata` from mr-eggplant/EATA
(`--official-eata`), on the digits_c stream, and reports the share of samples whose predicted
class agrees and the largest per-domain error difference.
Usage: python scripts/compare_official.py --official /path/to/tent [--official-eata /path/to/EATA]
       [--setting continual] [--n-examples 2000]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys

import numpy as np
import torch

import tta_bench
from tta_bench.data.datasets import open_benchmark
from tta_bench.data.domains import BENCHMARK_CORRUPTIONS
from tta_bench.data.streams import StreamSpec, build_stream
from tta_bench.data.tensors import as_float
from tta_bench.methods.preparation import SourceData
from tta_bench.runner import adapt_stream, open_segment


class Recorder:
    """Wraps a tta_bench method and records its predicted classes, batch by batch."""

    def __init__(self, method: tta_bench.Method):
        self.method, self.name, self.predictions = method, method.name, []
        self.returns_probabilities = method.returns_probabilities

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.method(x)
        self.predictions.append(out.argmax(1))
        return out

    def reset(self) -> None:
        self.method.reset()


def official_method(name: str, model: torch.nn.Module, official, source) -> tuple[torch.nn.Module, bool]:
    """The official set-up (tent's cifar10c.py, EATA's main.py) for `name`, and whether it has reset()."""
    if name == "source":
        return model.eval(), False
    if name == "norm":
        return official["norm"].Norm(model), True
    if name == "tent":
        model = official["tent"].configure_model(model)
        params, _ = official["tent"].collect_params(model)
        optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)  # cfgs/tent.yaml
        return official["tent"].Tent(model, optimizer, steps=1, episodic=False), True
    eata = official["eata"]
    model = eata.configure_model(model)
    params, _ = eata.collect_params(model)
    fishers = eata_fishers(model, source) if name == "eata" else None
    optimizer = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999))  # the CIFAR preset of tta_bench
    return eata.EATA(model, optimizer, fishers, fisher_alpha=1.0, e_margin=0.4 * math.log(10), d_margin=0.4), True


def eata_fishers(model: torch.nn.Module, source) -> dict:
    """The Fisher loop of EATA's main.py, transcribed: batches of 64 of 2,000 clean images, CE against argmax."""
    fishers, batches = {}, list(source.batches(64, torch.device("cpu")))
    for it, (x, _) in enumerate(batches, start=1):
        outputs = model(x)
        torch.nn.functional.cross_entropy(outputs, outputs.max(1)[1]).backward()
        for name, param in model.named_parameters():
            if param.grad is not None:
                fisher = param.grad.detach().clone() ** 2 + (fishers[name][0] if it > 1 else 0)
                if it == len(batches):
                    fisher = fisher / it
                fishers[name] = [fisher, param.detach().clone()]
        model.zero_grad()
    return fishers


def run_official(name, official, bench, stream, args, source) -> torch.Tensor:
    """Predicted classes of the official implementation over the stream."""
    model = tta_bench.create_model("digits_c", args.model_dir, args.data_root)
    model, has_reset = official_method(name, model, official, source)
    preds = []
    for segment in stream.segments:
        if segment.reset and has_reset:
            model.reset()
        for images in open_segment(bench, stream, segment, args.batch_size, torch.device("cpu")).batches:
            with torch.no_grad() if name == "source" else torch.enable_grad():
                preds.append(model(as_float(images)).argmax(1))
    return torch.cat(preds)


def main() -> None:
    """Compare the three methods and print agreement and error differences."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of github.com/DequanWang/tent")
    parser.add_argument("--official-eata", help="checkout of github.com/mr-eggplant/EATA (adds eta, eata)")
    parser.add_argument("--setting", default="continual")
    parser.add_argument("--n-examples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()
    sys.path.insert(0, args.official)
    official = {m: importlib.import_module(m) for m in ("tent", "norm")}
    methods = ["source", "norm", "tent"]
    if args.official_eata:
        spec = importlib.util.spec_from_file_location("official_eata", f"{args.official_eata}/eata.py")
        official["eata"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(official["eata"])
        methods += ["eta", "eata"]
    bench = open_benchmark("digits_c", args.data_root)
    spec = StreamSpec(args.setting, BENCHMARK_CORRUPTIONS, (5,), args.n_examples, seed=1, shuffle=args.shuffle)
    stream = build_stream(spec, bench.labels, 10)
    labels = torch.from_numpy(np.concatenate([bench.labels[s.rows] for s in stream.segments]))
    domains = np.concatenate([s.domain_ids for s in stream.segments])
    print(f"{args.setting}, shuffle={args.shuffle}, {args.n_examples} images/domain, batch {args.batch_size}")
    images, labels_train = bench.load_clean("train")
    source = SourceData(images[:2000], labels_train[:2000], "digits_c/train")
    for name in methods:
        torch.manual_seed(1)
        ours = Recorder(tta_bench.create_method(name, tta_bench.create_model("digits_c", args.model_dir, args.data_root)))
        if ours.method.needs_source:
            ours.method.load_preparation(ours.method.compute_preparation(source, progress=False))
            ours.method.snapshot()
        adapt_stream(ours, bench, stream, args.batch_size, 10, torch.device("cpu"), progress=False)
        mine, theirs = torch.cat(ours.predictions), run_official(name, official, bench, stream, args, source)
        agree = (mine == theirs).float().mean().item()
        err = lambda p, d: (p[domains == d] != labels[domains == d]).float().mean().item()  # noqa: E731
        diffs = [abs(err(mine, d) - err(theirs, d)) for d in range(len(stream.domains))]
        mean_ours = np.mean([err(mine, d) for d in range(len(stream.domains))])
        mean_off = np.mean([err(theirs, d) for d in range(len(stream.domains))])
        print(f"{name:<7} agreement {100 * agree:7.3f}%   mean error ours {100 * mean_ours:5.2f} "
              f"official {100 * mean_off:5.2f}   max per-domain difference {100 * max(diffs):.2f} points")


if __name__ == "__main__":
    main()
