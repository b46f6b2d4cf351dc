"""ComfyUI workflow files -> a zpipe prompt template and engine settings, with a report.

`import_workflow(path)` reads a ComfyUI workflow (JSON only; nothing in it is ever executed or
rendered) in either format:

- API format: `{node_id: {"class_type": ..., "inputs": {name: value | [node_id, slot]}}}`
  (also wrapped as `{"prompt": {...}}`, the body of ComfyUI's /prompt endpoint);
- UI/save format: `{"nodes": [...], "links": [[id, from_node, from_slot, to_node, to_slot,
  type], ...], "definitions": {"subgraphs": [...]}}`, what Comfy-Org's templates ship.

Both are flattened into one graph of `Node`s (subgraph instances expanded, inner nodes named
`<instance id>:<inner id>` as ComfyUI's own API export names them), then walked from the
SaveImage/PreviewImage nodes back through VAEDecode to the one KSampler. Every value read
becomes a `Translation` (node id, class, field, value, what zpipe does, severity).

Nodes zpipe cannot honour (ControlNet, upscalers, image inputs, other samplers, any class not
listed in `TRANSLATED` or `UI_ONLY`, i.e. custom nodes) are refused by class and node id:
`ComfyUIRefused` is raised unless `allow_partial=True`, in which case they are dropped (as if
bypassed: a node's input of the wanted type passes through) and listed with severity
"refused". A dropped node the image cannot do without (e.g. LoadImage feeding VAEEncode) is
still an error. Muted nodes (mode 2) are not run, bypassed ones (mode 4) pass through, as in
ComfyUI.

UI-format widget values are positional; the order relied on per class is `WIDGETS` (ComfyUI
core, 0.3.x; the seed widget of KSampler is followed by the frontend's
`control_after_generate`). A subgraph instance's own `widgets_values`, when present, override
the inner widgets it promotes (paired by position with its inputs that carry a `widget`); when
empty (current templates, with `properties.proxyWidgets`), the inner nodes' values are used.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.content.identity import TURBO_STEPS  # ComfyUI's 8 = diffusers 0.42.1's 8 (after #13730)
from tasks.core.errors import ZpipeError
from tasks.prompts.templates import MAX_PART_CHARS, PARTS

Severity = Literal["info", "warning", "refused"]

MAX_WORKFLOW_BYTES = 16 * 1024 * 1024  # Comfy-Org's templates are 3-60 KB; embedded images are not
MAX_SUBGRAPH_DEPTH = 16  # nested subgraphs; real files use one or two levels
TURBO_SHIFT = 3.0  # zengine.engine.TURBO_SHIFT: zpipe always runs FlowMatchEuler with shift 3.0
MAX_BATCH = 64  # EngineSettings.max_batch's upper bound
LORA_WEIGHT = (-2.0, 2.0)  # tasks.config.schema.LoraRef.weight's bounds

# Positional widget names per class in the UI format (ComfyUI core 0.3.x).
WIDGETS: dict[str, tuple[str, ...]] = {
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler",
                 "denoise"),
    "CLIPTextEncode": ("text",),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "ModelSamplingAuraFlow": ("shift",),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "CLIPLoader": ("clip_name", "type", "device"),
    "VAELoader": ("vae_name",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "SaveImage": ("filename_prefix",),
    "PreviewImage": (),
    "VAEDecode": (),
    "ConditioningZeroOut": (),
    "PrimitiveInt": ("value", "control_after_generate"),
    "PrimitiveFloat": ("value",),
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
    "PrimitiveBoolean": ("value",),
}
TRANSLATED = frozenset(WIDGETS)
# Frontend-only nodes: no computation (notes; a Reroute passes its input on; a PrimitiveNode's
# value is already stored in the widget it feeds).
UI_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
OUTPUTS = ("SaveImage", "PreviewImage")
PRIMITIVES = frozenset(c for c in WIDGETS if c.startswith("Primitive"))

# API-format inputs carry no type: these names say which type a link carries.
_INPUT_TYPES = {"model": "MODEL", "clip": "CLIP", "vae": "VAE", "positive": "CONDITIONING",
                "negative": "CONDITIONING", "conditioning": "CONDITIONING",
                "latent_image": "LATENT", "samples": "LATENT", "latent": "LATENT",
                "image": "IMAGE", "images": "IMAGE", "pixels": "IMAGE"}

_REFUSALS = (  # (class-name pattern, why zpipe cannot honour it); first match wins
    (re.compile(r"controlnet|modelpatch|diffsynth", re.I),
     "ControlNet / model patch: zpipe imports text-to-image workflows only"),
    (re.compile(r"upscale|imagescale|latentscale", re.I),
     "upscaler / resize: zpipe makes images at its format presets and does not upscale"),
    (re.compile(r"^(LoadImage\w*|VAEEncode\w*|SetLatentNoiseMask|InpaintModelConditioning|"
                r"Canny|GetImageSize|ImageCompare)$"),
     "image input or image processing (img2img, inpaint): not part of a text-to-image import"),
    (re.compile(r"^(KSamplerAdvanced|SamplerCustom\w*|\w*Guider|\w*Sampler\w*|\w*Sigmas|"
                r"\w*Scheduler)$"),
     "a sampler setup other than KSampler: zpipe translates KSampler only"),
)


class ComfyUIError(ZpipeError):
    """A workflow file that cannot be read or translated; names the file, node and field."""

    def __init__(self, file: str, message: str, node: str | None = None, field: str | None = None):
        self.file, self.node, self.field, self.message = file, node, field, message
        self.detail = (f"node {node}" if node is not None else "") + (f", {field}" if field else "")
        self.detail = f"{self.detail}: {message}" if self.detail else message  # without the file
        super().__init__(f"{file}: {self.detail}")


class Translation(BaseModel):
    """One value read from the workflow and what zpipe does with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str
    class_type: str
    field: str
    value: Any = None
    zpipe: str
    severity: Severity = "info"


class ComfyUIRefused(ComfyUIError):
    """The workflow holds nodes zpipe cannot honour; `report` lists them (and the rest)."""

    def __init__(self, file: str, report: list[Translation]):
        self.report = report
        refused = [t for t in report if t.severity == "refused"]
        names = ", ".join(f"{t.class_type} (node {t.node})" for t in refused)
        super().__init__(file, f"{len(refused)} node(s) zpipe cannot honour: {names}; remove them, "
                               "or pass --allow-partial to drop them (the image will differ)")


# -- 1. The file, validated ----------------------------------------------------------------


class _Foreign(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a foreign format: read what we need, keep nothing


class ApiNode(_Foreign):
    class_type: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)


class UiInput(_Foreign):
    name: str
    type: str | list[Any] | None = None
    link: int | None = None
    widget: dict[str, Any] | None = None


class UiOutput(_Foreign):
    name: str = ""
    type: str | list[Any] | None = None
    links: list[int] | None = None


class UiNode(_Foreign):
    id: int | str
    type: str = Field(min_length=1)
    mode: int = 0  # 0 always, 2 never (muted), 4 bypass
    inputs: list[UiInput] = Field(default_factory=list)
    outputs: list[UiOutput] = Field(default_factory=list)
    widgets_values: list[Any] | dict[str, Any] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


class UiLink(_Foreign):
    id: int
    origin_id: int | str
    origin_slot: int
    target_id: int | str
    target_slot: int
    type: str | list[Any] | None = None

    @classmethod
    def parse(cls, raw: Any) -> UiLink:
        """Top-level links are lists `[id, from, from_slot, to, to_slot, type]`; subgraph links dicts."""
        if isinstance(raw, list):
            if len(raw) < 5:
                raise ValueError(f"a link is [id, from_node, from_slot, to_node, to_slot, type] "
                                 f"(got {raw!r})")
            raw = dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"),
                           raw, strict=False))
        return cls.model_validate(raw)


class SubgraphIO(_Foreign):
    name: str


class Subgraph(_Foreign):
    id: str
    name: str = ""
    nodes: list[UiNode] = Field(default_factory=list)
    links: list[Any] = Field(default_factory=list)
    inputs: list[SubgraphIO] = Field(default_factory=list)
    outputs: list[SubgraphIO] = Field(default_factory=list)


class Definitions(_Foreign):
    subgraphs: list[Subgraph] = Field(default_factory=list)


class UiWorkflow(_Foreign):
    nodes: list[UiNode]
    links: list[Any] = Field(default_factory=list)
    definitions: Definitions = Field(default_factory=Definitions)

    @field_validator("definitions", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


# -- 2. One flat graph ------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A link: output `slot` of node `node`."""

    node: str
    slot: int


@dataclass
class Node:
    id: str
    class_type: str
    links: dict[str, Ref] = field(default_factory=dict)  # input name -> source
    widgets: dict[str, Any] = field(default_factory=dict)  # input name -> value
    input_types: dict[str, str] = field(default_factory=dict)
    output_types: list[str] = field(default_factory=list)
    mode: Literal["active", "muted", "bypassed"] = "active"
    pack: str | None = None  # the custom-node pack (properties.cnr_id), when the file says

    @property
    def label(self) -> str:
        return f"{self.class_type} (node {self.id})"


Graph = dict[str, Node]


def read_workflow(path: str | Path) -> Graph:
    """Parse a workflow file (API or UI format) into a flat, link-checked graph."""
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise ComfyUIError(file, "file not found; check the path")
    size = path.stat().st_size
    if size > MAX_WORKFLOW_BYTES:
        raise ComfyUIError(file, f"file is {size} bytes; a ComfyUI workflow is at most "
                                 f"{MAX_WORKFLOW_BYTES} bytes here: is it the right file?")
    raw = path.read_bytes()
    if raw.startswith(b"\x89PNG"):
        raise ComfyUIError(file, "a PNG, not JSON: zpipe reads workflow JSON only; in ComfyUI use "
                                 "Workflow > Export (or Export (API))")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ComfyUIError(file, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ComfyUIError(file, f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                                 f"{exc.msg}") from None
    except RecursionError:
        raise ComfyUIError(file, "JSON nested too deeply to be a workflow") from None
    return parse_workflow(data, file)


def parse_workflow(data: Any, file: str = "<workflow>") -> Graph:
    """A decoded workflow (API or UI format) -> a flat graph whose every link is checked."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        graph = _from_ui(data, file)
    elif isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        graph = _from_api(data["prompt"], file)
    elif isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v
                                                 for v in data.values()):
        graph = _from_api(data, file)
    else:
        raise ComfyUIError(file, "not a ComfyUI workflow: expected the UI format (an object with "
                                 "`nodes` and `links`) or the API format ({node_id: {class_type, "
                                 "inputs}})")
    for node in graph.values():
        for name, ref in node.links.items():
            if ref.node not in graph:
                raise ComfyUIError(file, f"input links to node {ref.node}, which is not in the file",
                                   node.id, name)
    return graph


def _pydantic_problem(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors(include_url=False)[0]
    return ".".join(str(p) for p in first["loc"]) or "(node)", first["msg"]


def _from_api(data: dict[str, Any], file: str) -> Graph:
    graph: Graph = {}
    for node_id, raw in data.items():
        try:
            api = ApiNode.model_validate(raw)
        except ValidationError as exc:
            where, message = _pydantic_problem(exc)
            raise ComfyUIError(file, message, str(node_id), where) from None
        node = Node(id=str(node_id), class_type=api.class_type)
        for name, value in api.inputs.items():
            if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int)
                    and isinstance(value[1], int) and not isinstance(value[1], bool)):
                node.links[name] = Ref(str(value[0]), value[1])
                node.input_types[name] = _INPUT_TYPES.get(name, "*")
            else:
                node.widgets[name] = value
        graph[node.id] = node
    return graph


@dataclass
class _Expansion:
    """State shared while flattening a UI workflow and its subgraphs."""

    file: str
    subgraphs: dict[str, Subgraph]
    graph: Graph = field(default_factory=dict)
    alias: dict[tuple[str, int], Ref | None] = field(default_factory=dict)  # pseudo output -> source
    overrides: list[tuple[str, str, Any]] = field(default_factory=list)  # (node, widget, value)


def _from_ui(data: dict[str, Any], file: str) -> Graph:
    try:
        workflow = UiWorkflow.model_validate(data)
    except ValidationError as exc:
        where, message = _pydantic_problem(exc)
        node = None
        match = re.match(r"nodes\.(\d+)\.?(.*)", where)
        if match and isinstance(data["nodes"][int(match[1])], dict):
            node, where = str(data["nodes"][int(match[1])].get("id", f"#{match[1]}")), match[2]
        raise ComfyUIError(file, message, node, where or None) from None
    state = _Expansion(file, {s.id: s for s in workflow.definitions.subgraphs})
    _expand(state, workflow.nodes, workflow.links, "", {}, 0)
    for node_id, widget, value in state.overrides:
        state.graph[node_id].widgets[widget] = value
    for node in state.graph.values():  # follow aliases (subgraph boundaries, reroutes, primitives)
        for name in list(node.links):
            ref: Ref | None = node.links[name]
            seen = 0
            while ref is not None and (ref.node, ref.slot) in state.alias:
                ref = state.alias[(ref.node, ref.slot)]
                seen += 1
                if seen > 10_000:
                    raise ComfyUIError(file, "links form a loop", node.id, name)
            if ref is None:
                del node.links[name]  # fed by a primitive or an unlinked subgraph input: widget value
            else:
                node.links[name] = ref
    return state.graph


def _links_of(state: _Expansion, raw_links: list[Any], prefix: str) -> dict[int, UiLink]:
    links: dict[int, UiLink] = {}
    for i, raw in enumerate(raw_links):
        try:
            link = UiLink.parse(raw)
        except (ValidationError, ValueError) as exc:
            message = _pydantic_problem(exc)[1] if isinstance(exc, ValidationError) else str(exc)
            raise ComfyUIError(state.file, message, None, f"{prefix}links[{i}]") from None
        links[link.id] = link
    return links


def _widget_values(node: UiNode, names: tuple[str, ...]) -> dict[str, Any]:
    values = node.widgets_values
    if isinstance(values, dict):
        return {k: v for k, v in values.items() if k in names}
    return dict(zip(names, values or [], strict=False))


def _expand(state: _Expansion, nodes: list[UiNode], raw_links: list[Any], prefix: str,
            boundary: dict[int, Ref | None], depth: int) -> None:
    """Add `nodes` (ids prefixed) to the graph; links from the subgraph input node (-10) resolve
    through `boundary`, links into its output node (-20) become aliases of the instance."""
    if depth > MAX_SUBGRAPH_DEPTH:
        raise ComfyUIError(state.file, f"subgraphs nested more than {MAX_SUBGRAPH_DEPTH} levels "
                                       "deep (or a subgraph that contains itself)", prefix.rstrip(":"))
    links = _links_of(state, raw_links, prefix)
    local = {str(n.id) for n in nodes}

    def source(link_id: int, node: str, name: str) -> Ref | None:
        link = links.get(link_id)
        if link is None:
            raise ComfyUIError(state.file, f"input uses link {link_id}, which is not in the file's "
                                           "links", node, name)
        origin = str(link.origin_id)
        if origin == "-10":
            return boundary.get(link.origin_slot)
        if origin not in local:
            raise ComfyUIError(state.file, f"link {link_id} comes from node {origin}, which is not "
                                           "in the file", node, name)
        return Ref(prefix + origin, link.origin_slot)

    for ui in nodes:
        node_id = prefix + str(ui.id)
        if node_id in state.graph:
            raise ComfyUIError(state.file, "two nodes share this id", node_id)
        mode = {2: "muted", 4: "bypassed"}.get(ui.mode, "active")
        incoming = {i.name: source(i.link, node_id, i.name) for i in ui.inputs if i.link is not None}
        if ui.type in state.subgraphs and mode == "active":
            _expand_instance(state, ui, node_id, incoming, depth)
            continue
        node = Node(id=node_id, class_type=ui.type, mode=mode,  # type: ignore[arg-type]
                    pack=ui.properties.get("cnr_id") or ui.properties.get("aux_id"),
                    widgets=_widget_values(ui, WIDGETS.get(ui.type, ())),
                    input_types={i.name: str(i.type) for i in ui.inputs},
                    output_types=[str(o.type) for o in ui.outputs])
        node.links = {name: ref for name, ref in incoming.items() if ref is not None}
        if ui.type == "Reroute":
            state.alias[(node_id, 0)] = node.links.get(ui.inputs[0].name) if ui.inputs else None
        elif ui.type == "PrimitiveNode":
            for slot in range(max(1, len(ui.outputs))):
                state.alias[(node_id, slot)] = None  # its value is stored in the widget it feeds
        state.graph[node_id] = node


def _expand_instance(state: _Expansion, ui: UiNode, node_id: str, incoming: dict[str, Ref | None],
                     depth: int) -> None:
    subgraph = state.subgraphs[ui.type]
    names = [io.name for io in subgraph.inputs]
    boundary = {slot: incoming.get(name) for slot, name in enumerate(names)}
    # The instance's own widget values (older saves) override the inner widgets they promote.
    promoted = [i.name for i in ui.inputs if i.widget is not None]
    values = ui.widgets_values if isinstance(ui.widgets_values, list) else []
    own = dict(zip(promoted, values, strict=False)) if len(values) == len(promoted) else {}
    prefix = f"{node_id}:"
    inner_links = _links_of(state, subgraph.links, prefix)
    for link in inner_links.values():
        origin, target = str(link.origin_id), str(link.target_id)
        if origin == "-10" and boundary.get(link.origin_slot) is None and target != "-20":
            name = names[link.origin_slot] if link.origin_slot < len(names) else None
            inner = next((n for n in subgraph.nodes if str(n.id) == target), None)
            if name in own and inner is not None and link.target_slot < len(inner.inputs):
                state.overrides.append((prefix + target, inner.inputs[link.target_slot].name, own[name]))
        if target == "-20":
            state.alias[(node_id, link.target_slot)] = (
                boundary.get(link.origin_slot) if origin == "-10" else Ref(prefix + origin,
                                                                            link.origin_slot))
    _expand(state, subgraph.nodes, subgraph.links, prefix, boundary, depth + 1)


# -- 3. Translation ------------------------------------------------------------------------


class ImportResult(BaseModel):
    """What an import produced: the two config documents, and the report."""

    model_config = ConfigDict(extra="forbid")

    source: str
    template_name: str
    prompts: dict[str, Any]  # a `kind: prompts` document
    settings: dict[str, Any]  # a `kind: settings` document
    report: list[Translation]
    brand_loras: list[dict[str, Any]] = Field(default_factory=list,
                                              description="`loras:` entries for the brand YAML")
    format: str  # the zpipe format preset the size maps to

    @property
    def dropped(self) -> list[Translation]:
        return [t for t in self.report if t.severity == "refused"]


def escape_jinja(text: str) -> str:
    """Text that a Jinja2 template prints literally: every `{` becomes `{{ "{" }}`.

    Only `{` opens a Jinja delimiter (`{{`, `{%`, `{#`; line statements are off in zpipe's
    environment), so after this nothing in the text can be an expression or a statement.
    """
    return text.replace("{", '{{ "{" }}')


def template_slug(text: str) -> str:
    """A template name from a file name: 'image_z_image_turbo' -> 'image-z-image-turbo'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:63].strip("-") or "comfyui-import"


def refusal_reason(node: Node) -> str:
    """Why zpipe cannot honour a node of this class."""
    for pattern, reason in _REFUSALS:
        if pattern.search(node.class_type):
            return reason
    pack = f" from pack {node.pack!r}" if node.pack and node.pack != "comfy-core" else ""
    return (f"unknown class{pack}: a custom node (or a ComfyUI node zpipe does not translate); "
            f"zpipe translates {', '.join(sorted(TRANSLATED - PRIMITIVES))}")


class _Translator:
    """Walks the graph from the output back to the KSampler, recording every translation."""

    def __init__(self, graph: Graph, file: str, allow_partial: bool):
        self.graph, self.file, self.allow_partial = graph, file, allow_partial
        self.report: list[Translation] = []
        self.dropped: set[str] = set()
        self.visited: set[str] = set()
        self.decode: Node | None = None

    def note(self, node: Node, fld: str, value: Any, zpipe: str, severity: Severity = "info") -> None:
        self.report.append(Translation(node=node.id, class_type=node.class_type, field=fld,
                                       value=value, zpipe=zpipe, severity=severity))

    def fail(self, node: Node | None, fld: str | None, message: str) -> ComfyUIError:
        return ComfyUIError(self.file, message, node.id if node else None, fld)

    # 3a. Following links
    def follow(self, consumer: Node, name: str, want: str) -> tuple[Node, int]:
        """The node (and output slot) feeding `consumer.name`, through bypassed and dropped nodes."""
        if name not in consumer.links:
            raise self.fail(consumer, name, f"this input must be connected (a {want})")
        ref = consumer.links[name]
        for _ in range(len(self.graph) + 1):
            node = self.graph[ref.node]
            if node.mode == "muted":
                raise self.fail(consumer, name, f"comes from {node.label}, which is muted (mode "
                                                "never): ComfyUI could not run this either")
            if node.mode == "active" and node.id not in self.dropped:
                self.visited.add(node.id)
                return node, ref.slot
            ref = self.pass_through(node, ref.slot, want, consumer, name)
        raise self.fail(consumer, name, "links form a loop")

    def pass_through(self, node: Node, slot: int, want: str, consumer: Node, name: str) -> Ref:
        """A bypassed or dropped node hands on its input of the wanted type (ComfyUI's bypass)."""
        same = ([n for n, t in node.input_types.items() if t == want and n in node.links]
                or [n for n, t in node.input_types.items() if t == "*" and n in node.links])
        if node.output_types:  # the UI format types every output
            before = sum(1 for t in node.output_types[:slot] if t == want)
        else:  # API format: the n-th output of a type is fed by the n-th input of that type
            before = slot if slot < len(same) else 0
        if before < len(same):
            return node.links[same[before]]
        how = "bypassed" if node.mode == "bypassed" else "dropped"
        raise self.fail(consumer, name, f"comes from {node.label}, which is {how} and has no "
                                        f"{want} input to pass on: the image depends on it, so it "
                                        "cannot be left out")

    def scalar(self, node: Node, name: str, kinds: tuple[type, ...]) -> Any:
        """A widget value, or the value of the primitive node linked to it."""
        value: Any
        if name in node.links:
            ref = node.links[name]
            source = self.graph[ref.node]
            if source.class_type in PRIMITIVES and source.mode == "active":
                self.visited.add(source.id)
                value = source.widgets.get("value")
            elif name in node.widgets:
                value = node.widgets[name]
                self.note(node, name, value, f"linked from {source.label}, which zpipe does not "
                                             "run: the value saved in the file is used", "warning")
            else:
                raise self.fail(node, name, f"linked from {source.label}: zpipe reads this value "
                                            "only from a widget or a Primitive node")
        elif name in node.widgets:
            value = node.widgets[name]
        else:
            raise self.fail(node, name, "missing (the widget values are shorter than this class's "
                                        f"widgets: {', '.join(WIDGETS.get(node.class_type, ()))})")
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise self.fail(node, name, f"expected {expected}, got {type(value).__name__} "
                                        f"{value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(node, name, f"not a finite number ({value!r})")
        return value

    # 3b. The walk
    def refuse_unknown(self) -> None:
        for node in self.graph.values():
            if node.mode != "active":
                self.note(node, "mode", node.mode, "muted: not run, as in ComfyUI" if node.mode ==
                          "muted" else "bypassed: its input passes through, as in ComfyUI")
            elif node.class_type in UI_ONLY:
                if node.class_type in ("Note", "MarkdownNote"):
                    self.note(node, "text", None, "a note for people: ignored")
            elif node.class_type not in TRANSLATED:
                self.dropped.add(node.id)
                self.note(node, "class_type", node.class_type,
                          ("DROPPED (--allow-partial): " if self.allow_partial else "refused: ")
                          + refusal_reason(node), "refused")
        if self.dropped and not self.allow_partial:
            raise ComfyUIRefused(self.file, self.report)

    def sampler(self) -> Node:
        outputs = [n for n in self.graph.values() if n.class_type in OUTPUTS and n.mode == "active"]
        if not outputs:
            raise self.fail(None, None, "no SaveImage or PreviewImage node: nothing to import")
        samplers: dict[str, Node] = {}
        problems: list[str] = []
        for out in outputs:
            try:
                decode, _ = self.follow(out, "images", "IMAGE")
                if decode.class_type != "VAEDecode":
                    raise self.fail(out, "images", f"comes from {decode.label}; zpipe imports "
                                                   "SaveImage <- VAEDecode <- KSampler")
                sampler, _ = self.follow(decode, "samples", "LATENT")
                if sampler.class_type != "KSampler":
                    raise self.fail(decode, "samples", f"comes from {sampler.label}; zpipe "
                                                       "imports the latent of a KSampler")
            except ComfyUIError as exc:
                if not self.dropped:
                    raise
                self.note(out, "images", None, f"not imported: {exc.detail}", "warning")
                problems.append(exc.detail)
                continue
            self.visited.update({out.id, decode.id})
            self.decode = decode
            samplers[sampler.id] = sampler
            self.note(out, "images", None, f"the image zpipe makes (via VAEDecode {decode.id}, "
                                           f"KSampler {sampler.id})")
        if not samplers:
            raise self.fail(None, None, "no output shows a KSampler's image once the refused "
                                        "nodes are dropped: nothing left to import ("
                                        + "; ".join(problems) + ")")
        if len(samplers) > 1:
            raise self.fail(None, None, f"{len(samplers)} KSampler nodes ({', '.join(samplers)}) "
                                        "make images; zpipe imports one image chain per file: "
                                        "remove the others or split the workflow")
        return next(iter(samplers.values()))


def import_graph(graph: Graph, file: str, *, allow_partial: bool = False, name: str | None = None,
                 model: str = "tiny", revision: str | None = None) -> ImportResult:
    """Translate a flat graph into a prompt template and engine settings, with the report."""
    from tasks.config.schema import FORMATS, EngineSettings
    from zengine import size_for

    t = _Translator(graph, file, allow_partial)
    # 1. Refuse what zpipe cannot honour; find the one image chain
    t.refuse_unknown()
    ks = t.sampler()
    template = name or template_slug(Path(file).stem)

    # 2. The KSampler's numbers
    seed = t.scalar(ks, "seed", (int,))
    control = ks.widgets.get("control_after_generate")
    t.note(ks, "seed", seed, "not copied: zpipe derives each image's seed from campaign, date, "
           "format and variant (reproducible); `zpipe generate --seed N` takes one. The same "
           "number does not reproduce ComfyUI's noise (another noise generator)"
           + (f"; the file says {control!r} after each run" if control not in (None, "fixed") else ""))
    steps = t.scalar(ks, "steps", (int,))
    if steps == TURBO_STEPS:
        t.note(ks, "steps", steps, "8 steps: ComfyUI's 8 = diffusers 0.42.1 num_inference_steps=8 "
               "(8 transformer forwards, since diffusers #13730; the older '9' was the same schedule)")
    else:
        t.note(ks, "steps", steps, f"not copied: zpipe runs Turbo's {TURBO_STEPS} steps (it is "
               "distilled to 8); other counts are not configurable", "warning")
    cfg = t.scalar(ks, "cfg", (int, float))
    negative, _ = t.follow(ks, "negative", "CONDITIONING")
    zeroed = negative.class_type == "ConditioningZeroOut"
    if cfg == 1:
        t.note(ks, "cfg", cfg, "guidance off: ComfyUI cfg 1 (negative " + ("zeroed" if zeroed else
               "not evaluated") + ") = diffusers guidance_scale 0.0, zpipe's setting for Turbo")
    else:
        t.note(ks, "cfg", cfg, f"not copied: Z-Image-Turbo is guidance-distilled, so cfg {cfg:g} "
               f"(≈ diffusers guidance_scale {cfg - 1:g}, a second forward per step) is a mistake "
               "for it; zpipe keeps guidance off (guidance_scale 0.0, as ComfyUI's cfg 1)",
               "warning")
    sampler_name = t.scalar(ks, "sampler_name", (str,))
    t.note(ks, "sampler_name", sampler_name,
           "zpipe runs FlowMatchEulerDiscreteScheduler: the same Euler flow-matching step"
           if sampler_name == "euler" else
           f"not available: zpipe runs FlowMatchEulerDiscreteScheduler (Euler) instead of "
           f"{sampler_name!r}; images differ in detail from ComfyUI's", "info" if sampler_name ==
           "euler" else "warning")
    scheduler = t.scalar(ks, "scheduler", (str,))
    t.note(ks, "scheduler", scheduler,
           "≈ zpipe's schedule: 'simple' spaces the shifted sigmas evenly, as FlowMatchEuler's "
           "linear timesteps with shift 3.0 do" if scheduler in ("simple", "normal") else
           f"not available: zpipe spaces the shifted sigmas evenly (like 'simple'), not "
           f"{scheduler!r}", "info" if scheduler in ("simple", "normal") else "warning")
    denoise = t.scalar(ks, "denoise", (int, float)) if "denoise" in ks.widgets or "denoise" in \
        ks.links else 1.0
    if denoise != 1:
        t.note(ks, "denoise", denoise, "not copied: zpipe denoises from pure noise (1.0); a "
               "partial denoise only makes sense on an input image", "warning")

    # 3. The model chain: sampling shift, LoRAs, weights
    shift: float | None = None
    loras: dict[str, dict[str, Any]] = {}
    node, _ = t.follow(ks, "model", "MODEL")
    while True:
        if node.class_type == "ModelSamplingAuraFlow":
            shift = t.scalar(node, "shift", (int, float))
            if shift == TURBO_SHIFT:
                t.note(node, "shift", shift, "= zpipe's FlowMatchEuler shift 3.0 (fixed)")
            else:
                t.note(node, "shift", shift, f"not honoured: zpipe always runs shift {TURBO_SHIFT:g}"
                       " (zengine's TURBO_SHIFT; EngineSettings has no shift)", "warning")
            node, _ = t.follow(node, "model", "MODEL")
        elif node.class_type in ("LoraLoader", "LoraLoaderModelOnly"):
            _lora(t, node, loras)
            node, _ = t.follow(node, "model", "MODEL")
        elif node.class_type in ("UNETLoader", "CheckpointLoaderSimple"):
            _weights(t, node, model, revision)
            break
        else:
            raise t.fail(node, None, f"{node.label} feeds the KSampler's model; zpipe expects "
                                     "UNETLoader / CheckpointLoaderSimple, LoraLoader, "
                                     "ModelSamplingAuraFlow")
    if shift is None:
        t.note(ks, "model", None, f"no ModelSamplingAuraFlow: zpipe uses shift {TURBO_SHIFT:g}, "
               "Z-Image-Turbo's own")

    # 4. Prompts
    positive, _ = t.follow(ks, "positive", "CONDITIONING")
    if positive.class_type != "CLIPTextEncode":
        raise t.fail(ks, "positive", f"comes from {positive.label}; zpipe imports a CLIPTextEncode "
                                     "prompt")
    text = t.scalar(positive, "text", (str,))
    _text_encoder(t, positive, loras)
    prompt = _prompt_text(t, positive, text)
    if zeroed:
        t.note(negative, "conditioning", None, "zeroed negative: nothing to carry (guidance off)")
    elif negative.class_type == "CLIPTextEncode":
        neg = t.scalar(negative, "text", (str,))
        t.visited.add(negative.id)
        t.note(negative, "text", neg, "empty negative: nothing to carry" if not neg.strip() else
               "not carried: with guidance off a negative prompt does nothing (zpipe has none); "
               "describe what you want in the prompt instead", "info" if not neg.strip() or
               cfg == 1 else "warning")
    else:
        raise t.fail(ks, "negative", f"comes from {negative.label}; zpipe imports a "
                                     "ConditioningZeroOut or CLIPTextEncode negative")

    # 5. Size and batch
    latent, _ = t.follow(ks, "latent_image", "LATENT")
    if latent.class_type not in ("EmptySD3LatentImage", "EmptyLatentImage"):
        raise t.fail(ks, "latent_image", f"comes from {latent.label}; zpipe imports an empty "
                                         "latent (text-to-image)")
    width, height = t.scalar(latent, "width", (int,)), t.scalar(latent, "height", (int,))
    batch = t.scalar(latent, "batch_size", (int,))
    fmt, scale = _size(t, latent, width, height, FORMATS, size_for)
    if not 1 <= batch <= MAX_BATCH:
        raise t.fail(latent, "batch_size", f"must be 1-{MAX_BATCH} (got {batch})")
    t.note(latent, "batch_size", batch, f"engine.max_batch: {batch} (images per forward pass; "
           "a campaign's image count comes from its days, formats and variants)")

    # 6. The VAE, and anything left off the chain
    vae, _ = t.follow(t.decode, "vae", "VAE")
    if vae.class_type == "VAELoader":
        vae_name = t.scalar(vae, "vae_name", (str,))
        t.note(vae, "vae_name", vae_name, "the Flux VAE (ae.safetensors) is part of zpipe's model "
               "folder" if vae_name.startswith("ae") else "zpipe uses the model folder's VAE "
               "(the Flux VAE), not this file", "info" if vae_name.startswith("ae") else "warning")
    for node in t.graph.values():
        if (node.mode == "active" and node.class_type in TRANSLATED and node.id not in t.visited
                and node.class_type not in OUTPUTS):
            t.note(node, "(node)", None, "not on the path to the image: ComfyUI would not run it "
                   "either; ignored")

    # 7. The two documents
    engine = EngineSettings(model=model, revision=revision, preview_scale=scale, max_batch=batch)
    settings = {"kind": "settings", "engine": engine.model_dump(
        mode="json", include={"model", "revision", "preview_scale", "max_batch"})}
    description = (f"Imported from ComfyUI workflow {Path(file).name} (prompt: "
                   f"{positive.class_type} node {positive.id}) by `zpipe import comfyui`; "
                   f"made for format {fmt}. The text is literal: it has no variables.")
    parts = {part: (prompt if part == "subject" else "") for part in PARTS}
    prompts = {"kind": "prompts", "templates": [{"name": template, "version": "1.0.0",
                                                 "description": description,
                                                 "zh": parts, "en": dict(parts)}]}
    return ImportResult(source=file, template_name=template, prompts=prompts, settings=settings,
                        report=t.report, brand_loras=list(loras.values()), format=fmt)


def _lora(t: _Translator, node: Node, loras: dict[str, dict[str, Any]]) -> None:
    name = t.scalar(node, "lora_name", (str,))
    strength = float(t.scalar(node, "strength_model", (int, float)))
    low, high = LORA_WEIGHT
    weight = min(high, max(low, strength))
    loras[node.id] = {"path": name, "weight": weight}
    t.note(node, "lora_name", name, "zpipe applies LoRAs per brand: add to the brand YAML "
           f"`loras: [{{path: <your copy of {name}>, weight: {weight:g}}}]` (a diffusers/peft "
           "Z-Image-Turbo LoRA)", "warning")
    if weight != strength:
        t.note(node, "strength_model", strength, f"clamped to {weight:g}: zpipe's LoRA weight is "
               f"{low:g}..{high:g}", "warning")


def _weights(t: _Translator, node: Node, model: str, revision: str | None) -> None:
    fld = "unet_name" if node.class_type == "UNETLoader" else "ckpt_name"
    name = t.scalar(node, fld, (str,))
    lowered = name.lower().replace("-", "_")
    turbo = "z_image" in lowered and "turbo" in lowered
    t.note(node, fld, name, (f"Z-Image-Turbo: engine.model {model!r}" + (f"@{revision}" if revision
           else "") + " (zpipe loads diffusers folders, not ComfyUI single files; "
           "--model/--revision choose, e.g. Tongyi-MAI/Z-Image-Turbo and a pinned commit)")
           if turbo else f"not Z-Image-Turbo weights: zpipe runs Z-Image-Turbo only "
           f"(engine.model {model!r}); the file's other settings were made for another model",
           "info" if turbo else "warning")
    dtype = node.widgets.get("weight_dtype")
    if dtype not in (None, "default"):
        t.note(node, "weight_dtype", dtype, "zpipe runs bf16 on GPU (float8 through its fast "
               "path, not this setting)", "warning")


def _text_encoder(t: _Translator, encode: Node, loras: dict[str, dict[str, Any]]) -> None:
    node, _ = t.follow(encode, "clip", "CLIP")
    while node.class_type == "LoraLoader":
        strength = node.widgets.get("strength_clip", 0)
        if strength:
            t.note(node, "strength_clip", strength, "not honoured: zpipe applies LoRAs to the "
                   "transformer only", "warning")
        node, _ = t.follow(node, "clip", "CLIP")
    if node.class_type == "CLIPLoader":
        name, kind = t.scalar(node, "clip_name", (str,)), node.widgets.get("type")
        qwen = "qwen_3_4b" in name.lower() and kind in (None, "lumina2")
        t.note(node, "clip_name", name, "Qwen3-4B text encoder: part of zpipe's model folder"
               if qwen else f"zpipe uses Z-Image's Qwen3-4B text encoder, not {name!r} "
               f"(type {kind!r})", "info" if qwen else "warning")
    elif node.class_type != "CheckpointLoaderSimple":
        raise t.fail(encode, "clip", f"comes from {node.label}; zpipe expects CLIPLoader")


_DYNAMIC = re.compile(r"\{[^{}]*\|[^{}]*\}")  # ComfyUI's frontend picks one of {a|b} per run
_WEIGHTED = re.compile(r"\([^()]*:\s*-?\d+(?:\.\d+)?\s*\)")  # (words:1.2) emphasis


def _prompt_text(t: _Translator, node: Node, text: str) -> str:
    if not text.strip():
        raise t.fail(node, "text", "the prompt is empty: there is nothing to make a template of")
    if len(text) > MAX_PART_CHARS:
        raise t.fail(node, "text", f"the prompt is {len(text)} characters; a zpipe prompt part "
                                   f"is at most {MAX_PART_CHARS}")
    escaped = escape_jinja(text)
    t.note(node, "text", text, "the template's subject (zh and en alike: render it with language "
           "zh or en, not bilingual)" + ("; its { are escaped so Jinja prints them literally"
                                         if escaped != text else ""))
    if _DYNAMIC.search(text):
        t.note(node, "text", _DYNAMIC.search(text)[0], "kept literally: ComfyUI's frontend picks "
               "one option of {a|b} per run; zpipe does not (use variants' axes)", "warning")
    if _WEIGHTED.search(text):
        t.note(node, "text", _WEIGHTED.search(text)[0], "kept literally: zpipe has no (words:1.2) "
               "emphasis", "warning")
    return escaped


def _size(t: _Translator, latent: Node, width: int, height: int, formats: Iterable[str],
          size_for: Any) -> tuple[str, float]:
    """The format preset (and preview scale) nearest to width x height."""
    if not (64 <= width <= 2048 and 64 <= height <= 2048):
        raise t.fail(latent, "width", f"{width}x{height} is outside zpipe's 64-2048 pixels per side")
    fmt = min(formats, key=lambda f: abs(math.log((size_for(f)[0] / size_for(f)[1]) /
                                                  (width / height))))
    preset_w, preset_h = size_for(fmt)
    scale = round(min(1.0, math.sqrt(width * height / (preset_w * preset_h))), 4)
    made = size_for(fmt, scale)
    if made == (width, height):
        t.note(latent, "width x height", f"{width}x{height}", f"format {fmt} at preview_scale "
               f"{scale:g} (exactly {made[0]}x{made[1]}): use `formats: [{fmt}]` in the campaign")
    else:
        t.note(latent, "width x height", f"{width}x{height}", f"not a zpipe size: nearest is "
               f"format {fmt} at preview_scale {scale:g} = {made[0]}x{made[1]} (zpipe sizes are "
               f"format presets, multiples of 16, at most 1x); use `formats: [{fmt}]`", "warning")
    return fmt, scale


def import_workflow(path: str | Path, *, allow_partial: bool = False, name: str | None = None,
                    model: str = "tiny", revision: str | None = None) -> ImportResult:
    """Read a ComfyUI workflow file and translate it (see the module docstring)."""
    return import_graph(read_workflow(path), str(path), allow_partial=allow_partial, name=name,
                        model=model, revision=revision)


# -- 4. Writing ----------------------------------------------------------------------------

PROMPTS_FILE = "prompts.yaml"
SETTINGS_FILE = "settings.yaml"


def _header(result: ImportResult, what: str) -> str:
    lines = [f"# {what}, imported from the ComfyUI workflow {Path(result.source).name}",
             "# by `zpipe import comfyui` (the report explains every value; nothing in the file",
             "# was run). Check it with `zpipe validate`."]
    if result.dropped:
        lines.append(f"# PARTIAL: {len(result.dropped)} node(s) were dropped: "
                     + ", ".join(f"{t.class_type} ({t.node})" for t in result.dropped))
    return "\n".join(lines) + "\n"


def write_import(result: ImportResult, out_dir: str | Path, *, force: bool = False) -> list[Path]:
    """Write prompts.yaml and settings.yaml into `out_dir`, check them with zpipe's loaders."""
    import yaml

    from tasks.config.schema import load_config

    out = Path(out_dir)
    targets = [(out / PROMPTS_FILE, result.prompts, "A zpipe prompt library"),
               (out / SETTINGS_FILE, result.settings, "zpipe settings")]
    existing = [str(p) for p, _, _ in targets if p.exists()]
    if existing and not force:
        raise ComfyUIError(str(out), f"would overwrite {', '.join(existing)}; pass --force, or "
                                     "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for path, document, what in targets:
        text = _header(result, what) + yaml.safe_dump(document, allow_unicode=True, sort_keys=False,
                                                      width=100)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    for path, _, _ in targets:
        load_config(path)  # exactly what `zpipe validate` runs
    return [p for p, _, _ in targets]
