"""``wbc-counter serve [--host H] [--port P] [--data-dir D]``: the review page as a local web server.

Binds 127.0.0.1 by default: reviewers on this machine log in with their name.
Any other address (the LAN) needs per-user tokens: create one with
``wbc-counter serve --add-user NAME`` (printed once, kept hashed in
``<data-dir>/review_users``, mode 0600); without any, the server refuses to
start. Once listening it prints one line, ``review page: http://HOST:PORT/``,
on stdout (with ``--port 0`` the port is the one the system picked).
"""

from __future__ import annotations

import logging
import socket
import sys

from edge_app import paths
from edge_app.config import load_config

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8039


def add_parser(sub):
    p = sub.add_parser("serve", help="serve the review and sign-off page (web, 127.0.0.1 by default)",
                       description="Review and sign counts in a browser. Binding to a non-loopback address "
                                   "needs per-user tokens (--add-user NAME).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need logins)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 = any free)")
    p.add_argument("--add-user", metavar="NAME", default=None,
                   help="create (or renew) the login token of a reviewer, print it once and exit")
    return p


def main(args) -> int:
    from edge_app.review.auth import AuthError, Users, is_loopback

    cfg = load_config(args.config)
    users = Users(paths.review_users_path(args.data_dir))
    try:
        if args.add_user is not None:
            token = users.add(args.add_user)
            print(f"review token for {args.add_user} (shown once; it is stored hashed in {users.path}):")
            print(token)
            return 0
        loopback = is_loopback(args.host)
        if not loopback and not users.load():
            print(f"wbc-counter serve: refusing to serve {args.host}: the network needs per-user logins and "
                  f"{users.path} has none; create one with 'wbc-counter serve --add-user NAME' "
                  "(or serve 127.0.0.1 only)", file=sys.stderr)
            return 2
    except AuthError as exc:
        print(f"wbc-counter serve: error: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"wbc-counter serve: error: port {args.port} is not 0-65535", file=sys.stderr)
        return 2
    if not paths.db_path(args.data_dir).is_file():
        print(f"wbc-counter serve: error: no database at {paths.db_path(args.data_dir)} "
              "(pass the --data-dir used by 'run')", file=sys.stderr)
        return 2

    import uvicorn

    from edge_app.review.web import ReviewApp

    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(128)  # connections made once the line below is printed wait for uvicorn, not refused
    except OSError as exc:
        print(f"wbc-counter serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
              "(another program on that port? pick one with --port)", file=sys.stderr)
        return 2
    app = ReviewApp(args.data_dir, require_token=not loopback, cfg=cfg).asgi()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"review page: http://{shown}:{port}/" + ("" if loopback else "  (per-user logins required)"),
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           proxy_headers=False, server_header=False))
    server.run(sockets=[sock])
    return 0
