"""The control plane: deploys and rollbacks, app settings and deletion, API keys, and the
servers sharing a PostgreSQL store."""
