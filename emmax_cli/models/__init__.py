"""Models: loading (names, directories, the built-in default), the encoder, pooling, GMM head."""
