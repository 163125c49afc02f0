#!/usr/bin/env python3
"""Opens N keep-alive connections to HOST:PORT, sends one GET on each and reads the answer,
then holds them all open until killed. Prints 'holding N' once every connection is up.
Used by compare.sh to measure proxy memory per open connection."""
import asyncio
import sys


async def one(host, port, request, conns, errors):
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        conns.append(writer)
    except Exception:  # noqa: BLE001 - counted and reported
        errors.append(1)


async def main():
    n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    conns, errors = [], []
    batch = 250
    for start in range(0, n, batch):
        await asyncio.gather(*(one(host, port, request, conns, errors) for _ in range(min(batch, n - start))))
    print(f"holding {len(conns)} errors {len(errors)}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
