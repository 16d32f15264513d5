"""falrt: a self-hosted, gRPC-native serverless runtime for ML inference.

Importing `falrt` gives the SDK a user app needs (`falrt.App`, `falrt.endpoint`, the
file field types `falrt.File` and `falrt.Image`, the exceptions). It imports nothing of
the control plane, because the runner shim imports it inside every runner.
"""

from falrt.errors import FalrtError, RequestCancelledError, ValidationFailedError
from falrt.sdk.app import App, RequestContext, endpoint
from falrt.sdk.endpoints import HealthCheck, realtime
from falrt.sdk.files import File, Image
from falrt.sdk.options import FalOptionWarning

__all__ = [
    "App",
    "FalOptionWarning",
    "FalrtError",
    "File",
    "HealthCheck",
    "Image",
    "RequestCancelledError",
    "RequestContext",
    "ValidationFailedError",
    "endpoint",
    "realtime",
]
