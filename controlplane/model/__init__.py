"""The control plane's view of the world: raw config objects and the typed model built from them.

Nothing here imports the jobs (webhook, discovery, certs) or talks to Kubernetes; config sources
feed `ConfigStore`, and everything else reads from it or subscribes to its change events.
"""
