"""Operator commands that read the cluster: `analyze`, `injector list`, `check-inject` (and `tag`).

Layering inside the package: `cluster` reads the API server once into a `ClusterState` (plain
data); `matcher` decides which injection webhooks fire for a pod and whether their revision's
injector adds a sidecar (pure); each command module turns that into output; `common` holds the
connection flags, the one-line error handling and table formatting they share.
"""
