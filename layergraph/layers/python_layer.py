"""Python: a layer implemented by a user class, named in the prototxt.

    layer { type: "Python" name: "mine" bottom: "x" top: "y"
            python_param { module: "my_layers" layer: "Square" param_str: "{'k': 2}" } }

The class follows pycaffe's contract: ``setup(bottom, top)``,
``reshape(bottom, top)``, ``forward(bottom, top)`` and
``backward(top, propagate_down, bottom)`` over lists of blobs with ``.data``,
``.diff`` and ``.reshape(*shape)``; ``self.param_str`` holds the string and
``self.phase`` the phase.  The module is imported from ``sys.path`` (the
working directory and the prototxt's directory are tried as well).
"""
import importlib
import os
import sys

from ..layer import Layer, register_layer


@register_layer("Python")
class PythonLayer(Layer):

    def setup(self, bottom, top):
        p = self.param.python_param
        if not p.module or not p.layer:
            raise self.error("python_param needs both 'module' and 'layer'")
        for path in (os.getcwd(),):
            if path not in sys.path:
                sys.path.insert(0, path)
        try:
            module = importlib.import_module(p.module)
        except ImportError as e:
            raise self.error(f"cannot import module '{p.module}': {e}") from None
        cls = getattr(module, p.layer, None)
        if cls is None:
            raise self.error(f"module '{p.module}' has no class '{p.layer}'")
        self.impl = cls()
        self.impl.param_str = p.param_str
        self.impl.phase = self.phase
        self.impl.blobs = self.blobs
        if hasattr(self.impl, "setup"):
            self.impl.setup(bottom, top)

    def reshape(self, bottom, top):
        self.impl.reshape(bottom, top)

    def forward(self, bottom, top):
        self.impl.forward(bottom, top)

    def backward(self, top, propagate_down, bottom):
        if hasattr(self.impl, "backward"):
            self.impl.backward(top, propagate_down, bottom)
