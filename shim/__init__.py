"""The runner shim (`falrt.shim`): runs one App inside a runner and links it to the server.

Modules: `settings` (the FALRT_* environment, read once), `main` (entry point, setup, exit
codes), `session` (the RunnerLink stream: admission, cancellation, shutdown), `lifecycle`
(the session's states and their one transition table), `invoke` (calling handlers on the
loop or in the pool), `outbox` (the one ordered writer), `logcapture` (per-request
stdout/stderr/logging capture), `wire` (RunnerLink messages), `zygote` (a warm template that
forks runners for the process backend).
"""
