"""Connecting to Ray: attach to a running cluster, or start an embedded local one.

The sweep never shuts down a cluster it did not start: `connect` says whether it started one.
"""

from __future__ import annotations

import os

from fashion_tune.errors import FashionTuneError

LOCAL_DASHBOARD_HOST = "127.0.0.1"


def connect(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard_host: str = LOCAL_DASHBOARD_HOST,
    include_dashboard: bool | None = False,
) -> bool:
    """Attach to `address` (or $RAY_ADDRESS), else start a local Ray; True if this call started Ray.

    A local Ray's dashboard, when included, binds to 127.0.0.1 unless `dashboard_host` says otherwise.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FashionTuneError(
                f"cannot connect to the Ray cluster at {address!r} ({first[:150]}); start it with `ray start --head` "
                "or `launch/local-cluster start`, or drop --address to run locally"
            ) from None
        return False
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=include_dashboard,
        dashboard_host=dashboard_host,
        logging_level="WARNING",
        configure_logging=True,
    )
    return True


def disconnect() -> None:
    """Stop this driver's Ray: a local Ray it started ends; an attached cluster keeps running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
