"""The user-facing SDK: `App`, `endpoint`, app descriptions, and the app loader.

Imports nothing of the control plane; the runner shim depends on it.
"""
