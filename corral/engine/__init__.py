"""Token ids in, token ids out: the continuous-batching engine (`engine.py`, also the one-stream loop behind
`corral generate` through `corral.text.Session`), sampling, speculative decoding and KV-slot moves.

Must not import: corral.tokenizer, corral.chat (text belongs to the caller, `corral.text`), corral.serve,
corral.train, corral.cli.
"""
