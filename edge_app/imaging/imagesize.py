"""Image dimensions from the file header, read before anything is decoded.

A small file can declare an enormous image (a 40000x40000 PNG of one colour
compresses to a few megabytes and decodes to 4.8 GB): ``decode_rgb`` reads the
width and height from the header of every format the product decodes (PNG,
JPEG, BMP, TIFF, WebP, GIF, PNM) and refuses, with a message, an image above
``MAX_IMAGE_PIXELS`` or a format it cannot size, before OpenCV allocates
anything. Microscope frames and cell photographs are far below the cap.
"""

from __future__ import annotations

import logging
import struct

import cv2
import numpy as np

logger = logging.getLogger(__name__)

# 50 megapixels: a 8192x6144 frame passes; the largest camera the kiosk takes is 4096x4096.
MAX_IMAGE_PIXELS = 50_000_000


def _png(b: bytes):
    if len(b) >= 24 and b[12:16] == b"IHDR":
        return struct.unpack(">II", b[16:24])
    return None


def _jpeg(b: bytes):
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            i += 1  # stray bytes between segments: decoders skip them too
            continue
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker == 0xD9:
            return None
        (length,) = struct.unpack(">H", b[i + 2:i + 4])
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(b):
                return None
            h, w = struct.unpack(">HH", b[i + 5:i + 9])
            return w, h
        i += 2 + length
    return None


def _bmp(b: bytes):
    if len(b) < 26:
        return None
    (header,) = struct.unpack("<I", b[14:18])
    if header == 12:  # BITMAPCOREHEADER
        w, h = struct.unpack("<HH", b[18:22])
    else:
        w, h = struct.unpack("<ii", b[18:26])
    return abs(w), abs(h)


def _tiff(b: bytes):
    if len(b) < 8:
        return None
    end = "<" if b[:2] == b"II" else ">"
    (version,) = struct.unpack(end + "H", b[2:4])
    if version != 42:
        return None  # BigTIFF: not sized here, so refused
    (offset,) = struct.unpack(end + "I", b[4:8])
    if offset + 2 > len(b):
        return None
    (n,) = struct.unpack(end + "H", b[offset:offset + 2])
    w = h = None
    for k in range(n):
        e = offset + 2 + 12 * k
        if e + 12 > len(b):
            break
        tag, typ = struct.unpack(end + "HH", b[e:e + 4])
        if tag in (256, 257):
            value = struct.unpack(end + ("H" if typ == 3 else "I"), b[e + 8:e + (10 if typ == 3 else 12)])[0]
            if tag == 256:
                w = value
            else:
                h = value
    return (w, h) if w is not None and h is not None else None


def _webp(b: bytes):
    if len(b) < 30:
        return None
    chunk = b[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    return None


def _gif(b: bytes):
    return struct.unpack("<HH", b[6:10]) if len(b) >= 10 else None


def _pnm(b: bytes):
    fields: list[int] = []
    tokens = b[2:512].split()
    for tok in tokens:
        if tok.startswith(b"#"):
            return None  # comments in the header: rare, not sized here
        if not tok.isdigit():
            return None
        fields.append(int(tok))
        if len(fields) == 2:
            return fields[0], fields[1]
    return None


_FORMATS = (
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"\xff\xd8", _jpeg),
    (b"BM", _bmp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) the file's header declares, or None when the format is not one sized here."""
    # The whole file: a TIFF's directory is often at its end, a JPEG's frame header after a large EXIF block.
    head = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        for magic, parse in _FORMATS:
            if head.startswith(magic):
                return parse(head)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(head)
        if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456":
            return _pnm(head)
    except struct.error:
        return None
    return None


def check_size(data, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """The header's (width, height); ValueError when it cannot be read or is above ``max_pixels``."""
    size = header_size(data)
    if size is None:
        raise ValueError("not a readable image (corrupt, empty or unsupported format: use PNG, JPEG, BMP, "
                         "TIFF or WebP)")
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError("not a readable image (its header declares no pixels)")
    if w * h > max_pixels:
        raise ValueError(f"image of {w}x{h} pixels ({w * h / 1e6:.0f} megapixels) is above the "
                         f"{max_pixels / 1e6:.0f}-megapixel limit: not decoded; scale it down first")
    return w, h


def decode_rgb(data: np.ndarray, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """File bytes -> RGB uint8, the size checked from the header first; ValueError if not an image."""
    if data is None or not len(data):
        raise ValueError("not a readable image (empty file)")
    check_size(data, max_pixels)
    try:
        bgr = cv2.imdecode(np.asarray(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"not a readable image ({str(exc).strip().splitlines()[-1][:120]})") from None
    if bgr is None:
        raise ValueError("not a readable image (corrupt, empty or unsupported format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
