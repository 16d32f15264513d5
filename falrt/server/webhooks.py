"""Where receivers found `verify` before the server was split into planes (docs/webhooks.md
named `falrt.server.webhooks.verify`): kept so their code goes on working. New code imports
`falrt.webhook_signatures`."""

from falrt.webhook_signatures import verify

__all__ = ["verify"]
