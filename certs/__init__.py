"""The mesh certificate authority and meshplane's own serving certificate.

- `authority`: an immutable signer (`Authority`) and how it issues and rotates certificates;
- `keystore` / `kubestore`: where key material lives (state dir, `cacerts/`, Kubernetes Secrets);
- `ca`: the current authority, shared by everything that signs or serves, with change listeners;
- `signing`: CSR, TTL and identity rules; `authenticate/`: one authenticator per module;
- `service`: the gRPC `IstioCertificateService`; `metrics`: Istio's `citadel_server_*` metrics;
- `rotation`: root and serving-certificate rotation; `rootdist`: trust-bundle distribution;
- `serving`: the TLS certificate of the webhook and the secure gRPC server;
- `runtime`: assembles all of the above for `meshplane serve`; `tokencmd`: `meshplane token`.
"""
