"""Input and output: text streams, Parquet embeddings, atomic files, tables."""
