"""The engine's GPU fast path: a verified attention backend, regional torch.compile, channels-last
VAE, and opt-in fp8.

Each speed-up is optional and may be missing on a given machine (flash-attn not installed, a
kernel that mishandles the padding mask, a compiler failure), so each is tried once at load on
small probe forwards of the real transformer and kept only if it runs and computes the right
thing. `FastPathReport` records what ran and why the rest did not: a worker log or a benchmark
then says exactly what made its images. On by default on CUDA, off on CPU (compiling the DiT
there takes minutes and gains nothing), see `TurboEngine(fast_path=...)`.

None of this has been timed on a GPU yet (bench/RESULTS.md): what is kept is what is known to
be correct; which variant is fastest is for `bench/gpu.py` on a lent GPU to say.

How an attention backend is verified: a batch of two captions of very different lengths needs
the padding mask; each sample's output from the batch must match the same sample run alone
(no mask needed). A backend that ignores or mangles the mask fails that check by a wide margin
(the short sample attends to hundreds of padding tokens), whatever kernel the reference used.
Comparing against PyTorch's SDPA would not do: on Hopper torch 2.11 already routes SDPA to
cuDNN, so such a probe compares cuDNN with cuDNN.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

# Tried in this order, first that passes the batched-vs-solo check wins. The varlen flash
# kernels take the padding mask as sequence lengths; plain `flash` / `_flash_3` reject a mask
# (they only pass for an engine with max_batch=1). None of them can be installed offline on
# this project's GPU machines, where "native" (PyTorch SDPA, which picks cuDNN / flash / mem-
# efficient itself) is what runs. `_native_cudnn` is left out: on Hopper SDPA already uses
# cuDNN, so forcing it adds copies and gains nothing; name it explicitly to try it.
ATTENTION_ORDER: tuple[str, ...] = ("_flash_varlen_3", "flash_varlen", "_flash_3", "flash", "native")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
# CUDA-graph modes fail on chained compiled blocks (pytorch #152887) and gain little at
# ~100 ms per denoising step; they are tried only when asked for, and fall back to "default".
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Batched vs solo (relative L2 of the transformer output): kernels differ by rounding, ~1e-3
# in fp32 and up to ~1e-2 in bf16; a backend that ignores the mask is off by tens of percent
# on the probe (the short sample gets 3x its length in padding).
MAX_BATCH_VS_SOLO_ERROR = 0.05
# Regional compile makes graphs per input shape: the load probe, then every (batch, image size,
# caption length) served until dynamo turns the dims dynamic, plus a LoRA's guards. torch's
# default recompile_limit (8) is reached by probe + batch 1 + batch 4; past it the blocks
# silently run eagerly. 64 leaves room for every preset size at batch 1..max_batch.
RECOMPILE_LIMIT = 64
PROBE_CAPTIONS = (8, 300)  # caption tokens of the two probe samples (padded to 32 and 320)
PROBE_LATENT_SIDE = 16  # a 128x128 image: 64 image tokens, so padding dominates the short one

FastPathChoice = Literal["auto", "on", "off"]


class Fp8Unavailable(ImportError):
    """fp8 was asked for but torchao is not installed (or too old)."""


@dataclass(frozen=True)
class FastPath:
    """Which speed-ups to try at load. Every one falls back on failure, recorded in the report,
    except fp8: asked for explicitly, it raises if it cannot be applied."""

    # "auto": on for CUDA, off on CPU (compiling the DiT there takes minutes and gains nothing).
    enabled: FastPathChoice = "auto"
    attention: tuple[str, ...] = ATTENTION_ORDER  # diffusers backends, tried in order
    # torch.compile mode for the DiT's repeated blocks (regional compilation: one block is
    # compiled and reused by all 30, far less compile time than the whole model); None: eager.
    compile_mode: str | None = "default"
    compile_backend: str = "inductor"  # "eager" only traces (a check that costs no codegen)
    recompile_limit: int = RECOMPILE_LIMIT  # raised process-wide (torch._dynamo.config) if lower
    channels_last_vae: bool = True  # cuDNN's convolutions are faster in NHWC (unmeasured here)
    # float8 dynamic activations + float8 weights, per row (torchao) on the DiT's linear layers.
    # Off by default: it changes the numbers, and only the user can judge the images it makes
    # with real weights. Needs torchao==0.18.0 (torch >= 2.11) and an sm_89+ GPU.
    fp8: bool = False

    def __post_init__(self) -> None:
        if self.enabled not in ("auto", "on", "off"):
            raise ValueError(f"FastPath.enabled must be 'auto', 'on' or 'off' (got {self.enabled!r}).")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)} or None "
                             f"(got {self.compile_mode!r}).")
        if not self.attention:
            raise ValueError("FastPath.attention is empty: list backends to try, e.g. ('native',).")
        if self.recompile_limit < 1:
            raise ValueError(f"recompile_limit must be at least 1 (got {self.recompile_limit}).")

    @classmethod
    def from_settings(cls, enabled: FastPathChoice, compile_mode: str,
                      attention: tuple[str, ...] | None = None, fp8: bool = False) -> FastPath:
        """Build it from `EngineSettings` fields (`compile_mode="off"`: no torch.compile)."""
        return cls(enabled=enabled, attention=tuple(attention) if attention else ATTENTION_ORDER,
                   compile_mode=None if compile_mode == "off" else compile_mode, fp8=fp8)

    def active_on(self, device: str) -> bool:
        """Whether the speed-ups apply on `device` ("auto": CUDA only)."""
        return self.enabled == "on" or (self.enabled == "auto" and device.startswith("cuda"))


@dataclass
class FastPathReport:
    """What the fast path actually did at load."""

    attention: str | None = None  # the backend in use; None: diffusers' default (SDPA)
    attention_tried: dict[str, str] = field(default_factory=dict)  # backend -> "ok ..." or why not
    compile_mode: str | None = None  # None: the transformer runs eagerly
    compile_backend: str | None = None
    compile_s: float | None = None  # the compiled probe forwards at load (tracing + codegen)
    compile_error: str | None = None
    recompile_limit: int | None = None  # torch._dynamo's limit after load
    channels_last_vae: bool = False
    fp8: bool = False  # the DiT's linear layers run in float8 (torchao)
    fp8_s: float | None = None
    setup_s: float | None = None  # the whole fast-path setup at load (probes + compile)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


# --------------------------------------------------------------------------- probes


def _probe_inputs(transformer: ZImageTransformer2DModel, index: int,
                  caption_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `index`'s latent and caption embedding: the same tensors in any batch."""
    import torch

    config = transformer.config
    generator = torch.Generator().manual_seed(1000 + index)
    latent = torch.randn(config.in_channels, 1, PROBE_LATENT_SIDE, PROBE_LATENT_SIDE,
                         generator=generator)
    caption = torch.randn(caption_tokens, config.cap_feat_dim, generator=generator)
    return latent, caption


def probe_forward(transformer: ZImageTransformer2DModel,
                  samples: tuple[int, ...] = (0, 1)) -> list[torch.Tensor]:
    """One small transformer forward of the probe samples `samples`, as the pipeline calls it.

    Sample i has `PROBE_CAPTIONS[i]` caption tokens, so two samples of different lengths need
    the padding mask. Returns each sample's output in float32 on the CPU.
    """
    import torch

    device, dtype = transformer.device, transformer.dtype
    inputs = [_probe_inputs(transformer, i, PROBE_CAPTIONS[i]) for i in samples]
    timestep = torch.full((len(samples),), 0.5)
    with torch.inference_mode():
        out = transformer(
            [latent.to(device, dtype) for latent, _ in inputs],
            timestep.to(device),
            [caption.to(device, dtype) for _, caption in inputs],
            return_dict=False,
        )[0]
        return [o.float().cpu() for o in out]


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float | None:
    """||out - reference|| / ||reference||; None when either holds a NaN or an infinity."""
    import torch

    out, reference = out.float(), reference.float()
    if not (torch.isfinite(out).all() and torch.isfinite(reference).all()):
        return None
    scale = reference.norm().item() or 1.0
    return (out - reference).norm().item() / scale


def batched_vs_solo_errors(transformer: ZImageTransformer2DModel) -> list[float | None]:
    """Per probe sample: relative error of its output in the mixed-length batch vs alone."""
    batched = probe_forward(transformer, (0, 1))
    return [relative_error(batched[i], probe_forward(transformer, (i,))[0]) for i in (0, 1)]


def set_attention_backend_here(transformer: ZImageTransformer2DModel, name: str) -> None:
    """`transformer.set_attention_backend(name)` without changing diffusers' process-wide default.

    diffusers' call also makes `name` the default of every other diffusers model in the process
    (and what `reset_attention_backend` falls back to); that default is put back.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    process_default = _AttentionBackendRegistry._active_backend
    try:
        transformer.set_attention_backend(name)
    finally:
        _AttentionBackendRegistry.set_active_backend(process_default)


def choose_attention(transformer: ZImageTransformer2DModel, order: tuple[str, ...],
                     batched: bool, report: FastPathReport) -> None:
    """Set the first backend in `order` that runs and passes the batched-vs-solo check.

    `batched` False (an engine of max_batch=1): no mask is ever needed, so a backend only has
    to run and give finite numbers. diffusers' `set_attention_backend` also sets a process-wide
    default (what modules with no backend of their own use, and what `reset_attention_backend`
    falls back to); that default is put back after every try, so the choice stays with this
    transformer.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    process_default = _AttentionBackendRegistry._active_backend
    for name in order:
        try:
            transformer.set_attention_backend(name)
            if batched:
                errors = batched_vs_solo_errors(transformer)
            else:
                out = probe_forward(transformer, (0,))[0]
                errors = [relative_error(out, out)]  # 0.0 when finite
        # Any failure disqualifies a backend (missing package, wrong GPU, rejected mask):
        # the reason is recorded and the next one is tried.
        except Exception as exc:
            report.attention_tried[name] = _why(exc)
            continue
        finally:
            _AttentionBackendRegistry.set_active_backend(process_default)
        if any(e is None for e in errors):
            report.attention_tried[name] = "output holds NaN or inf: cannot be verified"
            continue
        worst = max(e for e in errors if e is not None)
        if worst > MAX_BATCH_VS_SOLO_ERROR:
            report.attention_tried[name] = (
                f"batched output differs from the same sample alone (relative error "
                f"{worst:.3g} > {MAX_BATCH_VS_SOLO_ERROR}): the padding mask is mishandled")
            continue
        report.attention_tried[name] = (f"ok (batched vs solo: relative error {worst:.2g})"
                                        if batched else "ok (solo: finite output)")
        report.attention = name
        return
    transformer.reset_attention_backend()
    _AttentionBackendRegistry.set_active_backend(process_default)
    report.notes.append("no listed attention backend passed: diffusers' default (SDPA) kept")


# --------------------------------------------------------------------------- compile


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> int:
    """Raise torch._dynamo's per-frame recompile limit to at least `limit`; return it.

    Process-wide (dynamo has one config). Named `recompile_limit` since torch 2.7,
    `cache_size_limit` before; the accumulated limit is raised along with it.
    """
    import torch._dynamo.config as config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))
    if hasattr(config, "accumulated_recompile_limit"):
        config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * limit)
    elif hasattr(config, "accumulated_cache_size_limit"):
        config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4 * limit)
    return int(getattr(config, name))


def _uncompile(transformer: ZImageTransformer2DModel) -> None:
    """Undo `compile_repeated_blocks`: `nn.Module.compile` only sets `_compiled_call_impl`."""
    import torch

    for module in transformer.modules():
        if module.__class__.__name__ in (transformer._repeated_blocks or ()):
            module._compiled_call_impl = None
    torch._dynamo.reset()


def compile_transformer(transformer: ZImageTransformer2DModel, fast: FastPath, batched: bool,
                        report: FastPathReport) -> None:
    """Regionally compile the DiT's blocks; on failure fall back to "default" mode, then eager.

    The probe forwards compile the probe's shapes at load. Every other shape (each image size
    and batch size the engine serves) is compiled by the first request that has it: that
    request pays the compile (tens of seconds on a GPU, measured by bench/gpu.py), later ones
    reuse the graphs. After the second shape of a dimension, dynamo compiles it dynamically,
    so caption lengths do not each recompile.
    """
    report.recompile_limit = raise_recompile_limit(fast.recompile_limit)
    modes = [fast.compile_mode] + (["default"] if fast.compile_mode != "default" else [])
    samples = (0, 1) if batched else (0,)
    for mode in modes:
        kwargs: dict[str, Any] = {"fullgraph": True, "backend": fast.compile_backend}
        if fast.compile_backend == "inductor" and mode != "default":
            kwargs["mode"] = mode
        start = time.perf_counter()
        try:
            transformer.compile_repeated_blocks(**kwargs)
            probe_forward(transformer, samples)  # compiles now, not in the first user's request
            probe_forward(transformer, samples)  # CUDA graphs fail on reuse, not on capture
        except Exception as exc:  # a compiler failure must not stop the engine: run eagerly
            _uncompile(transformer)
            report.compile_error = f"{mode}: {_why(exc)}"
            continue
        report.compile_mode = mode
        report.compile_backend = fast.compile_backend
        report.compile_s = round(time.perf_counter() - start, 3)
        report.notes.append("compiled at load for the probe's shapes only; the first request of "
                            "each new (batch, width, height) pays its compile")
        return


# --------------------------------------------------------------------------- fp8


def apply_fp8(transformer: ZImageTransformer2DModel) -> None:
    """Quantize the DiT's linear layers to float8 (dynamic activations, per-row scales), in place.

    Raises `Fp8Unavailable` when torchao is missing and `RuntimeError` when the device has no
    float8 matmuls (CUDA compute capability 8.9+: Ada, Hopper, Blackwell).
    """
    import torch

    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError as exc:
        raise Fp8Unavailable(
            "FastPath(fp8=True) needs torchao: pip install 'zpipe[gpu]' (torchao==0.18.0, which "
            f"needs torch >= 2.11; found torch {torch.__version__}). Or leave fp8 off.") from exc
    device = transformer.device
    if device.type != "cuda":
        raise RuntimeError(f"FastPath(fp8=True) needs a CUDA GPU with float8 matmuls (got device "
                           f"{device}); leave fp8 off on {device.type}.")
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        raise RuntimeError(f"FastPath(fp8=True) needs CUDA compute capability 8.9 or newer "
                           f"(Ada, Hopper); {torch.cuda.get_device_name(device)} is "
                           f"{capability[0]}.{capability[1]}. Leave fp8 off on this GPU.")
    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


# --------------------------------------------------------------------------- all together


def apply_fast_path(pipe: ZImagePipeline, fast: FastPath, batched: bool,
                    attention_fixed: bool) -> FastPathReport:
    """Apply `fast` to a loaded pipeline (on its device); return what was used.

    `attention_fixed`: the caller chose a backend explicitly, so none is probed.
    """
    import torch

    start = time.perf_counter()
    report = FastPathReport()
    transformer = pipe.transformer
    # 1. Attention backend, checked batched vs solo.
    if attention_fixed:
        report.notes.append("attention backend set by the caller: not probed")
    else:
        choose_attention(transformer, fast.attention, batched, report)
    # 2. fp8 weights (opt-in; before compiling, so the compiled graphs use the float8 matmuls).
    if fast.fp8:
        fp8_start = time.perf_counter()
        apply_fp8(transformer)
        report.fp8 = True
        report.fp8_s = round(time.perf_counter() - fp8_start, 3)
    # 3. VAE memory format.
    if fast.channels_last_vae:
        try:
            pipe.vae.to(memory_format=torch.channels_last)
            report.channels_last_vae = True
        except (RuntimeError, TypeError) as exc:
            report.notes.append(f"channels-last VAE failed: {_why(exc)}")
    # 4. torch.compile of the repeated transformer blocks (after the backend is fixed: dynamo
    #    traces the chosen attention function).
    if fast.compile_mode is not None:
        compile_transformer(transformer, fast, batched, report)
    report.setup_s = round(time.perf_counter() - start, 3)
    return report
