"""HTTP load for the suite benchmark: wrk when it is on PATH, else a Python fallback.

wrk (one thread, N connections, fixed duration, --latency) is a C program on epoll: it
needs little CPU, which matters on a 2-core machine whose server and database share the
cores with the client. The fallback is N Python threads, each with an http.client
keep-alive connection (re-opened when the server closes it, as Gunicorn's sync workers
do after every response), for a fixed duration; the GIL caps it well below wrk, so its
figures are lower and only comparable with each other. Results say which one ran.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

WRK_INSTALL = (
    "wrk is not on PATH, so the Python load generator is used (lower, noisier figures). "
    "Install wrk for the real run: Debian/Ubuntu `sudo apt-get install -y wrk`, "
    "Fedora `sudo dnf install wrk`, macOS `brew install wrk`."
)


@dataclass
class LoadResult:
    generator: str
    requests: int
    errors: int  # non-2xx responses and socket errors
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoadGenerator:
    name: str  # "wrk" | "python"
    version: str
    path: str | None = None

    def run(self, url: str, connections: int, seconds: int, close: bool = False) -> LoadResult:
        """`close`: send `Connection: close` with every request (a new TCP connection per request)."""
        if self.name == "wrk":
            return run_wrk(self.path or "wrk", url, connections, seconds, close)
        return run_python(url, connections, seconds, close)


def choose(preference: str) -> LoadGenerator:
    """`preference`: auto (wrk if found), wrk (required), python."""
    path = shutil.which("wrk")
    if preference == "python" or (preference == "auto" and path is None):
        return LoadGenerator("python", "http.client threads (benchmarks.loadgen)")
    if path is None:
        raise SystemExit("suite_bench: --loadgen wrk, but " + WRK_INSTALL.split(", so")[0])
    return LoadGenerator("wrk", wrk_version(path), path)


def wrk_version(path: str) -> str:
    try:
        done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = (done.stdout + done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "unknown"


# -- wrk ------------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    """Figures from wrk's --latency output."""
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.M))
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if not (done and rps and "50" in percentiles and "99" in percentiles):
        raise RuntimeError(f"could not read wrk's output: {output[-800:]}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return LoadResult(
        "wrk",
        int(done.group(1)),
        errors,
        _ms(done.group(2) + done.group(3)) / 1000,
        float(rps.group(1)),
        _ms(percentiles["50"]),
        _ms(percentiles["99"]),
    )


def run_wrk(path: str, url: str, connections: int, seconds: int, close: bool = False) -> LoadResult:
    argv = [
        path,
        "-t1",
        f"-c{connections}",
        f"-d{max(int(seconds), 1)}s",
        "--latency",
        "--timeout",
        "10s",
        *(["-H", "Connection: close"] if close else []),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {(done.stderr or done.stdout)[-800:]}")
    return parse_wrk(done.stdout)


# -- Python fallback ------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(int(fraction * len(sorted_values)), len(sorted_values) - 1)
    return sorted_values[index]


def run_python(url: str, connections: int, seconds: float, close: bool = False) -> LoadResult:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    barrier = threading.Barrier(connections + 1)
    deadline = [0.0]
    headers = {"Connection": "close"} if close else {}

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        mine, clock = latencies[index], time.perf_counter
        barrier.wait()
        while clock() < deadline[0]:
            began = clock()
            try:
                conn.request("GET", path, headers=headers)  # after a close, http.client reconnects
                response = conn.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except (OSError, http.client.HTTPException):
                conn.close()  # re-opened by the next request
                ok = False
            if ok:
                mine.append(clock() - began)
            else:
                errors[index] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline[0] = started + seconds
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = sorted(x for mine in latencies for x in mine)
    return LoadResult(
        "python",
        len(every),
        sum(errors),
        elapsed,
        len(every) / elapsed,
        percentile(every, 0.5) * 1000,
        percentile(every, 0.99) * 1000,
    )
