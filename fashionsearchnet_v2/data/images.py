"""What an encoded image is, from its bytes alone: its format, whether a JPEG was cut short, its size.

One place for the checks that the converters (`data.convert`), the service's uploads and item images
(`serving.service`, `serving.items`) apply to bytes before or instead of decoding them.
"""

from __future__ import annotations

import struct

# Formats tf.io.decode_image reads, by magic number: (short name, MIME type).
FORMATS = {
    b"\xff\xd8\xff": ("jpeg", "image/jpeg"),
    b"\x89PNG": ("png", "image/png"),
    b"GIF8": ("gif", "image/gif"),
    b"BM": ("bmp", "image/bmp"),
}


def image_format(data: bytes) -> str | None:
    """ "jpeg", "png", "gif" or "bmp" from the magic number; None for anything else."""
    for magic, (name, _) in FORMATS.items():
        if data.startswith(magic):
            return name
    return None


def media_type(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their magic number."""
    for magic, (_, mime) in FORMATS.items():
        if data.startswith(magic):
            return mime
    return "application/octet-stream"


def truncated_jpeg(data: bytes) -> bool:
    """A JPEG without its end-of-image marker near the end: cut short. OpenCV and some browsers pad such a
    file with grey instead of failing, TensorFlow's decoder fails on it later."""
    return data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data[-4096:]


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF, BMP or JPEG header without decoding; None when not found."""
    try:
        if data.startswith(b"\x89PNG") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"GIF8"):
            return struct.unpack("<HH", data[6:10])
        if data.startswith(b"BM"):
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data.startswith(b"\xff\xd8"):
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                    i += 1 if marker == 0xFF else 2
                    continue
                # Start of frame: every SOFn but DHT (C4), JPG (C8) and DAC (CC) carries the size.
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return w, h
                (length,) = struct.unpack(">H", data[i + 2 : i + 4])
                i += 2 + length
    except struct.error:
        return None
    return None
