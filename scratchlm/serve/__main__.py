"""``python -m scratchlm.serve --model DIR``: serve a generator and/or classifier over HTTP (Chapter 13).

Binds to 127.0.0.1 unless ``--host`` says otherwise (and warns when it does: there is no
authentication). ``--port 0`` picks a free port; the first line printed is ``listening on URL``.
"""

from __future__ import annotations

import argparse
import sys

import torch
import uvicorn

from .app import ServeLimits, create_app
from .bundle import load_bundle
from .runner import LOOPBACK, bound_port, is_loopback, uvicorn_config


class _AnnouncingServer(uvicorn.Server):
    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            host = self.config.host
            print(f"listening on http://{host}:{bound_port(self)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    d = ServeLimits()
    p = argparse.ArgumentParser(prog="python -m scratchlm.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="serving directory (see scratchlm.serve.bundle)")
    p.add_argument("--host", default=LOOPBACK, help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight)
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    p.add_argument("--max-classify-texts", type=int, default=d.max_classify_texts)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (slow start on a CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (temperature > 0)")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    if not is_loopback(args.host):
        print(f"warning: binding to {args.host} exposes this server beyond this machine; it has no "
              "authentication and no TLS", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    limits = ServeLimits(max_body_bytes=args.max_body_bytes, max_prompt_chars=args.max_prompt_chars,
                         max_new_tokens=args.max_new_tokens, max_in_flight=args.max_in_flight,
                         max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                         max_classify_texts=args.max_classify_texts)
    try:
        bundle = load_bundle(args.model)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    app = create_app(bundle, limits, compile=args.compile, seed=args.seed)
    _AnnouncingServer(uvicorn_config(app, args.host, args.port, args.log_level)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
