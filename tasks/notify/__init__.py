"""Telling a brand's own systems: signed outbound webhooks (Prefect-free)."""
