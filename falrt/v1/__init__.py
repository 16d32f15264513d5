"""Generated from proto/falrt/v1 by `make proto`. Do not edit."""
