"""Differential check against the official code on the same model, data and batch order.

Runs methods through the tta_bench runner and through their official implementations, imported
from checkouts that you provide (nothing of them is part of this project), on the digits_c stream.
One adapter per official repository lives in `scripts/official/<short>.py`; pass its checkout as
`--checkout <short>=PATH` (`common.py` and `*_common.py`, helpers shared by adapters, are not
adapters). Deterministic methods are compared by the share of agreeing predicted classes and the
largest per-domain error difference; stochastic ones (augmentations, random restores) by the mean
error over `--seeds`. An adapter may map a comparison name to a tta_bench method with hparam
overrides (`OURS`), e.g. to compare a variant with one term switched off.
Both sides use `--batch-size` unless the method fixes its own batch size (a `batch_size`
hyperparameter, e.g. BN-alpha's 1), which then applies to both.
Usage: python scripts/compare_official.py --checkout tent=/path/to/tent --checkout eata=/path/to/EATA
       [--methods tent,eata] [--seeds 1,2,3] [--setting continual] [--n-examples 2000]
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# Appended, not prepended: official checkouts have modules named like our adapters (tent.py).
sys.path.append(str(Path(__file__).resolve().parent / "official"))

import tta_bench  # noqa: E402
from common import Context  # noqa: E402
from tta_bench.data.datasets import open_benchmark  # noqa: E402
from tta_bench.data.domains import BENCHMARK_CORRUPTIONS  # noqa: E402
from tta_bench.data.streams import StreamSpec, build_stream  # noqa: E402
from tta_bench.data.tensors import as_float  # noqa: E402
from tta_bench.methods import method_class  # noqa: E402
from tta_bench.methods.base import effective_batch_size  # noqa: E402
from tta_bench.methods.preparation import SourceData, prepare_method  # noqa: E402
from tta_bench.models import weights_fingerprint  # noqa: E402
from tta_bench.runner import adapt_stream, open_segment  # noqa: E402

ADAPTERS = Path(__file__).resolve().parent / "official"
PREPARATION_CACHE = Path(tempfile.mkdtemp(prefix="compare_official_preparation_"))
atexit.register(shutil.rmtree, PREPARATION_CACHE, True)


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


def is_adapter(path: Path) -> bool:
    """Whether scripts/official/<path> is an adapter (not common.py or a shared `*_common.py` helper)."""
    return path.is_file() and path.stem != "common" and not path.stem.endswith("_common")


def load_adapters(checkouts: dict[str, str]) -> dict[str, tuple[object, Path]]:
    """method name -> (adapter module, checkout path) for every adapter given a checkout."""
    out = {}
    for short, path in checkouts.items():
        if not is_adapter(ADAPTERS / f"{short}.py"):
            valid = sorted(p.stem for p in ADAPTERS.glob("*.py") if is_adapter(p))
            sys.exit(f"error: no adapter scripts/official/{short}.py; valid: {', '.join(valid)}")
        spec = importlib.util.spec_from_file_location(f"official_adapter_{short}", ADAPTERS / f"{short}.py")
        adapter = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(adapter)
        out.update({name: (adapter, Path(path)) for name in adapter.METHODS})
    return out


def ours_for(adapter, name: str) -> tuple[str, dict]:
    """The tta_bench method and hparam overrides behind comparison `name` (adapters may define `OURS`)."""
    return getattr(adapter, "OURS", {}).get(name, (name, {}))


def seed_all(seed: int) -> None:
    """Seed every generator the official code and ours may draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_ours(name: str, seed: int, adapter, args, bench, stream, source: SourceData) -> torch.Tensor:
    """Predicted classes of the tta_bench method over the stream."""
    seed_all(seed)
    method_name, overrides = ours_for(adapter, name)
    model = tta_bench.create_model("digits_c", args.model_dir, args.data_root)
    weights = weights_fingerprint(model)
    method = tta_bench.create_method(method_name, model, **overrides)
    if method.needs_source:
        prepare_method(method, source, PREPARATION_CACHE, weights, progress=False)
    ours = Recorder(method)
    batch_size = effective_batch_size(method.hparams, args.batch_size)
    adapt_stream(ours, bench, stream, batch_size, 10, torch.device("cpu"), progress=False)
    return torch.cat(ours.predictions)


def run_official(name: str, seed: int, adapter, checkout: Path, args, bench, stream, source) -> torch.Tensor:
    """Predicted classes of the official implementation over the same stream and batches."""
    method_name, overrides = ours_for(adapter, name)
    hparams = method_class(method_name).make_hparams("cifar", **overrides)
    batch_size = effective_batch_size(hparams, args.batch_size)
    if batch_size != args.batch_size:
        print(f"{name}: batch {batch_size} on both sides (the method's own batch size)", flush=True)
    seed_all(seed)
    model = tta_bench.create_model("digits_c", args.model_dir, args.data_root)
    official = adapter.METHODS[name](name, model, checkout, Context(hparams, source, 10, batch_size, seed))
    preds = []
    for segment in stream.segments:
        if segment.reset and hasattr(official, "reset"):
            official.reset()
        for images in open_segment(bench, stream, segment, batch_size, torch.device("cpu")).batches:
            preds.append(official(as_float(images)).argmax(1))
    return torch.cat(preds)


def domain_errors(preds: torch.Tensor, labels: torch.Tensor, domains: np.ndarray, n_domains: int) -> np.ndarray:
    """Error of `preds` per domain."""
    wrong = (preds != labels).numpy()
    return np.array([wrong[domains == d].mean() for d in range(n_domains)])


def compare(name: str, stochastic: bool, seeds: list[int], runs, labels, domains, n_domains: int) -> str:
    """One report line: agreement and per-domain differences, or mean errors over seeds."""
    if not stochastic:
        mine, theirs = runs(seeds[0])
        agree = (mine == theirs).float().mean().item()
        e_ours, e_off = domain_errors(mine, labels, domains, n_domains), domain_errors(theirs, labels, domains, n_domains)
        return (f"{name:<16} agreement {100 * agree:7.3f}%   mean error ours {100 * e_ours.mean():5.2f} official "
                f"{100 * e_off.mean():5.2f}   max per-domain difference {100 * np.abs(e_ours - e_off).max():.2f} points")
    ours, official = [], []
    for seed in seeds:
        mine, theirs = runs(seed)
        ours.append(domain_errors(mine, labels, domains, n_domains).mean())
        official.append(domain_errors(theirs, labels, domains, n_domains).mean())
    per_seed = ", ".join(f"{100 * a:.2f}/{100 * b:.2f}" for a, b in zip(ours, official))
    return (f"{name:<16} mean error over seeds {seeds}: ours {100 * np.mean(ours):5.2f} official "
            f"{100 * np.mean(official):5.2f}   difference {100 * abs(np.mean(ours) - np.mean(official)):.2f} points"
            f"   (per seed ours/official: {per_seed})")


def main() -> None:
    """Compare every requested method and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", default=[], metavar="SHORT=PATH",
                        help="an official checkout for scripts/official/SHORT.py (repeatable)")
    parser.add_argument("--methods", help="comma-separated subset (default: every method of the adapters)")
    parser.add_argument("--seeds", default="1", help="comma-separated; stochastic methods use all of them")
    parser.add_argument("--setting", default="continual")
    parser.add_argument("--n-examples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()
    adapters = load_adapters(dict(item.split("=", 1) for item in args.checkout))
    methods = args.methods.split(",") if args.methods else list(adapters)
    missing = [m for m in methods if m not in adapters]
    if missing or not methods:
        sys.exit(f"error: no checkout given for {missing or 'any method'}; pass --checkout SHORT=PATH")
    bench = open_benchmark("digits_c", args.data_root)
    spec = StreamSpec(args.setting, BENCHMARK_CORRUPTIONS, (5,), args.n_examples, seed=1, shuffle=args.shuffle)
    stream = build_stream(spec, bench.labels, 10)
    labels = torch.from_numpy(np.concatenate([bench.labels[s.rows] for s in stream.segments]))
    domains = np.concatenate([s.domain_ids for s in stream.segments])
    images, train_labels = bench.load_clean("train")
    source = SourceData(images, train_labels, "digits_c/train")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.setting}, shuffle={args.shuffle}, {args.n_examples} images/domain, batch {args.batch_size}")
    for name in methods:
        adapter, checkout = adapters[name]
        runs = lambda seed: (run_ours(name, seed, adapter, args, bench, stream, source),  # noqa: E731
                             run_official(name, seed, adapter, checkout, args, bench, stream, source))
        print(compare(name, name in adapter.STOCHASTIC, seeds, runs, labels, domains, len(stream.domains)), flush=True)


if __name__ == "__main__":
    main()
