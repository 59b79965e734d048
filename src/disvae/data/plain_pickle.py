"""The plain data of a pickle (numbers, strings, containers and numpy arrays), read without
unpickling it: no object is constructed and no function is called on the file's say.

Some datasets are published only as pickles (CIFAR-10's python batches). `pickle.load` runs
whatever callables a file names, so instead the opcodes are walked with `pickletools.genops` and
interpreted by a small stack machine that builds only ``None``, bools, ints, floats, ``str``,
``bytes``, tuples, lists and dicts. A reference to a global and a call of it (``GLOBAL``,
``REDUCE``, ``BUILD``) become inert records; afterwards the few records plain data needs are
turned into values by this module's own code (a numpy array from its dtype, shape and raw bytes;
a Python 3 byte string from ``_codecs.encode(text, "latin1")``), and any other is refused.
Instance-building opcodes (``INST``, ``OBJ``, ``NEWOBJ``, ``NEWOBJ_EX``), extension registries,
persistent ids and out-of-band buffers are refused outright. Python 2 ``str`` becomes ``bytes``
(as ``pickle.load(..., encoding="bytes")`` would give).

Protocols 0-5 are read; numpy arrays pickled by numpy 1 or 2 (``_reconstruct`` at protocols
0-4, ``_frombuffer`` at 5) come back as read-only arrays over the file's bytes.
"""

from __future__ import annotations

import math
import pickletools
from typing import Any

import numpy as np

MAX_DEPTH = 32  # nesting of containers and records (plain data needs a few levels)

_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
# the only calls plain data is pickled with (numpy 1 and 2 name their module differently; an
# empty bytes is bytes() at protocols 0-2, written as __builtin__.bytes)
_KNOWN = {("_codecs", "encode"), ("numpy", "dtype"), ("__builtin__", "bytes"),
          ("builtins", "bytes"),
          *((m, n) for m in _MULTIARRAY for n in ("_reconstruct", "scalar")),
          *((m, "_frombuffer") for m in _NUMERIC)}  # fmt: skip
# dtypes of plain numeric data, by their kind and size (no objects, no structured types)
_KINDS = {"b": {1}, "u": {1, 2, 4, 8}, "i": {1, 2, 4, 8}, "f": {2, 4, 8}}


class PickleDataError(ValueError):
    """The bytes are not a pickle of plain data (the message says what was found)."""


class _Global:
    """A reference to ``module.name`` (never imported)."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __str__(self) -> str:
        text = f"{self.module}.{self.name}"  # the file's text: quoted unless printable, so a
        return text if text.isprintable() else repr(text)  # message stays one line


class _Call:
    """``func(*args)`` as the pickle asks for it, and the ``BUILD`` state, if any (inert)."""

    __slots__ = ("func", "args", "state")

    def __init__(self, func: Any, args: Any) -> None:
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise PickleDataError("a call of something that is not a named global")
        self.func, self.args, self.state = func, args, None


_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING"}  # Python 2 str: bytes (latin-1 decoded)
_TEXT = {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_BYTES = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"}
_NUMBERS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}


def read(data: bytes) -> Any:
    """The plain value pickled in ``data``; `PickleDataError` for anything else or broken."""
    try:
        return _Resolver().resolve(_interpret(data), 0)
    except PickleDataError:
        raise
    except Exception as err:  # noqa: BLE001 - malformed input: genops' and our own checks
        raise PickleDataError(f"{type(err).__name__}: {err}") from None


def _interpret(data: bytes) -> Any:
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def since_mark() -> list[Any]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise PickleDataError("the pickle does not end with one value")
            return stack[0]
        if name == "MARK":
            marks.append(len(stack))
        elif name in _STRINGS:
            stack.append(arg.encode("latin-1"))
        elif name in _TEXT:
            stack.append(arg)
        elif name in _BYTES:
            stack.append(bytes(arg))
        elif name in _NUMBERS:
            stack.append(arg)
        elif name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise PickleDataError(f"{name} on a stack of {len(stack)}")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(since_mark()))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            stack.append(since_mark())
        elif name == "APPEND":
            value = stack.pop()
            _list(stack[-1]).append(value)
        elif name == "APPENDS":
            items = since_mark()
            _list(stack[-1]).extend(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "DICT":
            items = since_mark()
            stack.append(dict(zip(items[::2], items[1::2], strict=True)))
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            _dict(stack[-1])[key] = value
        elif name == "SETITEMS":
            items = since_mark()
            _dict(stack[-1]).update(zip(items[::2], items[1::2], strict=True))
        elif name in _PUT:
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in _GET:
            stack.append(memo[arg])
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            since_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            if not (isinstance(module, str) and isinstance(attr, str)):
                raise PickleDataError("STACK_GLOBAL of non-strings")
            stack.append(_Global(module, attr))
        elif name == "REDUCE":
            args = stack.pop()
            stack.append(_Call(stack.pop(), args))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if not isinstance(target, _Call) or target.state is not None:
                raise PickleDataError("BUILD on something that is not a fresh call")
            target.state = state
        else:
            raise PickleDataError(f"opcode {name} builds objects, not plain data")
    raise PickleDataError("the pickle has no STOP (truncated)")


def _list(value: Any) -> list:
    if not isinstance(value, list):
        raise PickleDataError("APPEND to something that is not a list")
    return value


def _dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise PickleDataError("SETITEM on something that is not a dict")
    return value


class _Resolver:
    """Turns the interpreted tree into values. Each object is resolved once (by identity), so a
    pickle that refers to one list many times (``x = [y, y]``, ``y = [z, z]``, ...: a few bytes)
    costs its size, not 2 to the power of its depth; an object met again while it is being
    resolved is a cycle, which plain data has none of."""

    def __init__(self) -> None:
        # by id: every interpreted object stays alive (reachable from the root) meanwhile
        self.done: dict[int, Any] = {}
        self.open: set[int] = set()

    def resolve(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, bool | int | float | str | bytes):
            return value
        if depth > MAX_DEPTH:
            raise PickleDataError(f"data nested deeper than {MAX_DEPTH} levels")
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.open:
            raise PickleDataError("a container that contains itself (a cycle), not plain data")
        self.open.add(key)
        out = self._value(value, depth)
        self.open.discard(key)
        self.done[key] = out
        return out

    def _value(self, value: Any, depth: int) -> Any:
        if isinstance(value, list):
            return [self.resolve(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(v, depth + 1) for v in value)
        if isinstance(value, dict):
            d = depth + 1
            return {self.resolve(k, d): self.resolve(v, d) for k, v in value.items()}
        if isinstance(value, _Global):
            raise PickleDataError(f"a reference to {value}, not data")
        return self._call(value, depth)

    def _call(self, call: _Call, depth: int) -> Any:
        """The value of one of the few calls plain data is pickled with; any other is refused."""
        f = call.func
        if (f.module, f.name) not in _KNOWN:
            raise PickleDataError(
                f"refused {f}: only numbers, strings, containers and numpy arrays are read from "
                "a data file"
            )
        args = call.args if _is_reconstruct(f) else self.resolve(call.args, depth + 1)
        state = self.resolve(call.state, depth + 1) if call.state is not None else None
        if (f.module, f.name) == ("_codecs", "encode") and state is None:
            # Python 3 bytes at protocol 2 and below: encode(text, "latin1")
            if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
                return args[0].encode("latin-1")
        elif f.name == "bytes" and args == () and state is None:
            return b""  # an empty Python 3 bytes at protocol 2 and below: bytes()
        elif (f.module, f.name) == ("numpy", "dtype"):
            return _dtype(args, state)
        elif _is_reconstruct(f):
            return _reconstructed(call.args, state)
        elif f.module in _NUMERIC and f.name == "_frombuffer" and state is None:
            if len(args) == 4 and isinstance(args[0], bytes) and isinstance(args[1], np.dtype):
                return _array(args[0], args[1], args[2], args[3] == "F")
        elif f.module in _MULTIARRAY and f.name == "scalar" and state is None:
            if len(args) == 2 and isinstance(args[0], np.dtype) and isinstance(args[1], bytes):
                return _array(args[1], args[0], (), False)[()]
        raise PickleDataError(f"{f} with arguments that are not those of plain data")


def _is_reconstruct(f: _Global) -> bool:
    return f.module in _MULTIARRAY and f.name == "_reconstruct"


def _dtype(args: tuple, state: Any) -> np.dtype:
    """``numpy.dtype(code, align, copy)`` with its state ``(version, byteorder, ...)``."""
    code = args[0].decode("latin-1") if args and isinstance(args[0], bytes) else args[0]
    if not (isinstance(code, str) and len(code) >= 2 and code[0] in _KINDS and code[1:].isdigit()):
        raise PickleDataError(f"numpy dtype {code!r} is not plain numeric data")
    dtype = np.dtype(code)
    if dtype.itemsize not in _KINDS[code[0]]:
        raise PickleDataError(f"numpy dtype {code!r} is not plain numeric data")
    if state is not None:
        order = state[1] if isinstance(state, tuple) and len(state) >= 2 else None
        order = order.decode("latin-1") if isinstance(order, bytes) else order  # Python 2 str
        if order not in ("<", ">", "|", "="):
            raise PickleDataError("a numpy dtype with an unreadable state")
        if order in "<>":
            dtype = dtype.newbyteorder(order)
    return dtype


def _reconstructed(args: tuple, state: Any) -> np.ndarray:
    """``_reconstruct(ndarray, (0,), b"b")`` then ``BUILD`` with ``(version, shape, dtype,
    fortran, raw bytes)``: numpy's pickle of an array at protocols 0-4."""
    cls = args[0] if args else None
    if not (isinstance(cls, _Global) and (cls.module, cls.name) == ("numpy", "ndarray")):
        raise PickleDataError("a numpy reconstruction of something other than an ndarray")
    if not (isinstance(state, tuple) and len(state) == 5):
        raise PickleDataError("a numpy array without its (version, shape, dtype, ...) state")
    _version, shape, dtype, fortran, raw = state
    if not isinstance(dtype, np.dtype) or not isinstance(raw, bytes):
        raise PickleDataError("a numpy array of objects, not plain data")
    return _array(raw, dtype, shape, bool(fortran))


def _array(raw: bytes, dtype: np.dtype, shape: Any, fortran: bool) -> np.ndarray:
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise PickleDataError(f"a numpy array of shape {shape!r}")
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise PickleDataError(
            f"a numpy array {shape} of {dtype} in {len(raw)} bytes (truncated or damaged)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
