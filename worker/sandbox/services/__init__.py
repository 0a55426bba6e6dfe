"""A job's services: containers beside the job, in its network namespace and under its limits.

Each service of ``SandboxRequest.services`` runs as a container of its own, made exactly as a job's
is (user namespace, seccomp, the profile's capabilities, masked and read-only /proc paths, a fresh
/dev, no host mounts, its image's read-only layers under an overlay whose upper dir is on the job's
disk), but it joins the job's network namespace, so the job reaches it on ``localhost`` and by its
host names, which the job's ``/etc/hosts`` maps to 127.0.0.1. Modules:

* ``naming`` (pure): container ids, cgroup and log names, and the job a container belongs to;
* ``ports`` (pure, and one reader): the ports a service is waited for, what listens in a namespace;
* ``hosts``: the ``/etc/hosts`` text (pure) and the tiny tmpfs that holds it;
* ``users``: an image's ``User`` as (uid, gid), read from its own /etc/passwd and /etc/group;
* ``logs``: a service's log, and the one thread that reads every service's output;
* ``container``: one service container (rootfs, config.json, the runtime process);
* ``group``: all of a job's services, as the engine uses them (``JobServices``).

How the job's limits are shared: the job's cgroup ``<parent>/<job>`` holds the job (``ctr``) and
every service (``svc<N>``), so its memory, cpu and pids limits cap the *sum* (cgroup limits are
hierarchical): a service can never take more than the job was given, and one that takes all of it
ends the job ``failed/oom`` exactly as the job's own processes would (memory is "whole job OOM-killed
together"). The job's disk limit likewise covers the services' upper dirs. The job's usage record
counts its services. No fixed share per service: a database idle while the tests run would hold
memory the tests need.
"""
