"""The GPU check's report: the record rendered as Markdown and saved (with its JSON) after every section."""

from __future__ import annotations

import json
from pathlib import Path

from stn.atomic import write_atomic
from stn.gpu_check.plan import MODES, gpu_slug
from stn.gpu_check.projection import ips_table


def number(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_markdown(record: dict) -> str:
    env, sections = record["environment"], record["sections"]
    lines = [
        f"# GPU check: {record['gpu']} ({record['date']})",
        "",
        f"`{record['command']}`",
        "",
        f"torch {env['packages'].get('torch')} (CUDA {env['torch_cuda']}), Python {env['python']}, "
        f"commit {record['git_commit']}{' (dirty)' if record['git_dirty'] else ''}, "
        f"{record['max_seconds']:.0f} s allowed, {record['seconds']:.0f} s taken.",
    ]
    if record["device"] != "cuda":
        lines += ["", "**CPU rehearsal**: tiny step counts; it checks the plumbing, its numbers mean nothing."]
    lines += ["", "| section | status | seconds (budget) | note |", "|---|---|---:|---|"]
    for name, section in sections.items():
        note = section.get("error") or section.get("summary") or first_failure(section)
        note = note.replace("\n", " ").replace("|", "/")[:160]
        lines.append(
            f"| {name} | {section['status']} | {section['seconds']:.0f} ({section['budget_s']:.0f}) | {note} |"
        )
    for name, render in (
        ("runs", render_runs),
        ("throughput", render_throughput),
        ("concurrency", render_concurrency),
        ("projection", render_projection),
    ):
        if name in sections and sections[name]["status"] != "failed":
            lines += ["", *render(sections[name])]
    return "\n".join(lines) + "\n"


def render_runs(section: dict) -> list[str]:
    lines = [
        "## Short runs (`python -m stn.train`, data.redraw_train=true)",
        "",
        "| model | column | compile | ok | iterations | wall s | note |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for row in section["jobs"]:
        iterations = "—" if row.get("iterations") is None else row["iterations"]
        lines.append(
            f"| {row.get('model')} | {row.get('data')} | {'on' if row['compile'] else 'off'} | "
            f"{'yes' if row.get('ok') else 'NO'} | {iterations} | {number(row.get('seconds'), 1)} | {failure(row)} |"
        )
    resume = section["resume"]
    if resume.get("ok"):
        match = resume.get("matches_uninterrupted")
        twin = {True: "identical to", False: "different from", None: "not compared with"}[match]
        lines += [
            "",
            f"Kill and resume: killed (-9) after the checkpoint of iteration {resume['killed_at_iteration']}, the "
            f"rerun resumed from it and finished {resume['iterations']} iterations; its validation history and test "
            f"error ({number(resume['test_error'], 2)}%) are {twin} an uninterrupted twin's "
            f"({number(resume.get('reference_test_error'), 2)}%; only the CPU is bit-reproducible).",
        ]
    else:
        lines += ["", f"Kill and resume: FAILED ({failure(resume)})."]
    pair = section["precision_pair"]
    errors = {p: number(row.get("test_error"), 2) for p, row in pair.items()}
    lines += [
        "",
        f"Precision pair (fast recipe, {pair['fp32'].get('expected_iterations')} iterations, one seed): test error "
        f"fp32 {errors['fp32']}% vs bf16 {errors['bf16']}%: a sanity check, not the equal-error comparison.",
    ]
    return lines


def first_failure(section: dict) -> str:
    """The first failed step of a section that failed without one error of its own (e.g. every run timed out)."""
    if section.get("status") == "ok":
        return ""
    for value in section.values():
        rows = value if isinstance(value, list) else [value]
        for row in rows:
            if isinstance(row, dict) and row.get("ok") is False:
                return f"{row.get('name', 'a step')}: {failure(row)}"
    return ""


def failure(row: dict) -> str:
    """Why a run is not ok, in a table cell (its whole log is logs/<name> in gpu_check_logs.tgz)."""
    if row.get("ok"):
        return ""
    if row.get("error") or row.get("timed_out"):
        return row.get("error") or "timed out"
    if row.get("rc"):
        return f"exit code {row['rc']}, see logs/{Path(row['log']).name}"
    return f"status {row.get('status')}, {row.get('iterations')} of {row.get('expected_iterations')} iterations"


def render_throughput(section: dict) -> list[str]:
    table = ips_table(section["items"])
    pairs = list(dict.fromkeys((i["data"], i["model"]) for i in section["items"]))
    lines = [
        f"## Steady-state training images/s (batch {section['batch_size']}, one process)",
        "",
        "| column | model | fp32 (TF32) | bf16 | bf16 + compile | bf16 / fp32 | compile / bf16 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for column, model in pairs:
        fp32, bf16, comp = (table.get((mode, column, model)) for mode in MODES)
        ratios = [number(a / b, 2) if a and b else "—" for a, b in ((bf16, fp32), (comp, bf16))]
        lines.append(
            f"| {column} | {model} | {number(fp32)} | {number(bf16)} | {number(comp)} | {' | '.join(ratios)} |"
        )
    failed = [i for i in section["items"] if "error" in i]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{i['data']}/{i['model']}/{i['mode']}: {i['error']}" for i in failed)]
    if section["not_measured"]:
        lines += ["", f"{section['not_measured']} (column, model, mode) cells were not measured (time or failure)."]
    redraw = ", ".join(f"{c} {1000 * s:.1f} ms" for c, s in section["redraw_s"].items())
    lines += ["", f"Redrawing a column's training distortions (once per epoch with data.redraw_train): {redraw}."]
    return lines


def render_concurrency(section: dict) -> list[str]:
    lines = [
        f"## Processes sharing the device ({section['mode']}, {section['column']}, models in turn)",
        "",
        "| processes | aggregate images/s | efficiency | window overlap |",
        "|---:|---:|---:|---:|",
    ]
    for level in section["levels"]:
        if "error" in level:
            lines.append(f"| {level['processes']} | failed: {level['error']} | | |")
            continue
        lines.append(
            f"| {level['processes']} | {number(level['aggregate_images_per_s'])} | "
            f"{number(level['efficiency'], 2)} | {100 * level['overlap']:.0f}% |"
        )
    lines += ["", "Efficiency: sum over the processes of images/s / the same model's images/s alone (above)."]
    return lines


def render_projection(section: dict) -> list[str]:
    best = section["best"]
    verdict = "meets" if section["meets_target"] else "misses"
    lines = [
        "## Projection: Table 1 at the paper's budget",
        "",
        f"{section['runs']} runs of {section['images_per_run']:,} training images. Best: **{best['mode']}, "
        f"{best['processes']} process(es) at a time: {best['gpu_hours']:.2f} GPU-hours** on this GPU, which "
        f"{verdict} the {section['target_gpu_hours']:g} H100-hour target.",
        "",
        "| mode | processes | GPU-hours |",
        "|---|---:|---:|",
        *(f"| {o['mode']} | {o['processes']} | {o['gpu_hours']:.2f} |" for o in section["options"]),
        "",
        "How: per mode, seconds alone = seeds x sum over (column, model) of (iterations x batch / measured "
        "images/s + redraws per run x redraw seconds) + runs x the median wall time of a short run (start-up, data, "
        "compilation, evaluation: an upper bound); with k processes, divided by their measured efficiency. "
        f"Not counted: evaluation, {100 * section['eval_fraction']:.1f}% of the trained images, forward only.",
    ]
    for mode, m in section["modes"].items():
        if not m["complete"]:
            lines.append(f"- {mode}: not projected, {len(m['missing'])} (column, model) pairs unmeasured.")
        elif m["estimated"]:
            lines.append(
                f"- {mode}: {len(m['estimated'])} (column, model) pairs estimated from the model's {mode} / bf16 "
                "ratio on the measured columns."
            )
    return lines


def pick(mapping: dict, *keys: str) -> dict:
    return {key: mapping[key] for key in keys if key in mapping}


def save(record: dict, out: Path) -> Path:
    stem = out / f"gpu_check_{gpu_slug(record['gpu_name'])}"
    write_atomic(stem.with_suffix(".md"), render_markdown(record))
    write_atomic(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return stem
