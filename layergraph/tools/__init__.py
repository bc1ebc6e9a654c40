"""Tools around the engine: drawing nets, plotting training curves,
evaluating embeddings (test-many) and inspecting them (t-SNE)."""
