"""Fine-tuning: `corral finetune`. Owns the one training loop (`loop.py`: LoRA, QLoRA, full; one process or many
under torchrun), its data (`data.py`: JSONL to masked, packed batches), its config (`config.py`) and the recipe
around it for a user's own facts (`recipe.py`: augmentation, documents, replay, selection, report).

What a run learns from plugs in as a `loop.Task` (guard training: `corral.guard.train`), what it minimises as a
`loop.Objective` (distillation: `corral.distill.run`). Must not import: corral.guard, corral.serve, corral.redteam,
corral.cli.
"""
