"""`meshplane token`: mint a local-mode token for a workload identity (stand-in for a projected
service-account token, audience `istio-ca`). Prints the token on stdout.

The signing key is `<state-dir>/token-key.pem`, shared with `meshplane serve --state-dir` (created
by whichever runs first), so point both at the same state dir.
"""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any

from certs.authenticate.localtoken import AUDIENCE, DEFAULT_TTL, load_or_create_key, mint, parse_duration
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
        help=f"`meshplane serve`'s state dir (token-key.pem) [env MESHPLANE_STATE_DIR; default {state_default!r}]",
    )
    p.add_argument("--audience", default=AUDIENCE, help=f"token audience [default {AUDIENCE}]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print a token; SettingsError (exit 2) names the bad flag or key file."""
    try:
        ttl = parse_duration(args.ttl, field="--ttl") if args.ttl else DEFAULT_TTL
        key = load_or_create_key(pathlib.Path(args.state_dir))
        token = mint(
            key=key, namespace=args.namespace, service_account=args.service_account, ttl=ttl, audience=args.audience
        )
    except (ValueError, KeyMaterialError) as exc:
        raise SettingsError(str(exc)) from None
    print(token)
    return 0
