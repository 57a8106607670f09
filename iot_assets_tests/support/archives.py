"""What any reader could recover from damaged archive bytes, independent of the decoder."""

import tarfile
import zlib


def complete_lines_in_readable_prefix(gz_bytes: bytes) -> int:
    """Lines of the JSON member that zlib can inflate in full from damaged bytes, up to the byte
    where it detects the damage (independent of the decoder: what any reader could recover)."""
    inflater = zlib.decompressobj(wbits=31)
    out = bytearray()
    step = 4096
    position = 0
    while position < len(gz_bytes):
        saved = inflater.copy()
        try:
            out += inflater.decompress(gz_bytes[position : position + step])
            position += step
        except zlib.error:
            if step == 1:
                break
            inflater, step = saved, 1  # again from the last good point, a byte at a time
    member = tarfile.TarInfo.frombuf(bytes(out[:512]), "utf-8", "surrogateescape")
    data = bytes(out[512 : 512 + member.size])
    # The end of the member ends its last line, whether or not a newline does.
    return data.count(b"\n") + (len(data) == member.size and not data.endswith(b"\n"))
