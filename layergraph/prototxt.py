"""Reading and writing prototxt (protobuf text) and binary proto files.

Accepts BVLC Caffe's and MyCaffe's dialects: MyCaffe writes booleans as
``True``/``False`` (protobuf's text parser accepts those) and string values as
bare identifiers (``type: ADAM``, ``eval_type: classification``), which this
module quotes before parsing.  Every failure becomes a one-line
:class:`~layergraph.errors.PrototxtError` naming ``file:line:col``.
"""
import os
import re

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from .errors import PrototxtError
from .proto import pb

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[A-Za-z0-9_.+\-]+)
  | (?P<punct>.)
""", re.VERBOSE)
# A bare string value: starts like an identifier or a path, no quotes/braces.
_BARE = re.compile(r"(?![-+.0-9])[^\s{}<>#\"':,;\[\]]+")


def _quote_bare_strings(text, descriptor):
    """Quote bare values given to string fields (MyCaffe's dialect writes
    ``type: ADAM`` and ``snapshot_prefix: examples/mnist/lenet``)."""
    out = []
    stack = [descriptor]
    field = None        # the field whose value may come next
    expect_value = False
    pos = 0
    while pos < len(text):
        if (expect_value and field is not None
                and field.type == FieldDescriptor.TYPE_STRING):
            bare = _BARE.match(text, pos)
            if bare:
                out.append('"' + bare.group() + '"')
                pos = bare.end()
                field, expect_value = None, False
                continue
        m = _TOKEN.match(text, pos)
        pos = m.end()
        kind, tok = m.lastgroup, m.group()
        out.append(tok)
        if kind in ("ws", "comment"):
            continue
        current = stack[-1]
        if kind == "punct":
            if tok == ":":
                expect_value = field is not None
                continue
            if tok in "{<":
                sub = field.message_type if field is not None and field.message_type else None
                stack.append(sub)
            elif tok in "}>" and len(stack) > 1:
                stack.pop()
            field, expect_value = None, False
            continue
        if kind == "word" and not expect_value and current is not None:
            field = current.fields_by_name.get(tok)
        else:
            field, expect_value = None, False
    return "".join(out)


def read_text_file(path, what="prototxt"):
    """The file's text; a clear error for a missing, unreadable or binary file."""
    if not isinstance(path, (str, os.PathLike)):
        raise PrototxtError(f"expected a file path for the {what}, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PrototxtError(f"{path}: no such file")
    if os.path.isdir(path):
        raise PrototxtError(f"{path}: is a directory, expected a {what} file")
    _require_regular_file(path, what)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PrototxtError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    if b"\x00" in raw[:4096]:
        raise PrototxtError(f"{path}: is a binary file; expected a text {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PrototxtError(f"{path}: is not UTF-8 text; expected a text {what}") from None


def parse_text(text, message, source="<string>"):
    """Merge prototxt ``text`` into ``message`` (returned)."""
    text = _quote_bare_strings(text, message.DESCRIPTOR)
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as e:
        msg = str(e)
        m = re.match(r"(\d+):(\d+)\s*:\s*(.*)", msg, re.S)
        if m:
            line, col, rest = m.groups()
            raise PrototxtError(f"{source}:{line}:{col}: {' '.join(rest.split())}") from None
        raise PrototxtError(f"{source}: {' '.join(msg.split())}") from None
    return message


def read_net(path):
    """A NetParameter from a prototxt file."""
    return parse_text(read_text_file(path, "net prototxt"), pb.NetParameter(), os.fspath(path))


def read_solver(path):
    """A SolverParameter from a prototxt file."""
    return parse_text(read_text_file(path, "solver prototxt"), pb.SolverParameter(),
                      os.fspath(path))


def parse_net(text, source="<string>"):
    return parse_text(text, pb.NetParameter(), source)


def parse_layer(text, source="<string>"):
    return parse_text(text, pb.LayerParameter(), source)


def _require_regular_file(path, what):
    """Refuse FIFOs, sockets and devices: reading one would block or never end."""
    import stat
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise PrototxtError(f"{path}: is not a regular file (a FIFO, socket or device); "
                            f"expected a {what} file")


def read_binary(path, message, what):
    """A binary proto (.caffemodel, .solverstate, .binaryproto)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise PrototxtError(f"{path}: no such file")
    if os.path.isdir(path):
        raise PrototxtError(f"{path}: is a directory, expected a {what}")
    _require_regular_file(path, what)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PrototxtError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    try:
        message.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        raise PrototxtError(f"{path}: not a valid {what} (corrupt or not a binary proto)") from None
    return message


def write_text(message, path):
    atomic_write(path, text_format.MessageToString(message).encode())


def atomic_write(path, data):
    """Write ``data`` to ``path`` atomically: a temporary file, fsync, rename.
    On failure (a full disk) the temporary file is removed and the error
    names the path."""
    import errno
    from .errors import SnapshotError
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if e.errno == errno.ENOSPC:
            raise SnapshotError(f"no space left on the device writing {path} "
                                f"({len(data):,} bytes); nothing was replaced") from None
        raise SnapshotError(f"cannot write {path}: {e.strerror or e}") from None
