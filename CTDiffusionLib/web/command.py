"""`ctdiffusion view` (its flags: requests.ViewRequest): resolve the inputs (InputError, exit 2, before anything starts), then serve."""

from __future__ import annotations

import logging
import os
import sys

from CTDiffusionLib.errors import InputError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run_view(args: "ViewRequest") -> int:
    from CTDiffusionLib.web.sources import resolve_inputs

    inputs = resolve_inputs(args.folder, real=args.real, generated=args.generated, report=args.report,
                            profile=args.profile)
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a port number.", "Use a number from 1024 to 65535.")
    if args.cache < 1:
        raise InputError(f"--cache {args.cache} must be at least 1.", "Use e.g. --cache 3.")
    _check_port_free(args.host, args.port)
    for name in ("trame", "trame_client", "trame_server", "trame_rca", "trame_slicer", "wslink", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)  # their INFO level logs every template token
    if not os.environ.get("DISPLAY"):  # headless server: render offscreen through EGL instead of an X window
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    try:
        from CTDiffusionLib.web.app import serve
    except ImportError as exc:
        raise InputError(f"The viewer needs the web extra, which is not installed ({exc.name} is missing).",
                         "Install it with: pip install -c constraints.txt 'ctdiffusion[web]'.") from None
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this machine on port {args.port} can see "
              "these volumes and reports.", file=sys.stderr)
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host

    def announce(**_):
        print(f"CTDiffusion viewer: open http://{shown}:{args.port}/ (Ctrl+C stops it)", file=sys.stderr, flush=True)

    serve(inputs, host=args.host, port=args.port, cache_size=args.cache, on_ready=announce)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """A port another program listens on is one sentence here, not a traceback from deep inside the web server."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(f"--port {port} on {host} cannot be used ({exc.strerror or exc}).",
                             f"Another program (or another viewer) listens there: choose another --port, e.g. "
                             f"--port {port + 1 if port < 65535 else 8080}.") from None
