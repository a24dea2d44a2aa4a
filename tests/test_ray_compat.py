"""What fashion_tune.ray_compat relies on in Ray's private modules: fails loudly when an upgrade changes it."""

import inspect


def test_the_autoscaler_cluster_config_is_where_ray_compat_reads_it():
    from ray._private.state import state  # moved or renamed: update fashion_tune/ray_compat.py
    from ray.core.generated import autoscaler_pb2

    assert callable(state.get_cluster_config), "ray._private.state.state.get_cluster_config is gone"
    assert "ClusterConfig" in str(inspect.signature(state.get_cluster_config).return_annotation)
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.resources["CPU"] = 8
    group.max_count = 2
    assert dict(group.resources) == {"CPU": 8} and group.max_count == 2


def test_autoscaler_node_types_reads_the_published_groups(monkeypatch):
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    from fashion_tune.ray_compat import autoscaler_node_types

    config = autoscaler_pb2.ClusterConfig()
    for cpus, max_count in ((8, 2), (64, 0)):
        group = config.node_group_configs.add()
        group.resources["CPU"] = cpus
        group.max_count = max_count
    monkeypatch.setattr(state, "get_cluster_config", lambda: config)
    assert autoscaler_node_types() == [{"CPU": 8.0}]  # a type it may launch none of does not count
    monkeypatch.setattr(state, "get_cluster_config", lambda: None)
    assert autoscaler_node_types() is None

