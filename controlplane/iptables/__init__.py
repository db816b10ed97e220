"""`meshplane iptables`: a pod's traffic capture (Istio's `istio-iptables`, run by the `istio-init` container).

`rules` turns the flags into the nat rules (pure), `apply` installs and removes them with iptables-restore in the
current network namespace, `cmd` is the subcommand.
"""
