"""The engine's GPU fast path: best attention backend, regional torch.compile, channels-last VAE.

Each speed-up is optional and may be missing on a given machine (flash-attn not installed, a
cuDNN that rejects the padding mask, a compiler failure), so each is tried once at load on a
small probe forward of the real transformer and kept only if it runs and agrees with PyTorch's
SDPA. `FastPathReport` records what ran and why the rest did not: a worker log or a benchmark
then says exactly what made its images. On by default on CUDA, off on CPU (compiling the DiT
there takes minutes and gains nothing), see `TurboEngine(fast_path=...)`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

# Tried in this order, first that works wins. FA3 (Hopper) beats FA2 beats cuDNN beats SDPA's
# own pick. The plain `flash` / `_flash_3` kernels reject the padding mask that a batch of
# prompts of different lengths needs, so the probe of a batching engine uses such a batch and
# they fail it there; their `*_varlen` variants handle it.
ATTENTION_ORDER: tuple[str, ...] = (
    "_flash_3", "_flash_varlen_3", "flash", "flash_varlen", "_native_cudnn", "native",
)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
# A backend whose probe output is further than this from SDPA's (relative L2) computes
# something else, e.g. ignores the mask. bf16 kernels differ by ~1e-2.
MAX_RELATIVE_ERROR = 0.1

FastPathChoice = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class FastPath:
    """Which speed-ups to try at load. Every one falls back on failure, recorded in the report."""

    # "auto": on for CUDA, off on CPU (compiling the DiT there takes minutes and gains nothing).
    enabled: FastPathChoice = "auto"
    attention: tuple[str, ...] = ATTENTION_ORDER  # diffusers backends, tried in order
    # torch.compile mode for the DiT's repeated blocks (regional compilation: one block is
    # compiled and reused by all 30, far less compile time than the whole model); None: eager.
    compile_mode: str | None = "default"
    compile_backend: str = "inductor"  # "eager" only traces (a check that costs no codegen)
    channels_last_vae: bool = True  # cuDNN's convolutions are faster in NHWC

    def __post_init__(self) -> None:
        if self.enabled not in ("auto", "on", "off"):
            raise ValueError(f"FastPath.enabled must be 'auto', 'on' or 'off' (got {self.enabled!r}).")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)} or None "
                             f"(got {self.compile_mode!r}).")
        if not self.attention:
            raise ValueError("FastPath.attention is empty: list backends to try, e.g. ('native',).")

    @classmethod
    def from_settings(cls, enabled: FastPathChoice, compile_mode: str,
                      attention: tuple[str, ...] | None = None) -> FastPath:
        """Build it from `EngineSettings` fields (`compile_mode="off"`: no torch.compile)."""
        return cls(enabled=enabled, attention=tuple(attention) if attention else ATTENTION_ORDER,
                   compile_mode=None if compile_mode == "off" else compile_mode)

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
    compile_s: float | None = None  # the first compiled probe forward (tracing + codegen)
    compile_error: str | None = None
    channels_last_vae: bool = False
    setup_s: float | None = None  # the whole fast-path setup at load (probes + compile)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def probe_forward(transformer: ZImageTransformer2DModel, batched: bool) -> torch.Tensor:
    """One small transformer forward (a 256x256 image), as the pipeline calls it; float32 out.

    `batched`: two captions of different lengths, so attention needs the padding mask that real
    batches of different prompts need. Seeded inputs: the same output for the same weights.
    """
    import torch

    config = transformer.config
    device, dtype = transformer.device, transformer.dtype
    generator = torch.Generator().manual_seed(0)
    lengths = (24, 40) if batched else (24,)  # caption tokens; padded to 32 and 64 inside
    latents = [torch.randn(config.in_channels, 1, 32, 32, generator=generator) for _ in lengths]
    captions = [torch.randn(n, config.cap_feat_dim, generator=generator) for n in lengths]
    timestep = torch.full((len(lengths),), 0.5)
    with torch.inference_mode():
        out = transformer(
            [x.to(device, dtype) for x in latents],
            timestep.to(device),
            [c.to(device, dtype) for c in captions],
            return_dict=False,
        )[0]
        result = torch.stack([o.float() for o in out])
    if result.is_cuda:
        torch.cuda.synchronize()
    return result


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float | None:
    import torch

    if not (torch.isfinite(out).all() and torch.isfinite(reference).all()):
        return None  # random full-size weights can overflow; nothing to compare then
    scale = reference.norm().item() or 1.0
    return (out - reference).norm().item() / scale


def choose_attention(transformer: ZImageTransformer2DModel, order: tuple[str, ...],
                     batched: bool, report: FastPathReport) -> None:
    """Set the first backend in `order` whose probe runs and matches SDPA; record every try."""
    reference = probe_forward(transformer, batched)  # diffusers' default: PyTorch SDPA
    for name in order:
        try:
            transformer.set_attention_backend(name)
            error = _relative_error(probe_forward(transformer, batched), reference)
        # Any failure disqualifies a backend (missing package, wrong GPU, rejected mask):
        # the reason is recorded and the next one is tried.
        except Exception as exc:
            report.attention_tried[name] = _why(exc)
            continue
        if error is not None and error > MAX_RELATIVE_ERROR:
            report.attention_tried[name] = f"output differs from SDPA (relative error {error:.3g})"
            continue
        report.attention_tried[name] = "ok" + ("" if error is None else f" (rel. err. {error:.2g})")
        report.attention = name
        return
    transformer.reset_attention_backend()
    report.notes.append("no listed attention backend worked: diffusers' default SDPA kept")


def _uncompile(transformer: ZImageTransformer2DModel) -> None:
    """Undo `compile_repeated_blocks`: `nn.Module.compile` only sets `_compiled_call_impl`."""
    import torch

    for module in transformer.modules():
        if module.__class__.__name__ in (transformer._repeated_blocks or ()):
            module._compiled_call_impl = None
    torch._dynamo.reset()


def compile_transformer(transformer: ZImageTransformer2DModel, fast: FastPath, batched: bool,
                        report: FastPathReport) -> None:
    """Regionally compile the DiT's blocks; on failure fall back to "default" mode, then eager."""
    modes = [fast.compile_mode] + (["default"] if fast.compile_mode != "default" else [])
    for mode in modes:
        kwargs: dict[str, Any] = {"fullgraph": True, "backend": fast.compile_backend}
        if fast.compile_backend == "inductor" and mode != "default":
            kwargs["mode"] = mode
        start = time.perf_counter()
        try:
            transformer.compile_repeated_blocks(**kwargs)
            probe_forward(transformer, batched)  # compiles now, not in the first user's request
            probe_forward(transformer, batched)  # CUDA graphs fail on reuse, not on capture
        except Exception as exc:  # a compiler failure must not stop the engine: run eagerly
            _uncompile(transformer)
            report.compile_error = f"{mode}: {_why(exc)}"
            continue
        report.compile_mode = mode
        report.compile_backend = fast.compile_backend
        report.compile_s = round(time.perf_counter() - start, 3)
        return


def apply_fast_path(pipe: ZImagePipeline, fast: FastPath, batched: bool,
                    attention_fixed: bool) -> FastPathReport:
    """Apply `fast` to a loaded pipeline (on its device); return what was used.

    `attention_fixed`: the caller chose a backend explicitly, so none is probed.
    """
    import torch

    start = time.perf_counter()
    report = FastPathReport()
    transformer = pipe.transformer
    # 1. Attention backend.
    if attention_fixed:
        report.notes.append("attention backend set by the caller: not probed")
    else:
        choose_attention(transformer, fast.attention, batched, report)
    # 2. VAE memory format (the decode is ~20% of a 1024² image's time at batch 1).
    if fast.channels_last_vae:
        try:
            pipe.vae.to(memory_format=torch.channels_last)
            report.channels_last_vae = True
        except (RuntimeError, TypeError) as exc:
            report.notes.append(f"channels-last VAE failed: {_why(exc)}")
    # 3. torch.compile of the repeated transformer blocks (after the backend is fixed: dynamo
    #    traces the chosen attention function).
    if fast.compile_mode is not None:
        compile_transformer(transformer, fast, batched, report)
    report.setup_s = round(time.perf_counter() - start, 3)
    return report
