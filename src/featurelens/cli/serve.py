"""Browse an atlas in a local web app: overview, feature pages, search, try your own text, steering, and
optionally a circuit, a neuron report, probe results and layer x layer maps beside it.

Serves the atlas's own data and the app's own assets (no CDN: works offline) on 127.0.0.1 unless --host
says otherwise. The model and dictionary the atlas was built from load on first use of "try your own
text" or the steering playground. The JSON API is described at /openapi.json.

examples:
  featurelens serve runs/demo/atlas.sqlite                 # then open http://127.0.0.1:8000
  featurelens serve runs/demo/atlas.sqlite --port 8080
  featurelens serve runs/demo/atlas.sqlite --host 0.0.0.0  # reachable from other machines (warned)
  featurelens serve runs/demo/atlas.sqlite --circuit runs/circuit   # plus the circuit view (#/circuit)
  featurelens serve runs/neurons.sqlite --neurons runs/neurons     # plus the neuron report (#/neurons)
  featurelens serve runs/neurons.sqlite --probe runs/probe         # plus probe results (#/probe)
  featurelens serve runs/neurons.sqlite --probe runs/probe-l1 --probe runs/probe-l2   # several
  featurelens serve runs/demo/atlas.sqlite --compare runs/compare   # plus layer x layer maps (#/compare)
"""

from __future__ import annotations

import argparse
import ipaddress
import socket

from rich.console import Console

from featurelens.errors import FeatureLensError

HELP = (
    "browse an atlas in a local web app (search, feature pages, try text, steer, circuits, neurons, probes, "
    "layer maps)"
)


class ServeError(FeatureLensError):
    """A port or host the server cannot use."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("atlas", help="atlas file written by `featurelens atlas`")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--model", help="model for live text and steering (default: the atlas's)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument(
        "--circuit", help="also show this circuit (a `featurelens circuit` folder or circuit.json)"
    )
    parser.add_argument(
        "--neurons",
        help="also show this neuron report (a `featurelens neurons` folder), units linked to "
        "the atlas's pages when it is a neuron atlas of their hook",
    )
    parser.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="FOLDER",
        help="also show these probe results (a `featurelens probe` folder; repeat for several), units "
        "linked to the atlas's pages when it maps their hook (neurons) or dictionary (features)",
    )
    parser.add_argument(
        "--compare",
        metavar="FOLDER",
        help="also show these layer x layer similarity maps (a `featurelens compare` folder)",
    )


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def check_port(port: int) -> None:
    """Refuse a ``--port`` no TCP socket can bind."""
    if not 0 < port < 65536:
        raise ServeError(f"--port must be between 1 and 65535, got {port}")


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from featurelens.serve import create_app

    check_port(args.port)
    console = Console(stderr=True)
    app = create_app(
        args.atlas,
        model=args.model,
        device=args.device,
        circuit=args.circuit,
        neurons=args.neurons,
        probes=args.probe,
        compare=args.compare,
    )
    if not is_loopback(args.host):
        console.print(
            f"[bold red]warning:[/] binding {args.host}: anyone who can reach this machine can use the app"
        )
    with socket.socket() as probe:
        if probe.connect_ex((args.host if args.host != "0.0.0.0" else "127.0.0.1", args.port)) == 0:
            raise ServeError(f"port {args.port} is already in use on {args.host}; pick another with --port")
    console.print(f"serving {args.atlas} at http://{args.host}:{args.port}  (Ctrl-C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
