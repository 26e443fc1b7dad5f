"""The model: one Llama-family decoder (`llama.py`) and the loaders that fill it (`loader.py`)."""
