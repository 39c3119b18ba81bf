"""The `circuitlib` command: discover circuits, edit variants, inspect circuit files."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from circuitlib.errors import InputError


def _densities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--densities {text!r}: expected comma-separated numbers such as 0.5,0.25") from None
    bad = [v for v in values if not 0.0 < v < 1.0]
    if bad or not values:
        raise InputError(f"--densities {text!r}: each density must lie in (0, 1)")
    return values


def _json_safe(value):
    """NaN and infinities become null, so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, payload) -> None:
    """Write standard JSON (NaN as null), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(payload), indent=2))


def cmd_discover(args: argparse.Namespace) -> None:
    from circuitlib import data

    # Check the cheap inputs before importing torch and transformers (seconds), so a bad input fails fast.
    densities = _densities(args.densities)
    dataset = data.load_classification(args.dataset, limit=args.limit, seed=args.seed)
    train, eval_data = data.split(dataset, args.eval_fraction, args.seed)

    from circuitlib import circuits
    from circuitlib.discovery import DiscoveryConfig, discover
    from circuitlib.models import load_model

    config = DiscoveryConfig(
        densities=densities, max_steps=args.max_steps, batch_size=args.batch_size,
        head_epochs=args.head_epochs, seed=args.seed, lr=args.lr, eval_every=args.eval_every,
        precision=args.precision, compile_model=args.compile_model,
    )
    out = Path(args.out)
    run = {"model": args.model, "dataset": args.dataset, "limit": args.limit, "eval_fraction": args.eval_fraction,
           "config": asdict(config)}
    _claim_checkpoint(out / "checkpoint", run)
    lm = load_model(args.model, device=args.device)
    result = discover(lm, train, eval_data, config, checkpoint_dir=out / "checkpoint")
    files = []
    for circuit in result.circuits:
        path = circuits.save(circuit, out / f"circuit_d{circuit.target_density:g}.safetensors")
        files.append(str(path))
        print(f"density {circuit.density:.4f} (target {circuit.target_density:g}) -> {path}")
    for target in result.unreached:
        print(f"target density {target:g} not reached within {config.max_steps} steps")
    write_json(out / "history.json", {
        "model": args.model, "dataset": args.dataset, "config": asdict(config),
        "full_accuracy": result.full_accuracy, "circuits": files,
        "unreached": result.unreached, "history": result.history,
    })


# Settings that change speed or the step budget but not what a resumed run computes.
_RESUMABLE_CHANGES = {"max_steps", "compile_model", "eval_every"}


def _claim_checkpoint(folder: Path, run: dict) -> None:
    """Freeze this run's settings beside its checkpoint; refuse to resume a checkpoint of a different run."""
    params = folder / "params.json"
    if params.is_file():
        before, now = _identity(json.loads(params.read_text())), _identity(json.loads(json.dumps(_json_safe(run))))
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            raise InputError(f"--out {folder.parent}: holds the checkpoint of a different run ({', '.join(changed)} "
                             "differ); use another --out, or delete its checkpoint folder to start over")
    write_json(params, run)


def _identity(run: dict) -> dict:
    """The settings that decide what a run computes, flat (config fields as config.NAME)."""
    flat = {k: v for k, v in run.items() if k != "config"}
    return flat | {f"config.{k}": v for k, v in run["config"].items() if k not in _RESUMABLE_CHANGES}


def cmd_edit(args: argparse.Namespace) -> None:
    from circuitlib import data

    if args.limit is not None and args.limit < 1:  # requests[:0] would edit all, requests[:-1] all but the last
        raise InputError(f"--limit {args.limit}: must be at least 1")
    requests = data.load_requests(args.requests)  # before importing torch and transformers: bad input fails fast

    from circuitlib import circuits
    from circuitlib.editing import EditConfig, edit_requests, results_as_rows, summarize, variant_masks
    from circuitlib.models import load_model

    circuit = circuits.load(args.circuit) if args.circuit else None
    subset = requests[: args.limit] if args.limit is not None else requests
    lm = load_model(args.model, device=args.device)
    if circuit is not None:
        circuits.check_compatible(circuit, lm.params, source=args.circuit)
    masks = variant_masks(circuit, args.variant, args.seed)
    config = EditConfig(max_steps=args.steps, lr=args.lr)
    results = edit_requests(lm, subset, args.variant, masks, config, pool=requests)
    summary = summarize(results)
    write_json(Path(args.out), {
        "model": args.model, "variant": args.variant, "circuit": args.circuit, "requests": args.requests,
        "config": asdict(config), "summary": summary, "results": results_as_rows(results),
    })
    print(f"{args.variant}: {len(results)} edits, efficacy {summary['efficacy_score']:.2f}, "
          f"NLL(new) drop {summary['nll_new_drop']:.3f}, overall {summary['overall_score']:.2f} -> {args.out}")


def _fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:.3f}"


def cmd_info(args: argparse.Namespace) -> None:
    from circuitlib import circuits

    info = circuits.info(circuits.load(args.circuit))
    if args.json:
        print(json.dumps(_json_safe(info), indent=2))
        return
    target = info["target_density"]
    print(f"model           {info['model_id']}" + (f" @ {info['model_revision']}" if info["model_revision"] else ""))
    print(f"density         {info['density']:.4f}" + (f" (target {target:g})" if target is not None else ""))
    print(f"masked weights  {info['masked_weights']:,} ({info['kept']:,} kept)")
    print(f"digest          {info['digest']}")
    print("composition     module type: share of circuit, fraction of own weights kept")
    for row in info["composition_by_module"]:
        print(f"  {row['module_type']:<10} {_fmt(row['share_of_circuit'])}  {_fmt(row['fraction_kept'])}")
    for key, value in info["provenance"].items():
        if key != "config":
            print(f"{key:<15} {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="circuitlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="learn circuits (weight masks) for a classification dataset")
    d.add_argument("--model", required=True, help="tiny-gpt2, smollm2-135m, a hub id or a local directory")
    d.add_argument("--dataset", required=True, help="csv:PATH, blimp:CONFIG, persona:NAME, builtin:NAME or an alias")
    d.add_argument("--densities", default="0.5,0.35,0.25,0.15,0.05", help="target densities, comma-separated")
    d.add_argument("--max-steps", type=int, default=5000)
    d.add_argument("--batch-size", type=int, default=128)
    d.add_argument("--head-epochs", type=int, default=400)
    d.add_argument("--lr", type=float, default=0.01)
    d.add_argument("--eval-every", type=int, default=50)
    d.add_argument("--eval-fraction", type=float, default=0.2)
    d.add_argument("--limit", type=int, default=None, help="use at most this many rows (balanced)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default=None, help="torch device; default: the one accelerate picks")
    d.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: the masked forward and backward under bfloat16 autocast")
    d.add_argument("--compile-model", action="store_true",
                   help="torch.compile the masked forward and backward (minutes to compile; for long GPU runs)")
    d.add_argument("--out", required=True, help="folder for circuit files and history.json")
    d.set_defaults(func=cmd_discover)

    e = sub.add_parser("edit", help="knowledge-edit a circuit variant and measure how it takes new facts")
    e.add_argument("--model", required=True)
    e.add_argument("--variant", required=True, choices=["circuit", "complement", "random", "full"])
    e.add_argument("--circuit", default=None, help="circuit file (needed for circuit, complement, random)")
    e.add_argument("--requests", required=True, help="json:PATH (CounterFact-style) or builtin:hierarchy")
    e.add_argument("--limit", type=int, default=None, help="edit only the first K requests")
    e.add_argument("--steps", type=int, default=25, help="maximum SGD steps per request")
    e.add_argument("--lr", type=float, default=5e-4)
    e.add_argument("--seed", type=int, default=0, help="seed of the random variant's mask")
    e.add_argument("--device", default=None)
    e.add_argument("--out", required=True, help="JSON file for per-request metrics and the summary")
    e.set_defaults(func=cmd_edit)

    i = sub.add_parser("info", help="describe a circuit file")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("circuit")
    i.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InputError as exc:
        print(f"circuitlib: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
