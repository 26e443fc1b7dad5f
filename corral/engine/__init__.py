"""Token ids in, token ids out: the continuous-batching engine (`engine.py`), sampling, speculative decoding and
the one-stream generate loop.

Must not import: corral.tokenizer, corral.chat (text belongs to the caller; issue 15 moves the last text handling
out), corral.serve, corral.train, corral.cli.
"""
