"""Istio's built-in injection templates (`sidecar`, `gateway`, `grpc-simple`, `grpc-agent`) as data.

Each `<name>.yaml` is a Jinja2 template rendered by `webhook.templates`; the chart ships copies of
these files in the injector ConfigMap (`charts/istiod/files/`), kept identical by a test.
"""
