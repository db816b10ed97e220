#!/bin/sh
# Entrypoint of the proxyv2 image: Istio's container arguments, run by meshplane.
#   proxy ARGS...           -> meshplane agent proxy ARGS...   (the istio-proxy container)
#   istio-iptables ARGS...  -> meshplane iptables ARGS...      (the istio-init container)
#   pilot-agent ARGS...     -> meshplane agent ARGS...         (Istio's commands: `pilot-agent request ...`)
#   anything else           -> run as given (e.g. `envoy --version`, `meshplane version`)
set -eu
if [ "$#" -eq 0 ]; then
    echo "usage: proxy ARGS... | istio-iptables ARGS... | pilot-agent ARGS... | COMMAND ARGS..." >&2
    exit 2
fi
case "$1" in
    proxy) exec meshplane agent "$@" ;;
    istio-iptables) shift; exec meshplane iptables "$@" ;;
    pilot-agent) shift; exec meshplane agent "$@" ;;
    *) exec "$@" ;;
esac
