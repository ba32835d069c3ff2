"""Peak host memory of a CIFAR-10-C continual run: it must not grow with the number of domains.

Writes a real-size CIFAR-10-C folder (15 corruptions x (50000, 32, 32, 3) uint8 = 2.3 GB of
random pixels, written through memory maps) under a temporary or given folder, then runs
`run.py data=cifar10_c_continual` with the small digits_c model (the data path is what is
measured; the model is the same 32x32, 10-class shape) once over 1 domain and once over all 15,
each in its own process, and reports the peak resident memory of each.
Usage: python scripts/measure_memory.py [--folder /tmp/cifar10c_fixture] [--model-dir models]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tta_bench.data.domains import BENCHMARK_CORRUPTIONS

ROWS = 50_000
REPO = Path(__file__).resolve().parents[1]


def write_fixture(root: Path) -> None:
    """Random images in exactly the real CIFAR-10-C layout and size."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(folder / "labels.npy", np.tile(rng.integers(0, 10, ROWS // 5).astype(np.uint8), 5))
    for c in BENCHMARK_CORRUPTIONS:
        if (folder / f"{c}.npy").exists():
            continue
        arr = np.lib.format.open_memmap(folder / f"{c}.npy", mode="w+", dtype=np.uint8, shape=(ROWS, 32, 32, 3))
        for start in range(0, ROWS, 5000):
            arr[start : start + 5000] = rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
        arr.flush()
        del arr


def peak_rss_mb(overrides: list[str]) -> float:
    """Peak resident memory (MiB) of one run in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "run.py", *overrides], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise RuntimeError("this child did not raise the children's peak; run the larger case first")
    return after / 1024


def main() -> None:
    """Write the fixture, measure both runs, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--model-dir", default=str(REPO / "models"))
    parser.add_argument("--data-root-embedded", default=str(REPO / "data"))
    args = parser.parse_args()
    root = args.folder or Path(tempfile.mkdtemp(prefix="cifar10c_"))
    write_fixture(root)
    on_disk = sum(p.stat().st_size for p in (root / "CIFAR-10-C").glob("*.npy")) / 2**20
    common = ["data=cifar10_c_continual", "model=digits_c", "method=source", f"data_root={root}",
              f"model_dir={args.model_dir}", "progress=false", "forgetting=false",
              f"results_dir={tempfile.mkdtemp(prefix='mem_results_')}"]
    # The model is trained on first use from the embedded data; make sure that happens outside the measurement.
    subprocess.run([sys.executable, "-c", f"import tta_bench; tta_bench.create_model('digits_c', "
                    f"{args.model_dir!r}, {args.data_root_embedded!r}, progress=False)"], cwd=REPO, check=True)
    all_domains = peak_rss_mb(common)
    one = subprocess.run([sys.executable, "-c", "import resource, subprocess, sys; subprocess.run(sys.argv[1:], "
                          "check=True, stdout=subprocess.DEVNULL); "
                          "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)",
                          sys.executable, "run.py", *common, "data.corruptions=[gaussian_noise]"],
                         cwd=REPO, check=True, capture_output=True, text=True)
    one_domain = float(one.stdout.strip())
    domain_mb = 10_000 * 32 * 32 * 3 / 2**20
    print(f"CIFAR-10-C files on disk: {on_disk:,.0f} MiB (15 corruptions); one domain: {domain_mb:.0f} MiB")
    print(f"peak RSS, continual over 1 domain:   {one_domain:,.0f} MiB")
    print(f"peak RSS, continual over 15 domains: {all_domains:,.0f} MiB "
          f"(+{all_domains - one_domain:,.0f} MiB for 14 more domains)")


if __name__ == "__main__":
    main()
