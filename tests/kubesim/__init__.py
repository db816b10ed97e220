"""kubesim: a Kubernetes API server emulator for tests (never shipped).

`tests.kubesim.server.KubeSim` runs in-process; `python -m tests.kubesim --port N
--kubeconfig-out FILE` runs it standalone. Fixtures live in `tests.kubesim.fixtures`.
"""
