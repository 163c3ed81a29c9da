"""Fleet mode: many sidecar replicas acting as one, through Redis (the ``fleet:`` block).

- :mod:`~mlwarden.sidecar.fleet.lease`: one decider, a lease with fencing tokens;
- :mod:`~mlwarden.sidecar.fleet.state`: the shared, fenced canary state and the fleet ledger;
- :mod:`~mlwarden.sidecar.fleet.coordinator`: this replica's loop (lease, stream, Redis down);
- :mod:`~mlwarden.sidecar.fleet.canary`: the canary decided by the leader, applied by all;
- :mod:`~mlwarden.sidecar.fleet.routes`: fleet policies on the leader, their routes on all;
- :mod:`~mlwarden.sidecar.fleet.counts`, :mod:`~mlwarden.sidecar.fleet.escalation`: the
  fleet's heals counted, escalated once;
- :mod:`~mlwarden.sidecar.fleet.drift`: drift judged on every replica's summed counts
  (:mod:`~mlwarden.sidecar.fleet.drift_store` in Redis, :mod:`~mlwarden.sidecar.fleet.
  drift_judge` the arithmetic).
"""
