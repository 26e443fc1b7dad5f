"""The model: one Llama-family decoder (`llama.py`), LoRA and 4-bit layers, CPU kernels, and the loaders that fill
it (`loader.py`, one `load_model(path, adapter=...)` for every caller).

Must not import: corral.engine, corral.serve, corral.train, corral.distill, corral.eval, corral.guard,
corral.redteam, corral.cli.
"""
