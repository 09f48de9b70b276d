"""What every stage reads and writes: images, CSV tables, catalogues, weights, per-image arrays, atomic files,
and the compute device. Nothing here knows about features, pairs or scenarios."""
