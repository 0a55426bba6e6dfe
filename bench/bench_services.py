"""A job's start with one service vs without, side by side in one run (rounds interleaved; medians).

    (a) ``Engine.run`` of /bin/true, no service (network none)
    (b) the same job with one service that is not waited for (``debian`` running ``sleep``, no
        exposed port): what making, starting and tearing down a service container costs
    (c) the same job with one service that is waited for: ``python`` listening on 8000 from a
        two-line script, ``HEALTHCHECK_TCP_PORT: 8000`` (the wait includes the interpreter's start)

Usage (root): .venv/bin/python bench/bench_services.py [--runs 20] [--runtime crun]
Everything runs in the machine's own sandbox state (the suite's images must be built); nothing
leaves the job's loopback-only namespace.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.sandbox.engine import Engine  # noqa: E402
from worker.sandbox.reaper import leftovers  # noqa: E402
from worker.sandbox.request import SandboxRequest, ServiceRequest  # noqa: E402
from worker.settings import Settings  # noqa: E402

LISTEN = "import socket, time\ns = socket.socket(); s.bind(('0.0.0.0', 8000)); s.listen(); time.sleep(600)"


def cases(runtime: str) -> dict[str, SandboxRequest]:
    base = SandboxRequest(argv=("/bin/true",), runtime=runtime)
    idle = ServiceRequest("debian", aliases=("idle",), command=("sleep", "600"))
    waited = ServiceRequest("python", aliases=("web",), command=("python3", "-c", LISTEN),
                            env=(("HEALTHCHECK_TCP_PORT", "8000"),))
    return {
        "(a) no service": base,
        "(b) one service, not waited for": SandboxRequest(argv=base.argv, runtime=runtime, services=(idle,)),
        "(c) one service, waited for": SandboxRequest(argv=base.argv, runtime=runtime, services=(waited,)),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--runtime", default="crun")
    args = ap.parse_args()
    settings = Settings.from_env(os.environ)
    engine = Engine(settings)
    requests = cases(args.runtime)
    times: dict[str, list[float]] = {name: [] for name in requests}
    logs: list[Path] = []
    job_ids: list[str] = []
    for name, req in requests.items():  # warm: images loaded, layer views made, runtime chosen
        record = engine.run(req)
        assert record.status == "succeeded", (name, record)
        logs += [Path(p) for p in (record.log_path, *(s.log_path for s in record.services)) if p]
    for round_no in range(args.runs):
        order = list(requests.items())
        if round_no % 2:
            order.reverse()
        for name, req in order:
            started = time.perf_counter()
            record = engine.run(req)
            times[name].append(time.perf_counter() - started)
            assert record.status == "succeeded", (name, record)
            logs += [Path(p) for p in (record.log_path, *(s.log_path for s in record.services)) if p]
            job_ids.append(record.job_id or "")
    for path in logs:
        path.unlink(missing_ok=True)
    left = [x for x in leftovers(settings) if any(job_id in x for job_id in job_ids)]  # ours, not others' jobs
    base = statistics.median(times["(a) no service"])
    print(f"runtime {args.runtime}, {args.runs} rounds, medians (wall time of Engine.run):")
    for name, values in times.items():
        median = statistics.median(values)
        extra = f"  (+{(median - base) * 1000:.1f} ms)" if values is not times["(a) no service"] else ""
        print(f"  {name:34} {median * 1000:7.1f} ms{extra}")
    print("leftovers:", left or "none")
    return 0 if not left else 1


if __name__ == "__main__":
    raise SystemExit(main())
