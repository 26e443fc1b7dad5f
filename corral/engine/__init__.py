"""Token ids in, token ids out: sampling and the generate loop (the batched engine builds on the same pieces)."""
