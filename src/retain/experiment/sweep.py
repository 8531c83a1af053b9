"""``retain sweep``: run strategy variants over seeds and compare them.

Variants come from ``--strategies a,b,c`` (each a variant named in the config's ``sweep.variants``,
``naive`` for none, or a strategy name: the config's entry of that name with its parameters, else
the strategy with its defaults), or, without it, from ``sweep.variants`` (or the config's own
``strategies`` as one variant). ``--grid ewc.strength=1e2,1e3`` replaces every variant that uses
``ewc`` by one variant per value (``ewc strength=100``, ...); several grids multiply. The reference
baselines ``joint`` and ``single`` (``sweep.references``, or named in ``--strategies``) run beside
the variants with no strategies, budget or monitor (:mod:`retain.training.references`). Each
(variant, seed) is a run directory ``<out>/<variant>/seed-<seed>``; seeds run in the outer loop, so
every finished seed compares all variants. A finished run is reused when the sweep is run again
(``overwrite`` runs everything afresh); the comparison (``comparison.json``, ``report.html``,
``plots/``) is written at the end. Experiment trackers (``tracking``) get one run per (variant,
seed), all in ``<out>/tracking`` unless ``tracking.dir`` says otherwise.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.atomic_files import write_text
from retain.errors import RetainError
from retain.experiment.build import build_strategies
from retain.experiment.config import (
    ExperimentConfig,
    check_seeds,
    config_from_dict,
    config_to_yaml,
)
from retain.experiment.overrides import apply_overrides, parse_value
from retain.experiment.run_state import has_trained, run_state
from retain.experiment.runner import RunSpec, run_experiment
from retain.experiment.training_settings import check_training
from retain.output_dirs import MARKER, check_output_parent, output_kind, output_lock, write_marker
from retain.training.references import REFERENCES

__all__ = ["SweepSpec", "parse_seeds", "run_sweep", "sweep_variants", "variant_folder"]

Entries = list[dict[str, Any]]


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: the base config, the variants to compare and the seeds.

    Attributes:
        config: the base experiment.
        strategies: variant names (None: ``sweep.variants``, or the config's strategies).
        grid: ``strategy.parameter=v1,v2,...`` items.
        seeds: the seeds (None: ``sweep.seeds`` or ``seeds`` of the config).
        out: the sweep folder (None: ``config.output_dir()``).
        overwrite: run every variant afresh, replacing earlier runs.
        say: receives one-line progress messages.
    """

    config: ExperimentConfig
    strategies: list[str] | None = None
    grid: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    out: Path | None = None
    overwrite: bool = False
    say: Callable[[str], None] | None = None


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]`` (a count); ``"0,5,7"`` -> those seeds.

    >>> parse_seeds("3"), parse_seeds("0,5")
    ([0, 1, 2], [0, 5])
    """
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RetainError(f"--seeds {text!r}: give a count (3) or a list (0,1,2)") from None
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise RetainError(
                f"--seeds {text!r}: a count must be >= 1; for the one seed {values[0]} write "
                f"--seeds {values[0]},"
            )
        check_seeds([values[0] - 1], "--seeds")  # a count N runs seeds 0 .. N-1
        return list(range(values[0]))
    if not values:
        raise RetainError(f"--seeds {text!r}: give a count (3) or a list (0,1,2)")
    check_seeds(values, "--seeds")
    return values


def _named(config: ExperimentConfig, name: str) -> Entries:
    from retain.strategies.base import STRATEGIES

    if name in config.sweep.variants:
        return copy.deepcopy(config.sweep.variants[name])
    if name == "naive" or name in REFERENCES:
        return []
    if name not in STRATEGIES:
        variants = list(config.sweep.variants)
        names = [*variants, *STRATEGIES.names(), "naive", *REFERENCES]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RetainError(
            f"--strategies: unknown variant {name!r}; {hint}a variant is naive, joint, single, "
            f"a strategy (retain ls) or one of sweep.variants ({', '.join(variants) or 'none'})"
        )
    canonical = STRATEGIES.entry(name).name
    own = [e for e in config.strategies if e["name"] == canonical]
    return copy.deepcopy(own[:1]) if own else [{"name": canonical}]


def _grid(item: str) -> tuple[str, str, list[Any]]:
    key, sep, raw = item.partition("=")
    strategy, dot, parameter = key.strip().partition(".")
    values = [parse_value(v) for v in raw.split(",") if v.strip()]
    if not sep or not dot or not strategy or not parameter or not values:
        raise RetainError(
            f"--grid {item!r} is not strategy.parameter=v1,v2 (e.g. ewc.strength=1e2,1e3)"
        )
    return strategy, parameter, values


def sweep_variants(
    config: ExperimentConfig, names: list[str] | None, grid: list[str]
) -> dict[str, Entries]:
    """The variants to run, by name (see the module docstring)."""
    if names:
        variants = {name: _named(config, name) for name in names}
    else:
        if config.sweep.variants:
            variants = copy.deepcopy(config.sweep.variants)
        else:
            variants = {config.variant_label: copy.deepcopy(config.strategies)}
        variants.update({name: [] for name in config.sweep.references})
    seen: dict[tuple[str, str], str] = {}
    for item in grid:
        strategy, parameter, values = _grid(item)
        if (strategy, parameter) in seen:
            raise RetainError(
                f"--grid names {strategy}.{parameter} twice ({seen[strategy, parameter]!r} and "
                f"{item!r}); give all its values in one --grid"
            )
        seen[strategy, parameter] = item
        if any(a == b for k, a in enumerate(values) for b in values[k + 1 :]):
            raise RetainError(f"--grid {item!r} lists a value twice; list each value once")
        expanded: dict[str, Entries] = {}
        used = False
        for name, entries in variants.items():
            hits = [k for k, e in enumerate(entries) if e["name"] == strategy]
            if not hits:
                expanded[name] = entries
                continue
            used = True
            for value in values:
                changed = copy.deepcopy(entries)
                for k in hits:
                    changed[k][parameter] = value
                expanded[f"{name} {parameter}={value}"] = changed
        if not used:
            raise RetainError(
                f"--grid {item!r}: no variant uses {strategy!r}; add it to --strategies"
            )
        variants = expanded
    return variants


def variant_config(config: ExperimentConfig, name: str, entries: Entries, seed: int) -> Any:
    """The config of one (variant, seed) run: the variant's strategies, its ``sweep.settings``
    overrides (looked up by the name before any ``--grid`` suffix), one seed. A reference
    (``joint``, ``single``) trains without strategies, budget or monitor."""
    data = config.model_dump(mode="json")
    data.update({"strategies": entries, "seeds": [seed], "variant": name, "out": None})
    if name in REFERENCES:
        data.update({"reference": name, "budget": None, "monitor": None})
    overrides = config.sweep.settings.get(name.split(" ")[0], [])
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(data, source=f"sweep variant {name!r}")


def variant_folder(name: str) -> str:
    """A folder name for a variant label (``ewc strength=100`` -> ``ewc_strength-100``).

    A name with a path separator, or one that would be ``.``, ``..`` or hidden, is refused: a
    variant's runs always stay inside the sweep folder.

    >>> variant_folder("ewc strength=100")
    'ewc_strength-100'
    """
    folder = re.sub(r"[^A-Za-z0-9._+-]+", "_", name.replace("=", "-")).strip("_")
    if "/" in name or "\\" in name or not folder or folder.startswith("."):
        raise RetainError(
            f"variant name {name!r} cannot name a folder inside the sweep; start it with a letter "
            "or digit and use no '/' (e.g. ewc-strong)"
        )
    return folder


def run_sweep(spec: SweepSpec) -> Path:
    """Run every (seed, variant) and write the comparison; returns the comparison report path.

    Every variant's settings, strategies and folder name are checked before anything is written;
    the sweep folder is locked for the whole sweep (:func:`retain.output_dirs.output_lock`); a
    sweep that created its folder and fails before any run has a checkpoint leaves nothing.
    """
    config = spec.config
    variants = sweep_variants(config, spec.strategies, spec.grid)
    seeds = spec.seeds or config.sweep.seeds or config.seeds
    check_seeds(seeds, "seeds")
    for name, entries in variants.items():  # every variant's settings and strategies, up front
        checked = variant_config(config, name, entries, seeds[0])
        try:
            build_strategies(entries, checked, None, None)
            check_training(checked)
        except RetainError as error:
            raise RetainError(f"variant {name!r}: {error}") from None
    folders = [variant_folder(name) for name in variants]
    if len(set(folders)) < len(folders):
        raise RetainError("two variants map to the same folder; give them distinct names")
    if "tracking" in folders and config.tracking.report_to and not config.tracking.dir:
        raise RetainError("variant 'tracking' would share the trackers' folder; rename the variant")
    out = spec.out or config.output_dir()
    check_output_parent(out)  # the lock lives beside it
    with output_lock(out):
        plan = config_to_yaml(config) + f"# variants: {variants}\n# seeds: {seeds}\n"
        created = not out.exists()
        _prepare_sweep(out, plan, spec.overwrite)
        try:
            return _run_all(spec, out, variants, seeds)
        except BaseException:
            if created and not _has_progress(out):
                shutil.rmtree(out, ignore_errors=True)
            raise


def _has_progress(out: Path) -> bool:
    """Whether any run of the sweep in ``out`` finished or has trained to a checkpoint."""
    runs = [p for p in out.glob("*/seed-*") if p.is_dir()]
    return any((run / "results.json").is_file() or has_trained(run) for run in runs)


def _run_all(spec: SweepSpec, out: Path, variants: dict[str, Entries], seeds: list[int]) -> Path:
    from retain.report.write import write_comparison_report

    say = spec.say or (lambda _line: None)
    config = spec.config
    run_dirs = []
    total = len(variants) * len(seeds)
    for n, (seed, (name, entries)) in enumerate(itertools.product(seeds, variants.items())):
        run_config = variant_config(config, name, entries, seed)
        folder = out / variant_folder(name) / f"seed-{seed}"
        run_dirs.append(folder)
        if not spec.overwrite and run_state(folder, config_to_yaml(run_config)) == "finished":
            say(f"[{n + 1}/{total}] {name} seed {seed}: finished earlier, reused")
            continue
        say(f"[{n + 1}/{total}] {name} seed {seed}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        run_experiment(
            RunSpec(
                run_config,
                out=folder,
                overwrite=spec.overwrite,
                progress=False,
                say=say,
                tracking_dir=out / "tracking",  # one store for all the sweep's runs
            )
        )
    report: Path = write_comparison_report(run_dirs, out)
    return report


def _prepare_sweep(out: Path, plan: str, overwrite: bool) -> None:
    """Make ``out`` a sweep folder (marker, ``sweep.yaml``); refuse anything else. A sweep folder
    is never deleted: ``overwrite`` replaces its runs one by one (:func:`run_experiment`)."""
    check_output_parent(out)
    record = out / "sweep.yaml"
    if out.is_dir() and any(out.iterdir()):
        if output_kind(out) != "sweep":
            raise RetainError(
                f"{str(out)!r} exists and is not a retain sweep folder (no {MARKER} of a sweep); "
                "choose another --out (it is never deleted, even with --overwrite)"
            )
        same = record.is_file() and record.read_text(encoding="utf-8") == plan
        if not same and any(out.rglob("results.json")) and not overwrite:
            raise RetainError(
                f"{str(out)!r} holds a sweep of other settings; choose another --out or pass "
                "--overwrite to replace it"
            )
    out.mkdir(exist_ok=True)
    write_marker(out, "sweep")
    write_text(record, plan)
