#!/usr/bin/env python3
"""Writes the seed corpus of session_fuzzer into tests/fuzz/corpus/.

Each seed is: one mode byte (see session_fuzzer.cc: bit 0 = send a valid VERSION first,
bit 1 = attach a memfd, bit 2 = attach an eventfd, bit 3 = chunked delivery (then one
chunk-size byte), bit 4 = EOF at the end, bit 5 = read budget 1, bit 6 = enable bus mastering, bit 7 = slow reader)
followed by the raw client byte stream (vfio-user messages, host = little endian).

Seeds for client_reply_fuzzer go to client_corpus/ next to the output directory.

Usage: tests/fuzz/make_corpus.py [output-dir]
"""
import os
import struct
import sys

QEMU_VERSION_JSON = (
    b'{"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1048576, "pgsizes": '
    b'4096, "max_dma_maps": 65535, "migration": {"pgsize": 4096, "max_bitmap_size": '
    b'268435456}, "write_multiple": true}}\0')

VERSION, DMA_MAP, DMA_UNMAP, GET_INFO, REGION_INFO = 1, 2, 3, 4, 5
IRQ_INFO, SET_IRQS, REGION_READ, REGION_WRITE, RESET, WRITE_MULTI = 7, 8, 9, 10, 13, 15
NO_REPLY = 0x10
CONFIG = 7


def msg(msg_id, command, payload=b"", flags=0):
    return struct.pack("<HHII I", msg_id, command, 16 + len(payload), flags, 0) + payload


def region_access(region, offset, count, data=b""):
    return struct.pack("<QII", offset, region, count) + data


SEEDS = {
    # QEMU's exact VERSION request (214 bytes), no pre-negotiation.
    "version_qemu": bytes([0x00]) + msg(1, VERSION, struct.pack("<HH", 0, 0) + QEMU_VERSION_JSON),
    # The same, delivered 7 bytes at a time, then EOF.
    "version_chunked_eof": bytes([0x18, 6]) +
        msg(1, VERSION, struct.pack("<HH", 0, 0) + b'{"capabilities":{"max_msg_fds":1}}\0'),
    # DMA_MAP without an fd (message-based DMA region), then its DMA_UNMAP.
    "dma_map_no_fd": bytes([0x01]) +
        msg(1, DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x100000, 0x1000)) +
        msg(2, DMA_UNMAP, struct.pack("<IIQQ", 24, 0, 0x100000, 0x1000)),
    # DMA_MAP with the harness's memfd attached, bus mastering on, then a DMA sum through BAR0.
    "dma_map_memfd_sum": bytes([0x43]) +
        msg(1, DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x100000, 0x10000)) +
        msg(2, REGION_WRITE, region_access(0, 0x10, 4, struct.pack("<I", 0x100000))) +
        msg(3, REGION_WRITE, region_access(0, 0x18, 4, struct.pack("<I", 64))) +
        msg(4, REGION_WRITE, region_access(0, 0x1c, 4, struct.pack("<I", 1))) +
        msg(5, REGION_READ, region_access(0, 0x24, 4)),
    # Bus mastering on, memfd mapped, DMA fill of guest memory with SCRATCH, then DMA_UNMAP ALL.
    "dma_fill_unmap_all": bytes([0x43]) +
        msg(1, DMA_MAP, struct.pack("<IIQQQ", 32, 3, 0, 0x0, 0x10000)) +
        msg(2, REGION_WRITE, region_access(0, 0x04, 4, struct.pack("<I", 0xa5))) +
        msg(3, REGION_WRITE, region_access(0, 0x18, 4, struct.pack("<I", 32))) +
        msg(4, REGION_WRITE, region_access(0, 0x1c, 4, struct.pack("<I", 2))) +
        msg(5, DMA_UNMAP, struct.pack("<IIQQ", 24, 2, 0, 0)),
    # Regression: a zero-length DMA fill (memset on the null data of an empty buffer, UBSan).
    "dma_fill_zero_len": bytes([0x41]) +
        msg(1, REGION_WRITE, region_access(0, 0x1c, 4, struct.pack("<I", 2))),
    # Slow reader: replies (one with BAR2's fd) queue up behind a tiny socket buffer.
    "slow_reader": bytes([0x81]) +
        msg(1, REGION_INFO, struct.pack("<IIIIQQ", 64, 0, 2, 0, 0, 0)) +
        msg(2, REGION_READ, region_access(2, 0, 4096)) +
        msg(3, REGION_READ, region_access(CONFIG, 0, 256)) +
        msg(4, REGION_READ, region_access(2, 0, 4096)),
    # REGION_READ of BAR0's MAGIC, and of the whole config space.
    "region_read_magic": bytes([0x01]) + msg(1, REGION_READ, region_access(0, 0, 4)),
    "region_read_config": bytes([0x01]) + msg(1, REGION_READ, region_access(CONFIG, 0, 256)),
    # A posted (NO_REPLY) write of SCRATCH followed by a read.
    "posted_write": bytes([0x21]) +
        msg(1, REGION_WRITE, region_access(0, 4, 4, struct.pack("<I", 0x5a)), NO_REPLY) +
        msg(2, REGION_READ, region_access(0, 4, 4)),
    # GET_INFO, REGION_INFO of BAR2 with QEMU's short argsz, IRQ_INFO of INTx.
    "info_queries": bytes([0x01]) +
        msg(1, GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)) +
        msg(2, REGION_INFO, struct.pack("<IIIIQQ", 32, 0, 2, 0, 0, 0)) +
        msg(3, IRQ_INFO, struct.pack("<IIII", 16, 0, 0, 0)),
    # SET_IRQS assigning the harness's eventfd to INTx, then raising INTx, unmask, reset.
    "set_irqs_eventfd": bytes([0x05]) +
        msg(1, SET_IRQS, struct.pack("<IIIII", 20, 0x24, 0, 0, 1)) +
        msg(2, REGION_WRITE, region_access(0, 8, 4, struct.pack("<I", 1))) +
        msg(3, SET_IRQS, struct.pack("<IIIII", 20, 0x11, 0, 0, 1)) +
        msg(4, RESET),
    # REGION_WRITE_MULTI with two entries.
    "write_multi": bytes([0x01]) +
        msg(1, WRITE_MULTI, struct.pack("<Q", 2) +
            struct.pack("<QII", 4, 0, 4) + struct.pack("<I", 7) + bytes(4) +
            struct.pack("<QII", 4, CONFIG, 2) + struct.pack("<H", 6) + bytes(6)),
}


# client_reply_fuzzer: one plan byte (which client calls run; with bit 7 the next byte times 4 is
# the offset where a memfd rides along), then the server's byte stream after its VERSION reply
# (client msg_ids start at 2).
REPLY, ERROR = 0x1, 0x20


def reply(msg_id, command, payload=b"", error=0):
    flags = REPLY | (ERROR if error else 0)
    return struct.pack("<HHIII", msg_id, command, 16 + len(payload), flags, error) + payload


def region_info(index, argsz, flags, size, caps=b"", cap_offset=0):
    return struct.pack("<IIIIQQ", argsz, flags, index, cap_offset, size, 0) + caps


SPARSE = struct.pack("<HHIII", 1, 1, 0, 1, 0) + struct.pack("<QQ", 0, 4096)

CLIENT_SEEDS = {
    # Six REGION_READs of MAGIC answered one by one.
    "region_read_replies": bytes([0x00]) + b"".join(
        reply(i, REGION_READ, region_access(0, 0, 4, struct.pack("<I", 0x56465553)))
        for i in range(2, 8)),
    # An error reply, then a reply with too much data, then one split from the next.
    "region_read_odd": bytes([0x00]) + reply(2, REGION_READ, error=22) +
        reply(3, REGION_READ, region_access(0, 0, 8, bytes(8))) +
        reply(4, REGION_READ, region_access(0, 0, 4, bytes(4))),
    # REGION_INFO of BAR2: truncated (argsz 64), then the full reply with the sparse-mmap cap and
    # the memfd attached (plan bit 7; low bits 3: the first call is GetRegionInfo(2)).
    # The next byte (12) puts the memfd on byte 48: the start of the second reply.
    "region_info_sparse_fd": bytes([0x83, 12]) +
        reply(2, REGION_INFO, region_info(2, 64, 3, 4096)) +
        reply(3, REGION_INFO, region_info(2, 64, 0xf, 4096, SPARSE, 32)),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} seeds to {out}")
    client_out = os.path.join(os.path.dirname(out.rstrip("/")) or ".", "client_corpus")
    os.makedirs(client_out, exist_ok=True)
    for name, data in CLIENT_SEEDS.items():
        with open(os.path.join(client_out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(CLIENT_SEEDS)} seeds to {client_out}")


if __name__ == "__main__":
    main()
