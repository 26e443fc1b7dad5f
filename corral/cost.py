"""`corral cost`: what owning the model costs on your hardware, from throughput corral measured itself, next to a
dated table of closed-API list prices.

Inputs:
- the hardware (a YAML the user edits; corral/data/hardware.yaml has the defaults and says what each field means):
  price and write-off years, the share of hours it works, its power, electricity price, yearly overhead;
- throughput: `corral cost MODEL` times a batch of chat prompts through the engine (the work `corral serve` and
  `corral batch` do), or `--tokens-per-s` gives a figure measured elsewhere (bench/serve_load.py);
- fine-tune runs (`--finetune RUN ...`): their own timings, from RUN/metrics.jsonl;
- energy: RAPL (Intel/AMD CPUs, /sys/class/powercap) or NVML (NVIDIA GPUs) counters over the timed work where they
  can be read, else the declared watts x the time.

Arithmetic (`costs`): an hour costs price / (lifetime x 8760 h x utilization) (the write-off falls on the hours
that work) + overhead / (8760 h x utilization) + kW x electricity price; 1M tokens take 1e6 / (tokens/s x 3600)
hours of it. kWh per 1M tokens = joules per token x 1e6 / 3.6e6.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from corral.errors import InvalidArgumentError
from corral.jsonl import records
from corral.options import yaml_mapping

HOURS_PER_YEAR = 8760.0
RAPL = "/sys/class/powercap/intel-rapl:*/energy_uj"  # package domains (intel-rapl:N; AMD's too, by this name)


@dataclass
class Hardware:
    """The fields of corral/data/hardware.yaml, whose values are the defaults."""

    name: str
    price_usd: float
    lifetime_years: float
    utilization: float
    watts: float
    electricity_usd_per_kwh: float
    overhead_usd_per_year: float

    @classmethod
    def load(cls, path: str | Path | None) -> Hardware:
        """The bundled defaults, with the fields of the YAML at `path` (if any) over them."""
        data = yaml_mapping(files("corral").joinpath("data/hardware.yaml"), "--hardware")
        given = yaml_mapping(path, "--hardware") if path else {}
        if unknown := sorted(set(given) - set(data)):
            raise InvalidArgumentError(f"--hardware {path}: unknown field(s) {unknown}; known: {sorted(data)}")
        hw = cls(**{**data, **given})
        for f in fields(cls)[1:]:
            v = getattr(hw, f.name)
            if not isinstance(v, int | float) or v < 0:
                raise InvalidArgumentError(f"--hardware {path}: {f.name} must be a number >= 0, not {v!r}")
        if not (0 < hw.utilization <= 1) or hw.lifetime_years <= 0:
            raise InvalidArgumentError(f"--hardware {path}: utilization must be in (0, 1] and lifetime_years > 0")
        return hw

    def fixed_usd_per_hour(self) -> float:
        """Write-off and overhead spread over the working hours."""
        working = HOURS_PER_YEAR * self.utilization
        return self.price_usd / (self.lifetime_years * working) + self.overhead_usd_per_year / working

    def usd_per_hour(self) -> float:
        """The cost of one working hour at the declared power."""
        return self.fixed_usd_per_hour() + self.watts / 1000 * self.electricity_usd_per_kwh


def api_prices(path: str | Path | None = None) -> dict[str, Any]:
    data = yaml_mapping(path or files("corral").joinpath("data/api_prices.yaml"), "--prices")
    models = data.get("models")
    if not isinstance(models, list) or not all(isinstance(m, dict) and {"name", "input", "output"} <= set(m)
                                               for m in models):
        raise InvalidArgumentError(f"--prices {path}: expected `models:` a list of {{name, input, output}}")
    return data


def costs(hw: Hardware, tokens_per_s: float, joules_per_token: float | None = None) -> dict[str, float]:
    """$ and kWh per 1M tokens at `tokens_per_s` (energy: measured joules per token, else declared watts)."""
    if tokens_per_s <= 0:
        raise InvalidArgumentError(f"a throughput of {tokens_per_s} tokens/s: nothing to cost")
    hours = 1e6 / (tokens_per_s * 3600)
    jpt = joules_per_token if joules_per_token is not None else hw.watts / tokens_per_s
    kwh = jpt * 1e6 / 3.6e6
    usd = hours * hw.fixed_usd_per_hour() + kwh * hw.electricity_usd_per_kwh
    return {"usd_per_1m_tokens": usd, "kwh_per_1m_tokens": kwh, "hours_per_1m_tokens": hours}


# --- energy counters ------------------------------------------------------------------------------------------------


class EnergyMeter:
    """Joules since it was made: RAPL package counters, else NVML's GPU counters, else declared watts x time."""

    def __init__(self, watts: float):
        self.watts = watts
        self.rapl = [p for p in sorted(glob.glob(RAPL))
                     if Path(p).parent.name.count(":") == 1 and _readable(p)]  # packages, not their sub-domains
        self.nvml = _nvml_handles()
        self.source = "rapl" if self.rapl else "nvml" if self.nvml else "declared"
        self.last = self._raw()
        self.total = 0.0

    def _raw(self) -> list[float]:
        if self.rapl:
            return [int(Path(p).read_text()) / 1e6 for p in self.rapl]
        if self.nvml:
            import pynvml

            return [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3 for h in self.nvml]
        return [time.monotonic() * self.watts]

    def joules(self) -> float:
        now = self._raw()
        for i, (a, b) in enumerate(zip(self.last, now, strict=True)):
            if b >= a:
                self.total += b - a
            elif self.rapl:  # the counter wrapped
                top = int(Path(self.rapl[i]).with_name("max_energy_range_uj").read_text()) / 1e6
                self.total += top - a + b
        self.last = now
        return self.total


def _readable(path: str) -> bool:
    try:
        int(Path(path).read_text())
        return True
    except (OSError, ValueError):
        return False


def _nvml_handles() -> list[Any]:
    try:
        import pynvml
        import torch

        if not torch.cuda.is_available():
            return []
        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no pynvml, no driver, no permission: fall back to the declared watts
        return []


# --- what corral measured -------------------------------------------------------------------------------------------


def measure_serving(model: Any, tok: Any, meter: EnergyMeter, prompts: int = 32, max_tokens: int = 128,
                    max_batch: int = 16) -> dict[str, float]:
    """Chat prompts (corral's bundled general ones) answered greedily through the engine, `max_batch` at a time:
    output tokens/s, prompt tokens/s and joules per output token."""
    from corral.chat import encode_chat
    from corral.engine.sampling import SamplingParams
    from corral.text import generate_many

    texts = [r["prompt"] for r in records(files("corral.train").joinpath("prompts/general.jsonl"))][:prompts]
    ids = [encode_chat(tok, [{"role": "user", "content": t}]) for t in texts]
    generate_many(model, tok, ids[:2], SamplingParams(max_tokens=8))  # warm-up: kernels built, caches made
    j0, t0 = meter.joules(), time.perf_counter()
    gens = generate_many(model, tok, ids, SamplingParams(max_tokens=max_tokens), max_batch=max_batch)
    seconds, joules = time.perf_counter() - t0, meter.joules() - j0
    out = sum(g.completion_tokens for g in gens)
    return {"requests": len(gens), "output_tokens": out, "prompt_tokens": sum(len(i) for i in ids),
            "seconds": seconds, "output_tokens_per_s": out / seconds, "joules": joules,
            "joules_per_output_token": joules / max(1, out), "energy_source": meter.source}


def finetune_run(run: str | Path) -> dict[str, Any]:
    """A `corral finetune` run's own timing: its training seconds and trained tokens (RUN/metrics.jsonl)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise InvalidArgumentError(f"--finetune {run}: no metrics.jsonl; pass a corral finetune or distill run "
                                   "folder")
    recs = records(path)
    timed = [r for r in recs if "train_s" in r]
    if not timed:
        raise InvalidArgumentError(f"--finetune {run}: its metrics.jsonl has no timings (made before corral "
                                   "logged train_s); rerun it to cost it")
    return {"run": str(run), "steps": recs[-1]["step"], "seconds": timed[-1]["train_s"],
            "tokens": timed[-1].get("trained_tokens")}
