#!/usr/bin/env python3
"""stub-listener.py - a do-nothing vfio-user endpoint for checking the QEMU side of the e2e setup.

Listens on a unix socket, accepts one client at a time, decodes and prints each vfio-user
message header it receives (and the VERSION payload), and then, by --mode:
  silent  never replies (QEMU gives up after its x-msg-timeout, 5 s by default)
  close   closes the connection after the first message
Runs until killed, or for --seconds. Not a server: the real one lives in server/.
"""
import argparse
import os
import socket
import struct
import sys
import time

HDR = struct.Struct("<HHIII")  # msg_id, command, msg_size, flags, error_no


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("socket")
    ap.add_argument("--mode", choices=["silent", "close"], default="silent")
    ap.add_argument("--seconds", type=float, default=60.0)
    a = ap.parse_args()
    if os.path.exists(a.socket):
        os.unlink(a.socket)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(a.socket)
    srv.listen(1)
    deadline = time.monotonic() + a.seconds
    print(f"stub-listener: listening on {a.socket} ({a.mode})", flush=True)
    try:
        while time.monotonic() < deadline:
            srv.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                break
            print("stub-listener: client connected", flush=True)
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while True:
                    hdr = conn.recv(HDR.size, socket.MSG_WAITALL)
                    if len(hdr) < HDR.size:
                        print("stub-listener: client closed", flush=True)
                        break
                    msg_id, cmd, size, flags, err = HDR.unpack(hdr)
                    body = conn.recv(size - HDR.size, socket.MSG_WAITALL) if size > HDR.size else b""
                    print(f"stub-listener: msg id={msg_id} cmd={cmd} size={size} flags={flags:#x}", flush=True)
                    if cmd == 1 and len(body) >= 4:
                        major, minor = struct.unpack_from("<HH", body)
                        caps = body[4:].split(b"\0", 1)[0].decode(errors="replace")
                        print(f"stub-listener: VERSION {major}.{minor} {caps}", flush=True)
                    if a.mode == "close":
                        break
            except socket.timeout:
                pass
            conn.close()
    finally:
        srv.close()
        if os.path.exists(a.socket):
            os.unlink(a.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
