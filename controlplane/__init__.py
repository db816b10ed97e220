"""meshplane's process: settings, model, config sources, push orchestration, CLI."""

import os

__version__ = "0.1.0"

# meshplane starts children only with fork+exec (Envoy, CA signing workers, the demo's processes) and
# never uses gRPC in a forked child. gRPC's fork support would restart its poller in the child between
# fork and exec, where it can abort on the epoll descriptor that close_fds just closed (grpc/grpc#43055),
# killing the child before it runs. Read by gRPC when it initializes, so it is set before any import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
