"""The falrt server: one package per plane, wired one way in constructors.

Layers, lowest first; a module imports only from its own layer and the ones below
(tests/test_layers.py checks it):

- `tasks`: `Tasks`, the owner of a component's background tasks.
- `state/`: what both planes hold: apps (`Apps`, `AppState`), their queues, work items
  (requests, direct calls, realtime sessions) and runner handles, with the transition tables
  of request statuses and runner states.
- `fleet/`: runners: starting them on a backend, the scaling loop, stopping them. It reports
  what happens to runners through `FleetEvents`, an interface it owns, and never imports
  the queue.
- `queue/`: requests: the scheduler (submit, lookup, cancel), the dispatcher (work to
  runners and back, retries; the fleet's `FleetEvents`), the recorder (outcomes stored,
  webhooks), retries and idempotency.
- `control/`: apps as operators change them (deploy, rollback, scale, delete), API keys, and
  the membership of servers sharing a PostgreSQL store.
- `api/`: the edges: the gRPC servicers, the auth guard, conversions and status mapping; the
  only code that imports generated code.
- `main`: builds the planes, serves, and stops them in order.

The request path reads in one direction: edge -> scheduler -> dispatcher -> fleet (a runner)
-> runner link; results come back from the runner link to the dispatcher, and the fleet's
news through its events.
"""
