"""The page's matrix-vector product, as a WebAssembly module assembled here from a readable listing.

Why WebAssembly: a GRU-256 step is a [768 x 257] product plus the decoder's, and the page runs
one per analysed character (20,000 of them) before its views are ready. Plain JavaScript does
one multiply-add at a time (about 10 s for 20,000 steps on this machine, measured in node 20);
WebAssembly's 128-bit SIMD does four, in every current browser (Chrome 91, Firefox 89, Safari 16.4).

Why assembled here: the function is 40 instructions. Writing their bytes from a listing keeps
the page free of any toolchain (no wat2wasm, no emscripten), and the listing is the source.

    matvec(w, x, y, rows, cols)        byte addresses w, x, y into the imported memory "env.mem"
        for r in 0 .. rows-1:          y[r] = sum_j w[r*cols + j] * x[j]      (float32)
            two 4-lane accumulators over 8 columns at a time; cols must be a multiple of 8,
            w, x 16-byte aligned. The page stores each matrix as [W | b | 0...] and each input
            as [x, 1, 0...], so the bias rides in the product (as in prediction/stepper.py).

The sum's order differs from a BLAS's, so results agree with NumPy's float32 to rounding
(~1e-7 relative), which the browser tests bound.
"""
from __future__ import annotations

import base64

I32, V128 = 0x7F, 0x7B


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


def _name(s: str) -> bytes:
    return _uleb(len(s)) + s.encode()


def _section(code: int, body: bytes) -> bytes:
    return bytes([code]) + _uleb(len(body)) + body


def _simd(op: int, *imm: bytes) -> bytes:
    return b"\xfd" + _uleb(op) + b"".join(imm)


# the instructions the listing uses (opcodes from the WebAssembly core spec, SIMD proposal included)
def block() -> bytes: return b"\x02\x40"
def loop() -> bytes: return b"\x03\x40"
def end() -> bytes: return b"\x0b"
def br(depth: int) -> bytes: return b"\x0c" + _uleb(depth)
def br_if(depth: int) -> bytes: return b"\x0d" + _uleb(depth)
def get(i: int) -> bytes: return b"\x20" + _uleb(i)
def set_(i: int) -> bytes: return b"\x21" + _uleb(i)
def i32_const(v: int) -> bytes: return b"\x41" + _sleb(v)
def i32_eqz() -> bytes: return b"\x45"
def i32_ne() -> bytes: return b"\x47"
def i32_add() -> bytes: return b"\x6a"
def i32_sub() -> bytes: return b"\x6b"
def i32_shl() -> bytes: return b"\x74"
def f32_add() -> bytes: return b"\x92"
def f32_store() -> bytes: return b"\x38" + _uleb(2) + _uleb(0)  # align 4 bytes, offset 0
def v128_load(offset: int) -> bytes: return _simd(0x00, _uleb(4), _uleb(offset))  # align 16
def v128_zero() -> bytes: return _simd(0x0C, bytes(16))
def f32x4_lane(lane: int) -> bytes: return _simd(0x1F, bytes([lane]))
def f32x4_add() -> bytes: return _simd(0xE4)
def f32x4_mul() -> bytes: return _simd(0xE6)


W, X, Y, ROWS, COLS = range(5)  # parameters
END, XP, ACC0, ACC1 = 5, 6, 7, 8  # locals: end of the row, x pointer, two accumulators


def _madd(acc: int, offset: int) -> bytes:
    """acc += w[offset..] * x[offset..]  (4 lanes)"""
    return b"".join([get(acc), get(W), v128_load(offset), get(XP), v128_load(offset), f32x4_mul(), f32x4_add(),
                     set_(acc)])


MATVEC = b"".join([
    block(),
    loop(),                                              # for each row
    get(ROWS), i32_eqz(), br_if(1),                      # rows == 0: done
    v128_zero(), set_(ACC0), v128_zero(), set_(ACC1),
    get(X), set_(XP),
    get(W), get(COLS), i32_const(2), i32_shl(), i32_add(), set_(END),  # end = w + 4*cols
    loop(),                                              # 8 columns at a time
    _madd(ACC0, 0), _madd(ACC1, 16),
    get(W), i32_const(32), i32_add(), set_(W),
    get(XP), i32_const(32), i32_add(), set_(XP),
    get(W), get(END), i32_ne(), br_if(0),
    end(),
    get(Y),                                              # y[r] = sum of the 8 lanes
    get(ACC0), get(ACC1), f32x4_add(), set_(ACC0),
    get(ACC0), f32x4_lane(0), get(ACC0), f32x4_lane(1), f32_add(),
    get(ACC0), f32x4_lane(2), get(ACC0), f32x4_lane(3), f32_add(), f32_add(),
    f32_store(),
    get(Y), i32_const(4), i32_add(), set_(Y),
    get(ROWS), i32_const(1), i32_sub(), set_(ROWS),
    br(0),
    end(),
    end(),
])


def module() -> bytes:
    """The whole module: imports env.mem (one memory), exports matvec."""
    functype = b"\x60" + _uleb(5) + bytes([I32] * 5) + _uleb(0)
    body = _uleb(2) + _uleb(2) + bytes([I32]) + _uleb(2) + bytes([V128]) + MATVEC + end()
    return b"".join([
        b"\x00asm", b"\x01\x00\x00\x00",
        _section(1, _uleb(1) + functype),
        _section(2, _uleb(1) + _name("env") + _name("mem") + b"\x02\x00" + _uleb(1)),  # memory, min 1 page
        _section(3, _uleb(1) + _uleb(0)),
        _section(7, _uleb(1) + _name("matvec") + b"\x00" + _uleb(0)),
        _section(10, _uleb(1) + _uleb(len(body)) + body),
    ])


def module_base64() -> str:
    return base64.b64encode(module()).decode("ascii")
