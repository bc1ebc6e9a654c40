"""Built-in layers, one module per layer type.

Every module in this package is imported on first use of the registry, so a
new layer is a new file here (or a plugin package exposing the
``layergraph.layers`` entry point, or a class decorated with
``layergraph.register_layer`` in user code).
"""
