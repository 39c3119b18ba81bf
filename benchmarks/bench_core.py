"""Time the core loops (mask steps, head training, edits) against naive versions of each, in one run.

Usage: python benchmarks/bench_core.py [--quick] [--models tiny-gpt2,smollm2-135m] [--batch-size 32] [--device cpu]
                                       [--loss features] [--no-noise] [--out FILE]

A model spec `random:NAME` (NAME: smollm2-135m or gpt2-xl) is that architecture with random weights, for machines
without the weights (speed does not depend on the weights' values); its tokenizer is smollm2-135m's, read from the
converted folder under $CIRCUITLIB_CACHE (config.json and tokenizer files suffice).

For each model, on batches of the built-in hierarchy dataset:
- mask step: ours is `discovery.mask_step` (flat logits, one fused straight-through sample whose backward also
  carries the sparsity penalty's gradient, a functional masked forward/backward, fused AdamW), timed in float32 and
  in bfloat16 autocast (`precision="bf16"`); the naive step runs in float32. The naive step keeps one logit tensor
  per parameter, copies w * m into the model's parameters every step (param.data.copy_), recomputes the full model's
  predictions on the batch every step (with the original weights copied back for that forward), and takes the mask
  gradients from param.grad.
- plain step: one training step of the masked weights themselves on the same batch (forward, backward with weight
  gradients, fused AdamW, the loss `features`), in each precision: the floor a mask step is measured against
  (`ours_PRECISION_time_over_plain`, the mask step's time over the plain step's; the goal is at most 1.3).
- head training: ours trains on features cached by one forward pass (`cached_features` + `train_head`); the naive
  head runs the LM over the data every epoch. The naive run is timed over a few epochs and extrapolated linearly to the
  full epoch count (`naive_extrapolated_from_epochs` in the JSON says how many).
- edits: ours is `edit_requests` (weights zeroed and restored in place from one saved copy); the naive edit runs the
  same editor on a `copy.deepcopy` of the model for every request. stop_loss=0, so every edit takes the same steps.
Every time is the median of `repeats` runs after a warm-up run (wall and CPU seconds; the load average of the
machine at start and end is recorded, since other processes on a shared machine inflate wall times; on CUDA each run
ends with a synchronize). Peak memory is the process's peak RSS (VmHWM) during each phase (reset before it through
/proc/self/clear_refs where the kernel allows, else the process peak so far), and on CUDA also the peak of allocated
GPU memory.
Prints one JSON object (and writes it to --out if given); ratios (ours_over_naive) are our speed / the naive speed
= naive time / our time.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from circuitlib import data
from circuitlib.circuits import Circuit
from circuitlib.classifier import cached_features, last_token_features, tokenize, train_head
from circuitlib.discovery import (
    FUSE_ABOVE,
    PRECISIONS,
    DiscoveryConfig,
    DiscoveryState,
    StepBuffers,
    mask_step,
    masked_hidden,
    penalty_weight,
    prepare_task,
)
from circuitlib.editing import EditConfig, Editor, edit_requests, neighbor_prompts, score_request
from circuitlib.models import SMOLLM2, LoadedModel, cache_dir, load_model, masked_params

# --- measurement helpers ----------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident memory of this process since the last reset (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Median (and all) wall seconds of `fn` over `repeats` runs after `warmup` runs, and the phase's peak memory."""
    for _ in range(warmup):
        fn()
    sync()
    reset_ok = reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    result = {
        "median_s": round(statistics.median(times), 4),
        "times_s": [round(t, 4) for t in times],
        "median_cpu_s": round(statistics.median(cpu), 4),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_rss_is_phase_peak": reset_ok,
    }
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def top_ops(fn: Callable[[], Any], n: int = 10) -> dict[str, float]:
    """Where one call of `fn` spends its time: the `n` largest operators by self time, in milliseconds.

    CPU time on CPU; GPU (kernel) time where CUDA is available.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        sync()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:n]
    return {e.key[:60]: round(getattr(e, key) / 1000, 2) for e in events}


def ratio(naive_s: float, ours_s: float) -> float:
    return round(naive_s / ours_s, 2)


# --- the naive baselines ------------------------------------------------------------------------------


class NaiveMaskTrainer:
    """Per-parameter logits; w * m copied into the model's parameters each step, the mask gradient taken from
    param.grad (d loss / d m = d loss / d (w m) * w). The paper's scripts' pattern, also bench_paper_pattern's."""

    def __init__(self, lm: LoadedModel, head: torch.nn.Linear, config: DiscoveryConfig):
        self.lm, self.head, self.config = lm, head, config
        named = dict(lm.model.named_parameters())
        self.params = [named[p.name] for p in lm.params]
        self.original = [p.detach().clone() for p in self.params]
        device = lm.device
        gen = torch.Generator(device=device).manual_seed(config.mask_seed)
        self.logits = [
            (torch.randn(p.shape, generator=gen, device=device) * config.init_std + config.init_mean).requires_grad_(
                True
            )
            for p in self.params
        ]
        self.total = sum(t.numel() for t in self.logits)
        self.optimizer = torch.optim.AdamW(self.logits, lr=config.lr, weight_decay=config.weight_decay)
        self.noise_gen = torch.Generator(device=device).manual_seed(config.mask_seed + 1)

    def step(self, inputs: dict[str, torch.Tensor], epoch: int) -> float:
        """One step whose targets, the full model's predictions on this batch, are recomputed first."""
        with torch.no_grad():
            self.restore()
            targets = self.head(last_token_features(self.lm, inputs)).argmax(dim=1)
        return self.masked_step(inputs, targets, epoch)

    def masked_step(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor, epoch: int) -> float:
        """One step of straight-through Gumbel-sigmoid masks towards `targets`; returns the loss."""
        t = self.config.method.temperature
        masks = []
        for p, w, logit in zip(self.params, self.original, self.logits, strict=True):
            u = torch.rand(logit.shape, generator=self.noise_gen, device=logit.device).clamp(1e-6, 1 - 1e-6)
            soft = torch.sigmoid((logit + torch.log(u / (1 - u))) / t)
            m = (soft > 0.5).float() - soft.detach() + soft
            p.data.copy_(w * m.detach())
            p.requires_grad_(True)
            masks.append(m)
        ce = F.cross_entropy(self.head(last_token_features(self.lm, inputs)), targets)
        ce.backward()  # gradients land in param.grad
        zero = torch.zeros((), device=self.logits[0].device)  # a tensor start keeps sum() a tensor (0 + x is exact)
        kept = sum((torch.sigmoid(logit).sum() for logit in self.logits), zero)
        penalty = penalty_weight(self.config, epoch) * kept / self.total
        mask_grads = []
        for p, w in zip(self.params, self.original, strict=True):
            assert p.grad is not None  # the backward above reached every masked weight
            mask_grads.append(p.grad * w)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward([penalty, *masks], [None, *mask_grads])
        self.optimizer.step()
        for p in self.params:
            p.grad = None
            p.requires_grad_(False)
        return ce.item() + penalty.item()

    @torch.no_grad()
    def density(self) -> float:
        return sum(int((x > 0).sum()) for x in self.logits) / self.total

    @torch.no_grad()
    def restore(self) -> None:
        for p, w in zip(self.params, self.original, strict=True):
            p.data.copy_(w)


def naive_head_epochs(lm: LoadedModel, tok, labels: torch.Tensor, epochs: int, batch_size: int, lr: float) -> None:
    """A head trained by running the LM over every batch of every epoch (no cached features)."""
    d = lm.model.config.hidden_size
    head = torch.nn.Linear(d, 2, device=lm.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(tok), generator=gen)
        for start in range(0, len(tok), batch_size):
            index = order[start : start + batch_size].tolist()
            with torch.no_grad():
                features = last_token_features(lm, tok.batch(index, lm.device))
            loss = F.cross_entropy(head(features), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def naive_edits(lm: LoadedModel, requests, masks, config: EditConfig) -> None:
    """The same editor and scores as edit_requests, on a deep copy of the model made for every request."""
    for request in requests:
        model = copy.deepcopy(lm.model)
        copy_lm = LoadedModel(model, lm.tokenizer, lm.model_id, lm.revision, lm.params)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for name, m in masks.items():
                named[name].masked_fill_(~m.to(named[name].device), 0)
        neighbors = neighbor_prompts(request, requests, config.neighbors)
        score_request(copy_lm, request, neighbors)
        Editor(copy_lm, masks, config).edit(request)
        score_request(copy_lm, request, neighbors)
        del copy_lm, model, named


# --- models with random weights ----------------------------------------------------------------------

GPT2_XL: dict[str, Any] = {"n_embd": 1600, "n_layer": 48, "n_head": 25, "n_positions": 1024, "vocab_size": 50257}


def random_model(name: str, device: torch.device) -> LoadedModel:
    """`name`'s architecture with seeded random weights and smollm2-135m's tokenizer (see the module docstring)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config

    folder = cache_dir() / SMOLLM2
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    if name == SMOLLM2:
        config = AutoConfig.from_pretrained(str(folder))
    elif name == "gpt2-xl":
        config = GPT2Config(**GPT2_XL, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    else:
        raise SystemExit(f"model random:{name}: unknown architecture (smollm2-135m or gpt2-xl)")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, f"random:{name}", None, masked_params(model))


# --- one model --------------------------------------------------------------------------------------


def plain_training_step(
    lm: LoadedModel, task, precision: str, batch_size: int, width: int | None
) -> Callable[[], None]:
    """One training step of the masked weights themselves on the mask step's batch: forward, backward with weight
    gradients, fused AdamW, no mask. A mask step does the same matrix products, so this is its floor."""
    named = dict(lm.model.named_parameters())
    weights = {p.name: named[p.name].detach().clone().requires_grad_(True) for p in lm.params}  # the model stays
    optimizer = torch.optim.AdamW(list(weights.values()), lr=1e-5, fused=lm.device.type in ("cpu", "cuda"))
    index = list(range(batch_size))
    inputs = task.train.batch(index, lm.device, width)
    targets = task.train_full_features[index]

    def step() -> None:
        with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            features = last_token_features(lm, inputs, weights).float()
        loss = ((features - targets) / task.feature_scale).square().mean()
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()

    return step


def bench_mask_steps(lm: LoadedModel, task, dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Our mask step in float32 and in bf16 autocast, then the naive one (float32)."""
    masked = sum(p.numel for p in lm.params)
    fused = masked >= FUSE_ABOVE
    compiled = args.compile_model  # DiscoveryConfig.compile_model (batches padded to one width)
    result: dict[str, Any] = {"fused_kernels": fused, "compiled_model": compiled}
    width = task.train.max_width if compiled else None
    for precision in args.precisions.split(","):
        config = DiscoveryConfig(
            batch_size=args.batch_size,
            head_epochs=20,
            max_steps=10**9,
            precision=precision,
            loss=args.loss,
            noise=args.noise,
        )
        state = DiscoveryState(lm, config, len(dataset))
        buffers = StepBuffers.for_run(lm, state.layout, config)
        forward = masked_hidden(lm, state.layout, precision, compiled, buffers.grad)
        step = functools.partial(mask_step, lm, task, state, config, buffers, fused, forward, width)
        start = time.perf_counter()
        step()
        sync()
        result[f"ours_{precision}_first_step_s"] = round(time.perf_counter() - start, 2)  # includes compiling
        ours = timed(step, args.repeats)
        result[f"ours_{precision}"] = ours | {"steps_per_s": round(1 / ours["median_s"], 3)}
        result[f"ours_{precision}_top_ops_ms"] = top_ops(step)
        del step, buffers, state, forward
        plain = timed(plain_training_step(lm, task, precision, args.batch_size, width), args.repeats)
        result[f"plain_{precision}"] = plain
        # the floor: the same matrix products; goal <= 1.3
        result[f"ours_{precision}_time_over_plain"] = ratio(result[f"ours_{precision}"]["median_s"], plain["median_s"])
    config = DiscoveryConfig(batch_size=args.batch_size, head_epochs=20, max_steps=10**9)
    naive_trainer = NaiveMaskTrainer(lm, task.head, config)
    batch = task.train.batch(list(range(args.batch_size)), lm.device)
    naive = timed(lambda: naive_trainer.step(batch, 0), args.repeats)
    result["naive_top_ops_ms"] = top_ops(lambda: naive_trainer.step(batch, 0))
    naive_trainer.restore()
    result["naive"] = naive | {"steps_per_s": round(1 / naive["median_s"], 3)}
    for precision in args.precisions.split(","):
        result[f"ours_{precision}_over_naive"] = ratio(naive["median_s"], result[f"ours_{precision}"]["median_s"])
    return result


def bench_model(spec: str, args: argparse.Namespace, result: dict[str, Any], checkpoint: Callable[[], None]) -> None:
    """Fill `result` with the model's figures, calling `checkpoint` after each phase."""
    quick, repeats = args.quick, args.repeats
    device = torch.device(args.device)
    lm = random_model(spec.removeprefix("random:"), device) if spec.startswith("random:") else load_model(spec, device)
    masked = sum(p.numel for p in lm.params)
    dataset = data.load_classification("builtin:hierarchy", limit=args.rows, seed=0)
    result.update({"masked_weights": masked, "rows": len(dataset), "batch_size": args.batch_size})

    config = DiscoveryConfig(batch_size=args.batch_size, head_epochs=20, max_steps=10**9)
    task = prepare_task(lm, dataset, dataset, config)
    result["mask_step"] = bench_mask_steps(lm, task, dataset, args)
    checkpoint()

    # Head training.
    tok = tokenize(lm.tokenizer, dataset.texts, config.max_length)
    labels = torch.tensor(dataset.labels, device=lm.device)
    epochs = 400
    feature_pass = timed(lambda: cached_features(lm, tok, args.batch_size), repeats)
    features = cached_features(lm, tok, args.batch_size)
    head_ours = timed(lambda: train_head(features, labels, epochs, 1e-3, args.batch_size), max(1, repeats // 2))
    naive_epochs = 1 if quick else 3
    head_naive = timed(
        lambda: naive_head_epochs(lm, tok, labels, naive_epochs, args.batch_size, 1e-3), max(1, repeats // 2), warmup=0
    )
    naive_400 = head_naive["median_s"] * epochs / naive_epochs
    ours_total = head_ours["median_s"] + feature_pass["median_s"]
    result["head_training"] = {
        "epochs": epochs,
        "ours_feature_pass": feature_pass,
        "ours_train_head": head_ours,
        "ours_total_s": round(ours_total, 4),
        "naive_timed_epochs": naive_epochs,
        "naive_timed": head_naive,
        "naive_extrapolated_from_epochs": naive_epochs,
        "naive_400_epochs_s_extrapolated": round(naive_400, 2),
        "ours_over_naive": ratio(naive_400, ours_total),
        "ours_over_naive_train_only": ratio(naive_400, head_ours["median_s"]),
    }
    checkpoint()

    # Edits.
    requests = data.load_requests("builtin:hierarchy", limit=args.edit_requests)
    rng = np.random.default_rng(0)
    circuit = Circuit.from_masks(lm.params, {p.name: rng.random(p.shape) < 0.5 for p in lm.params}, spec)
    masks = circuit.to_masks()
    edit_config = EditConfig(max_steps=args.edit_steps, stop_loss=0.0)
    edit_ours = timed(lambda: edit_requests(lm, requests, "circuit", masks, edit_config, progress=False), repeats)
    edit_naive = timed(lambda: naive_edits(lm, requests, masks, edit_config), repeats)
    n = len(requests)
    result["edits"] = {
        "variant": "circuit",
        "requests": n,
        "steps_per_edit": args.edit_steps,
        "ours": edit_ours | {"edits_per_s": round(n / edit_ours["median_s"], 3)},
        "naive_deepcopy": edit_naive | {"edits_per_s": round(n / edit_naive["median_s"], 3)},
        "ours_over_naive": ratio(edit_naive["median_s"], edit_ours["median_s"]),
    }
    result["process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    checkpoint()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, rows, requests and naive epochs")
    parser.add_argument("--models", default="tiny-gpt2,smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precisions", default="fp32,bf16", help="precisions of our mask step to time")
    parser.add_argument("--compile-model", action="store_true", help="time our mask step with compile_model=True")
    parser.add_argument("--loss", default="ce", help="DiscoveryConfig.loss of our mask step (the window's: features)")
    parser.add_argument(
        "--noise",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="Gumbel noise in our mask step (--no-noise: the deterministic mask, the window's)",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.rows = 64 if args.quick else 128
    args.edit_requests = 2 if args.quick else 3
    args.edit_steps = 3 if args.quick else 5
    report: dict[str, Any] = {
        "benchmark": "bench_core",
        "quick": args.quick,
        "repeats": args.repeats,
        "statistic": "median",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "models": {},
    }
    start = time.perf_counter()
    for spec in args.models.split(","):
        report["models"][spec] = {}
        bench_model(spec, args, report["models"][spec], lambda: save(report, args.out))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["goals_smollm2_batch32"] = _goals(report)
    print(json.dumps(report, indent=2))
    save(report, args.out)


def save(report: dict[str, Any], path: str | None) -> None:
    """Write the report so far (after every phase, so a run cut short still leaves its figures)."""
    if path:
        with open(path, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")


def _goals(report: dict[str, Any]) -> dict[str, Any]:
    """Whether the smollm2-135m figures meet the goals (mask steps and edits >= 3x naive, head >= 50x)."""
    name = next((m for m in ("smollm2-135m", "random:smollm2-135m") if m in report["models"]), None)
    if name is None:
        return {"measured": False}
    r = report["models"][name]
    return {
        "measured": True,
        "model": name,
        **{
            f"mask_step_{p}_speedup>=3": r["mask_step"][f"ours_{p}_over_naive"] >= 3
            for p in PRECISIONS
            if f"ours_{p}_over_naive" in r["mask_step"]
        },
        "edit_speedup>=3": r["edits"]["ours_over_naive"] >= 3,
        "head_speedup>=50": r["head_training"]["ours_over_naive"] >= 50,
    }


if __name__ == "__main__":
    main()
