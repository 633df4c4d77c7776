"""A pickle reader for data files that calls nothing: opcodes become plain Python objects.

``pickle.Unpickler`` (even with ``find_class`` restricted to numpy's array
reconstructors) hands attacker-chosen arguments to ``numpy.dtype`` and
``numpy.ndarray``: a dtype with a huge sub-array over a small buffer reads out
of bounds, and ``_reconstruct`` without its state yields uninitialised memory.
``read_pickle`` instead interprets the binary opcodes (protocols 2-5, what
Python 2's cPickle and Python 3 write for dicts, lists, strings, ints and numpy
arrays) itself and builds only ``dict``, ``list``, ``tuple``, ``bytes``,
``str``, ``int``, ``float``, ``bool`` and ``None``. A numpy array stays an
``ArrayRecord`` (its dtype string, shape, order and raw bytes, as the pickle
states them) until ``to_array`` has checked that the dtype is a plain integer
type from a fixed list and the byte count equals ``prod(shape) * itemsize``;
only then is an array built, as a copy of bytes the reader holds. Any other
global, opcode or structure is refused: ``pickle.UnpicklingError`` for a global
outside the allow-list (nothing is imported or called), ``ValueError`` for
everything else; every message starts with the file/member name given.
"""

from __future__ import annotations

import math
import pickle
import struct

import numpy as np

# Globals a numpy-array pickle names, mapped to what the reader does with them.
_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",  # Python 3 bytes in protocol 2: encode(str, 'latin1').
    ("__builtin__", "bytes"): "bytes",  # b'' in protocol 2.
    ("builtins", "bytes"): "bytes",
}
# The only dtypes an array may have: typestr -> (itemsize, allowed byte-order marks).
_DTYPES = {
    "u1": ("|",), "i1": ("|",), "b1": ("|",),
    "u2": ("<", ">", "="), "i2": ("<", ">", "="), "u4": ("<", ">", "="),
    "i4": ("<", ">", "="), "u8": ("<", ">", "="), "i8": ("<", ">", "="),
}
_MAX_NDIM = 4


class Global:
    """A global named by the pickle (never imported)."""

    __slots__ = ("kind",)

    def __init__(self, kind):
        self.kind = kind


class Call:
    """``func(*args)`` as the pickle states it, with the BUILD state if any (never called)."""

    __slots__ = ("kind", "args", "state")

    def __init__(self, kind, args):
        self.kind, self.args, self.state = kind, args, None


class ArrayRecord:
    """A numpy array as stated by a pickle: dtype string, shape, order, raw bytes (unchecked)."""

    __slots__ = ("call",)

    def __init__(self, call):
        self.call = call


def _text(value):
    return value.decode("latin1") if isinstance(value, (bytes, bytearray)) else value


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data = memoryview(data)
        self.what = what
        self.pos = 0
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, object] = {}

    def fail(self, message):
        raise ValueError(f"{self.what}: {message}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"the pickle ends early (needs {n} bytes at byte {self.pos} of "
                      f"{len(self.data)}; truncated file?)")
        out = self.data[self.pos:self.pos + n].tobytes()
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little", signed=False)

    def line(self) -> str:
        end = bytes(self.data[self.pos:self.pos + 256]).find(b"\n")
        if end < 0:
            self.fail(f"unterminated GLOBAL name at byte {self.pos}")
        return self.take(end + 1)[:-1].decode("ascii", "replace")

    def pop(self):
        if not self.stack:
            self.fail(f"malformed pickle (stack underflow at byte {self.pos})")
        return self.stack.pop()

    def pop_mark(self) -> list:
        if not self.marks:
            self.fail(f"malformed pickle (no MARK at byte {self.pos})")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def top(self, kind, what):
        if not self.stack or not isinstance(self.stack[-1], kind):
            self.fail(f"malformed pickle ({what} without a {kind.__name__} at byte {self.pos})")
        return self.stack[-1]

    def global_(self, module, name):
        kind = _GLOBALS.get((module, name))
        if kind is None:
            raise pickle.UnpicklingError(
                f"{self.what}: refusing to load global '{module}.{name}'; this file should hold "
                "only builtin types and numpy integer arrays, so it is not one (or has been "
                "tampered with). Nothing from it was executed.")
        self.stack.append(Global(kind))

    def reduce(self):
        args, func = self.pop(), self.pop()
        if not isinstance(func, Global) or not isinstance(args, tuple):
            self.fail(f"malformed pickle (REDUCE of {type(func).__name__} at byte {self.pos})")
        if func.kind == "encode":  # Python 3 bytes in a protocol-2 pickle.
            if len(args) != 2 or not isinstance(args[0], str) or args[1] != "latin1":
                self.fail("malformed bytes value (_codecs.encode with unexpected arguments)")
            try:
                self.stack.append(args[0].encode("latin1"))
            except UnicodeEncodeError:
                self.fail("malformed bytes value (characters above 255)")
        elif func.kind == "bytes":
            if args:
                self.fail("malformed bytes value (bytes() with arguments)")
            self.stack.append(b"")
        elif func.kind in ("dtype", "reconstruct", "frombuffer"):
            call = Call(func.kind, args)
            self.stack.append(call if func.kind == "dtype" else ArrayRecord(call))
        else:
            self.fail(f"malformed pickle (global {func.kind} called at byte {self.pos})")

    def build(self):
        state = self.pop()
        obj = self.stack[-1] if self.stack else None
        call = obj.call if isinstance(obj, ArrayRecord) else obj
        if not isinstance(call, Call) or call.kind == "frombuffer" or call.state is not None:
            self.fail(f"malformed pickle (BUILD of {type(obj).__name__} at byte {self.pos})")
        call.state = state

    def run(self):
        ops = _OPS
        while True:
            if self.pos >= len(self.data):
                self.fail(f"the pickle ends early (no STOP after {len(self.data)} bytes; "
                          "truncated file?)")
            code = self.data[self.pos]
            self.pos += 1
            handler = ops.get(code)
            if handler is None:
                self.fail(f"pickle opcode {bytes([code])!r} at byte {self.pos - 1} is not "
                          "allowed in a data file")
            if handler is _STOP:
                if len(self.stack) != 1 or self.marks:
                    self.fail("malformed pickle (STOP with a stack of "
                              f"{len(self.stack)} objects)")
                return self.stack[0]
            handler(self)


def _push(value_fn):
    def push(r):
        value = value_fn(r)  # First: value_fn may replace r.stack (MARK-delimited opcodes).
        r.stack.append(value)
    return push


def _append(r):
    value = r.pop()
    r.top(list, "APPEND").append(value)


def _appends(r):
    items = r.pop_mark()
    r.top(list, "APPENDS").extend(items)


def _setitems(r, items):
    if len(items) % 2:
        r.fail(f"malformed pickle (odd SETITEMS at byte {r.pos})")
    target = r.top(dict, "SETITEM")
    for key, value in zip(items[::2], items[1::2]):
        if not isinstance(key, (bytes, str, int)):
            r.fail(f"dict keys must be strings or ints, got {type(key).__name__}")
        target[key] = value


def _memo_get(r, index):
    if index not in r.memo:
        r.fail(f"malformed pickle (memo {index} read before it is written)")
    r.stack.append(r.memo[index])


def _memo_put(r, index):
    if not r.stack:
        r.fail(f"malformed pickle (memo write of an empty stack at byte {r.pos})")
    r.memo[index] = r.stack[-1]


def _proto(r):
    if r.uint(1) > 5:
        r.fail("unsupported pickle protocol")


def _unicode(r, n):
    try:
        return r.take(n).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        r.fail(f"malformed string before byte {r.pos}")


def _mark(r):
    r.marks.append(r.stack)
    r.stack = []


def _stack_global(r):
    name, module = r.pop(), r.pop()
    if not isinstance(name, str) or not isinstance(module, str):
        r.fail("malformed pickle (STACK_GLOBAL of non-strings)")
    r.global_(module, name)


_STOP = object()
_OPS = {
    pickle.PROTO[0]: _proto,
    pickle.FRAME[0]: lambda r: r.uint(8),
    pickle.STOP[0]: _STOP,
    pickle.MARK[0]: _mark,
    pickle.EMPTY_DICT[0]: _push(lambda r: {}),
    pickle.EMPTY_LIST[0]: _push(lambda r: []),
    pickle.EMPTY_TUPLE[0]: _push(lambda r: ()),
    pickle.NONE[0]: _push(lambda r: None),
    pickle.NEWTRUE[0]: _push(lambda r: True),
    pickle.NEWFALSE[0]: _push(lambda r: False),
    pickle.BININT[0]: _push(lambda r: struct.unpack("<i", r.take(4))[0]),
    pickle.BININT1[0]: _push(lambda r: r.uint(1)),
    pickle.BININT2[0]: _push(lambda r: r.uint(2)),
    pickle.LONG1[0]: _push(lambda r: int.from_bytes(r.take(r.uint(1)), "little", signed=True)),
    pickle.BINFLOAT[0]: _push(lambda r: struct.unpack(">d", r.take(8))[0]),
    pickle.SHORT_BINSTRING[0]: _push(lambda r: r.take(r.uint(1))),
    pickle.BINSTRING[0]: _push(lambda r: r.take(struct.unpack("<i", r.take(4))[0])),
    pickle.SHORT_BINBYTES[0]: _push(lambda r: r.take(r.uint(1))),
    pickle.BINBYTES[0]: _push(lambda r: r.take(r.uint(4))),
    pickle.BINBYTES8[0]: _push(lambda r: r.take(r.uint(8))),
    pickle.BYTEARRAY8[0]: _push(lambda r: r.take(r.uint(8))),
    pickle.SHORT_BINUNICODE[0]: _push(lambda r: _unicode(r, r.uint(1))),
    pickle.BINUNICODE[0]: _push(lambda r: _unicode(r, r.uint(4))),
    pickle.BINUNICODE8[0]: _push(lambda r: _unicode(r, r.uint(8))),
    pickle.TUPLE[0]: _push(lambda r: tuple(r.pop_mark())),
    pickle.TUPLE1[0]: _push(lambda r: (r.pop(),)),
    pickle.TUPLE2[0]: _push(lambda r: tuple(reversed((r.pop(), r.pop())))),
    pickle.TUPLE3[0]: _push(lambda r: tuple(reversed((r.pop(), r.pop(), r.pop())))),
    pickle.LIST[0]: _push(lambda r: r.pop_mark()),
    pickle.APPEND[0]: _append,
    pickle.APPENDS[0]: _appends,
    pickle.SETITEM[0]: lambda r: _setitems(r, list(reversed((r.pop(), r.pop())))),
    pickle.SETITEMS[0]: lambda r: _setitems(r, r.pop_mark()),
    pickle.BINPUT[0]: lambda r: _memo_put(r, r.uint(1)),
    pickle.LONG_BINPUT[0]: lambda r: _memo_put(r, r.uint(4)),
    pickle.MEMOIZE[0]: lambda r: _memo_put(r, len(r.memo)),
    pickle.BINGET[0]: lambda r: _memo_get(r, r.uint(1)),
    pickle.LONG_BINGET[0]: lambda r: _memo_get(r, r.uint(4)),
    pickle.GLOBAL[0]: lambda r: r.global_(r.line(), r.line()),
    pickle.STACK_GLOBAL[0]: _stack_global,
    pickle.REDUCE[0]: lambda r: r.reduce(),
    pickle.BUILD[0]: lambda r: r.build(),
}


def read_pickle(data: bytes, what: str = "pickle"):
    """Parses a pickle into plain Python objects and ``ArrayRecord``s; calls nothing.

    Args:
        data: the pickle's bytes.
        what: the file (and member) for error messages.

    Returns:
        The unpickled object; bytes stay bytes (as ``encoding="bytes"``).

    Raises:
        pickle.UnpicklingError: for a global outside the numpy-array allow-list.
        ValueError: for a truncated or malformed pickle or an opcode a data file
            does not need (naming ``what`` and the byte offset).
    """
    return _Reader(bytes(data), what).run()


def _dtype(value, what: str) -> np.dtype:
    """The numpy dtype a pickled ``numpy.dtype`` call states, if it is a plain integer type."""
    bad = f"{what}: array dtype is not a plain integer type"
    if not isinstance(value, Call) or value.kind != "dtype" or len(value.args) != 3:
        raise ValueError(f"{bad} (malformed dtype)")
    typestr, align, copy = value.args
    typestr = _text(typestr)
    if typestr not in _DTYPES or align not in (0, False) or copy not in (1, True):
        raise ValueError(f"{bad} (got {typestr!r})")
    state = value.state
    # numpy's dtype state: (3, byte order, subarray, names, fields, elsize, alignment, flags).
    if (not isinstance(state, tuple) or len(state) != 8 or state[0] != 3
            or _text(state[1]) not in _DTYPES[typestr] or state[2:5] != (None, None, None)
            or state[5:] != (-1, -1, 0)):
        raise ValueError(f"{bad} (dtype {typestr!r} with a sub-array, fields or another "
                         "state: refused)")
    order = _text(state[1])
    return np.dtype(typestr) if order in ("|", "=") else np.dtype(typestr).newbyteorder(order)


def to_array(record: ArrayRecord, what: str) -> np.ndarray:
    """Builds the array a pickle states once its dtype, shape and byte count check out.

    Args:
        record: an ``ArrayRecord`` from ``read_pickle``.
        what: the file, member and key for error messages.

    Returns:
        A new, writable numpy array (a copy of the pickle's bytes).

    Raises:
        ValueError: when the record is not exactly a plain integer array whose
            bytes are all present (no array is built then).
    """
    call = record.call
    if call.kind == "reconstruct":
        # _reconstruct(ndarray, (0,), b'b') followed by BUILD (1, shape, dtype, fortran, raw).
        if (len(call.args) != 3 or not isinstance(call.args[0], Global)
                or call.args[0].kind != "ndarray" or call.args[1] != (0,)
                or _text(call.args[2]) != "b"):
            raise ValueError(f"{what}: malformed numpy array (unexpected _reconstruct arguments)")
        state = call.state
        if state is None:
            raise ValueError(f"{what}: numpy array without its contents (no BUILD state); "
                             "refused rather than reading uninitialised memory")
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise ValueError(f"{what}: malformed numpy array state")
        _, shape, dtype, fortran, raw = state
        order = "F" if fortran is True else "C" if fortran is False else None
    elif call.kind == "frombuffer":
        if len(call.args) != 4:
            raise ValueError(f"{what}: malformed numpy array (unexpected _frombuffer arguments)")
        raw, dtype, shape, order = call.args
        order = _text(order) if _text(order) in ("C", "F") else None
    else:
        raise ValueError(f"{what}: malformed numpy array")
    if order is None:
        raise ValueError(f"{what}: malformed numpy array (memory order)")
    dtype = _dtype(dtype, what)
    if (not isinstance(shape, tuple) or len(shape) > _MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ValueError(f"{what}: malformed numpy array shape {shape!r}")
    if not isinstance(raw, bytes):
        raise ValueError(f"{what}: numpy array contents are {type(raw).__name__}, not raw bytes "
                         "(object arrays are refused)")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{what}: numpy array of shape {shape} and dtype {dtype} needs "
                         f"{expected} bytes, the file holds {len(raw)}")
    return np.frombuffer(raw, dtype).reshape(shape, order=order).copy(order="C")
