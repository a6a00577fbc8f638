"""Power meters: one module per meter kind, a sampler and detection."""
