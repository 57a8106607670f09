"""Real collectors for tests: nfcapd on a free loopback port, softflowd reading a pcap, a fictional IPFIX file."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

NFDUMP_TOOLS = ("nfdump", "nfpcapd", "nfcapd")


def _program(name: str) -> str | None:
    """A program on PATH, or in /usr/sbin where Debian puts softflowd (not on every user's PATH)."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def _ipfix_message(sets: list[bytes], sequence: int = 0, domain: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), 1_561_420_800, sequence, domain) + body


def _ipfix_set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


_FLOW_TEMPLATE = [(8, 4), (12, 4), (152, 8), (153, 8), (1, 8), (2, 8), (7, 2), (11, 2), (4, 1), (6, 1), (56, 6),
                  (57, 6)]


def nfpcapd_files(pcap: Path, directory: Path) -> Path:
    """`nfpcapd -r` of a pcap file into `directory`: the nfcapd files Debian's nfdump writes from it (skips
    without nfdump)."""
    if any(_program(p) is None for p in NFDUMP_TOOLS):
        pytest.skip("needs nfdump, nfpcapd (Debian package nfdump; .ci/run installs it)")
    subprocess.run(["nfpcapd", "-r", str(pcap), "-w", str(directory)], capture_output=True, check=True, timeout=120)
    return directory


def skip_without(*programs: str):
    missing = [p for p in programs if _program(p) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (Debian packages nfdump, "
                                                    f"softflowd, libfixbuf-tools; .ci/run installs them)")


def fictional_ipfix_file(flows: int = 3) -> bytes:
    """FICTIONAL: a softflowd-like file with a sampling options record (1 in 10) and `flows` flows."""
    template = struct.pack("!HH", 1024, len(_FLOW_TEMPLATE)) + b"".join(struct.pack("!HH", *f) for f in _FLOW_TEMPLATE)
    options_template = struct.pack("!HHH", 256, 3, 1) + struct.pack("!HHHHHH", 143, 4, 305, 4, 306, 4)
    start = _ms("2019-06-25 08:00:00")
    records = b"".join(
        struct.pack("!4s4sQQQQHHBB6s6s", bytes([192, 168, 1, 20]), bytes([47, 74, 1, i]), start + i * 1000,
                    start + i * 1000 + 500, 100 * (i + 1), i + 1, 40000 + i, 443, 6, 0x1B,
                    bytes.fromhex("7811dc55764c"), bytes.fromhex("38d5470c25d4"))
        for i in range(flows))
    first = _ipfix_message([_ipfix_set(2, template), _ipfix_set(3, options_template),
                            _ipfix_set(256, struct.pack("!III", 7, 1, 9))])
    return first + _ipfix_message([_ipfix_set(1024, records)], sequence=1)


class Nfcapd:
    """nfcapd on a free loopback port, writing into a directory; stopped (files closed) on exit."""

    def __init__(self, directory: Path, *extra: str):
        self.directory = directory
        self.extra = extra

    def __enter__(self) -> Nfcapd:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = open(self.directory.parent / f"{self.directory.name}.log", "w+")
        self.process = subprocess.Popen(["nfcapd", "-p", str(self.port), "-b", "127.0.0.1", "-w", str(self.directory),
                                         *self.extra], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "Startup" not in Path(self.log.name).read_text():
            assert self.process.poll() is None and time.monotonic() < deadline, Path(self.log.name).read_text()
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # the last datagrams in the socket buffer
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)
        self.log.close()


def softflowd(pcap_path: Path, port: int, *extra: str) -> tuple[int, int, int]:
    """Run softflowd over a pcap file, exporting IPFIX to 127.0.0.1:port; (flows, records, packets) it reports.

    `-c none`: softflowd 1.1.0 reading a file with a control socket blocks in accept() forever.
    `-p` a file of its own beside the pcap: softflowd deletes its pid file when it exits (given
    /dev/null, as root, it deletes /dev/null).
    """
    pid_file = pcap_path.parent / f"softflowd-{port}.pid"
    out = subprocess.run([_program("softflowd"), "-d", "-r", str(pcap_path), "-v", "10", "-n", f"127.0.0.1:{port}",
                          "-A", "milli", "-T", "ether", "-c", "none", "-p", str(pid_file), *extra],
                         capture_output=True, text=True, timeout=120, check=True)
    report = out.stdout + out.stderr
    exported = re.search(r"Flows exported: (\d+) \((\d+) records\)", report)
    processed = re.search(r"Packets processed: (\d+)", report)
    assert exported and processed, report
    return int(exported[1]), int(exported[2]), int(processed[1])

