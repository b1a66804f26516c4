"""JPEGs of any chroma subsampling, for the tests: Pillow writes only 4:4:4, 4:2:2 and 4:2:0, camera and scanner
JPEGs also come as 4:1:1 and 4:4:0. A small baseline encoder (JFIF YCbCr, IJG quality tables, box-filtered
chroma, one fixed-length Huffman code for every symbol: valid, not small), checked by decoding it with Pillow."""
import io
import math
import struct

import numpy as np
from PIL import Image

# luma sampling factors (horizontal, vertical) against chroma's (1, 1)
SAMPLINGS = {'4:4:4': (1, 1), '4:2:2': (2, 1), '4:2:0': (2, 2), '4:1:1': (4, 1), '4:4:0': (1, 2)}

_LUMA_Q = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
_CHROMA_Q = np.full((8, 8), 99)
_CHROMA_Q[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
_ZIGZAG = [(i, s - i) for s in range(15) for i in (range(7, -1, -1) if s % 2 == 0 else range(8)) if 0 <= s - i < 8]
_DCT = np.array([[math.sqrt((1 if u == 0 else 2) / 8) * math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)]
                 for u in range(8)])
_DC_SYMBOLS = list(range(12))
_AC_SYMBOLS = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 11)]


def _qtable(base, quality):
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255).astype(int)


def _code(symbols, length):
    """Every symbol ``length`` bits long, codes 0, 1, ...: a valid JPEG Huffman table (no all-ones code)."""
    assert len(symbols) < 2 ** length
    return {s: (n, length) for n, s in enumerate(symbols)}


class _Bits:
    def __init__(self):
        self.out, self.acc, self.n = bytearray(), 0, 0

    def put(self, value, length):
        self.acc, self.n = (self.acc << length) | (value & ((1 << length) - 1)), self.n + length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)  # byte stuffing
        self.acc &= (1 << self.n) - 1

    def flush(self):
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)
        return bytes(self.out)


def _magnitude(v):
    size = int(abs(v)).bit_length()
    return size, (v if v >= 0 else v + (1 << size) - 1)


def _blocks(plane, q):
    """Quantised DCT coefficients of a plane (a multiple of 8 on each side), in zigzag order, block rows x cols."""
    h, w = plane.shape
    tiles = plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3) - 128.0
    coef = np.rint(_DCT @ tiles @ _DCT.T / q).astype(int)
    return coef[..., [i for i, _ in _ZIGZAG], [j for _, j in _ZIGZAG]]


def encode(picture: Image.Image, sampling: str = '4:2:0', quality: int = 90) -> bytes:
    """A baseline JPEG of ``picture`` (RGB, or L for greyscale) with the given chroma subsampling."""
    grey = picture.mode == 'L'
    hs, vs = (1, 1) if grey else SAMPLINGS[sampling]
    pixels = np.asarray(picture, dtype=np.float64)
    height, width = pixels.shape[:2]
    mh, mw = 8 * vs, 8 * hs
    pad_h, pad_w = -height % mh, -width % mw
    if grey:
        planes = [np.pad(pixels, ((0, pad_h), (0, pad_w)), mode='edge')]
    else:
        rgb = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode='edge')
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b
        cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
        cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
        H, W = y.shape
        planes = [y] + [c.reshape(H // vs, vs, W // hs, hs).mean(axis=(1, 3)) for c in (cb, cr)]
    qs = [_qtable(_LUMA_Q, quality), _qtable(_CHROMA_Q, quality)]
    comps = [(1, hs, vs, 0)] + ([] if grey else [(2, 1, 1, 1), (3, 1, 1, 1)])
    coefs = [_blocks(p, qs[t]) for p, (_, _, _, t) in zip(planes, comps)]
    dc, ac = _code(_DC_SYMBOLS, 4), _code(_AC_SYMBOLS, 8)
    bits, pred = _Bits(), [0] * len(comps)
    for my in range(planes[0].shape[0] // mh):
        for mx in range(planes[0].shape[1] // mw):
            for c, (_, h, v, _) in enumerate(comps):
                for by in range(v):
                    for bx in range(h):
                        block = coefs[c][my * v + by, mx * h + bx].tolist()
                        size, value = _magnitude(block[0] - pred[c])
                        pred[c] = block[0]
                        bits.put(*dc[size])
                        bits.put(value, size)
                        run = 0
                        last = max((k for k in range(1, 64) if block[k]), default=0)
                        for k in range(1, last + 1):
                            if block[k] == 0:
                                run += 1
                                continue
                            while run > 15:
                                bits.put(*ac[0xF0])
                                run -= 16
                            size, value = _magnitude(block[k])
                            bits.put(*ac[(run << 4) | size])
                            bits.put(value, size)
                            run = 0
                        if last < 63:
                            bits.put(*ac[0x00])
    data = bits.flush()

    def segment(marker, payload):
        return struct.pack('>BBH', 0xFF, marker, len(payload) + 2) + payload

    out = b'\xff\xd8' + segment(0xE0, b'JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00')
    for t, q in enumerate(qs[:1 if grey else 2]):
        out += segment(0xDB, bytes([t]) + bytes(int(q[i, j]) for i, j in _ZIGZAG))
    out += segment(0xC0, struct.pack('>BHHB', 8, height, width, len(comps)) +
                   b''.join(bytes([i, (h << 4) | v, t]) for i, h, v, t in comps))
    for t in range(1 if grey else 2):
        for cls, symbols, length in ((0, _DC_SYMBOLS, 4), (1, _AC_SYMBOLS, 8)):
            counts = [0] * 16
            counts[length - 1] = len(symbols)
            out += segment(0xC4, bytes([(cls << 4) | t]) + bytes(counts) + bytes(symbols))
    out += segment(0xDA, bytes([len(comps)]) + b''.join(bytes([i, (t << 4) | t]) for i, _, _, t in comps) +
                   b'\x00\x3f\x00')
    return out + data + b'\xff\xd9'


def save(picture: Image.Image, path, sampling: str = '4:2:0', quality: int = 90):
    with open(path, 'wb') as f:
        f.write(encode(picture, sampling, quality))
    return path


def luma_factors(img: Image.Image):
    """(horizontal, vertical) luma sampling factors of an opened JPEG, as its frame header states."""
    return tuple(img.layer[0][1:3])


if __name__ == '__main__':  # a self-check: each subsampling decodes close to the picture it encoded
    from test_decode import photo
    rng = np.random.default_rng(0)
    pic = photo(rng, 250, 170)
    for name in SAMPLINGS:
        img = Image.open(io.BytesIO(encode(pic, name)))
        err = np.asarray(img.convert('RGB'), float) - np.asarray(pic, float)
        print(name, img.layer, f'{10 * math.log10(255 ** 2 / np.mean(err ** 2)):.1f} dB')
