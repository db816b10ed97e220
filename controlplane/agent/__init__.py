"""The sidecar agent (`meshplane agent`): certificates, SDS, Envoy bootstrap and lifecycle, probes."""
