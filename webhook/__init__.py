"""Sidecar injection: policy, template, JSON patch, and the admission webhook over HTTPS.

Layers, top to bottom: `app` (aiohttp: body, content type, metrics) → `review` (AdmissionReview
in, AdmissionReview out) → `service.Injector` (policy, namespace checks, config) → `inject`
(the pure `inject_pod`, shared with `meshplane inject`).
"""
