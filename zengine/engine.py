"""The Turbo engine: loads a diffusers `ZImagePipeline` once, validates requests, makes batches.

torch and diffusers are imported when an engine is created or loaded, not when this module is
imported, so processes that only build `GenerationRequest`s (flows handing work to a GPU task
worker) never pay their ~10 s import.
"""

from __future__ import annotations

import gc
import io
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zengine._imports import import_model_libraries
from zengine.fast import FastPath, FastPathReport, apply_fast_path, set_attention_backend_here
from zengine.lora import LoraSpec
from zengine.product import ProductPlacement, run_product_pipeline, validate_placement
from zengine.sizes import MAX_SIDE, MIN_SIDE, SIZE_MULTIPLE, round_side
from zengine.tiny import TINY_MODEL_ID, TINY_REVISION, ensure_tiny_model

if TYPE_CHECKING:
    import torch
    from diffusers import ZImagePipeline
    from PIL.Image import Image

log = logging.getLogger(__name__)

Z_IMAGE_TURBO = "Tongyi-MAI/Z-Image-Turbo"

MAX_STEPS = 50  # far past Turbo's 8; beyond this a request is a mistake, not a choice
MAX_PROMPT_CHARS = 2000  # a cheap bound checked before the tokenizer is loaded
MAX_SEQUENCE_LENGTH = 512  # the pipeline pads/truncates the chat-templated prompt to this
TURBO_SHIFT = 3.0  # Z-Image-Turbo's FlowMatchEulerDiscreteScheduler shift

# Flash-attention backends that reject the attention mask a batch of prompts of different
# lengths needs (DESIGN.md), and their `*_varlen` variants, which accept it.
_MASKLESS_BACKENDS = {"flash": "flash_varlen", "_flash_3": "_flash_varlen_3"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: the built-in tiny model, a local directory, or the hub.

    `cache_dir` is a cache root: the tiny model is kept in `<cache_dir>/models/<revision>`
    and hub downloads use it as diffusers' `cache_dir`. None: $ZPIPE_CACHE (tiny) or the
    Hugging Face cache (hub).
    """

    model: str = "tiny"  # "tiny", a local directory, or a hub id such as Z_IMAGE_TURBO
    revision: str | None = None  # required for a hub id: a commit sha or tag
    cache_dir: Path | None = None

    @classmethod
    def parse(cls, spec: str, cache_dir: Path | None = None) -> ModelSource:
        """Parse `tiny`, a path to an existing directory, or `owner/name@revision`."""
        spec = spec.strip()
        if spec == "tiny":
            return cls(cache_dir=cache_dir)
        if Path(spec).expanduser().is_dir():
            return cls(model=str(Path(spec).expanduser().resolve()), cache_dir=cache_dir)
        model, sep, revision = spec.partition("@")
        if not _HUB_ID.match(model):
            raise ValueError(
                f"Model {spec!r} is not 'tiny', an existing directory, or a hub id "
                f"'owner/name@revision' (e.g. '{Z_IMAGE_TURBO}@<commit>')."
            )
        if not sep or not revision.strip():
            raise ValueError(
                f"Hub model {model!r} needs a pinned revision (got {spec!r}): write "
                f"'{model}@<commit>', e.g. '{Z_IMAGE_TURBO}@<commit>', so every image "
                "records the exact weights that made it."
            )
        return cls(model=model, revision=revision.strip(), cache_dir=cache_dir)

    @property
    def kind(self) -> str:
        """Which kind of source this is: "tiny", "local" or "hub"."""
        if self.model == "tiny":
            return "tiny"
        if Path(self.model).expanduser().is_dir():
            return "local"
        return "hub"

    @property
    def model_id(self) -> str:
        """The id recorded with each image: the tiny id, the directory's name, or the hub id."""
        kind = self.kind
        if kind == "tiny":
            return TINY_MODEL_ID
        if kind == "local":
            return Path(self.model).expanduser().resolve().name
        return self.model

    @property
    def revision_label(self) -> str:
        """The revision recorded with each image: the tiny recipe, "local", or the hub revision."""
        kind = self.kind
        if kind == "tiny":
            return TINY_REVISION
        if kind == "local":
            return self.revision or "local"
        return self.revision or "unpinned"


@dataclass(frozen=True)
class GenerationRequest:
    """One image to make. The defaults are Z-Image-Turbo's settings, not the pipeline's."""

    prompt: str
    width: int
    height: int
    seed: int
    steps: int = 8  # Turbo is distilled to 8 steps (= 8 transformer forwards in diffusers 0.42.1)
    guidance_scale: float = 0.0  # Turbo is guidance-distilled: CFG off, negative prompts unused
    loras: tuple[LoraSpec, ...] = ()  # brand style adapters active for this image
    product: ProductPlacement | None = None  # a real product kept in the scene (zengine.product)


@dataclass(frozen=True)
class BatchRecord:
    """How an image's batch ran: planned size, the size of the call that made it, OOM halvings."""

    requested: int = 1  # images in the batch the engine planned (up to max_batch)
    used: int = 1  # images in the pipeline call that made this one
    oom_splits: int = 0  # times this image's batch was halved after running out of GPU memory


class GenerationOutOfMemory(RuntimeError):
    """Even one image does not fit in GPU memory; the message says what to try."""


@dataclass
class GenerationResult:
    """One finished image as PNG bytes, with everything needed to reproduce it."""

    png: bytes
    prompt: str
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    model_id: str
    revision: str
    timings: dict[str, float] = field(default_factory=dict)
    batch: BatchRecord = field(default_factory=BatchRecord)


@dataclass
class _Made:
    """One image from a pipeline call, with how that call ran."""

    image: Image
    batch_s: float
    used: int
    oom_splits: int


# Out-of-memory text in errors that are not `torch.cuda.OutOfMemoryError`: cuDNN reports a
# workspace it cannot allocate as a plain RuntimeError ("cuDNN error: CUDNN_STATUS_..."), and
# some kernels raise "CUDA error: out of memory".
_OOM_MARKERS = ("out of memory", "CUDNN_STATUS_")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the GPU running out of memory, as a smaller batch may fix."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return "out of memory" in text.lower() or "CUDNN_STATUS_" in text


def _release_cached_memory() -> None:
    """Return the blocks PyTorch's caching allocator holds, so a smaller batch can fit."""
    import torch

    gc.collect()  # tensors kept alive by reference cycles (e.g. of the failed call's frames)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _nearest_side(value: int) -> int:
    return min(MAX_SIDE, round_side(value))


class TurboEngine:
    """Z-Image-Turbo behind one entry point: `generate(requests)`.

    Create it once per process; `load()` (called by `generate` if needed) loads the weights
    once, every later call only infers. Safe to share between threads: generation is
    serialized by a lock.
    """

    def __init__(
        self,
        source: ModelSource = ModelSource(),  # frozen, so one shared default is safe
        device: str | None = None,
        dtype: torch.dtype | None = None,
        max_batch: int = 4,
        *,
        attention: str | None = None,
        strict_token_limit: bool | None = None,
        fast_path: FastPath | None = None,
        pipeline: ZImagePipeline | None = None,
    ) -> None:
        import torch

        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {max_batch}).")
        if attention in _MASKLESS_BACKENDS and max_batch > 1:
            raise ValueError(
                f"Attention backend {attention!r} rejects the mask that a batch of prompts of "
                f"different lengths needs (max_batch={max_batch}): use "
                f"{_MASKLESS_BACKENDS[attention]!r}, SDPA (attention=None) or max_batch=1."
            )
        self.source = source
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 is what Turbo ships and runs in on GPUs; most CPUs have no fast bf16 matmuls.
        self.dtype = dtype or (
            torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        )
        self.max_batch = max_batch
        self.attention = attention  # None: diffusers' default (PyTorch SDPA) or the fast path's
        # The GPU speed-ups probed at load (default "auto": on for CUDA, off on CPU), and what
        # they turned out to be; see zengine.fast.
        self.fast_path = fast_path or FastPath()
        self.fast_path_report: FastPathReport | None = None  # what the fast path used, after load
        # Called with the batch size right before each pipeline call. Only zengine.faults sets
        # it (tests inject out-of-memory errors there); None in production.
        self.fault_hook: Callable[[int], None] | None = None
        # The tiny model's byte-level tokenizer (no merges) counts ~3 tokens per Chinese
        # character where Qwen's counts ~1, so a prompt that fits the real encoder's 512
        # tokens can overflow the tiny one. For tiny the pipeline's own truncation applies
        # (it only shortens what random weights read); real weights get the hard check.
        self.strict_token_limit = (
            source.kind != "tiny" if strict_token_limit is None else strict_token_limit
        )
        self.load_count = 0
        self.load_s: float | None = None
        self._pipe: ZImagePipeline | None = None
        # A pipeline the caller already loaded (a benchmark that loads the weights once and
        # compares ways of running them): `load()` configures it instead of loading weights.
        self._given_pipe = pipeline
        self._lock = threading.Lock()
        self._loaded_loras: set[str] = set()
        self._scene_pipes: dict[str, Any] = {}  # zengine.product's pipelines over the same weights

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipeline(self) -> ZImagePipeline:
        """The loaded diffusers pipeline (for inspection, or LoRA loading), after `load()`."""
        if self._pipe is None:
            raise RuntimeError("The engine is not loaded yet: call load() or generate() first.")
        return self._pipe

    # ------------------------------------------------------------------ loading

    def load(self) -> bool:
        """Load the weights onto the device; later calls do nothing. True if this call loaded."""
        with self._lock:
            if self._pipe is not None:
                return False
            self._load_locked()
            return True

    def _load_locked(self) -> None:
        if self._pipe is not None:
            return
        import_model_libraries()
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

        start = time.perf_counter()
        source = self.source
        kind = source.kind
        # 1. Resolve where the weights are. The tiny model is built once into the cache and
        #    then takes the same from_pretrained path as real weights.
        if self._given_pipe is not None:
            location = "(given pipeline)"
        elif kind == "tiny":
            location = str(ensure_tiny_model(source.cache_dir))
        elif kind == "hub" and not _HUB_ID.match(source.model):
            raise ValueError(
                f"Model {source.model!r} is not 'tiny', an existing directory, or a hub id "
                "'owner/name' with a revision."
            )
        elif kind == "hub" and not source.revision:
            raise ValueError(
                f"Hub model {source.model!r} needs a pinned revision: use "
                f"ModelSource.parse('{source.model}@<commit>')."
            )
        else:
            location = source.model

        # 2. Load (or take the caller's pipeline: its weights are already in memory).
        if self._given_pipe is not None:
            pipe, self._given_pipe = self._given_pipe, None
        else:
            pipe = ZImagePipeline.from_pretrained(
                location,
                revision=source.revision if kind == "hub" else None,
                dtype=self.dtype,  # diffusers 0.42 renamed torch_dtype (which now warns) to dtype
                cache_dir=source.cache_dir if kind == "hub" else None,
            )

        # 3. Turbo's scheduler, whatever the saved config says.
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, shift=TURBO_SHIFT
        )
        if self.attention is not None:  # this transformer only, not the process default
            set_attention_backend_here(pipe.transformer, self.attention)
        pipe.set_progress_bar_config(disable=True)  # progress goes to on_step instead
        pipe.to(self.device)
        load_s = time.perf_counter() - start

        # 4. The fast path, probed on the device: attention backend, compile, VAE layout.
        #    Its time (mostly compiling) is `fast_path_report.setup_s`, not `load_s`.
        if self.fast_path.active_on(self.device):
            self.fast_path_report = apply_fast_path(
                pipe, self.fast_path, batched=self.max_batch > 1,
                attention_fixed=self.attention is not None)
            log.info("Fast path: %s", self.fast_path_report.as_dict())

        self._pipe = pipe
        self.load_count += 1
        self.load_s = load_s  # weights: from_pretrained + move to the device

    # ---------------------------------------------------------------- validation

    def validate(self, request: GenerationRequest) -> None:
        """Raise ValueError naming the bad value.

        The prompt's token count is checked only once the model is loaded, and waits for a
        running generation (the pipeline reconfigures the shared tokenizer while it encodes).
        """
        self._validate_fields(request)
        if self._pipe is not None and self.strict_token_limit:
            with self._lock:
                self._validate_tokens(request, self._pipe)

    @staticmethod
    def _validate_fields(request: GenerationRequest) -> None:
        for name in ("width", "height"):
            value = getattr(request, name)
            if not isinstance(value, int):
                raise ValueError(f"{name.capitalize()} must be an integer (got {value!r}).")
            if value % SIZE_MULTIPLE or not MIN_SIDE <= value <= MAX_SIDE:
                nearest = _nearest_side(value)
                raise ValueError(
                    f"{name.capitalize()} must be a multiple of {SIZE_MULTIPLE} between "
                    f"{MIN_SIDE} and {MAX_SIDE} (got {value!r}). The nearest valid {name} "
                    f"is {nearest}."
                )
        if not isinstance(request.steps, int) or not 1 <= request.steps <= MAX_STEPS:
            raise ValueError(
                f"Steps must be between 1 and {MAX_STEPS} (got {request.steps!r}); "
                "Turbo is distilled for 8."
            )
        if not request.guidance_scale >= 0:
            raise ValueError(
                f"Guidance scale must be 0 or more (got {request.guidance_scale!r}); "
                "Turbo uses 0.0."
            )
        if not isinstance(request.seed, int) or not 0 <= request.seed < 2**64:
            raise ValueError(f"Seed must be an integer in [0, 2**64) (got {request.seed!r}).")
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise ValueError(f"Prompt is empty (got {request.prompt!r}): describe the image.")
        if len(request.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"Prompt is {len(request.prompt)} characters long, over the "
                f"{MAX_PROMPT_CHARS}-character limit: shorten it by "
                f"{len(request.prompt) - MAX_PROMPT_CHARS} (it begins {request.prompt[:40]!r})."
            )
        if request.product is not None:
            validate_placement(request.product, request.width, request.height)

    @staticmethod
    def _validate_tokens(request: GenerationRequest, pipe: ZImagePipeline) -> None:
        # Count exactly what the pipeline encodes: the chat-templated prompt.
        text = pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": request.prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=True,
        )
        n_tokens = len(pipe.tokenizer(text).input_ids)
        if n_tokens > MAX_SEQUENCE_LENGTH:
            raise ValueError(
                f"Prompt is {n_tokens} tokens with its chat template, over the text encoder's "
                f"{MAX_SEQUENCE_LENGTH} (the rest would be silently cut off): shorten it by at "
                f"least {n_tokens - MAX_SEQUENCE_LENGTH} tokens (it begins "
                f"{request.prompt[:40]!r})."
            )

    # ---------------------------------------------------------------- generation

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        on_step: StepCallback | None = None,
    ) -> list[GenerationResult]:
        """Make one image per request; results come back in the order of `requests`.

        Requests that share (width, height, steps, guidance) run as batches of up to
        `max_batch`. `on_step(done, total)` counts denoising steps over the whole call.
        """
        import torch

        requests = list(requests)
        # 1. Validate everything before any model work.
        for request in requests:
            self._validate_fields(request)
        if not requests:
            return []

        with self._lock:
            # 2. Load once; then the checks that need the tokenizer.
            self._load_locked()
            pipe = self._pipe
            assert pipe is not None
            for request in requests:
                if self.strict_token_limit:
                    self._validate_tokens(request, pipe)

            # 3. Group compatible requests and split the groups into batches.
            groups: dict[tuple, list[int]] = {}
            for index, r in enumerate(requests):
                groups.setdefault((r.width, r.height, r.steps, r.guidance_scale, r.loras, r.product),
                                  []).append(index)
            batches = [
                indices[i : i + self.max_batch]
                for indices in groups.values()
                for i in range(0, len(indices), self.max_batch)
            ]

            # 4. Run the batches.
            progress = _Progress(on_step, total=sum(requests[b[0]].steps for b in batches))
            results: list[GenerationResult | None] = [None] * len(requests)
            with torch.inference_mode():
                for batch in batches:
                    chunk = [requests[i] for i in batch]
                    self._activate_loras(pipe, chunk[0].loras)
                    made = self._run_batch(pipe, chunk, progress)
                    for index, result in zip(batch, made, strict=True):
                        results[index] = result
        return [r for r in results if r is not None]

    def _activate_loras(self, pipe: ZImagePipeline, loras: tuple[LoraSpec, ...]) -> None:
        """Load each adapter once (kept loaded), then make exactly `loras` active."""
        for spec in loras:
            if spec.adapter_name not in self._loaded_loras:
                path = Path(spec.path).expanduser()
                if not path.exists():
                    raise ValueError(f"LoRA not found: {spec.path!r}; give a local .safetensors "
                                     "file or a directory saved with save_lora_weights.")
                try:
                    pipe.load_lora_weights(str(path), adapter_name=spec.adapter_name)
                except ImportError as exc:
                    raise ImportError("LoRA adapters need peft: pip install peft") from exc
                self._loaded_loras.add(spec.adapter_name)
        if loras:
            pipe.enable_lora()
            pipe.set_adapters([s.adapter_name for s in loras],
                              adapter_weights=[s.weight for s in loras])
        elif self._loaded_loras:
            pipe.disable_lora()

    def _run_batch(
        self, pipe: ZImagePipeline, chunk: list[GenerationRequest], progress: _Progress
    ) -> list[GenerationResult]:
        made = self._make_images(pipe, chunk, progress, requested=len(chunk), splits=0)
        results = []
        for request, item in zip(chunk, made, strict=True):
            encode_start = time.perf_counter()
            buffer = io.BytesIO()
            item.image.save(buffer, format="PNG")
            results.append(
                GenerationResult(
                    png=buffer.getvalue(),
                    prompt=request.prompt,
                    seed=request.seed,
                    steps=request.steps,
                    guidance_scale=request.guidance_scale,
                    width=request.width,
                    height=request.height,
                    model_id=self.source.model_id,
                    revision=self.source.revision_label,
                    timings={
                        "batch_s": item.batch_s,
                        "image_s": item.batch_s / item.used,
                        "encode_s": time.perf_counter() - encode_start,
                        "batch_size": float(item.used),
                    },
                    batch=BatchRecord(requested=len(chunk), used=item.used,
                                      oom_splits=item.oom_splits),
                )
            )
        return results

    def _make_images(self, pipe: ZImagePipeline, chunk: list[GenerationRequest],
                     progress: _Progress, requested: int, splits: int) -> list[_Made]:
        """Run `chunk` as one pipeline call; out of GPU memory, halve it and retry each half.

        Out of memory is `torch.cuda.OutOfMemoryError` or a RuntimeError that says so (cuDNN's
        `CUDNN_STATUS_*` workspace failures, "CUDA error: out of memory"): see
        `is_out_of_memory`. Every image keeps its own seeded generator, so a split batch makes
        the same images (up to the last-bit rounding that depends on batch size). One image
        that still does not fit raises `GenerationOutOfMemory`.
        """
        done_before = progress.done
        try:
            start = time.perf_counter()
            images = self._call_pipeline(pipe, chunk, progress)
            batch_s = time.perf_counter() - start
            return [_Made(image, batch_s, len(chunk), splits) for image in images]
        except RuntimeError as exc:  # OutOfMemoryError is a RuntimeError too
            if not is_out_of_memory(exc):
                raise
            reason = " ".join(str(exc).split())[:200] or "out of memory"
            if len(chunk) == 1:
                raise GenerationOutOfMemory(
                    self._oom_message(chunk[0], requested, reason)) from exc
        # Freed here, after the except block: until then the exception's traceback keeps the
        # failed call's frames, and the tensors they hold, alive.
        _release_cached_memory()
        half = (len(chunk) + 1) // 2
        log.warning(
            "Out of GPU memory with a batch of %d %dx%d images (%d steps): retrying as %d + %d "
            "(%s).", len(chunk), chunk[0].width, chunk[0].height, chunk[0].steps, half,
            len(chunk) - half, reason)
        # The failed call's steps were reported, and one more call now runs: grow the total.
        progress.add_work(progress.done - done_before + chunk[0].steps)
        return (self._make_images(pipe, chunk[:half], progress, requested, splits + 1)
                + self._make_images(pipe, chunk[half:], progress, requested, splits + 1))

    def _call_pipeline(self, pipe: ZImagePipeline, chunk: list[GenerationRequest],
                       progress: _Progress) -> list[Image]:
        import torch

        first = chunk[0]
        if self.fault_hook is not None:  # tests only: raises here what a full GPU would
            self.fault_hook(len(chunk))
        if first.product is not None:  # the scene around the brand's product, its pixels kept
            return run_product_pipeline(pipe, self._scene_pipes, chunk, self.device,
                                        progress.callback, MAX_SEQUENCE_LENGTH)
        return pipe(
            prompt=[r.prompt for r in chunk],  # a fresh list: the pipeline rewrites it in place
            width=first.width,
            height=first.height,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            generator=[torch.Generator(self.device).manual_seed(r.seed) for r in chunk],
            max_sequence_length=MAX_SEQUENCE_LENGTH,
            callback_on_step_end=progress.callback,
            output_type="pil",
        ).images

    def _oom_message(self, request: GenerationRequest, requested: int, reason: str) -> str:
        import torch

        memory = ""
        if self.device.startswith("cuda") and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            memory = f"; {free / 2**30:.1f} of {total / 2**30:.1f} GiB free now"
        split = f" after splitting its batch of {requested} down to 1" if requested > 1 else ""
        return (
            f"Out of GPU memory making one {request.width}x{request.height} image "
            f"({request.steps} steps) on {self.device} ({self.dtype}){split}{memory} "
            f"({reason}). Try: "
            "free GPU memory held by other processes (see nvidia-smi), smaller images (e.g. "
            "size_for(fmt, scale=0.5), or a lower engine preview_scale), or a GPU with more "
            "memory."
        )


class _Progress:
    """Forwards the pipeline's per-step callback to `on_step(done, total)`."""

    def __init__(self, on_step: StepCallback | None, total: int) -> None:
        self.on_step = on_step
        self.total = total
        self.done = 0

    def add_work(self, steps: int) -> None:
        """Steps that an out-of-memory retry adds (`done` never goes back)."""
        self.total += steps

    def callback(
        self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, self.total)
        return callback_kwargs  # the pipeline reads the latents back from it
