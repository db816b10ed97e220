"""meshplane token: mint a local-mode token for a workload identity (stand-in for a projected
service-account token, audience istio-ca). Prints the token on stdout.

The token is signed with STATE_DIR/token-key.pem, the key that meshplane serve --state-dir STATE_DIR
creates when it starts in local mode; point both at the same state dir. Without that key the
command refuses (a token signed with any other key would be refused by the server).
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any

from certs.authenticate.localtoken import (
    AUDIENCE,
    DEFAULT_TTL,
    KEY_FILE,
    check_claims,
    load_or_create_key,
    mint,
    parse_duration,
)
from certs.authority import KeyMaterialError
from controlplane.settings import Settings, SettingsError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "token",
        help="mint a local-mode token for a namespace/service account (audience istio-ca)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--namespace", required=True, help="the workload's namespace")
    p.add_argument("--service-account", required=True, help="the workload's service account")
    p.add_argument("--ttl", default="1h", help="lifetime: seconds or 90s, 15m, 1h, 1h30m [default 1h]")
    state_default = os.environ.get("MESHPLANE_STATE_DIR", str(Settings().state_dir))
    p.add_argument(
        "--state-dir",
        default=state_default,
        help=f"meshplane serve's state dir (token-key.pem) [env MESHPLANE_STATE_DIR; default {state_default!r}]",
    )
    p.add_argument("--audience", default=AUDIENCE, help=f"token audience [default {AUDIENCE}]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print a token; SettingsError (exit 2) names the bad flag or key file."""
    try:
        ttl = parse_duration(args.ttl, field="--ttl") if args.ttl else DEFAULT_TTL
        check_claims(namespace=args.namespace, service_account=args.service_account, ttl=ttl)
        state_dir = pathlib.Path(args.state_dir)
        if not (state_dir / KEY_FILE).is_file():
            raise SettingsError(
                f"--state-dir: {state_dir.resolve()} has no {KEY_FILE}, so no server would accept the token; start "
                "`meshplane serve --config-dir DIR` first, and pass the --state-dir it uses"
            )
        key = load_or_create_key(state_dir)
        token = mint(
            key=key, namespace=args.namespace, service_account=args.service_account, ttl=ttl, audience=args.audience
        )
    except (ValueError, KeyMaterialError) as exc:
        raise SettingsError(str(exc)) from None
    print(token)
    return 0
