"""The project's discovery and edits against the paper's public scripts' pattern, end to end, in one run.

Usage: python benchmarks/bench_paper_pattern.py [--model smollm2-135m] [--repeats 3] [--out-dir benchmarks/results]

Two workloads (issue 10, item 6), each timed end to end on the same rows, requests and settings:
- discovery: a head trained for `head_epochs` (2) epochs, then `mask_steps` (20) mask steps at batch `batch_size`
  (32) under the paper's settings (schedule paper, Gumbel noise, CE against the full model's predictions, AdamW).
  The project runs `discovery.discover` itself (features cached by one forward pass, the head trained on them, one
  flat logit vector, fused straight-through masks, weights swapped in functionally), with no target reachable in
  the budget and one evaluation (at step 0, on `eval_rows` held-out rows) as its loop does.
- edits: `requests` (5) requests of `edit_steps` (10) SGD steps each on the full model, with pre- and post-edit
  scores. The project runs `editing.edit_requests` (edits in place, weights restored from one saved copy).

The baseline re-implements the pattern of the paper's public scripts, every other choice being the project's own
or the cheaper one:
- its head runs the LM over every training batch in every epoch (no feature caching), and the full model's
  predictions (the mask's targets) come from one more pass after it;
- its masks keep one logit tensor per parameter and copy w * m into the model's parameters every step
  (param.data.copy_), take the mask gradient from param.grad and step a per-tensor AdamW;
- its edits deep-copy the model for every request, and step torch.optim.SGD on the copy with each weight clamped to
  within max_change of the original (the loss and the scores are the project's functions, so the two sides compute
  the same quantities).
Both sides track the density every step. A warm-up round (not timed) compiles what the project compiles (the fused
mask kernels above 1e7 masked weights), once per process as in a sweep trial; its wall time is reported. Then each
repeat times the four runs in turn, so drifting load on a shared machine hits both sides alike. Reported: medians
and every time, and ratio = baseline median / project median (the issue asks for >= 3 on both workloads). As a
check that the two sides compute the same edits, the largest difference between their post-edit NLLs is reported.

Writes `paper_pattern_{model}_{date}.json` and `.md` (with the exact command) under --out-dir.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from circuitlib import data
from circuitlib.classifier import Tokenized, last_token_features, tokenize
from circuitlib.discovery import DiscoveryConfig, discover
from circuitlib.editing import EditConfig, edit_requests, neighbor_prompts, nll, score_request
from circuitlib.models import LoadedModel, load_model
from circuitlib.types import ClassificationData, EditRequest
from sweeps.ui import git_commit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or loaded by file, as the tests do
from bench_core import NaiveMaskTrainer  # noqa: E402  (a sibling script, found once its folder is on the path)


@dataclass
class Workload:
    """What both sides run: the rows, the discovery settings and the edit requests."""

    train: ClassificationData
    held_out: ClassificationData
    discovery: DiscoveryConfig
    requests: list[EditRequest]
    edit: EditConfig


# --- the paper's pattern --------------------------------------------------------------------------------------


def baseline_discovery(lm: LoadedModel, work: Workload) -> float:
    """Head epochs with a full forward pass per batch, the targets from one more pass, then per-parameter masks copied
    into the weights each step; returns the last step's loss."""
    config = work.discovery
    tok = tokenize(lm.tokenizer, work.train.texts, config.max_length)
    labels = torch.tensor(work.train.labels, device=lm.device)
    head = baseline_head(lm, tok, labels, config)
    with torch.no_grad():
        targets = torch.cat([head(last_token_features(lm, b)) for b in tok.batches(config.batch_size, lm.device)])
    trainer = NaiveMaskTrainer(lm, head, config)
    order = torch.randperm(len(tok), generator=torch.Generator().manual_seed(config.mask_seed + 2))
    loss, position, epoch = float("nan"), 0, 0
    for _ in range(config.max_steps):
        if position >= len(order):
            order, position, epoch = torch.randperm(len(tok)), 0, epoch + 1
        index = order[position : position + config.batch_size]
        position += config.batch_size
        loss = trainer.masked_step(tok.batch(index.tolist(), lm.device), targets[index].argmax(dim=1), epoch)
        trainer.density()
    trainer.restore()
    return loss


def baseline_head(lm: LoadedModel, tok: Tokenized, labels: torch.Tensor, config: DiscoveryConfig) -> torch.nn.Linear:
    """A linear head trained by running the LM over every batch of every epoch."""
    gen = torch.Generator().manual_seed(config.mask_seed)
    head = torch.nn.Linear(lm.model.config.hidden_size, 2, device=lm.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.head_lr)
    for _ in range(config.head_epochs):
        order = torch.randperm(len(tok), generator=gen)
        for start in range(0, len(tok), config.batch_size):
            index = order[start : start + config.batch_size].tolist()
            with torch.no_grad():
                features = last_token_features(lm, tok.batch(index, lm.device))
            loss = F.cross_entropy(head(features), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.requires_grad_(False)
    return head


def baseline_edits(lm: LoadedModel, work: Workload) -> list[float]:
    """Each request on a deep copy of the model: score, SGD steps with every weight clamped, score; the post-edit NLLs
    of the new targets."""
    config, eps = work.edit, work.edit.max_change
    original = [p.detach() for p in lm.model.parameters()]
    post = []
    for request in work.requests:
        model = copy.deepcopy(lm.model)
        edited = LoadedModel(model, lm.tokenizer, lm.model_id, lm.revision, lm.params)
        neighbors = neighbor_prompts(request, work.requests, config.neighbors)
        score_request(edited, request, neighbors)
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(params, lr=config.lr)
        for _ in range(config.max_steps):
            loss = nll(edited, [request.text], [request.target_new])[0]
            if loss.item() < config.stop_loss:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for p, w in zip(params, original, strict=True):
                    p.clamp_(w - eps, w + eps)
        post.append(score_request(edited, request, neighbors).nll_new)
        del edited, model, params, optimizer
    return post


# --- the project's path ---------------------------------------------------------------------------------------


def project_discovery(lm: LoadedModel, work: Workload) -> float:
    """`discover` itself; returns the first evaluation's faithfulness (the run reaches no target in its budget)."""
    result = discover(lm, work.train, work.held_out, work.discovery, progress=False)
    return result.history[0]["faithfulness"]


def project_edits(lm: LoadedModel, work: Workload) -> list[float]:
    """`edit_requests` on the full model; the post-edit NLLs of the new targets."""
    return [r.nll_new_post for r in edit_requests(lm, work.requests, "full", None, work.edit, progress=False)]


# --- the run ---------------------------------------------------------------------------------------------------


def workload(args: argparse.Namespace, steps: int, requests: int, edit_steps: int) -> Workload:
    rows = data.load_classification("builtin:hierarchy", limit=args.rows + args.eval_rows, seed=0)
    train, held_out = data.split(rows, args.eval_rows / (args.rows + args.eval_rows), seed=0)
    # No target is reached within the budget (the paper's schedule keeps the density near 1 for hundreds of steps),
    # and eval_every and checkpoint_every beyond it: the project's loop evaluates once, at step 0.
    discovery = DiscoveryConfig(
        batch_size=args.batch_size,
        head_epochs=args.head_epochs,
        max_steps=steps,
        eval_every=10**6,
        checkpoint_every=10**6,
    )
    edit = EditConfig(max_steps=edit_steps, stop_loss=0.0)  # every edit takes all its steps, on both sides
    return Workload(train, held_out, discovery, data.load_requests("builtin:hierarchy", limit=requests), edit)


def clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def summary(times: Sequence[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(times), 2), "times_s": [round(t, 2) for t in times]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then time both sides of both workloads `repeats` times, interleaved."""
    lm = load_model(args.model, device=args.device)
    warm = workload(args, 1, 1, 1)
    warmup_s, _ = clock(
        lambda: (
            project_discovery(lm, warm),
            project_edits(lm, warm),
            baseline_discovery(lm, warm),
            baseline_edits(lm, warm),
        )
    )
    work = workload(args, args.mask_steps, args.requests, args.edit_steps)
    times: dict[str, list[float]] = {
        "project_discovery": [],
        "baseline_discovery": [],
        "project_edits": [],
        "baseline_edits": [],
    }
    nll_gap = 0.0
    for _ in range(args.repeats):
        t, _ = clock(lambda: project_discovery(lm, work))
        times["project_discovery"].append(t)
        t, _ = clock(lambda: baseline_discovery(lm, work))
        times["baseline_discovery"].append(t)
        t, ours = clock(lambda: project_edits(lm, work))
        times["project_edits"].append(t)
        t, theirs = clock(lambda: baseline_edits(lm, work))
        times["baseline_edits"].append(t)
        nll_gap = max(nll_gap, *(abs(a - b) for a, b in zip(ours, theirs, strict=True)))
    report: dict[str, Any] = {}
    for part in ("discovery", "edits"):
        ours, theirs = summary(times[f"project_{part}"]), summary(times[f"baseline_{part}"])
        report[part] = {
            "project": ours,
            "baseline": theirs,
            "ratio_baseline_over_project": round(theirs["median_s"] / ours["median_s"], 2),
        }
        report[part]["meets_3x"] = report[part]["ratio_baseline_over_project"] >= 3
    report["edits"]["max_abs_diff_nll_new_post"] = nll_gap
    report["warmup_s"] = round(warmup_s, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=128, help="training rows (head epochs run over all of them)")
    parser.add_argument("--eval-rows", type=int, default=8, help="held-out rows of the project's one evaluation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--mask-steps", type=int, default=20)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--edit-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each side (~4.5 min a repeat, 1 thread)")
    parser.add_argument("--out-dir", default=None, help="write paper_pattern_{model}_{date}.json and .md here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = {
        "benchmark": "bench_paper_pattern",
        "command": shlex.join(["python", "benchmarks/bench_paper_pattern.py", *(argv or sys.argv[1:])]),
        "commit": git_commit(),
        "model": args.model,
        "device": args.device,
        "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        **run(args),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    if args.out_dir is not None:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"paper_pattern_{args.model}_{datetime.date.today().isoformat()}"
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{stem}.md").write_text(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    """The short table of a run, with its command and conditions."""
    rows = [
        f"| {part} | {r['project']['median_s']} | {r['baseline']['median_s']} | "
        f"{r['ratio_baseline_over_project']} | {'yes' if r['meets_3x'] else 'no'} |"
        for part, r in (("discovery", result["discovery"]), ("edits", result["edits"]))
    ]
    s = result["settings"]
    return "\n".join(
        [
            f"# The project against the paper's pattern: {result['model']} on {result['device']}",
            "",
            f"`{result['command']}` (commit {result['commit']}, torch {result['torch']}, "
            f"{result['torch_threads']} torch threads, OMP_NUM_THREADS={result['omp_num_threads']}, "
            f"load average {result['load_average_at_start']} at start, {result['load_average_at_end']} at end).",
            "",
            f"Discovery: {s['head_epochs']} head epochs over {s['rows']} rows, then {s['mask_steps']} mask steps "
            f"at batch {s['batch_size']}. Edits: {s['requests']} requests x {s['edit_steps']} steps on the full "
            f"model, with pre- and post-edit scores. Medians of {s['repeats']} runs, seconds, end to end (the "
            "baseline is described in `benchmarks/bench_paper_pattern.py`).",
            "",
            "| workload | project | paper's pattern | ratio | >= 3x |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Post-edit NLLs of the two sides differ by at most {result['edits']['max_abs_diff_nll_new_post']:.2e}.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
