"""The only package that talks to the Kubernetes API server (through kubernetes-asyncio).

`client` loads the kubeconfig or in-cluster config and sends raw JSON requests; `watching` is the
list-then-watch loop stack; `source` mirrors watched kinds into the ConfigStore.
"""
