"""`corral eval`: score models on tasks declared in YAML/JSONL files and compare them (see task.py for the format).

    from corral.eval import evaluate
    report = evaluate(["default", "runs/acme/adapter"], ["acme_qa", "arithmetic"], limit=20, out="runs/eval")

Generation goes through `corral.text.generate_many`. Must not import: corral.serve, corral.train, corral.distill,
corral.guard, corral.redteam, corral.cli.
"""

from corral.eval.harness import EvalModel, evaluate, load_eval_model, run_task
from corral.eval.task import Task, TaskError, bundled_tasks, load_task

__all__ = ["EvalModel", "Task", "TaskError", "bundled_tasks", "evaluate", "load_eval_model", "load_task", "run_task"]
