"""A stand-in worker for the reaper tests: prepare the host, open one egress JobNetwork, print its
address and veth, optionally start a process inside the job namespace, then wait to be SIGKILLed.

    python hold_job.py STATE_DIR HOST_NETNS_PATH JOB_ID [--hold-netns]
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from worker.sandbox.network import JobNetwork, NetworkSettings, prepare_host


def main() -> None:
    state_dir, host_netns, job_id = sys.argv[1:4]
    settings = NetworkSettings(state_dir=Path(state_dir), host_netns=Path(host_netns),
                               resolvers=("198.51.100.53",))
    host = prepare_host(settings)
    job = JobNetwork(settings, job_id, "egress", host)
    holder = None
    if "--hold-netns" in sys.argv:
        # like a container that outlives its worker: keeps the job namespace (and its veth) alive
        holder = subprocess.Popen(["nsenter", f"--net={job.netns_path}", "sleep", "600"])
        # report only once the holder is inside: killed earlier, this worker would take the namespace
        # (and the veth the test expects the reaper to find) with it
        wanted = os.readlink(job.netns_path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.readlink(f"/proc/{holder.pid}/ns/net") == wanted:
                    break
            except OSError:
                pass
            time.sleep(0.002)
        else:
            holder.kill()
            raise SystemExit("the holder did not enter the job namespace")
    print(job.address, job.veth, holder.pid if holder else 0, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
