"""The pool of ready egress namespaces, so that ``sandpit exec --network egress`` needs no netlink.

Modules, by what each side of the pool does (see docs/network.md, "The pool of ready namespaces"):

* ``layout`` — the pool directory, its files, and what its entries were made for (``PoolConfig``);
* ``claim`` — a job's process takes one entry (import-light: no pyroute2, no netlink);
* ``refill`` — a claimer starts a detached refill when the pool runs low, and that refill's entry point;
* ``fill`` — making entries (as a job's network is made) and draining them.

Which entries are kept is the reaper's judgement (``worker/sandbox/network/reaper.py``). Nothing is
imported here: importing the claim must not load the filling side.
"""
