"""The xDS server: Aggregated Discovery Service (SotW and Delta) for Envoy sidecars and proxyless gRPC.

Layout (transport never builds config):
- `server`: the gRPC facade; hands each stream to `sotw` or `delta`;
- `sotw`, `delta`: one stream's protocol (requests, nonces, ACK/NACK, responses);
- `connection`: per-connection state and the pure `should_respond` decisions;
- `service`: the connections, the push pipeline (`pushqueue`) and proxy status;
- `generators`: one module per xDS type, in a table keyed by type URL; `cache` shares their output;
- `metrics`: the Prometheus metrics of the package.
"""
