"""The Prefect steps: every `@task` of zpipe, thin wrappers over the domain wings.

A step takes small serialisable arguments (store URLs, ids, pydantic models), opens what it
needs (`store_at`), calls one domain function and logs through Prefect. Retries, timeouts and
cache policies live on the decorators, named in `policies`.
"""
