"""``topa serve``: the web demo: load a checkpoint and CLIP once and serve the Gradio page and ``/answer``."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
from pathlib import Path

from topa_plugin.commands import fail, positive_int
from topa_plugin.commands.ask import add_model_flags, load_asker

log = logging.getLogger("topa_plugin.serve")

LOOPBACK = "127.0.0.1"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a web page (and a gradio_client API) that answers questions about videos",
        description="Load a TOPA checkpoint and CLIP once and serve a Gradio page: upload a video, ask a question "
        "with options one per line (none: free generation), see the answer, the option scores and the sampled "
        "frames with their nearest textual frames. The same function is the API /answer for gradio_client.")
    add_model_flags(parser)  # the same as `topa ask`'s
    parser.add_argument("--host", default=LOOPBACK,
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the server)")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to bind (default %(default)s)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--auth", metavar="USER:PASSWORD|FILE",
                        help="USER:PASSWORD, or a file of USER:PASSWORD lines, required to use the page and API")
    parser.add_argument("--examples", metavar="DIR", help="folder of example videos (and an optional examples.jsonl of questions)")
    parser.add_argument("--max-upload-mb", type=positive_int, default=500, help="largest upload accepted, in MB (default %(default)s)")
    parser.add_argument("--max-duration-s", type=positive_int, default=3600,
                        help="longest video accepted, in seconds (default %(default)s)")
    parser.add_argument("--upload-retention-s", type=positive_int, default=900,
                        help="seconds an upload is kept (default %(default)s; a user may ask several questions about one video)")
    parser.set_defaults(func=run)


def read_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``--auth``: one ``USER:PASSWORD``, or a file of such lines (blank lines and ``#`` comments skipped)."""
    if value is None:
        return None
    path = Path(value)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else [value]
    where = f"--auth {value}" if not path.is_file() else f"--auth {path}"
    pairs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user or not password:
            at = f" line {number}" if path.is_file() else ""
            fail("serve", f"{where}{at}: expected USER:PASSWORD (or a file of such lines)")
        pairs.append((user, password))
    if not pairs:
        fail("serve", f"{where}: no USER:PASSWORD line")
    return pairs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Fail now, before the model loads, when ``host:port`` cannot be bound (in use, or not this machine's)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        fail("serve", f"--host {host} --port {port}: cannot listen there ({err.strerror or err})")


def _stop_on_sigterm() -> None:
    """Make SIGTERM stop the server as Ctrl-C does, so the upload folder is removed on the way out."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run(args) -> int:
    from topa_plugin.serve.app import build_app
    from topa_plugin.serve.examples import list_examples
    from topa_plugin.serve.uploads import MB, UploadLimits, upload_folder

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("topa_plugin").setLevel(logging.INFO)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # Gradio's telemetry and version check call out to its servers
    auth = read_auth(args.auth)
    check_port(args.host, args.port)
    examples = list_examples(args.examples) if args.examples else None
    if not is_loopback(args.host):
        log.warning("--host %s: the page and its API are reachable from other machines%s", args.host,
                    "" if auth else " by anyone (no --auth)")
    if args.share:
        log.warning("--share: opening a public gradio.live link; anyone with the link can use the model%s",
                    "" if auth else " (no --auth)")
    asker = load_asker(args)
    limits = UploadLimits(max_bytes=args.max_upload_mb * MB, max_duration_s=float(args.max_duration_s))
    _stop_on_sigterm()
    with upload_folder() as uploads:
        log.info("uploads go to %s (removed %d s after upload and when the server stops)", uploads, args.upload_retention_s)
        app = build_app(asker, limits, examples=examples, retention_s=args.upload_retention_s)
        host = f"[{args.host}]" if ":" in args.host else args.host
        log.info("serving on http://%s:%d/ (Ctrl-C stops it)", host, args.port)
        # quiet: Gradio's own banner tells CLI users to edit launch(); it still prints a --share link.
        # run_history off: Gradio's run page can send users' runs to a Hugging Face bucket; this server keeps nothing.
        app.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, quiet=not args.share,
                   max_file_size=limits.max_bytes, show_error=False, run_history=False)
    return 0
