"""A local web page and HTTP API for a trained EfficientNet (DESCRIPTION is what --help tells users). Uploads are
decoded in a pool of threads and scored in batches by the one thread that owns the model (batch_worker.py), so
the event loop never waits for either. The server itself is web_service.py; FastAPI and uvicorn are imported
once the flags are read and the model is open."""
import argparse
import functools
import math
import socket
import sys
from typing import Any

from effnet.command_line import ArgumentParser, UsageError, report
from effnet.model_flags import add_model_flags, add_precision_flag, classifier_from_flags
from effnet.run_files import newest_checkpoint

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MiB = 2**20


DESCRIPTION = """Serve a trained EfficientNet as a web page and an HTTP API on this machine: drop photos on the
page to see their top classes and where the network looked (Grad-CAM). By default it serves the best.pth of
the newest run in runs/ on http://127.0.0.1:8000.

    python app.py                                    # then open http://127.0.0.1:8000
    python app.py --weights runs/20261128-101500-b0/best.pth --port 8080
    python app.py --host 0.0.0.0                     # let other machines in: anyone who reaches it
    curl -F file=@rose.jpg -F file=@tulip.jpg "http://127.0.0.1:8000/predict?top_k=3"

POST /predict and POST /gradcam take photos as multipart field "file"; GET /model describes the model;
GET /health answers 200 while the model can answer; /docs documents the API. Errors come back as JSON
{"error": "..."} with a 4xx status. Ctrl-C stops the server.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=DESCRIPTION)
    model = parser.add_argument_group("model")
    prediction = parser.add_argument_group("prediction")
    add_model_flags(model, "serve", tta_group=prediction)
    add_precision_flag(model)
    add = prediction.add_argument
    add("--top-k", type=int, default=5, help="classes per photo when a request does not say (default 5)")
    add("--max-batch", type=int, default=32, help="most photos the model runs at once (default 32)")
    add("--batch-wait-ms", type=float, default=0,
        help="how long a photo that finds the model idle waits for others to share its batch (default 0: it runs "
             "at once, and the photos that arrive meanwhile form the next batch, which measured fastest)")
    add = parser.add_argument_group("server").add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                            "0.0.0.0 lets other machines in)")
    add("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    add("--max-upload-mb", type=float, default=50, help="largest request body, all files together (default 50)")
    add("--max-files", type=int, default=32, help="most photos in one request (default 32)")
    add("--log-level", default="info", choices=("warning", "info", "debug"),
        help="server log: info shows every request (default info)")
    return parser


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the numbers given, if anything."""
    for flag in ("top_k", "max_files", "max_batch"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be at least 1"
    if not 0 <= args.port <= 65535:
        return f"--port {args.port}: choose a port from 0 to 65535"
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb * MiB >= 1):
        return f"--max-upload-mb {args.max_upload_mb}: give a size in MiB of at least one byte"
    if not (math.isfinite(args.batch_wait_ms) and args.batch_wait_ms >= 0):
        return f"--batch-wait-ms {args.batch_wait_ms}: give a wait of 0 ms or more"
    return None


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, before the slow model loading, so a busy port is reported at once."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise UsageError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --port "
                         f"or --host") from None
    sock.listen(128)
    return sock


def serve(args: argparse.Namespace, sock: socket.socket, classifier: Any) -> None:
    """Serve `classifier` on the bound socket until Ctrl-C or SIGTERM."""
    import uvicorn

    from effnet.inference.web_service import Limits, Service, create_app

    limits = Limits(int(args.max_upload_mb * MiB), args.max_files, args.top_k)
    open_torch = functools.partial(classifier_from_flags, args, backend="torch")  # for Grad-CAM, on first use
    service = Service(classifier, open_torch, limits, args.max_batch, args.batch_wait_ms / 1000)
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"Serving {classifier.backend.origin} ({len(classifier.class_names)} classes, {classifier.backend.name}) "
          f"on http://{url_host}:{port}/ ; Ctrl-C stops", flush=True)
    if args.host not in LOOPBACK:
        print(f"note: listening on {args.host}: anyone who can reach this machine can use the model", flush=True)
    uvicorn.Server(uvicorn.Config(create_app(service), log_level=args.log_level)).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_arguments(args)
    if problem:
        return report(problem)
    try:
        sock = listening_socket(args.host, args.port)
        args.weights = args.weights if args.weights is not None else newest_checkpoint()
        classifier = classifier_from_flags(args, precision=args.precision)
    except (UsageError, ValueError, RuntimeError) as error:  # WeightsError is a ValueError
        return report(str(error))
    except KeyboardInterrupt:
        return report("interrupted while the model was loading; the server did not start", status=130)
    try:
        serve(args, sock, classifier)
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises the signal again once it is done
        return report("interrupted: the server has shut down", status=130)
    return 0


def __getattr__(name: str) -> Any:
    """The service's parts (app.Service, app.Limits, app.create_app, ...), for scripts written when they lived
    here."""
    if name.startswith("__"):  # what tools probe modules for: no reason to import FastAPI
        raise AttributeError(name)
    from effnet.inference import web_service

    return getattr(web_service, name)


if __name__ == "__main__":
    sys.exit(main())
