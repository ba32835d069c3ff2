"""Download, check and unpack the public benchmark archives (resumable), or say how to get them.

Usage: python scripts/download_data.py cifar10_c [cifar100_c imagenet_c cifar10 cifar100]
       [--data-root data] [--offline]
Where the internet is reachable, each archive is downloaded to `<data_root>/downloads/` with
HTTP range requests (an interrupted download resumes), checked against its published size and
SHA-256 (MD5 for the clean CIFAR archives), and unpacked under the data root. Where it is not,
or with --offline, the script prints exactly which files to fetch, from where, and to which path.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tta_bench.data.archives import ARCHIVES, Archive, check_archive

CHUNK = 1 << 20


def instructions(archive: Archive, data_root: Path) -> str:
    """What a user without this script's network access has to do."""
    check = f"sha256 {archive.sha256}" if archive.sha256 else f"md5 {archive.md5}" if archive.md5 else "no published checksum"
    return (f"  {archive.name}: download {archive.url}\n    to {data_root / 'downloads' / archive.name} ({check}),\n"
            f"    then unpack it in {data_root}/ so that {data_root / archive.unpacks_to}/ exists")


def download(archive: Archive, target: Path) -> None:
    """Fetch `archive` to `target`, resuming a partial `.part` file."""
    part = target.with_name(target.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if done and response.status != 206:  # the server ignored the range: start over
            done = 0
        with open(part, "ab" if done else "wb") as out:
            while block := response.read(CHUNK):
                out.write(block)
    part.replace(target)


def fetch_and_unpack(archive: Archive, data_root: Path) -> None:
    """Download (unless present), check, unpack."""
    target = data_root / "downloads" / archive.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        print(f"downloading {archive.url}")
        download(archive, target)
    problem = check_archive(target, archive)
    if problem:
        raise SystemExit(f"error: {problem}")
    with tarfile.open(target) as tar:
        # CIFAR-C tars hold their top folder; ImageNet-C group tars hold corruption folders only.
        top = tar.next().name.split("/")[0]
        dest = data_root if top == archive.unpacks_to else data_root / archive.unpacks_to
        print(f"unpacking {target} into {dest}")
        tar.extractall(dest, filter="data")  # 'data' refuses absolute paths and links out of the root


def main() -> int:
    """Fetch every named data set, or print the manual steps when offline."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=sorted(ARCHIVES))
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--offline", action="store_true", help="only print what to download")
    args = parser.parse_args()
    archives = [a for name in args.datasets for a in ARCHIVES[name]]
    if not args.offline:
        try:
            for archive in archives:
                fetch_and_unpack(archive, args.data_root)
            return 0
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            print(f"cannot download ({exc}); fetch the files by hand:", file=sys.stderr)
    print("files to fetch:", file=sys.stderr)
    for archive in archives:
        print(instructions(archive, args.data_root), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
