"""Memory benchmark (issue 17): peak memory of ``retain diagnose`` and of EWC's Fisher estimate,
as a multiple of the model's float32 bytes, on models of growing size.

Each measurement runs in its own child process and reads that process's resident-set high-water
mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; tracemalloc does not see torch's
allocations). Models: ``135m`` is SmolLM2-135M (registry ``smollm2-135m``); ``360m`` and ``1b``
are randomly initialised Llama-architecture models built from a ``LlamaConfig`` (SmolLM2-360M's
and a Llama-3.2-1B-like shape with SmolLM2's 49,152-token vocabulary), saved with SmolLM2's
tokenizer; no download. The tuned model is a copy with every weight perturbed by 1 %.

* ``diagnose``: :func:`retain.experiment.diagnose.run_diagnose` on CPU (base vs perturbed copy,
  ``--only output,representation,importance``, general text as both texts); ratio = peak RSS /
  (2 × model bytes), target <= 3.
* ``fisher``: :func:`retain.diagnostics.fisher.estimate_fisher` as EWC calls it (empirical,
  ``batch_size=32``); ratio = (peak RSS - RSS after loading) / model bytes, target <= 2. Every
  weight is read once before "after loading" is taken: ``from_pretrained`` maps safetensors
  files lazily, so without it the first forward pages the model itself in and the model's own
  bytes (0.9x of SmolLM2-135M) were counted as Fisher memory. (EWC estimates the Fisher of a
  model it has just trained, whose weights are resident.)

Run: ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 .venv/bin/python benchmarks/bench_memory.py
--sizes 135m,360m,1b``. Prints one table and the extrapolation to 7B and 70B parameters
(``peak = model bytes × (1 + ratio)`` for the Fisher, ``2 × model bytes × ratio`` for diagnose,
with the largest measured ratio). ``--save-dtype bfloat16`` halves the disk the built models take
(they load as float32 either way).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

GIB = 2**30
SHAPES: dict[str, dict[str, int]] = {  # LlamaConfig fields; 135m is the registry model
    "360m": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    },
}


def rss_now() -> int:
    """Current resident bytes of this process (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    """Resident-set high-water mark of this process in bytes (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def prepare(size: str, root: Path) -> tuple[Path, Path]:
    """``(base, tuned)`` folders of ``size``; built in a child so the parent stays small."""
    base, tuned = root / f"{size}-base", root / f"{size}-tuned"
    if not (tuned / "config.json").exists():
        child(["prepare", size, str(root)])
    return base, tuned


def _prepare(size: str, root: Path, dtype: torch.dtype) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from retain.assets.models import model_folder

    smol = Path(model_folder("smollm2-135m")[0])
    tokenizer = AutoTokenizer.from_pretrained(smol)
    if size == "135m":
        model = LlamaForCausalLM.from_pretrained(smol, dtype=torch.float32)
    else:
        config = LlamaConfig.from_pretrained(smol)
        for key, value in SHAPES[size].items():
            setattr(config, key, value)
        config.head_dim = config.hidden_size // config.num_attention_heads
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.to(dtype).save_pretrained(root / f"{size}-base")
    tokenizer.save_pretrained(root / f"{size}-base")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.01 * torch.randn_like(p))
    model.save_pretrained(root / f"{size}-tuned")
    tokenizer.save_pretrained(root / f"{size}-tuned")


def _diagnose(base: Path, tuned: Path, args: argparse.Namespace) -> dict[str, Any]:
    from retain.experiment.diagnose import DiagnoseConfig, run_diagnose

    config = DiagnoseConfig(
        base=str(base),
        tuned=str(tuned),
        data="general_text",
        only=("output", "representation", "importance"),
        samples=args.samples,
        fisher_samples=args.fisher_samples,
        max_length=args.max_length,
        device="cpu",
        max_memory_gb=args.max_memory_gb,
    )
    record = run_diagnose(config)
    return {"peak": rss_peak(), "params": record.base.parameters}


def _fisher(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    from retain.assets.models import load_model
    from retain.data.text import causal_lm_task
    from retain.diagnostics.fisher import estimate_fisher
    from retain.experiment.diagnose_inputs import dataset_texts

    texts = dataset_texts("general_text", None, ("test", "validation", "train"), "--general")
    loaded = load_model(str(base))
    task = causal_lm_task("general", loaded.tokenizer, texts, block_size=args.max_length)
    params = sum(p.numel() for p in loaded.model.parameters())
    with torch.no_grad():  # page every weight in: "above the loaded model" means resident
        for p in loaded.model.parameters():
            p.sum()
    after_load = rss_now()
    budget = None if args.max_memory_gb is None else int(args.max_memory_gb * GIB)
    estimate_fisher(
        loaded.model, task, max_samples=args.fisher_samples, batch_size=32, max_memory=budget
    )
    return {"peak": rss_peak(), "after_load": after_load, "params": params}


def child(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` in a fresh interpreter (this file); return the JSON it prints last."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    done = subprocess.run(
        [sys.executable, __file__, "--child", *argv, *sys.argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {argv} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="135m,360m", help="comma list of 135m, 360m, 1b")
    parser.add_argument("--cases", default="fisher,diagnose", help="comma list")
    parser.add_argument("--samples", type=int, default=16, help="sequences for CKA and KL")
    parser.add_argument("--fisher-samples", type=int, default=4, help="sequences per Fisher")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--max-memory-gb", type=float, default=None, help="working-set budget")
    parser.add_argument("--root", default=None, help="folder for the built models (kept)")
    parser.add_argument(
        "--save-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="dtype of the built models' files (they load as float32)",
    )
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child:
        kind, *rest = args.child
        if kind == "prepare":
            _prepare(rest[0], Path(rest[1]), getattr(torch, args.save_dtype))
            return
        base, tuned = Path(rest[0]), Path(rest[1])
        result = _fisher(base, args) if kind == "fisher" else _diagnose(base, tuned, args)
        print(json.dumps(result))
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="bench_memory-"))
    print(
        f"{'model':>6} {'params':>7} {'f32 GB':>7} {'case':>9} {'peak GB':>8} {'ratio':>6} "
        f"{'target':>6} {'s':>6}"
    )
    ratios: dict[str, list[float]] = {}
    for size in args.sizes.split(","):
        base, tuned = prepare(size, root)
        for case in args.cases.split(","):
            start = time.perf_counter()
            got = child([case, str(base), str(tuned)])
            seconds = time.perf_counter() - start
            params = int(got["params"])
            model_bytes = 4 * params
            if case == "fisher":
                ratio, target = (got["peak"] - got["after_load"]) / model_bytes, 2.0
            else:
                ratio, target = got["peak"] / (2 * model_bytes), 3.0
            ratios.setdefault(case, []).append(ratio)
            print(
                f"{size:>6} {params / 1e6:>6.0f}M {model_bytes / 1e9:>7.2f} {case:>9} "
                f"{got['peak'] / 1e9:>8.2f} {ratio:>6.2f} {target:>6.1f} {seconds:>6.0f}",
                flush=True,
            )
    for case, values in ratios.items():
        worst = max(values)
        for billions in (7, 70):
            print(extrapolate(case, worst, billions))


def extrapolate(case: str, ratio: float, billions: float) -> str:
    """One line: the peak of ``case`` on a ``billions``-parameter float32 model at ``ratio``.

    Fisher: ``peak = M + ratio × M`` with ``M = 4 bytes × parameters`` (the loaded model plus
    the estimate's memory above it); diagnose: ``peak = ratio × 2M`` (two models loaded).

    >>> extrapolate("fisher", 1.5, 7)
    'fisher at 7B: 28 GB model + 1.50 x 28 GB = 70 GB peak'
    """
    model_gb = 4 * billions
    if case == "fisher":
        return (
            f"{case} at {billions:g}B: {model_gb:g} GB model + {ratio:.2f} x {model_gb:g} GB = "
            f"{model_gb * (1 + ratio):.0f} GB peak"
        )
    return (
        f"{case} at {billions:g}B: {ratio:.2f} x 2 x {model_gb:g} GB = "
        f"{2 * model_gb * ratio:.0f} GB peak"
    )


if __name__ == "__main__":
    main()
