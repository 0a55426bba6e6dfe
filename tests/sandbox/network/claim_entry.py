"""A stand-in `sandpit exec` for the pool tests: claim one pool entry, print what it got, hold it.

    python claim_entry.py POOL_REQUEST_JSON JOB_ID

Prints ``{"slot": ..., "netns": <namespace inode>, ...}`` (``{"slot": null}`` when nothing was claimed) once
claimed, then holds the claim until stdin closes (or it is SIGKILLed), like a job still running.
"""

from __future__ import annotations

import json
import os
import sys

from worker.sandbox.network.pool.claim import claim
from worker.sandbox.network.pool.layout import PoolRequest


def main() -> None:
    request = PoolRequest(**json.loads(sys.argv[1]))
    sys.stdin.readline()  # "go": every claimer starts at once
    got = claim(request, sys.argv[2])
    found = {"slot": None} if got is None else {"slot": got.slot, "netns": os.fstat(got.netns_fd).st_ino,
                                                "path": got.netns_path, "pid": os.getpid()}
    print(json.dumps(found), flush=True)
    sys.stdin.read()
    if got is not None:
        got.close()


if __name__ == "__main__":
    main()
