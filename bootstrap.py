#!/usr/bin/env python3
"""Set up and run forkpool on a fresh machine with nothing but Python 3.11+.

    python3 bootstrap.py demo      # the main job: `forkpool demo` on embedded services
    python3 bootstrap.py test      # the whole test suite
    python3 bootstrap.py forkpool ARGS...   # any forkpool command

Creates ./.venv and installs the library (shared/, the `forkpool` distribution,
with all its extras) and the suite (this directory, with its `dev` and
`embedded` extras) in one pip call, again only when a pyproject.toml changes,
then runs the command in it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("FORKPOOL_VENV", ROOT / ".venv"))
STAMP = VENV / ".forkpool-installed"
PROJECT_FILES = ("pyproject.toml", "shared/pyproject.toml")


def venv_bin(name: str) -> Path:
    return VENV / ("Scripts" if os.name == "nt" else "bin") / name


def ensure_venv() -> None:
    wanted = hashlib.sha256(b"".join((ROOT / p).read_bytes() for p in PROJECT_FILES)).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and venv_bin("forkpool").exists():
        return
    if not venv_bin("python").exists():
        print(f"bootstrap: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("bootstrap: installing forkpool (shared/) and the suite (first run only)", flush=True)
    pip = [str(venv_bin("python")), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    # One call: pip takes the suite's `forkpool` requirement from ./shared, never from an index.
    subprocess.run(pip + ["-e", f"{ROOT / 'shared'}[all]", "-e", f"{ROOT}[dev,embedded]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    if sys.version_info < (3, 11):
        print(f"bootstrap: forkpool needs Python 3.11 or newer, this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    ensure_venv()
    if command == "test":
        args = [str(venv_bin("python")), "-m", "pytest", *rest]
    elif command == "demo":
        args = [str(venv_bin("forkpool")), "demo", *rest]
    elif command == "forkpool":
        args = [str(venv_bin("forkpool")), *rest]
    else:
        print(f"bootstrap: unknown command {command!r}; use demo, test or forkpool", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    return subprocess.call(args)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.CalledProcessError as exc:
        print(f"bootstrap: set-up failed: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        sys.exit(1)
