"""The HTTP edge: fal's queue and direct APIs, SSE and WebSockets (docs/http.md).

A second edge onto the same scheduler as the gRPC services (`falrt/server/api/`), in the
server process and on its event loop: no gRPC hop to itself. Auth, limits and errors are the
gRPC edge's rules (`Authenticator`, `falrt.limits`, `falrt.errors`), in another wire format.
"""
