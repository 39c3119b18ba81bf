"""The `circuitlib` command: discover circuits, edit variants, inspect circuit files, run a sweep, write a report.

The options of `discover` and `edit` are the fields of DiscoveryConfig and EditConfig (circuitlib.options): each
setting's default and doc live on its field only. `sweep` and `report` hand their arguments to the sweep's and the
analysis' own command lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from circuitlib import options, settings
from circuitlib.data import SPLIT_BEFORE_RECORDED, SplitSpec
from circuitlib.errors import InputError
from circuitlib.jsonio import json_safe, write_json
from circuitlib.types import VARIANTS, density_key

T = TypeVar("T")


def writable(path: Path, what: str) -> Path:
    """`path` once its folder exists and it can be written; else one clear error, before any work is done."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot create its folder ({exc.strerror or exc})") from None
    target = path if path.exists() else path.parent
    if path.is_dir() or not os.access(target, os.W_OK):
        raise InputError(f"{what} {path}: not a writable file")
    return path


def _config_class(command: str) -> type:
    """The config dataclass whose fields are the options of `command` (importing it loads torch and transformers)."""
    if command == "discover":
        from circuitlib.discovery import DiscoveryConfig

        return DiscoveryConfig
    from circuitlib.editing import EditConfig

    return EditConfig


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """An instance of `cls` from its options given on the command line; a bad value names its option."""
    return options.build(cls, options.given(args, cls), options.flag)


def cmd_discover(args: argparse.Namespace) -> None:
    from circuitlib import circuits, provenance
    from circuitlib.discovery import DiscoveryConfig, discover
    from circuitlib.models import load_model

    # Check the settings and the data before loading the model, so a bad input fails fast.
    config = config_from_args(DiscoveryConfig, args)
    split = config_from_args(SplitSpec, args)
    if args.dtype not in (None, "float32"):
        raise InputError(
            f"--dtype {args.dtype}: retired; discovery runs on float32 weights and --precision bf16 "
            "selects bfloat16 autocast over them"
        )
    train, eval_data = split.load()
    out = writable(Path(args.out) / "history.json", "--out").parent
    # "dtype" is always float32 now; it stays in the frozen run so a checkpoint of an older bfloat16 run is refused.
    run = {
        "model": args.model,
        "revision": args.revision,
        "dtype": "float32",
        "split": asdict(split),
        "config": asdict(config),
    }
    _claim_checkpoint(out / "checkpoint", run)
    lm = load_model(args.model, device=args.device, revision=args.revision)
    result = discover(lm, train, eval_data, config, checkpoint_dir=out / "checkpoint")
    files = []
    for circuit in result.circuits:
        assert circuit.target_density is not None  # discover snapshots every circuit at a target
        target = density_key(circuit.target_density)
        path = circuits.save(provenance.stamp(circuit, split, lm), out / f"circuit_d{target}.safetensors")
        files.append(str(path))
        print(f"density {circuit.density:.4f} (target {target}) -> {path}")
    for target in result.unreached:
        print(f"target density {density_key(target)} not reached within {config.max_steps} steps")
    write_json(
        out / "history.json",
        {
            "model": args.model,
            "split": asdict(split),
            "config": asdict(config),
            "full_accuracy": result.full_accuracy,
            "circuits": files,
            "unreached": result.unreached,
            "history": result.history,
        },
    )


# Settings that change speed or the step budget but not what a resumed run computes. Not eval_every: snapshots keep
# the most faithful evaluated mask (hold_steps, patience), so when masks are evaluated changes which one is kept.
_RESUMABLE_CHANGES = {"max_steps", "compile_model"}


def _claim_checkpoint(folder: Path, run: dict) -> None:
    """Freeze this run's settings beside its checkpoint; refuse to resume a checkpoint of a different run.

    A config setting the frozen run predates counts as unchanged at its default; a split setting, at the value
    that draws the rows the run was drawn from (data.SPLIT_BEFORE_RECORDED).
    """
    from circuitlib.discovery import DiscoveryConfig

    def changes(frozen: dict) -> list[str]:
        before = frozen | {
            "config": _as_json(asdict(DiscoveryConfig())) | frozen.get("config", {}),
            "split": SPLIT_BEFORE_RECORDED | frozen.get("split", {}),
        }
        resumable = {f"config.{name}" for name in _RESUMABLE_CHANGES}
        return [k for k in settings.changed(before, _as_json(run)) if k not in resumable]

    settings.freeze(
        folder / "params.json",
        run,
        changes,
        lambda changed: (
            f"--out {folder.parent}: holds the checkpoint of a different run ({', '.join(changed)} "
            "differ); use another --out, or delete its checkpoint folder to start over"
        ),
        update=True,  # the record shows the budget the run resumed with
    )


def _as_json(payload: Any) -> Any:
    """`payload` as it reads back from a JSON file (tuples as lists, NaN as None)."""
    return json.loads(json.dumps(json_safe(payload)))


def cmd_edit(args: argparse.Namespace) -> None:
    from circuitlib import circuits, data
    from circuitlib.editing import EditConfig, edit_requests, results_as_rows, summarize, variant_masks
    from circuitlib.models import load_model

    config = config_from_args(EditConfig, args)
    if args.limit is not None and args.limit < 1:  # requests[:0] would edit all, requests[:-1] all but the last
        raise InputError(f"--limit {args.limit}: must be at least 1")
    requests = data.load_requests(args.requests)  # before loading the model: bad input fails fast
    out = writable(Path(args.out), "--out")
    circuit = circuits.load(args.circuit) if args.circuit else None
    subset = requests[: args.limit] if args.limit is not None else requests
    # the revision the circuit was found on, unless one is asked for (edit trials pass the sweep's)
    revision = args.revision if args.revision is not None else (circuit.model_revision if circuit else None)
    lm = load_model(args.model, device=args.device, revision=revision)
    if circuit is not None:
        circuits.check_compatible(circuit, lm.params, source=args.circuit)
    masks = variant_masks(circuit, args.variant, args.random_mask_seed)
    results = edit_requests(lm, subset, args.variant, masks, config, pool=requests)
    summary = summarize(results)
    write_json(
        out,
        {
            "model": args.model,
            "revision": revision,
            "variant": args.variant,
            "circuit": args.circuit,
            "requests": args.requests,
            "random_mask_seed": args.random_mask_seed,
            "config": asdict(config),
            "summary": summary,
            "results": results_as_rows(results),
        },
    )
    print(
        f"{args.variant}: {len(results)} edits, efficacy {summary['efficacy_score']:.2f}, "
        f"NLL(new) drop {summary['nll_new_drop']:.3f}, overall {summary['overall_score']:.2f} -> {args.out}"
    )


def _fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:.3f}"


def cmd_info(args: argparse.Namespace) -> None:
    from circuitlib import circuits, provenance

    circuit = circuits.load(args.circuit)
    info = circuits.info(circuit)
    if args.json:
        print(json.dumps(json_safe(info), indent=2))
        return
    target = info["target_density"]
    print(f"model           {info['model_id']}" + (f" @ {info['model_revision']}" if info["model_revision"] else ""))
    print(f"density         {info['density']:.4f}" + (f" (target {density_key(target)})" if target is not None else ""))
    print(f"masked weights  {info['masked_weights']:,} ({info['kept']:,} kept)")
    print(f"digest          {info['digest']}")
    print("composition     module type: share of circuit, fraction of own weights kept")
    for row in info["composition_by_module"]:
        print(f"  {row['module_type']:<10} {_fmt(row['share_of_circuit'])}  {_fmt(row['fraction_kept'])}")
    for key, value in info["provenance"].items():
        if key != "config":
            print(f"{key:<15} {value}")
    if all(key in info["provenance"] for key in provenance.NEEDED):
        try:
            command = shlex.join(["circuitlib", "discover", *provenance.discover_args(circuit), "--out", "DIR"])
        except InputError as exc:
            command = f"n/a: {exc}"
        print(f"{'recompute':<15} {command}")


COMMAND_GROUP = "circuitlib.commands"  # entry points of the packages built on the library (sweeps, analysis)


def delegated() -> dict[str, metadata.EntryPoint]:
    """Commands that packages built on circuitlib register (pyproject.toml's `circuitlib.commands` entry points): each
    takes its own command line, so the library names them without importing Ray or MLflow."""
    return {ep.name: ep for ep in metadata.entry_points(group=COMMAND_GROUP)}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; the config options of `discover` and `edit` are added for `command` only, when given."""
    parser = options.OptionParser(
        prog="circuitlib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="learn circuits (weight masks) for a classification dataset")
    d.add_argument("--model", required=True, help="tiny-gpt2, smollm2-135m, a hub id or a local directory")
    d.add_argument("--revision", default=None, help="hub revision (commit, tag or branch) of the model")
    # Retired (the weights are float32; --precision is the switch): still read, so the recompute line of a circuit
    # found before it went (`--dtype float32`) keeps working and any other value is refused with what to do.
    d.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    d.add_argument("--device", default=None, help="torch device; default: the one accelerate picks")
    d.add_argument("--out", required=True, help="folder for circuit files and history.json")
    options.add_options(d, SplitSpec)
    d.set_defaults(func=cmd_discover)

    e = sub.add_parser("edit", help="knowledge-edit a circuit variant and measure how it takes new facts")
    e.add_argument("--model", required=True)
    e.add_argument("--variant", required=True, choices=VARIANTS)
    e.add_argument("--circuit", default=None, help="circuit file (needed for every variant but full)")
    e.add_argument("--requests", required=True, help="json:PATH (CounterFact-style) or builtin:hierarchy")
    e.add_argument("--limit", type=int, default=None, help="edit only the first K requests")
    e.add_argument("--random-mask-seed", type=int, default=0, help="seed of the random variant's mask (default: 0)")
    e.add_argument(
        "--revision", default=None, help="hub revision of the model (default: the one the circuit was found on)"
    )
    e.add_argument("--device", default=None)
    e.add_argument("--out", required=True, help="JSON file for per-request metrics and the summary")
    e.set_defaults(func=cmd_edit)

    for name, subparser in (("discover", d), ("edit", e)):
        if command in (None, name):
            options.add_options(subparser, _config_class(name))

    i = sub.add_parser("info", help="describe a circuit file")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("circuit")
    i.set_defaults(func=cmd_info)

    for name, entry in sorted(delegated().items()):
        package = entry.module.split(".")[0]
        sub.add_parser(name, add_help=False, help=f"from package {package}: circuitlib {name} --help")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = delegated()
    if argv and argv[0] in commands:
        return commands[argv[0]].load()(argv[1:])
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        args.func(args)
    except InputError as exc:
        print(f"circuitlib: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
