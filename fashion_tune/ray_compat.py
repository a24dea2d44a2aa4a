"""The one place fashion-tune reaches into Ray's private modules, because no public API says it.

`autoscaler_node_types`: the node types Ray's autoscaler may launch, with their resources and
max_count. The autoscaler publishes them in the GCS (`ray._private.state`); nothing public reads
them (`ray.cluster_resources()` counts only the nodes alive now). Without them a sweep cannot
tell a trial no node will ever hold from one waiting for a larger node to join, so it warns
instead of refusing. tests/test_ray_compat.py fails loudly if a Ray upgrade moves or renames
what this relies on.
"""

from __future__ import annotations


def autoscaler_node_types() -> list[dict[str, float]] | None:
    """Resources of each node type the autoscaler may launch (max_count != 0); None if Ray does not say."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - not connected, or Ray changed it (the test says which)
        return None
    if config is None or not config.node_group_configs:
        return None
    return [{k: float(v) for k, v in group.resources.items()} for group in config.node_group_configs
            if group.max_count != 0]
