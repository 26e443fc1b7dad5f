"""File formats: the only place that knows file layouts (GGUF, HF safetensors + config.json)."""
