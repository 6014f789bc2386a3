"""``vtr demo``: methods x budgets as a table a person can read, printed row by row as rows finish.

By default on the shipped tiny LLaVA trained on the synthetic benchmark (``vtr.assets``): accuracy on
test samples, its retention relative to keeping every token, tokens kept and FLOPs. With a built-in
random tiny model (``vtr.testing.BUILDERS``) or a checkpoint directory (or a hub id where downloads are
possible, loaded with the Auto classes): the mechanics on one image (tokens, prefill time, the text).

Methods that take a budget run at every ``--budgets`` entry; DyMU, whose token count follows per-layer
thresholds, runs at every ``--dymu-removed`` level (tokens merged per encoder layer on average): the
shipped model's thresholds are calibrated on synthetic scenes and shipped next to it, other models are
calibrated first on random images like the one the mechanics table shows. A configuration a method
refuses (at wrap, e.g. ToMe on the Qwen ViT, or when it runs, e.g. a budget PDrop cannot average) is a
row saying ``not run: <why>``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from vtr.assets import NAME as TRAINED
from vtr.commands.common import DTYPES, CommandError, names, numbers, torch_dtype
from vtr.commands.tables import TableWriter

HELP = ("methods x budgets: accuracy on the synthetic benchmark (default model), or tokens kept, prefill time "
        "and answer on one image")
DYMU_LEVELS = (4, 8, 16)  # tokens merged per encoder layer where no thresholds are shipped
CALIBRATION_IMAGES = 32  # images like the demo's DyMU is calibrated on, for models without shipped thresholds
PICTURE = "demo_kept.png"
PICTURE_SCENES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=TRAINED,
                        help=f"{TRAINED} (the shipped trained tiny LLaVA: accuracy table), a built-in random tiny "
                             f"model named after its family (llava, qwen2_5_vl, gemma4, ...: vtr.testing.BUILDERS; "
                             f"mechanics table) or a checkpoint directory / hub id")
    parser.add_argument("--samples", type=int, default=200, help=f"synthetic test samples ({TRAINED} only)")
    parser.add_argument("--methods", type=names, default=None,
                        help="comma-separated method names (default: every method; see `vtr methods`)")
    parser.add_argument("--budgets", type=numbers, default=[0.5, 0.25, 0.11],
                        help="comma-separated ints (tokens kept per image) or fractions in (0, 1]")
    parser.add_argument("--dymu-removed", type=numbers, default=None,
                        help=f"dymu's levels: tokens merged per encoder layer on average (`vtr calibrate "
                             f"--target-removed`); default: the levels shipped with {TRAINED}, else "
                             f"{','.join(map(str, DYMU_LEVELS))} calibrated on {CALIBRATION_IMAGES} random images like "
                             f"the demo's")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens generated (mechanics table only)")
    parser.add_argument("--repeats", type=int, default=3, help="prefill timing repeats (mechanics table only)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="model dtype")
    parser.add_argument("--picture", default=PICTURE,
                        help=f"also write a PNG of what each method kept of {PICTURE_SCENES} synthetic test scenes at "
                             f"the smallest budget (`vtr show`, needs matplotlib); 'none' to skip")


def run(args: argparse.Namespace) -> int:
    import vtr
    from vtr.commands.loading import load

    for budget in args.budgets:
        try:
            vtr.Budget(budget)
        except ValueError as error:
            raise CommandError(f"--budgets {budget}: {error}") from None
    model, processor = load(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    methods = args.methods or [m for m in vtr.available_methods() if m != "none"]  # "none" is the first row
    unknown = sorted(set(methods) - set(vtr.available_methods()))
    if unknown:
        raise CommandError(f"--methods: unknown {unknown}; available: {', '.join(vtr.available_methods())}")
    thresholds = DymuThresholds(model, processor, args.model)
    configs = list(configurations(methods, args.budgets, args.dymu_removed or thresholds.default_levels()))
    if args.picture != "none":
        from vtr.show.figure import matplotlib_figure_class

        try:
            matplotlib_figure_class()  # before the tables, not after them
        except ImportError as error:
            raise CommandError(f"--picture: {error}; or pass --picture none") from None
    _tables(args, model, processor, configs, thresholds)
    if args.picture != "none":
        write_picture(model, processor, configs, thresholds, args.budgets[-1], args.picture)
        print(f"picture: {args.picture}", flush=True)
    return 0


def _tables(args: argparse.Namespace, model, processor, configs: list["Config"], thresholds: "DymuThresholds") -> None:
    if args.model == TRAINED:
        print(f"model: {args.model} (vtr.assets, trained on vtr.eval.synthetic; {args.device}, {args.dtype}); "
              f"{args.samples} synthetic test samples, greedy one-word answers; FLOPs: vtr.measure.flops, per "
              f"sample", flush=True)
        _print_rows(ACCURACY_HEADER, configs, accuracy_rows(model, processor, configs, thresholds, args.samples))
        return
    print(f"model: {args.model} ({model.config.model_type}, {args.device}, {args.dtype}); prefill = median of "
          f"{args.repeats} forward passes incl. vision encoder and reduction", flush=True)
    _print_rows(MECHANICS_HEADER, configs,
                mechanics_rows(model, processor, configs, thresholds, args.max_new_tokens, args.repeats))


def write_picture(model, processor, configs: list["Config"], thresholds: "DymuThresholds", budget: int | float,
                  path: str) -> None:
    """What each configuration at ``budget`` (DyMU: at its first level) kept of the first ``PICTURE_SCENES``
    synthetic test scenes, one column per scene (``vtr.show``); a configuration the picture cannot set up
    (DyMU thresholds that cannot be calibrated) is left out with a line saying why."""
    from vtr.errors import ReductionError
    from vtr.eval import synthetic
    from vtr.show.maps import pixel_maps
    from vtr.show.run import Column, grid, visual_inputs

    levels = [config.dymu_removed for config in configs if config.dymu_removed is not None]
    rows = []
    for config in configs:
        if config.budget != budget and (config.dymu_removed is None or config.dymu_removed != levels[0]):
            continue
        try:
            options = _options(config, thresholds)
        except (ValueError, ReductionError) as error:
            print(f"picture: {config.method} {config.label} left out: {error}", flush=True)
            continue
        label = config.method if config.budget is not None else f"{config.method} {config.label}"
        rows.append((label, config.method, {key: value for key, value in options.items() if key != "budget"}))
    columns = []
    for sample in synthetic.samples("test", PICTURE_SCENES):
        inputs = visual_inputs(model, processor, sample.image(), sample.question, None)
        columns.append(Column("", inputs, pixel_maps(model, inputs)[0], budget,
                              caption=f"{sample.question} (answer: {sample.answer})"))
    heading = f"{model.config.model_type} at budget {budget}: what each method kept of synthetic test scenes"
    grid(model, processor, rows, columns, heading=heading, max_new_tokens=1).savefig(path)


@dataclass(frozen=True)
class Config:
    """One row of the table: a method at a budget (or a DyMU level), or one the demo cannot configure."""

    method: str
    label: str  # the budget column: "0.25", "64", "r=8" (DyMU: merged per encoder layer), "-"
    budget: int | float | None = None
    dymu_removed: int | None = None


def configurations(methods: list[str], budgets: list[int | float], dymu_levels: list[int]) -> Iterator[Config]:
    from vtr.methods import takes_budget

    for method in methods:
        if takes_budget(method):
            yield from (Config(method, str(budget), budget=budget) for budget in budgets)
        elif method == "dymu":
            yield from (Config(method, f"r={level}", dymu_removed=level) for level in dymu_levels)
        else:  # a method whose options the demo cannot choose
            yield Config(method, "-")


class DymuThresholds:
    """DyMU thresholds per level for one model: shipped (``vtr.assets``) or calibrated once per level."""

    def __init__(self, model, processor, name: str) -> None:
        self.model, self.processor, self.name = model, processor, name
        self.cache: dict[int, Any] = {}

    def default_levels(self) -> list[int]:
        from vtr.assets import shipped_dymu_levels

        return (shipped_dymu_levels() if self.name == TRAINED else []) or list(DYMU_LEVELS)

    def __call__(self, level: int) -> Any:
        """A thresholds file or list; raises ``ValueError``/``ReductionError`` when the level cannot be met."""
        if level not in self.cache:
            from vtr.assets import dymu_thresholds

            shipped = dymu_thresholds(level) if self.name == TRAINED else None
            self.cache[level] = str(shipped) if shipped else self._calibrate(level)
        return self.cache[level]

    def _calibrate(self, level: int) -> list[float]:
        from vtr.calibration import calibrate
        from vtr.commands.loading import demo_image

        images = [demo_image(self.model, seed=1 + seed) for seed in range(CALIBRATION_IMAGES)]  # seed 0: the demo's
        return calibrate(self.model, images, level, processor=self.processor)


def _options(config: Config, thresholds: DymuThresholds) -> dict[str, Any]:
    if config.dymu_removed is not None:
        return {"thresholds": thresholds(config.dymu_removed)}
    if config.budget is None:
        raise ValueError(f"{config.method} takes no budget and the demo does not choose its options")
    return {"budget": config.budget}


def _run_reduced(model, config: Config, thresholds: DymuThresholds, measure: Callable[[], Any]) -> Any:
    """``measure()`` with the model wrapped for ``config`` (unwrapped after); a ``str`` (the reason) when the
    method refuses the configuration, at wrap or while it runs."""
    import vtr

    if config.method == "none":
        return measure()
    try:
        vtr.wrap(model, config.method, **_options(config, thresholds))
    except (ValueError, vtr.ReductionError) as error:  # refused at wrap: an option this model cannot take
        return str(error)
    try:
        return measure()
    except vtr.ReductionError as error:  # refused on the inputs, e.g. a budget PDrop cannot average
        return str(error)
    finally:
        vtr.unwrap(model)


def _print_rows(header: tuple[str, ...], configs: list[Config], rows: Iterator[tuple[str, ...]]) -> None:
    """The table head, then each row the moment it is measured."""
    widths = (max(len(c.method) for c in configs + [Config("none", "-")]),
              max(len(c.label) for c in configs + [Config("none", "-")]))
    writer = TableWriter(header, widths + (0,) * (len(header) - 2))
    writer.print_head()
    for cells in rows:
        writer.print_row(cells)


MECHANICS_HEADER = ("method", "budget", "visual in", "visual out", "last layer", "prompt", "prefill ms",
                    "generated text")


def mechanics_rows(model, processor, configs: list[Config], thresholds: DymuThresholds, max_new_tokens: int = 8,
                   repeats: int = 3) -> Iterator[tuple[str, ...]]:
    """Table cells per configuration, the unreduced model (method ``none``) first: visual tokens before,
    entering the LLM and at its last layer, prompt length, median prefill time and the generated text."""
    import torch

    import vtr
    from vtr.commands.loading import demo_inputs

    inputs = demo_inputs(model, processor)
    prompt_len = inputs["input_ids"].shape[1]
    n_visual = int((inputs["input_ids"][0] == model.config.image_token_id).sum())

    def measure() -> tuple[str, ...]:
        with torch.no_grad():
            prefill = _median_ms(lambda: model(**inputs), repeats)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        text = processor.tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True)
        sample = vtr.stats(model).samples[0] if vtr.is_wrapped(model) else None
        visual_out = sample.visual_after if sample else n_visual
        last_layer = sample.visual_per_layer[-1] if sample and sample.visual_per_layer else visual_out
        prompt_out = sample.prompt_after if sample else prompt_len
        return (str(visual_out), str(last_layer), f"{prompt_len}->{prompt_out}", f"{prefill:.1f}", text)

    for config in [Config("none", "-"), *configs]:
        cells = _run_reduced(model, config, thresholds, measure)
        if isinstance(cells, str):
            cells = ("-", "-", f"{prompt_len}->-", "-", f"not run: {cells}")
        yield (config.method, config.label, str(n_visual), *cells)


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


ACCURACY_HEADER = ("method", "budget", "visual tokens (LLM in / last layer)", "accuracy", "retention",
                   "MFLOPs / sample", "FLOPs vs none")


def accuracy_rows(model, processor, configs: list[Config], thresholds: DymuThresholds, samples: int,
                  batch_size: int = 100) -> Iterator[tuple[str, ...]]:
    """Table cells per configuration on the first ``samples`` test samples of ``vtr.eval.synthetic``, the
    unreduced model (method ``none``) first: visual tokens, accuracy, retention (accuracy / keep-all
    accuracy) and FLOPs per sample."""
    from vtr.eval import accuracy, synthetic

    items = synthetic.samples("test", samples)
    batches = accuracy.encode(processor, items, batch_size)
    reference = None
    for config in [Config("none", "-"), *configs]:
        score = _run_reduced(model, config, thresholds, lambda: accuracy.score(model, processor, items, batches))
        if isinstance(score, str):
            yield (config.method, config.label, "-", "-", "-", "-", f"not run: {score}")
            continue
        reference = reference or score
        yield (config.method, config.label, f"{score.visual_llm_input:.0f} / {score.visual_last_layer:.0f}",
               f"{score.accuracy:.3f}", _ratio(score.accuracy, reference.accuracy), f"{score.flops / 1e6:.0f}",
               f"{score.flops / reference.flops:.0%}")


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.0%}" if reference else "-"
