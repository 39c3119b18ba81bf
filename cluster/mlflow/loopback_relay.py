"""Relay 127.0.0.1:PORT on this node to the MLflow server on the node's private address.

On a Ray head VM, MLflow listens only on the private address (so workers reach it and the
internet does not), while Ray's own SSH tunnels (`ray exec/attach --port-forward`) end at
127.0.0.1 on the head. This relay joins the two for the lifetime of one tunnel session;
cluster/tunnel.sh runs it. Standard library only; stops on Ctrl-C or when the SSH session ends.

    python loopback_relay.py [--listen-port 5000] [--target HOST:PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import socket


def private_address() -> str:
    """The address this node uses for outbound traffic (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        return s.getsockname()[0]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def serve(listen_port: int, target_host: str, target_port: int) -> asyncio.base_events.Server:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    return await asyncio.start_server(handle, host="127.0.0.1", port=listen_port)


async def main(listen_port: int, target: str) -> None:
    host, _, port = target.rpartition(":")
    server = await serve(listen_port, host, int(port))
    print(f"relaying 127.0.0.1:{listen_port} -> {host}:{port} (Ctrl-C to stop)", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-port", type=int, default=5000)
    parser.add_argument(
        "--target",
        default=None,
        help="HOST:PORT of the MLflow server (default: this node's private address, port 5000)",
    )
    args = parser.parse_args()
    try:
        asyncio.run(main(args.listen_port, args.target or f"{private_address()}:5000"))
    except KeyboardInterrupt:
        pass
