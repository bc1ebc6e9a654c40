"""Typed exceptions.  Every user mistake becomes one of these, carrying a
one-line message that names the file/line or the layer; the CLI prints the
message and exits with status 2, never a traceback."""


class LayergraphError(Exception):
    """Base class: a user-facing error with a one-line message."""

    exit_code = 2

    def __str__(self):
        return " ".join(str(self.args[0] if self.args else "").split("\n"))


class PrototxtError(LayergraphError):
    """A prototxt/binary proto file is missing, malformed or of the wrong kind."""


class UnknownLayerTypeError(LayergraphError):
    """A layer type string has no registered implementation."""


class NetError(LayergraphError):
    """The net graph is inconsistent (unknown bottom, bad sharing, ...)."""


class LayerError(NetError):
    """A layer rejected its parameters or its inputs."""


class ShapeError(LayerError):
    """Blob shapes do not fit together."""


class SolverError(LayergraphError):
    """An invalid solver setting."""


class DataError(LayergraphError):
    """A dataset is missing, corrupt or inconsistent."""


class DatasetNotFoundError(DataError):
    """A data source names a dataset that does not exist."""


class SnapshotError(LayergraphError):
    """A snapshot/weights file cannot be read or does not fit the net."""


class GPUError(LayergraphError):
    """The GPU cannot be used: no CuPy, no device, out of memory, a bad id."""


class KernelCompileError(GPUError):
    """A CUDA kernel in kernels/ failed to compile (NVRTC or the emulation)."""


class DivergedError(SolverError):
    """Training produced a non-finite loss or weights and was stopped."""
