"""Entry point of the detached pool refill that ``pool_client.start_refill`` spawns.

    python -I -c "...main(argv)" <repo root> <PoolRequest.as_args() JSON>

It finds the refill lock, already locked for it, on fd 3, and works under it: prepares the host
(bridge, nft ruleset), reaps, tops the pool up, prints what it did (to ``refill.log``) and exits.
"""

from __future__ import annotations

import fcntl
import json
import sys

from worker.sandbox.network.pool_client import REFILL_FAILED, REFILL_LOCK_FD


def main(argv: list[str]) -> int:
    try:
        fcntl.flock(REFILL_LOCK_FD, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        print(f"sandpit pool refill: not started holding the refill lock ({exc})", file=sys.stderr)
        return 2
    from worker.sandbox.network.pool import fill_pool, settings_from_request

    request = json.loads(argv[0])
    try:
        settings = settings_from_request(request)
        for line in fill_pool(settings, lock_fd=REFILL_LOCK_FD, config=request["config"]):
            print(line)
    except Exception as exc:  # any failure is logged as one, for the spawner's back-off
        print(f"sandpit pool {REFILL_FAILED.decode()}: {exc}", file=sys.stderr)
        return 1
    return 0
