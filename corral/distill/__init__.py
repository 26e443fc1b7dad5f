"""Distillation and synthetic data: `corral distill` (prune a teacher into a student, then train it on the
teacher's distributions: `prune.py`, `losses.py`, `teacher.py`, `run.py`) and `corral synth` (a teacher writes
answers, filtered: `synth.py`; the recipe's augmentation and key strings: `augment.py`, `keys.py`).

Builds on corral.train's public API (`loop.run_loop`, `loop.Objective`, `data.collate`). Must not import:
corral.serve, corral.guard, corral.redteam, corral.cli.
"""
