"""`zpipe import comfyui`: ComfyUI workflows (API and UI/subgraph formats) -> template + settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli.app import app
from tasks.config.schema import load_library, load_settings
from tasks.content.comfyui import (
    ComfyUIError,
    ComfyUIRefused,
    import_workflow,
    parse_workflow,
    write_import,
)
from tasks.prompts.templates import render_prompt

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data" / "comfyui"
TURBO_UI = DATA / "image_z_image_turbo.json"
TURBO_API = DATA / "image_z_image_turbo.api.json"
CONTROLNET_UI = DATA / "image_z_image_turbo_fun_union_controlnet.json"
TURBO_PROMPT = ("Latina female with thick wavy hair, harbor boats and pastel houses behind. "
                "Breezy seaside light, warm tones, cinematic close-up.")
runner = CliRunner()


def seed_snippet(**ksampler: Any) -> dict[str, Any]:
    """The seed's KSampler snippet as a whole API-format workflow (cfg 7.0 and a negative text)."""
    return {
        "1": {"class_type": "CLIPLoader",
              "inputs": {"clip_name": "qwen_3_4b.safetensors", "type": "lumina2", "device": "default"}},
        "2": {"class_type": "UNETLoader",
              "inputs": {"unet_name": "z_image_turbo_bf16.safetensors", "weight_dtype": "default"}},
        "3": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3.0, "model": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "哑光正红色口红，一只手拿着产品，柔焦布景", "clip": ["1", 0]}},
        "5": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "blurry, low quality, watermark", "clip": ["1", 0]}},
        "6": {"class_type": "EmptySD3LatentImage",
              "inputs": {"width": 720, "height": 1280, "batch_size": 2}},
        "7": {"class_type": "KSampler",
              "inputs": {"seed": 42, "steps": 8, "cfg": 7.0, "sampler_name": "euler",
                         "scheduler": "simple", "denoise": 1.0, "model": ["3", 0],
                         "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0],
                         **ksampler}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "zpipe", "images": ["9", 0]}},
    }


def write(tmp_path: Path, data: Any, name: str = "workflow.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False))
    return path


def entry(result_or_report: Any, node: str, field: str) -> Any:
    report = getattr(result_or_report, "report", result_or_report)
    found = [t for t in report if t.node == node and t.field == field]
    assert found, f"no report entry for node {node} field {field}: {report}"
    return found[0]


# -- the seed's KSampler snippet ----------------------------------------------------------


def test_seed_snippet_cfg_7_is_reported_not_copied(tmp_path: Path) -> None:
    result = import_workflow(write(tmp_path, seed_snippet()))
    cfg = entry(result, "7", "cfg")
    assert cfg.value == 7.0 and cfg.severity == "warning"
    assert "not copied" in cfg.zpipe and "guidance-distilled" in cfg.zpipe
    assert "guidance_scale 0.0" in cfg.zpipe
    # nothing in the written settings can carry a guidance scale: zpipe's engine keeps 0.0
    assert "guidance" not in json.dumps(result.settings)
    negative = entry(result, "5", "text")
    assert negative.severity == "warning" and "negative prompt does nothing" in negative.zpipe
    assert entry(result, "7", "sampler_name").severity == "info"  # euler = FlowMatch Euler
    size = entry(result, "6", "width x height")
    assert size.value == "720x1280" and "9:16" in size.zpipe and size.severity == "info"
    assert result.format == "9:16"
    assert result.settings["engine"]["max_batch"] == 2
    assert result.settings["engine"]["preview_scale"] == 1.0


def test_seed_snippet_through_the_cli_writes_valid_configs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["import", "comfyui", str(write(tmp_path, seed_snippet())),
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["ok"] and payload["format"] == "9:16"
    cfg = next(t for t in payload["report"] if t["node"] == "7" and t["field"] == "cfg")
    assert cfg["severity"] == "warning" and cfg["value"] == 7.0
    ok = runner.invoke(app, ["validate", str(out / "prompts.yaml"), str(out / "settings.yaml")])
    assert ok.exit_code == 0, ok.output
    template = load_library(out / "prompts.yaml").get("workflow")
    assert render_prompt(template, {}, "zh").text == "哑光正红色口红，一只手拿着产品，柔焦布景"


def test_other_steps_shift_sampler_and_lora_are_explained(tmp_path: Path) -> None:
    data = seed_snippet(steps=20, sampler_name="dpmpp_2m", scheduler="karras", cfg=1.0, denoise=0.6)
    data["3"]["inputs"]["shift"] = 6.0
    data["11"] = {"class_type": "LoraLoader",
                  "inputs": {"lora_name": "brand_style.safetensors", "strength_model": 0.8,
                             "strength_clip": 1.0, "model": ["2", 0], "clip": ["1", 0]}}
    data["3"]["inputs"]["model"] = ["11", 0]
    data["4"]["inputs"]["clip"] = ["11", 1]
    data["6"]["inputs"].update(width=1000, height=1000)
    result = import_workflow(write(tmp_path, data))
    assert entry(result, "7", "steps").severity == "warning"
    assert "8 steps" in entry(result, "7", "steps").zpipe
    shift = entry(result, "3", "shift")
    assert shift.severity == "warning" and "shift 3" in shift.zpipe and "EngineSettings" in shift.zpipe
    sampler = entry(result, "7", "sampler_name")
    assert sampler.severity == "warning" and "FlowMatchEuler" in sampler.zpipe
    assert "dpmpp_2m" in sampler.zpipe
    assert entry(result, "7", "scheduler").severity == "warning"
    assert entry(result, "7", "denoise").severity == "warning"
    assert entry(result, "7", "cfg").severity == "info"  # cfg 1: guidance off
    assert entry(result, "5", "text").severity == "info"  # unused at cfg 1 in ComfyUI too
    assert result.brand_loras == [{"path": "brand_style.safetensors", "weight": 0.8}]
    assert "loras:" in entry(result, "11", "lora_name").zpipe
    assert entry(result, "11", "strength_clip").severity == "warning"
    size = entry(result, "6", "width x height")  # 1000 is no multiple of 16: the nearest preset
    assert size.severity == "warning" and "1:1" in size.zpipe
    made = load_settings_from(result, tmp_path)
    assert made.engine.preview_scale == pytest.approx(1000 / 1024, abs=1e-3)


def load_settings_from(result: Any, tmp_path: Path) -> Any:
    write_import(result, tmp_path / "cfg")
    return load_settings(tmp_path / "cfg" / "settings.yaml")


# -- real Comfy-Org templates --------------------------------------------------------------


def test_real_turbo_template_ui_format(tmp_path: Path) -> None:
    result = import_workflow(TURBO_UI)
    # the subgraph (definitions.subgraphs) is expanded: inner nodes are named 57:<id>
    assert entry(result, "57:3", "steps").value == 8
    assert "#13730" in entry(result, "57:3", "steps").zpipe
    cfg = entry(result, "57:3", "cfg")
    assert cfg.value == 1 and cfg.severity == "info" and "guidance off" in cfg.zpipe
    assert "zeroed" in cfg.zpipe
    assert entry(result, "57:3", "sampler_name").value == "res_multistep"
    assert entry(result, "57:3", "sampler_name").severity == "warning"
    assert entry(result, "57:3", "scheduler").value == "simple"
    assert entry(result, "57:11", "shift").value == 3 and entry(result, "57:11", "shift").severity == "info"
    assert entry(result, "57:33", "conditioning").severity == "info"
    assert entry(result, "57:13", "width x height").value == "1024x1024"
    assert entry(result, "57:28", "unet_name").value == "z_image_turbo_bf16.safetensors"
    assert entry(result, "35", "text").zpipe.startswith("a note")
    assert not [t for t in result.report if t.severity == "refused"]
    assert result.format == "1:1" and result.template_name == "image-z-image-turbo"

    files = write_import(result, tmp_path / "out")
    library = load_library(files[0])
    rendered = render_prompt(library.get("image-z-image-turbo"), {}, "en")
    assert rendered.text == TURBO_PROMPT
    settings = load_settings(files[1])
    engine = settings.engine
    assert (engine.model, engine.max_batch, engine.preview_scale) == ("tiny", 1, 1.0)
    ok = runner.invoke(app, ["validate", *map(str, files)])
    assert ok.exit_code == 0, ok.output


def test_api_format_of_the_real_template_translates_the_same(tmp_path: Path) -> None:
    ui, api = import_workflow(TURBO_UI), import_workflow(TURBO_API)

    def values(result: Any) -> dict[tuple[str, str], Any]:
        return {(t.node, t.field): (t.value, t.severity) for t in result.report
                if t.class_type not in ("MarkdownNote", "SaveImage")}

    assert values(ui) == values(api)
    assert ui.settings == api.settings
    assert ui.prompts["templates"][0]["en"] == api.prompts["templates"][0]["en"]


def test_real_controlnet_template_is_refused_by_class_and_node(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["import", "comfyui", str(CONTROLNET_UI), "--out", str(out)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "ModelPatchLoader (node 70:64)" in result.output
    assert "QwenImageDiffsynthControlnet (node 70:60)" in result.output
    assert "LoadImage (node 58)" in result.output
    assert not out.exists()  # nothing written

    with pytest.raises(ComfyUIRefused) as caught:
        import_workflow(CONTROLNET_UI)
    refused = {(t.node, t.class_type) for t in caught.value.report if t.severity == "refused"}
    assert {("70:64", "ModelPatchLoader"), ("70:60", "QwenImageDiffsynthControlnet")} <= refused
    reasons = {t.node: t.zpipe for t in caught.value.report if t.severity == "refused"}
    assert "ControlNet" in reasons["70:60"]
    bypassed = entry(caught.value.report, "62", "mode")  # ImageScaleToMaxDimension, mode 4
    assert bypassed.value == "bypassed" and bypassed.severity == "info"


def test_allow_partial_drops_refused_nodes_loudly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["import", "comfyui", str(CONTROLNET_UI), "--out", str(out),
                                 "--allow-partial"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "PARTIAL IMPORT" in result.output and "QwenImageDiffsynthControlnet (70:60)" in result.output
    header = (out / "prompts.yaml").read_text()
    assert "PARTIAL" in header and "ModelPatchLoader (70:64)" in header
    partial = import_workflow(CONTROLNET_UI, allow_partial=True)
    assert {t.node for t in partial.dropped} >= {"70:64", "70:60", "58", "57", "70:69"}
    assert "DROPPED" in entry(partial, "70:60", "class_type").zpipe
    # the latent's size came from GetImageSize (dropped): the value saved in the file is used
    assert entry(partial, "70:41", "width").severity == "warning"
    assert load_library(out / "prompts.yaml").names == ["image-z-image-turbo-fun-union-controlnet"]


# -- refusals ----------------------------------------------------------------------------


def test_a_controlnet_node_is_refused_even_with_allow_partial_when_the_image_needs_it(
        tmp_path: Path) -> None:
    data = seed_snippet()
    data["20"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}}
    data["21"] = {"class_type": "LoadImage", "inputs": {"image": "pose.png"}}
    data["22"] = {"class_type": "ControlNetApplyAdvanced",
                  "inputs": {"positive": ["4", 0], "negative": ["5", 0], "control_net": ["20", 0],
                             "image": ["21", 0], "strength": 1.0, "start_percent": 0.0,
                             "end_percent": 1.0}}
    data["7"]["inputs"].update(positive=["22", 0], negative=["22", 1])
    path = write(tmp_path, data)
    with pytest.raises(ComfyUIRefused) as caught:
        import_workflow(path)
    assert "ControlNetApplyAdvanced (node 22)" in str(caught.value)
    assert "ControlNetLoader (node 20)" in str(caught.value)
    # dropped, the ControlNet passes its positive/negative through (as a bypass would)
    partial = import_workflow(path, allow_partial=True)
    assert entry(partial, "4", "text").value.startswith("哑光正红色")
    assert entry(partial, "5", "text").severity == "warning"


def test_custom_and_upscaler_nodes_are_refused_by_class_and_id(tmp_path: Path) -> None:
    data = seed_snippet()
    data["30"] = {"class_type": "WAS_Text_Concatenate", "inputs": {"text_a": "a", "text_b": "b"}}
    data["31"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "4x.pth"}}
    data["32"] = {"class_type": "ImageUpscaleWithModel",
                  "inputs": {"upscale_model": ["31", 0], "image": ["9", 0]}}
    data["10"]["inputs"]["images"] = ["32", 0]
    result = runner.invoke(app, ["import", "comfyui", str(write(tmp_path, data)), "--out",
                                 str(tmp_path / "out"), "--json"])
    assert result.exit_code == 2
    payload = json.loads(result.output)
    assert not payload["ok"]
    refused = {t["node"]: t for t in payload["report"] if t["severity"] == "refused"}
    assert set(refused) == {"30", "31", "32"}
    assert refused["30"]["class_type"] == "WAS_Text_Concatenate"
    assert "custom node" in refused["30"]["zpipe"]
    assert "upscal" in refused["32"]["zpipe"]
    assert "WAS_Text_Concatenate (node 30)" in payload["error"]
    # dropped, the upscaler hands its IMAGE input on: the import goes through
    partial = import_workflow(write(tmp_path, data, "again.json"), allow_partial=True)
    assert {t.node for t in partial.dropped} == {"30", "31", "32"}


def test_custom_node_in_a_ui_file_names_its_pack(tmp_path: Path) -> None:
    data = json.loads(TURBO_UI.read_text())
    data["nodes"].append({"id": 99, "type": "ResolutionSelector", "mode": 0, "inputs": [],
                          "outputs": [], "widgets_values": ["1:1 (Square)", 1, 8],
                          "properties": {"cnr_id": "comfyui-some-pack"}})
    with pytest.raises(ComfyUIRefused) as caught:
        import_workflow(write(tmp_path, data))
    refused = entry(caught.value.report, "99", "class_type")
    assert refused.severity == "refused" and "comfyui-some-pack" in refused.zpipe


# -- malformed files ------------------------------------------------------------------------


def test_bad_json_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{"1": {"class_type": "KSampler",\n  "inputs": {,}}}')
    with pytest.raises(ComfyUIError, match=r"workflow\.json: invalid JSON at line 2"):
        import_workflow(path)
    result = runner.invoke(app, ["import", "comfyui", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "invalid JSON" in result.output


def test_a_link_to_a_missing_node_names_file_node_and_input(tmp_path: Path) -> None:
    data = seed_snippet()
    data["7"]["inputs"]["latent_image"] = ["99", 0]
    with pytest.raises(ComfyUIError) as caught:
        import_workflow(write(tmp_path, data))
    message = str(caught.value)
    assert "workflow.json: node 7, latent_image" in message and "node 99" in message

    ui = json.loads(TURBO_UI.read_text())
    ui["links"] = [[62, 1234, 0, 9, 0, "IMAGE"]]  # SaveImage 9 fed by a node that is not there
    with pytest.raises(ComfyUIError, match=r"ui\.json: node 9, images: link 62 comes from node "
                                           r"1234, which is not in the file"):
        import_workflow(write(tmp_path, ui, "ui.json"))
    ui["links"] = []
    with pytest.raises(ComfyUIError, match=r"node 9, images: input uses link 62, which is not"):
        import_workflow(write(tmp_path, ui, "ui.json"))


def test_structure_errors_name_the_node_and_field(tmp_path: Path) -> None:
    with pytest.raises(ComfyUIError, match=r"node 3, class_type"):
        parse_workflow({"3": {"class_type": "", "inputs": {}}}, "w.json")
    with pytest.raises(ComfyUIError, match=r"w\.json: node 7, inputs"):
        parse_workflow({"7": {"class_type": "KSampler", "inputs": "seed=1"}}, "w.json")
    with pytest.raises(ComfyUIError, match="not a ComfyUI workflow"):
        parse_workflow([1, 2, 3], "w.json")
    snippet = seed_snippet()
    snippet["7"]["inputs"]["steps"] = "eight"
    with pytest.raises(ComfyUIError, match=r"node 7, steps: expected int, got str 'eight'"):
        import_workflow(write(tmp_path, snippet))


# -- nothing in the file runs --------------------------------------------------------------


def test_jinja_in_the_prompt_is_imported_literally(tmp_path: Path) -> None:
    text = ("poster {{ 7 * 7 }} {% for x in range(3) %}x{% endfor %} {# hidden #} "
            "{{ ''.__class__.__mro__ }} {red|blue} (glossy:1.3)")
    data = seed_snippet()
    data["4"]["inputs"]["text"] = text
    result = import_workflow(write(tmp_path, data))
    files = write_import(result, tmp_path / "out")
    template = load_library(files[0]).get("workflow")
    for language in ("zh", "en"):
        assert render_prompt(template, {}, language).text == text  # printed, never evaluated
    assert "escaped" in entry(result, "4", "text").zpipe
    warnings = [t.zpipe for t in result.report if t.node == "4" and t.severity == "warning"]
    assert any("{a|b}" in w for w in warnings) and any("emphasis" in w for w in warnings)


def test_out_dir_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = write(tmp_path, seed_snippet())
    out = tmp_path / "out"
    args = ["import", "comfyui", str(path), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 2 and "would overwrite" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


# -- the imported configs in use --------------------------------------------------------------


def test_imported_template_previews_in_a_campaign(tmp_path: Path) -> None:
    from flows.cli.preview import preview_week

    files = write_import(import_workflow(TURBO_UI), tmp_path)
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(
        "kind: campaign\nname: imported\n"
        f"brand: {REPO / 'configs' / 'brands' / 'demo.yaml'}\n"
        "prompts: prompts.yaml\ntemplate: image-z-image-turbo\nlanguage: en\n"
        'formats: ["1:1"]\ntrends: {sensitive_terms: null}\n'
        "days: {mon: {zh: 周一, en: Monday}}\n")
    plan = preview_week(campaign, "2027-W05", trends=False, settings=files[1])
    assert [row["prompt"] for row in plan["images"]] == [TURBO_PROMPT]
    assert plan["images"][0]["size"] == [1024, 1024]


def test_imported_settings_generate_an_image_on_the_tiny_model(zpipe_cache, tmp_path: Path) -> None:
    from flows.cli.single import generate_one

    result = import_workflow(TURBO_UI)
    prompts, settings = write_import(result, tmp_path / "cfg")
    prompt = render_prompt(load_library(prompts).get(result.template_name), {}, "en").text
    out = tmp_path / "imported.png"
    line = generate_one(prompt, out, seed=0, fmt=result.format, brand_path=None,
                        settings_path=settings, scale=0.25)
    assert line.startswith("256x256, seed 0")
    assert Image.open(out).size == (256, 256)


def test_reroutes_and_an_instance_s_own_widget_values(tmp_path: Path) -> None:
    data = json.loads(TURBO_UI.read_text())
    save = next(n for n in data["nodes"] if n["id"] == 9)
    instance = next(n for n in data["nodes"] if n["id"] == 57)
    data["nodes"].append({"id": 100, "type": "Reroute", "mode": 0,
                          "inputs": [{"name": "", "type": "*", "link": 62}],
                          "outputs": [{"name": "", "type": "IMAGE", "links": [63]}]})
    data["links"] = [[62, 57, 0, 100, 0, "IMAGE"], [63, 100, 0, 9, 0, "IMAGE"]]
    save["inputs"][0]["link"] = 63
    instance["widgets_values"] = ["a red lipstick on marble"]  # older saves: the promoted "text"
    result = import_workflow(write(tmp_path, data))
    assert entry(result, "57:27", "text").value == "a red lipstick on marble"
    assert entry(result, "9", "images").severity == "info"


def test_a_bypassed_lora_passes_the_model_through(tmp_path: Path) -> None:
    data = json.loads(TURBO_UI.read_text())
    inner = data["definitions"]["subgraphs"][0]
    inner["nodes"].append({"id": 50, "type": "LoraLoaderModelOnly", "mode": 4,
                           "inputs": [{"name": "model", "type": "MODEL", "link": 900}],
                           "outputs": [{"name": "MODEL", "type": "MODEL", "links": [901]}],
                           "widgets_values": ["style.safetensors", 1.0]})
    for link in inner["links"]:
        if link["id"] == 26:  # UNETLoader 28 -> ModelSamplingAuraFlow 11, now via the LoRA
            link.update(target_id=50)
    inner["links"] += [{"id": 900, "origin_id": 28, "origin_slot": 0, "target_id": 50,
                        "target_slot": 0, "type": "MODEL"},
                       {"id": 901, "origin_id": 50, "origin_slot": 0, "target_id": 11,
                        "target_slot": 0, "type": "MODEL"}]
    inner["links"] = [link for link in inner["links"] if link["id"] != 26]
    shift = next(n for n in inner["nodes"] if n["id"] == 11)
    shift["inputs"][0]["link"] = 901
    result = import_workflow(write(tmp_path, data))
    assert entry(result, "57:50", "mode").value == "bypassed"
    assert result.brand_loras == []  # bypassed in ComfyUI: not applied there either
    assert entry(result, "57:28", "unet_name").severity == "info"
