"""Offline checks of infra/ that no schema tool makes (run by infra/validate.sh).

- every YAML file parses;
- prefect.yaml: Prefect's own models (`PrefectYamlModel`, schedules, deployment triggers),
  no unknown keys, entrypoints that exist and are `@flow`s with the declared name, parameters
  that the flow accepts (and all it requires), the event and flow names of flows/names.py,
  and the same deployments, schedules, parameters and triggers as flows/deployments.py
  (what `zpipe serve` builds for configs/campaigns);
- compose.yaml: every required `${VAR:?}` is in .env.example, .env is git-ignored, build files exist;
- k8s/: kustomization lists every manifest (but the secret template), one namespace, every
  Secret key / ConfigMap / PVC that a workload references exists, each GPU worker pod holds
  exactly one GPU;
- Dockerfiles: FROM first, COPY sources exist, a non-root USER, an ENTRYPOINT (hadolint is
  not installable from PyPI, so this is a structural check only).

Exit code 1 with one line per problem.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

INFRA = Path(__file__).resolve().parent
REPO = INFRA.parent
NAMESPACE = "zpipe"
WORK_POOL = "zpipe-flows"


def load_all_yaml(problems: list[str]) -> dict[Path, list[Any]]:
    docs: dict[Path, list[Any]] = {}
    for path in sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")]):
        try:
            docs[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            problems.append(f"{path.relative_to(REPO)}: not valid YAML: {exc}")
    return docs


# --------------------------------------------------------------------------- prefect.yaml


def _names_py() -> dict[str, str]:
    tree = ast.parse((REPO / "flows" / "names.py").read_text())
    return {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}


def _as_file_entrypoint(entrypoint: str) -> str:
    """`flows.comment.comment_reply` -> `flows/comment.py:comment_reply`; file paths unchanged."""
    if ":" in entrypoint:
        return entrypoint
    module, _, func = entrypoint.rpartition(".")
    return f"{module.replace('.', '/')}.py:{func}"


def _flow_function(entrypoint: str) -> tuple[ast.FunctionDef | None, str | None, str]:
    """The flow's def, the `name=` of its @flow, and a problem (empty when found)."""
    file, _, func = _as_file_entrypoint(entrypoint).partition(":")
    path = REPO / file
    if not path.is_file():
        return None, None, f"entrypoint {entrypoint}: {file} does not exist"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
            for deco in node.decorator_list:
                call = deco if isinstance(deco, ast.Call) else None
                target = call.func if call else deco
                if isinstance(target, ast.Name) and target.id == "flow":
                    constants = _names_py()  # `name=REVIEW_FLOW` etc. come from flows/names.py
                    name = next((k.value.value if isinstance(k.value, ast.Constant)
                                 else constants.get(k.value.id)
                                 for k in (call.keywords if call else [])
                                 if k.arg == "name" and isinstance(k.value, ast.Constant | ast.Name)), None)
                    return node, name or func.replace("_", "-"), ""
            return node, None, f"entrypoint {entrypoint}: {func} is not decorated with @flow"
    return None, None, f"entrypoint {entrypoint}: no function {func} in {file}"


def _check_parameters(where: str, fn: ast.FunctionDef, given: set[str]) -> list[str]:
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    names = {a.arg for a in [*positional, *args.kwonlyargs]}
    required = {a.arg for a in positional[:len(positional) - len(args.defaults)]}
    required |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None}
    problems = [f"{where}: parameter {p!r} is not an argument of {fn.name}()" for p in sorted(given - names)]
    problems += [f"{where}: {fn.name}() requires {p!r}, which is not given" for p in sorted(required - given)]
    return problems


def check_prefect_yaml(path: Path, doc: dict[str, Any]) -> list[str]:
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel, RawScheduleConfig
    from prefect.client.schemas.schedules import construct_schedule
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter, ValidationError

    where = path.relative_to(REPO)
    problems: list[str] = []
    try:
        model = PrefectYamlModel.model_validate(doc)
    except ValidationError as exc:
        return [f"{where}: {exc}"]
    top = {f.alias or name for name, f in PrefectYamlModel.model_fields.items()} | {"definitions"}
    problems += [f"{where}: unknown top-level key {k!r}" for k in doc if k not in top]
    fields = set(DeploymentConfig.model_fields)
    names = _names_py()
    flow_names = {names["CAMPAIGN_FLOW"], names["TRENDS_FLOW"], names["COMMENT_FLOW"], names["REVIEW_FLOW"],
                  names["HELD_REVIEW_FLOW"]}
    trigger_events = {names["COMMENT_FLOW"]: names["COMMENT_EVENT"],
                      names["REVIEW_FLOW"]: names["CAMPAIGN_FAILED_EVENT"],
                      names["HELD_REVIEW_FLOW"]: names["HELD_EVENT"]}
    trigger_adapter = TypeAdapter(DeploymentTriggerTypes)

    for raw, deployment in zip(doc.get("deployments", []), model.deployments, strict=True):
        label = f"{where}: deployment {deployment.flow_name}/{deployment.name}"
        problems += [f"{label}: unknown key {k!r}" for k in raw if k not in fields]
        if not deployment.name or not deployment.entrypoint:
            problems.append(f"{label}: needs a name and an entrypoint")
            continue
        if deployment.flow_name not in flow_names:
            problems.append(f"{label}: flow_name not one of flows/names.py's {sorted(flow_names)}")
        if not deployment.work_pool or deployment.work_pool.name != WORK_POOL:
            problems.append(f"{label}: work_pool.name must be {WORK_POOL!r}")
        for schedule in raw.get("schedules") or []:
            try:
                checked = RawScheduleConfig.model_validate(schedule)
                construct_schedule(cron=checked.cron, timezone=checked.timezone)
            except (ValidationError, ValueError) as exc:
                problems.append(f"{label}: schedule {schedule}: {exc}")
        trigger_params: set[str] = set()
        for i, trigger in enumerate(raw.get("triggers") or [], start=1):
            try:
                trigger_adapter.validate_python({"name": f"{deployment.name}__automation_{i}", **trigger})
            except ValidationError as exc:
                problems.append(f"{label}: trigger {i}: {exc}")
            event = trigger_events.get(deployment.flow_name)
            if event not in [*(trigger.get("expect") or []), *(trigger.get("after") or [])]:
                problems.append(f"{label}: trigger {i} neither expects {event!r} nor starts after it")
            trigger_params |= set(trigger.get("parameters") or {})
        if ":" in deployment.entrypoint:
            problems.append(f"{label}: entrypoint {deployment.entrypoint} is a file path; use the module "
                            "path (flows.x.func): task workers cannot import a flow file loaded by path")
        fn, flow_name, problem = _flow_function(deployment.entrypoint)
        if problem:
            problems.append(f"{label}: {problem}")
            continue
        assert fn is not None
        if flow_name != deployment.flow_name:
            problems.append(f"{label}: the @flow is named {flow_name!r}, not {deployment.flow_name!r}")
        problems += _check_parameters(label, fn, set(deployment.parameters) | trigger_params)
    return problems


def _comparable(name: str, flow_name: str, entrypoint: str, parameters: dict[str, Any],
                schedules: list[tuple[str, str | None]], triggers: list[dict[str, Any]]) -> dict[str, Any]:
    def rel(value: Any) -> Any:  # serve passes absolute paths, prefect.yaml paths relative to /app
        text = str(value)
        return str(Path(text).relative_to(REPO)) if text.startswith(str(REPO)) else value

    return {"deployment": f"{flow_name}/{name}", "entrypoint": _as_file_entrypoint(entrypoint),
            "parameters": {k: rel(v) for k, v in parameters.items() if k != "settings"},
            "schedules": sorted(schedules),
            "triggers": [_comparable_trigger(t) for t in triggers]}


def _comparable_trigger(trigger: dict[str, Any]) -> dict[str, Any]:
    """What a trigger does, read through Prefect's model (`within: 60` and 60.0 s alike)."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    model = DeploymentEventTrigger.model_validate(trigger)
    return {"posture": model.posture.value, "after": sorted(model.after), "expect": sorted(model.expect),
            "for_each": sorted(model.for_each), "threshold": model.threshold,
            "within_s": model.within.total_seconds(), "match": dict(trigger.get("match") or {}),
            "parameters": dict(trigger.get("parameters") or {})}


def compare_with_serve(path: Path, doc: dict[str, Any]) -> list[str]:
    """prefect.yaml declares what flows/deployments.py builds for configs/ (the one place)."""
    sys.path.insert(0, str(REPO))
    from flows.deployments import build_deployments

    served = {}
    # as the k8s/compose topology runs them: GPU work on task workers, so the intake's fast path
    with mock.patch.dict(os.environ, ZPIPE_GENERATION="workers", ZPIPE_INTAKE_FAST_PATH="true"):
        built = build_deployments(REPO / "configs" / "campaigns", REPO / "configs" / "brands")
    for d in built:
        triggers = [t.model_dump(mode="json") for t in d.triggers]
        schedules = [(s.schedule.cron, s.schedule.timezone) for s in d.schedules]
        served[f"{d.flow_name}/{d.name}"] = _comparable(d.name, d.flow_name, d.entrypoint or "",
                                                        d.parameters, schedules, triggers)
    declared = {}
    for d in doc.get("deployments", []):
        schedules = [(s.get("cron"), s.get("timezone")) for s in d.get("schedules") or []]
        declared[f"{d.get('flow_name')}/{d.get('name')}"] = _comparable(
            d.get("name"), d.get("flow_name"), d.get("entrypoint"), d.get("parameters") or {},
            schedules, d.get("triggers") or [])
    where = path.relative_to(REPO)
    missing, extra = sorted(set(served) - set(declared)), sorted(set(declared) - set(served))
    problems = [f"{where}: lacks {k}, which `zpipe serve` deploys" for k in missing]
    problems += [f"{where}: declares {k}, which `zpipe serve` does not" for k in extra]
    for key in sorted(set(served) & set(declared)):
        if served[key] != declared[key]:
            problems.append(f"{where}: {key} differs from flows/deployments.py:\n  prefect.yaml: "
                            f"{declared[key]}\n  zpipe serve:  {served[key]}")
    return problems


# --------------------------------------------------------------------------- compose


def check_compose(path: Path, doc: dict[str, Any]) -> list[str]:
    where = path.relative_to(REPO)
    text = path.read_text()
    example = (INFRA / ".env.example").read_text() if (INFRA / ".env.example").is_file() else ""
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.M))
    problems = [f"{where}: ${{{var}}} is required but not in infra/.env.example"
                for var in sorted(set(re.findall(r"\$\{([A-Z0-9_]+):\?", text)) - documented)]
    ignore = INFRA / ".gitignore"
    if not ignore.is_file() or ".env" not in ignore.read_text().split():
        problems.append("infra/.gitignore must ignore .env (the compose secrets)")
    for name, service in (doc.get("services") or {}).items():
        build = service.get("build")
        if isinstance(build, dict):
            dockerfile = (path.parent / build.get("context", ".") / build.get("dockerfile", "Dockerfile"))
            if not dockerfile.resolve().is_file():
                problems.append(f"{where}: service {name}: {dockerfile} does not exist")
    return problems


# --------------------------------------------------------------------------- kubernetes


def _walk(node: Any, key: str) -> list[Any]:
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found += _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            found += _walk(item, key)
    return found


def check_k8s(docs: dict[Path, list[Any]]) -> list[str]:
    k8s = INFRA / "k8s"
    problems: list[str] = []
    kustomization = docs.get(k8s / "kustomization.yaml", [{}])[0]
    listed = set(kustomization.get("resources", []))
    manifests = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    problems += [f"infra/k8s/kustomization.yaml: lists {r}, which does not exist"
                 for r in sorted(listed - manifests)]
    problems += [f"infra/k8s/kustomization.yaml: does not list {m}" for m in sorted(manifests - listed)]
    if "secret.example.yaml" in listed:
        problems.append("infra/k8s/kustomization.yaml: must not apply the secret template")

    objects = [(path, d) for path, ds in docs.items() if path.parent == k8s
               and path.name != "kustomization.yaml" for d in ds]
    by_kind: dict[str, dict[str, Any]] = {}
    for path, obj in objects:
        meta = obj.get("metadata", {})
        by_kind.setdefault(obj.get("kind", ""), {})[meta.get("name")] = obj
        if obj.get("kind") != "Namespace" and meta.get("namespace") != NAMESPACE:
            problems.append(f"infra/k8s/{path.name}: {obj.get('kind')} {meta.get('name')} "
                            f"is not in namespace {NAMESPACE}")
    secret_keys = {k for s in by_kind.get("Secret", {}).values() for k in s.get("stringData", {})}
    for path, obj in objects:
        label = f"infra/k8s/{path.name}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        for ref in _walk(obj, "secretKeyRef"):
            if ref.get("key") not in secret_keys:
                problems.append(f"{label}: secret key {ref.get('key')!r} is not in secret.example.yaml")
        for ref in _walk(obj, "secret"):
            for item in ref.get("items", []) if isinstance(ref, dict) else []:
                if item.get("key") not in secret_keys:
                    problems.append(f"{label}: secret key {item.get('key')!r} is not in secret.example.yaml")
        for ref in [*_walk(obj, "configMapRef"), *_walk(obj, "configMap")]:
            if ref.get("name") not in by_kind.get("ConfigMap", {}):
                problems.append(f"{label}: no ConfigMap {ref.get('name')!r}")
        for ref in _walk(obj, "persistentVolumeClaim"):
            if ref.get("claimName") not in by_kind.get("PersistentVolumeClaim", {}):
                problems.append(f"{label}: no PersistentVolumeClaim {ref.get('claimName')!r}")
    server = by_kind.get("Deployment", {}).get("prefect-server")
    if server and int(server["spec"].get("replicas", 1)) != 1:
        problems.append(f"infra/k8s/prefect-server.yaml: replicas {server['spec']['replicas']}: task "
                        "workers' `.delay()` queue lives in one API process's memory (PrefectHQ/prefect "
                        "#21218): serve task-worker traffic from exactly one API replica")
    gpu = by_kind.get("Deployment", {}).get("zpipe-gpu-worker")
    if gpu:
        limits = gpu["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
        if str(limits.get("nvidia.com/gpu")) != "1":
            problems.append(f"infra/k8s/gpu-worker.yaml: nvidia.com/gpu {limits.get('nvidia.com/gpu')}: "
                            "one `zpipe worker` per GPU (it runs one batch at a time on its one GPU); "
                            "scale with replicas")
    return problems


# --------------------------------------------------------------------------- Dockerfiles


def check_dockerfile(path: Path) -> list[str]:
    where = path.relative_to(REPO)
    lines, current = [], ""
    for raw in path.read_text().splitlines():  # join continuation lines, drop comments
        if not current and raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    instructions = [line.split(None, 1) for line in lines]
    problems = []
    first = next((i for i in instructions if i[0].upper() != "ARG"), ["?"])
    if first[0].upper() != "FROM":
        problems.append(f"{where}: the first instruction (after ARGs) must be FROM, not {first[0]}")
    for inst in instructions:
        if inst[0].upper() == "COPY" and "--from" not in inst[1]:
            *sources, _ = inst[1].split()
            problems += [f"{where}: COPY source {s} does not exist in the build context (repo root)"
                         for s in sources if not s.startswith("--") and not (REPO / s).exists()]
    users = [i[1].strip() for i in instructions if i[0].upper() == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append(f"{where}: runs as root; add a USER")
    if not any(i[0].upper() == "ENTRYPOINT" for i in instructions):
        problems.append(f"{where}: no ENTRYPOINT")
    return problems


def main() -> int:
    problems: list[str] = []
    docs = load_all_yaml(problems)
    print(f"yaml: {len(docs)} files parse")
    prefect_file = INFRA / "prefect.yaml"
    problems += check_prefect_yaml(prefect_file, docs[prefect_file][0])
    problems += compare_with_serve(prefect_file, docs[prefect_file][0])
    print("prefect.yaml: checked with Prefect's models and against flows/deployments.py")
    compose_file = INFRA / "compose.yaml"
    problems += check_compose(compose_file, docs[compose_file][0])
    problems += check_k8s(docs)
    print("k8s: kustomization and cross-references checked")
    for dockerfile in sorted((INFRA / "docker").glob("Dockerfile*")):
        if not dockerfile.name.endswith(".dockerignore"):
            problems += check_dockerfile(dockerfile)
    print("Dockerfiles: structure checked (hadolint is not available here: no lint)")
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
