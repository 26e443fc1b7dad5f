"""File formats: the only place that knows file layouts (GGUF, HF safetensors + config.json, PEFT adapters).

Must not import: corral.model, corral.engine, corral.serve, corral.train, corral.distill, corral.eval, corral.guard,
corral.redteam, corral.cli.
"""
