"""corral: own your language model end to end — run, serve, fine-tune, evaluate, distill and guard it locally."""

__version__ = "0.1.0"
