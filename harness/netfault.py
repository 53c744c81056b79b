"""Silence in the kernel: packets to and from a port are dropped, in a private network namespace.

A blackhole that should trip TCP keepalives and ``tcp_user_timeout`` must not be acknowledged by
anyone: a proxy's kernel acknowledges what the proxy holds (harness/fault_proxy.py). Here the
packets themselves vanish: a ``clsact`` filter on the loopback device's ingress redirects every
packet whose source or destination port is the server's to an ``ifb`` device that is never brought
up, and a device that is down drops what it is given. The peers see nothing: no RST, no ICMP, no
FIN. (netem and the ``drop`` action are not in this machine's kernel; ``mirred`` and ``ifb`` are.)

Ingress, not egress: a packet dropped on the way out is reported to the sender's TCP as a local
failure, and Linux retries a keepalive probe that failed locally without counting it, so the
server's keepalives never ended a silenced session (measured: sessions still there after 40 s).
Dropped on the way in, the sender believes it sent the packet, as on a real network: both
kernels' keepalives and tcp_user_timeout then end the connection at ~10 s.

All of it happens in a network namespace of our own (``unshare --net``), which has its own
loopback: the machine's is never touched, other runs on the machine are not affected, and no rule
outlives the run (the namespace ends with its last process). A scenario that needs it runs as a
child process inside one: ``run_isolated(name)``; everything it starts (PostgreSQL, Redis,
Gunicorn, Celery) lives and dies in that namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .model import Check

IN_NETNS_ENV = "FORKPOOL_NETNS"
DROP_DEVICE = "fpdrop0"


def unavailable() -> str | None:
    """Why kernel drops cannot be used here (None: they can)."""
    if os.environ.get(IN_NETNS_ENV):
        return None
    if os.geteuid() != 0:
        return "dropping packets needs root (a network namespace and tc)"
    missing = [tool for tool in ("unshare", "ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"dropping packets needs {', '.join(missing)} (util-linux, iproute2)"
    probe = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            f"ip link set lo up && ip link add {DROP_DEVICE} type ifb && tc qdisc add dev lo clsact",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"this kernel cannot drop packets in a namespace: {probe.stderr.strip()[:200]}"
    return None


def prepare_namespace() -> None:
    """In the fresh namespace: loopback up, the drop device (left down), the filter hook on lo."""
    for argv in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", DROP_DEVICE, "type", "ifb"],
        ["tc", "qdisc", "add", "dev", "lo", "clsact"],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=10)


class PacketDrop:
    """Drop every packet from or to `port` on loopback while on. Only inside our own namespace."""

    def __init__(self, port: int) -> None:
        if not os.environ.get(IN_NETNS_ENV):
            raise RuntimeError("PacketDrop only runs inside run_isolated()'s network namespace")
        self.port = port
        self.active = False

    def on(self) -> None:
        if self.active:
            return
        for prio, field in ((self._prio(0), "dport"), (self._prio(1), "sport")):
            subprocess.run(
                [
                    "tc",
                    "filter",
                    "add",
                    "dev",
                    "lo",
                    "ingress",
                    "protocol",
                    "ip",
                    "prio",
                    str(prio),
                    "u32",
                    "match",
                    "ip",
                    field,
                    str(self.port),
                    "0xffff",
                    "action",
                    "mirred",
                    "egress",
                    "redirect",
                    "dev",
                    DROP_DEVICE,
                ],
                check=True,
                capture_output=True,
                timeout=10,
            )
        self.active = True

    def off(self) -> None:
        if not self.active:
            return
        for prio in (self._prio(0), self._prio(1)):
            subprocess.run(
                ["tc", "filter", "del", "dev", "lo", "ingress", "prio", str(prio)],
                check=True,
                capture_output=True,
                timeout=10,
            )
        self.active = False

    def _prio(self, which: int) -> int:
        return 1 + (self.port % 10000) * 2 + which  # distinct per port: two drops can coexist


def run_isolated(name: str, timeout: float = 900.0, **kwargs: Any):  # -> FaultResult
    """Run scenario `name` (harness/net_scenarios.py) in a child inside a new network namespace."""
    from .faults import FaultResult

    reason = unavailable()
    if reason:
        result = FaultResult(name)
        result.checks = [Check(0, "a private network namespace to drop packets in", False, reason)]
        return result
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"forkpool-netns-{os.getpid()}-{name}.json"
    env = {**os.environ, IN_NETNS_ENV: "1"}
    argv = ["unshare", "--net", "--", sys.executable, "-m", "harness.netfault", name, str(out), json.dumps(kwargs)]
    done = subprocess.run(argv, env=env, timeout=timeout, capture_output=True, text=True)
    try:
        body = json.loads(out.read_text())
    except (OSError, ValueError):
        result = FaultResult(name)
        result.checks = [
            Check(
                0, "the isolated run reported", False, f"exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}"
            )
        ]
        return result
    finally:
        out.unlink(missing_ok=True)
    result = FaultResult(name, [Check(**c) for c in body["checks"]], body["figures"])
    return result


def _main(argv: list[str]) -> int:
    name, out, kwargs = argv[0], Path(argv[1]), json.loads(argv[2])
    prepare_namespace()
    from .net_scenarios import ISOLATED

    result = ISOLATED[name](**kwargs)
    out.write_text(json.dumps({"figures": result.figures, "checks": [asdict(c) for c in result.checks]}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
