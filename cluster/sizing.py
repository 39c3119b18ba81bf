"""Computed (not measured) GPU sizing for gpt2-xl sweeps; prints the table in cluster/README.md.

    python cluster/sizing.py            # the markdown the README carries (a test compares them)

Every figure comes from parameter counts, bytes per element and the state that circuitlib's
discovery and editing keep (circuitlib/masks.py, discovery.py, editing.py as of this
writing), with the hardware and efficiency assumptions named below. Nothing here was
measured on a GPU: treat times as +/-2x estimates and replace them with a measured
step time (the sweep logs one) before budgeting seriously.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from circuitlib.data import load_requests
from circuitlib.types import FULL
from sweeps.config import load_preset

GIB = 2**30

# --- gpt2-xl (Hugging Face config: n_layer 48, n_embd 1600, n_head 25, n_inner 4*n_embd)
N_LAYER, D_MODEL, N_HEAD, VOCAB, N_POS = 48, 1600, 25, 50257, 1024


def gpt2_block_params(d: int = D_MODEL) -> int:
    ln = 2 * d  # weight + bias
    attn = d * 3 * d + 3 * d + d * d + d  # c_attn, c_proj (weights + biases)
    mlp = d * 4 * d + 4 * d + 4 * d * d + d  # c_fc, c_proj
    return 2 * ln + attn + mlp


MASKED = N_LAYER * gpt2_block_params()  # every parameter under transformer.h.
TOTAL = MASKED + VOCAB * D_MODEL + N_POS * D_MODEL + 2 * D_MODEL  # + wte, wpe, ln_f (lm_head tied)

# --- the sweep: read from the paper preset (sweeps/presets/paper.yaml, resolved with circuitlib's defaults)
PAPER = load_preset("paper")
BATCH = PAPER.discovery.batch_size
DISCOVERY_STEPS = PAPER.discovery.max_steps  # the budget, used as the upper bound
EVAL_EVERY, CHECKPOINT_EVERY = PAPER.discovery.eval_every, PAPER.discovery.checkpoint_every
N_EVAL = 400  # examples scored per evaluation (circuit and complement), an assumption
EDIT_STEPS = PAPER.edit.max_steps  # worst case (early stop at a small loss only helps)
REQUESTS = len(load_requests(PAPER.requests, PAPER.edit_limit))
SHARD_SIZE = PAPER.shard_size  # requests per edit trial
DATASETS, SEEDS, DENSITIES = len(PAPER.datasets), len(PAPER.seeds), len(PAPER.discovery.densities)
DISCOVERIES = DATASETS * SEEDS  # one discovery trial per dataset and seed
MASKED_VARIANTS = len([v for v in PAPER.variants if v != FULL])  # per circuit; `full` once per model
SEQ_LENS = (32, 64)  # tokens per padded batch: the paper's texts are 5-40 words


# --- hardware (vendor peak figures) and efficiency assumptions
@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_flops: float  # dense tensor-core peak, FLOP/s
    fp32_flops: float  # TF32 tensor-core peak (PyTorch matmuls in fp32 use it only if allowed)
    hbm_bytes_per_s: float
    memory_gib: float  # usable, as nvidia-smi reports


A100 = Gpu("A100 80GB (a2-ultragpu-1g)", 312e12, 19.5e12, 2.04e12, 79.2)
H100 = Gpu("H100 80GB (p5.4xlarge)", 989e12, 67e12, 3.35e12, 79.2)
MFU = 0.35  # matmul efficiency at ~4-8k tokens per step on a 1.5B model
BW_EFF = 0.70  # achieved fraction of HBM bandwidth in elementwise/optimizer kernels
LAUNCH_S_PER_EDIT_STEP = 0.010  # ~2000 kernel launches per forward+backward of 48 layers
DISCOVERY_SETUP_H = 0.10  # model download/load, feature cache, head training, full-model targets
EDIT_TRIAL_SETUP_H = 1 / 60  # fp32 model load from the node's HF cache, circuit download, mask expansion
CHECKPOINT_UPLOAD_BYTES_PER_S = 0.5e9  # one node writing a Ray Tune checkpoint to S3/GCS
TUNED_CHECKPOINT_EVERY, TUNED_SHARD_SIZE = 50, 25  # the alternative shown: frequent checkpoints, small shards


def discovery_memory_gib(weight_bytes: int, seq: int) -> dict[str, float]:
    """Peak GPU memory of one discovery trial, by component (GiB); `weight_bytes` is 2 under precision bf16 (the
    masked weights, their gradients and the activations in bfloat16) and 4 under fp32."""
    persistent = (4 + 8 + 4 + weight_bytes) * MASKED  # logits, AdamW m+v, noise buffer, flat weight copy
    model = 4 * TOTAL  # the frozen model's own parameters: float32 under either precision
    backward = (weight_bytes + 2 * weight_bytes + 4) * MASKED  # w*m, its grads (views + flat), logit grads
    step = (4 + 8) * MASKED  # logit grads + foreach AdamW temporaries (after activations are freed)
    act_elems = N_LAYER * (16 * seq * BATCH * D_MODEL + N_HEAD * seq * seq * BATCH)  # no dropout, eager attention
    activations = act_elems * weight_bytes
    peak = model + persistent + max(backward + activations, step)
    return {
        "model": model / GIB,
        "mask state": persistent / GIB,
        "backward": backward / GIB,
        "activations": activations / GIB,
        "peak": peak / GIB,
    }


CUDA_OVERHEAD_GIB = 1.0  # CUDA context, allocator slack and one short prompt's activations, an assumption


def edit_memory_gib() -> float:
    """One edit trial in fp32 (a 5e-4 step on bf16 weights of magnitude ~0.1 rounds away), a masked variant (the full
    model saves a copy of every parameter instead: less)."""
    fp32 = 4
    # model, the masked weights' saved copy (masked_weights) and pre-edit copy (Editor.base), the bool mask; gradients
    # live one parameter at a time (the editor steps and frees each in the backward), so they count for nothing here
    return (fp32 * TOTAL + (fp32 + fp32 + 1) * MASKED) / GIB + CUDA_OVERHEAD_GIB


def edit_gpu_share(gpu_gib: float = 79.2) -> float:
    """The GPU share an edit trial asks for (the paper preset's gpus_per_edit_trial): as many edit trials as their
    computed memory fits in one GPU of `gpu_gib`, rounded down to hundredths so their shares sum to at most 1."""
    trials = int(gpu_gib // edit_memory_gib())
    return math.floor(100 / trials) / 100


def checkpoint_gib() -> float:
    return (4 + 8) * MASKED / GIB  # logits + AdamW state


def discovery_step_s(gpu: Gpu, seq: int) -> float:
    tokens = BATCH * seq
    flops = 6 * MASKED * tokens + 3 * N_LAYER * 4 * BATCH * seq * seq * D_MODEL
    # mask fwd/bwd, grad split/concat, AdamW, keep-probability, count (bf16)
    bytes_moved = (88 + 7 * 2) * MASKED
    return flops / (gpu.bf16_flops * MFU) + bytes_moved / (gpu.hbm_bytes_per_s * BW_EFF)


def discovery_trial_h(gpu: Gpu, seq: int) -> float:
    evals = DISCOVERY_STEPS / EVAL_EVERY
    eval_flops = evals * 2 * 2 * MASKED * N_EVAL * seq
    compute_s = DISCOVERY_STEPS * discovery_step_s(gpu, seq) + eval_flops / (gpu.bf16_flops * MFU)
    return compute_s / 3600 + DISCOVERY_SETUP_H


def edit_request_s(gpu: Gpu) -> float:
    fp32 = 4
    step_bytes = 2 * fp32 * TOTAL + 4 * MASKED + 17 * MASKED  # fwd + bwd weight reads, grad write, masked SGD + clamp
    score_bytes = 4 * fp32 * TOTAL + 2 * fp32 * MASKED  # ~4 batched scoring forwards, restore from the saved copy
    bw = gpu.hbm_bytes_per_s * BW_EFF
    return EDIT_STEPS * (step_bytes / bw + LAUNCH_S_PER_EDIT_STEP) + score_bytes / bw


def checkpoint_uploads_h(checkpoint_every: int = CHECKPOINT_EVERY) -> float:
    """Per discovery trial: Ray Tune persists each checkpoint before the trial goes on."""
    count = DISCOVERY_STEPS // checkpoint_every
    return count * checkpoint_gib() * GIB / CHECKPOINT_UPLOAD_BYTES_PER_S / 3600


def edit_trials(shard_size: int = SHARD_SIZE) -> int:
    shards = -(-REQUESTS // shard_size)
    return (DISCOVERIES * DENSITIES * MASKED_VARIANTS + 1) * shards  # + the full model's shards


def sweep_gpu_hours(
    gpu: Gpu, seq: int, checkpoint_every: int = CHECKPOINT_EVERY, shard_size: int = SHARD_SIZE
) -> dict[str, float]:
    passes = DISCOVERIES * DENSITIES * MASKED_VARIANTS + 1
    hours = {
        "discovery": DISCOVERIES * discovery_trial_h(gpu, seq),
        "checkpoints": DISCOVERIES * checkpoint_uploads_h(checkpoint_every),
        "edits": passes * REQUESTS * edit_request_s(gpu) / 3600,
        "edit setup": edit_trials(shard_size) * EDIT_TRIAL_SETUP_H,
    }
    hours["total"] = sum(hours.values())
    return hours


def table() -> str:
    lines = [
        f"gpt2-xl: {TOTAL:,} parameters, {MASKED:,} masked (everything under `transformer.h.`); batch {BATCH}.",
        "",
        "| quantity (computed, not measured) | precision bf16 (the paper preset) | precision fp32 |",
        "| --- | --- | --- |",
    ]
    for seq in SEQ_LENS:
        b, f = discovery_memory_gib(2, seq), discovery_memory_gib(4, seq)
        lines.append(
            f"| discovery peak GPU memory, {seq}-token batches | {b['peak']:.1f} GiB "
            f"(model {b['model']:.1f} + mask state {b['mask state']:.1f} + backward {b['backward']:.1f} "
            f"+ activations {b['activations']:.1f}) "
            f"| {f['peak']:.1f} GiB (activations {f['activations']:.1f}) |"
        )
    lines += [
        f"| edit trial GPU memory (edits run in fp32) | n/a | {edit_memory_gib():.1f} GiB |",
        f"| discovery checkpoint (logits + AdamW state) | {checkpoint_gib():.1f} GiB | {checkpoint_gib():.1f} GiB |",
        "",
        "| per 80 GB GPU node | A100 80GB | H100 80GB |",
        "| --- | --- | --- |",
        "| discovery trials per node | 1 | 1 |",
        f"| edit trials per GPU (gpus_per_edit_trial {edit_gpu_share(A100.memory_gib):g}, from the edit memory) "
        f"| {int(A100.memory_gib // edit_memory_gib())} | {int(H100.memory_gib // edit_memory_gib())} |",
    ]
    for seq in SEQ_LENS:
        lines.append(
            f"| discovery step, {seq}-token batches, bf16 "
            f"| {discovery_step_s(A100, seq):.2f} s | {discovery_step_s(H100, seq):.2f} s |"
        )
    lines.append(
        f"| edit request ({EDIT_STEPS} steps + scoring, fp32) "
        f"| {edit_request_s(A100):.2f} s | {edit_request_s(H100):.2f} s |"
    )
    seq = SEQ_LENS[0]
    a, h = sweep_gpu_hours(A100, seq), sweep_gpu_hours(H100, seq)
    for key in ("discovery", "checkpoints", "edits", "edit setup", "total"):
        label = {
            "discovery": (
                f"sweep: discovery, {DATASETS} datasets x {SEEDS} seeds, {DISCOVERY_STEPS} steps, 32-token batches"
            ),
            "checkpoints": (
                f"sweep: discovery checkpoint uploads, every {CHECKPOINT_EVERY} steps "
                f"at {CHECKPOINT_UPLOAD_BYTES_PER_S / 1e9:g} GB/s"
            ),
            "edits": (
                f"sweep: edits, {DISCOVERIES * DENSITIES} circuits x {MASKED_VARIANTS} variants + full, "
                f"{REQUESTS} requests each"
            ),
            "edit setup": (
                f"sweep: edit-trial setup, {edit_trials()} trials of {SHARD_SIZE} requests, "
                f"{EDIT_TRIAL_SETUP_H * 60:g} min each"
            ),
            "total": f"**sweep total ({DENSITIES} densities, {DATASETS} datasets, {SEEDS} seeds), GPU-hours**",
        }[key]
        lines.append(f"| {label} | {a[key]:.1f} GPU-h | {h[key]:.1f} GPU-h |")
    a2 = sweep_gpu_hours(A100, seq, TUNED_CHECKPOINT_EVERY, TUNED_SHARD_SIZE)
    h2 = sweep_gpu_hours(H100, seq, TUNED_CHECKPOINT_EVERY, TUNED_SHARD_SIZE)
    lines.append(
        f"| same sweep with `--discovery.checkpoint_every {TUNED_CHECKPOINT_EVERY} --shard-size {TUNED_SHARD_SIZE}` "
        f"| {a2['total']:.1f} GPU-h | {h2['total']:.1f} GPU-h |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
