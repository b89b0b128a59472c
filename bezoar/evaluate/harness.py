"""LM Evaluation Harness through lm-eval's Python API, offline, on a local model or LoRA adapter.

bezoar only chooses the model arguments and the task folder; lm-eval does the evaluation. The
rendered task folder and the equivalent `lm_eval` command line are written next to the results, so
any number here can be reproduced with lm-eval's own CLI.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shlex
import time
from pathlib import Path

from bezoar.errors import BackendError, ConfigError
from bezoar.evaluate.config import HarnessConfig
from bezoar.evaluate.harness_tasks import LOCAL_TASKS, PREFIX, check_offline, expand_tasks, render_tasks, short_name
from bezoar.intervals import bootstrap_mean, normal_interval
from bezoar.llm.cores import SHARE
from bezoar.llm.device import decoding_mode, deterministic, plan_device
from bezoar.llm.specs import parse_spec
from bezoar.llm.weights import content_identity, resolve_model_dir
from bezoar.records import write_json

log = logging.getLogger(__name__)


def model_args(spec: str, dtype: str = "auto") -> dict[str, str]:
    """lm-eval `hf` model arguments for a bezoar model spec (local only: lm-eval needs log-likelihoods).

    `auto` follows the decoding mode: bf16 where it is faster in fast mode, fp32 in deterministic mode
    (batch-invariant scores, so a resumed or re-batched run gives the same numbers).
    """

    try:
        parsed = parse_spec(spec) if spec.split(":", 1)[0] in ("local", "openai", "anthropic") else None
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if parsed is not None and parsed.kind != "local":
        raise ConfigError(f"harness: '{spec}' is a chat API; lm-eval needs token log-likelihoods, so give a "
                          "local model (local, local:PATH, or a directory)")
    path = resolve_model_dir(parsed.model if parsed else spec)
    plan = plan_device(dtype, exact=deterministic())
    args = {"pretrained": str(path), "dtype": plan.dtype_name, "device": plan.device}
    if (path / "adapter_config.json").exists():
        args.update(pretrained=str(adapter_base(path)), peft=str(path))
        if (path / "tokenizer_config.json").exists():
            args["tokenizer"] = str(path)  # training may have installed its chat template there
    return args


def adapter_base(adapter: Path) -> Path:
    """The plain model directory a LoRA adapter was trained on (lm-eval loads it, then `peft=`)."""

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise BackendError(f"{adapter}/adapter_config.json: no base_model_name_or_path")
    base_dir = resolve_model_dir(base)
    if (base_dir / "adapter_config.json").exists():
        raise BackendError(f"{adapter}: its base {base_dir} is itself an adapter; lm-eval loads one adapter "
                           "over a plain model, so merge the base first (bezoar export)")
    return base_dir


def run_harness(spec: str, config: HarnessConfig, out_dir: Path) -> dict:
    """Evaluate `spec` on `config.tasks`; results, rendered tasks and a summary under `out_dir`."""
    out_dir = Path(out_dir)
    local, other = expand_tasks(config.tasks, config.data_dir, config.data_paths)
    if not local and not other:
        raise ConfigError(f"harness: no tasks to run (none of {config.tasks} has data under {config.data_dir})")
    names = render_tasks(local, config.data_dir, config.data_paths, out_dir / "tasks") + other
    # bezoar never downloads at run time: lm-eval's own tasks run only from the local datasets
    # cache (a user with hub access can say HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args = model_args(spec, config.dtype)
    from lm_eval.tasks import TaskManager

    # lm-eval's own ~15k task configs are indexed (seconds) only when a task is not one of bezoar's
    manager = TaskManager(include_path=str(out_dir / "tasks"), include_defaults=bool(other))
    check_offline(other, manager)
    started = time.perf_counter()
    results = _evaluate(args, names, config, out_dir, manager)
    summary = summarise(results, names)
    summary.update(model=spec, model_args=args, decoding=decoding_mode(args["dtype"]),
                   wall_s=round(time.perf_counter() - started, 1),
                   lm_eval_command=cli_command(args, names, config, out_dir / "tasks"))
    write_json(out_dir / "results.json", {k: v for k, v in results.items() if k != "samples"})
    write_json(out_dir / "summary.json", summary)
    return summary


def _evaluate(args: dict, names: list[str], config: HarnessConfig, out_dir: Path, manager) -> dict:
    import lm_eval


    # lm-eval's request cache (SQLite, committed per request) makes a killed run resume; it keys on
    # the requests only, so the file name carries the weights' fingerprint and the dtype.
    identity = content_identity(Path(args.get("peft") or args["pretrained"])).replace("@", "-") + f"-{args['dtype']}"
    cache = out_dir / "lm_cache" / identity
    cache.parent.mkdir(parents=True, exist_ok=True)
    with SHARE.computing():  # other bezoar processes computing meanwhile get their share of the cores
        results = lm_eval.simple_evaluate(
            model="hf", model_args={k: v for k, v in args.items() if k != "device"}, tasks=names,
            num_fewshot=config.num_fewshot, batch_size=config.batch_size, device=args["device"],
            limit=_limit(config.limit), use_cache=str(cache), log_samples=True,
            apply_chat_template=config.apply_chat_template, fewshot_as_multiturn=config.apply_chat_template,
            task_manager=manager)
    if results is None:
        raise BackendError("lm-eval returned no results (not the main process?)")
    return results


def _limit(limit: float | None) -> float | int | None:
    return None if limit is None else (limit if limit < 1 else int(limit))


def summarise(results: dict, names: list[str]) -> dict:
    """One row per requested task: headline metric, stderr, 95% interval, per-item values."""
    rows = {}
    for name in names:
        scores = results["results"].get(name)
        if scores is None:
            continue
        metric = _headline(name, scores)
        value = scores.get(metric)
        stderr = scores.get(metric.replace(",", "_stderr,", 1))
        stderr = stderr if isinstance(stderr, (int, float)) and not math.isnan(stderr) else None
        items = _items(results, name, metric)
        rows[name] = {"metric": metric, "value": value, "stderr": stderr, "ci95": _interval(value, stderr, items),
                      "n": _count(results, name), "num_fewshot": _fewshot(results, name), "items": items}
    return {"tasks": rows}


def _interval(value, stderr: float | None, items: dict[str, float]) -> list[float] | None:
    """Bootstrap over documents when lm-eval logged them (stays inside [0, 1] for accuracies),
    else lm-eval's standard error as value ± 1.96·se."""
    if items:
        return list(bootstrap_mean(list(items.values())))
    interval = normal_interval(value, stderr) if isinstance(value, (int, float)) else None
    return list(interval) if interval else None


def _headline(name: str, scores: dict) -> str:
    local = LOCAL_TASKS.get(short_name(name)) if name.startswith(PREFIX) else None
    if local and local.metric in scores:
        return local.metric
    return next(k for k in scores if k != "alias" and "_stderr" not in k and isinstance(scores[k], (int, float)))


def _count(results: dict, name: str) -> int:
    subtasks = results.get("group_subtasks", {}).get(name) or [name]
    return sum(results.get("n-samples", {}).get(t, {}).get("effective", 0) for t in subtasks)


def _fewshot(results: dict, name: str):
    subtasks = results.get("group_subtasks", {}).get(name) or [name]
    return results.get("n-shot", {}).get(subtasks[0])


def _items(results: dict, name: str, metric: str) -> dict[str, float]:
    """Per-document values of the headline metric (what a paired comparison needs)."""
    metric_name, _, filter_name = metric.partition(",")
    subtasks = results.get("group_subtasks", {}).get(name) or [name]
    items = {}
    for task in subtasks:
        for sample in results.get("samples", {}).get(task, []):
            if sample.get("filter", "none") == filter_name and isinstance(sample.get(metric_name), (int, float)):
                items[f"{task}:{sample['doc_id']}"] = float(sample[metric_name])
    return items


def cli_command(args: dict, names: list[str], config: HarnessConfig, tasks_dir: Path) -> str:
    """The lm_eval command line that computes the same numbers (printed for reproducibility)."""
    model_arg = ",".join(f"{k}={v}" for k, v in args.items() if k != "device")
    parts = ["lm_eval", "--model", "hf", "--model_args", model_arg, "--tasks", ",".join(names),
             "--include_path", str(tasks_dir), "--device", args["device"], "--batch_size", str(config.batch_size)]
    if config.num_fewshot is not None:
        parts += ["--num_fewshot", str(config.num_fewshot)]
    if config.limit is not None:
        parts += ["--limit", str(_limit(config.limit))]
    if config.apply_chat_template:
        parts += ["--apply_chat_template", "--fewshot_as_multiturn"]
    return shlex.join(parts)
