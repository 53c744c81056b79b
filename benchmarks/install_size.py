"""What an install costs: distributions and bytes on disk, for a requirement and for a whole environment.

    .venv/bin/python -m benchmarks.install_size                      # this environment, root: forkpool-suite
    .venv/bin/python -m benchmarks.install_size VENV:forkpool ...   # any virtualenv, any root requirement

For each ``VENV[:REQUIREMENT]`` it prints two lines: the requirement's closure
(the distribution itself and everything it requires, extras included, as
installed there; bytes from each distribution's RECORD) and the whole
site-packages (every distribution, pip and setuptools included; bytes of every
file under it, ``__pycache__`` included). An editable install's RECORD lists
only its ``.pth`` file: its source tree is not counted. Measures what is
installed; never installs or downloads anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Footprint:
    what: str
    distributions: int
    bytes: int
    names: tuple[str, ...]

    def line(self) -> str:
        return f"{self.what}: {self.distributions} distributions, {self.bytes / 1e6:.1f} MB"


def site_packages(venv: Path) -> Path:
    """The site-packages of a virtualenv (or of a prefix laid out like one)."""
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise SystemExit(f"install_size: no lib/python3*/site-packages under {venv}")
    return found[0]


def installed(site: Path) -> dict[str, metadata.Distribution]:
    dists: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        if name:
            dists.setdefault(canonicalize_name(name), dist)
    return dists


def closure(dists: dict[str, metadata.Distribution], root: str) -> set[str]:
    """Names of `root` and everything it requires as installed, extras followed (markers evaluated here)."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [
        (canonicalize_name(Requirement(root).name), frozenset(Requirement(root).extras))
    ]
    done: set[tuple[str, frozenset[str]]] = set()
    env = default_environment()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        dist = dists.get(name)
        if dist is None:
            continue  # required but not installed (a marker for another platform, or a broken env)
        seen.add(name)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is not None and not any(
                req.marker.evaluate({**env, "extra": extra}) for extra in (extras or {""})
            ):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return seen


def recorded_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        try:
            total += Path(dist.locate_file(file)).stat().st_size
        except OSError:
            pass
    return total


def tree_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def measure(venv: Path, root: str) -> dict[str, Footprint]:
    site = site_packages(venv)
    dists = installed(site)
    needed = closure(dists, root)
    return {
        "closure": Footprint(
            f"{root} and its requirements",
            len(needed),
            sum(recorded_bytes(dists[n]) for n in needed),
            tuple(sorted(needed)),
        ),
        "environment": Footprint(f"whole site-packages of {venv}", len(dists), tree_bytes(site), tuple(sorted(dists))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install_size", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="VENV[:REQUIREMENT]",
        help="Default: this interpreter's environment, root forkpool-suite.",
    )
    parser.add_argument("--json", action="store_true", help="One JSON object per target instead of text.")
    args = parser.parse_args(argv)
    targets = args.targets or [f"{sys.prefix}:forkpool-suite"]
    for target in targets:
        venv, _, root = target.partition(":")
        found = measure(Path(venv), root or "forkpool")
        if args.json:
            print(json.dumps({key: asdict(value) for key, value in found.items()}))
        else:
            for value in found.values():
                print(value.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
