"""A stand-in worker for the reaper tests: prepare the host, open one egress JobNetwork, print its
address and veth, optionally start a process inside the job namespace, then wait to be SIGKILLed.

    python hold_job.py STATE_DIR HOST_NETNS_PATH JOB_ID [--hold-netns]
"""

from __future__ import annotations

import subprocess
import sys
import threading
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
    print(job.address, job.veth, holder.pid if holder else 0, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
