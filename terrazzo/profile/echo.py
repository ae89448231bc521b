"""The child end of the process↔process transfer measurement: receive, copy out, acknowledge.

Kept free of heavy imports: it starts in a fresh (spawned) interpreter, as the local backend's
workers do, and must be quick to start.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

PIPE, SHM, STOP = b"p", b"s", b"x"


def serve(conn: Connection, shm_name: str) -> None:
    """Pipe: the message itself is the payload. Shared memory: the message says how many bytes to copy out."""
    shm = SharedMemory(name=shm_name)
    try:
        while True:
            msg = conn.recv_bytes()
            tag, body = msg[:1], msg[1:]
            if tag == STOP:
                return
            if tag == SHM:
                n = int.from_bytes(body, "little")
                assert shm.buf is not None
                data = bytes(shm.buf[:n])
                assert len(data) == n
            conn.send_bytes(b"k")
    finally:
        shm.close()
