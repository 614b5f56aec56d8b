"""Render the documentation's result tables from benchmarks/results/*.json: no number in them is typed by hand.

    python benchmarks/render_results.py            # rewrite the tables in the pages that show them
    python benchmarks/render_results.py --check    # exit 1 if a page is out of date

Each table lives between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers, in any page of the
documentation site (docs/**/*.md: `page.md` in English, `page.zh.md` in Chinese; today docs/results.md,
docs/robustness.md and their twins) and in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from common import OLD_HOST, RESULTS, ROOT, host_label

DOCS = ROOT / "docs"
RECIPE_ORDER = ["tutorial", "mlp-best", "cnn-fast", "cnn-best", "robust"]
PRETRAINED_INDEX = ROOT / "src" / "mnist_nn" / "models" / "pretrained" / "models.json"


def pages() -> list[Path]:
    """Every page that may show a table: the site's pages (both languages) and benchmarks/README.md."""
    return [ROOT / "benchmarks" / "README.md", *sorted(DOCS.rglob("*.md"))]


def is_chinese(page: Path) -> bool:
    """The site's Chinese twin of a page is ``page.zh.md``; README_Chinese.md is the Chinese README."""
    return page.name.endswith(".zh.md") or "Chinese" in page.name


def _load(results: Path, pattern: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob(pattern))]


def _recipe_rank(name: str) -> tuple[int, str]:
    """Recipes in RECIPE_ORDER first, in that order; any other after them, by name."""
    return (RECIPE_ORDER.index(name) if name in RECIPE_ORDER else 99, name)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _host(data: dict) -> dict:
    """The host a result was measured on; results from before it was recorded are OLD_HOST's, with their machine's."""
    if "host" in data:
        return data["host"]
    machine = data.get("machine", {})
    return {
        **OLD_HOST,
        "cores": machine.get("cpu_count", "?"),
        "torch": machine.get("torch", "?"),
        "gpu": machine.get("cuda"),
    }


def _where(data: dict, chinese: bool, gpu: bool = True) -> str:
    """The machine of a result, for a sentence or a cell: "Intel Xeon (AMX), 2 CPU cores" (then the GPU, if one
    was used and ``gpu``)."""
    host = _host(data)
    comma = "，" if chinese else ", "
    cores = f"{host['cores']} 个 CPU 核心" if chinese else f"{host['cores']} CPU cores"
    return comma.join([host_label(host, chinese), cores, *([host["gpu"]] if gpu and host.get("gpu") else [])])


def recipe_table(results: Path, chinese: bool) -> str:
    rows = [r for r in _load(results, "recipe-*.json") if not r["benchmark"].endswith("ep")]
    rows.sort(key=lambda r: (r["dataset"], *_recipe_rank(r["recipe"])))
    if chinese:
        header = (
            "| 配方 | 数据集 | 参数量 | 种子数 | 测试准确率（均值 ± 标准差） | 最低–最高 | 种子集成 "
            "| 每次训练时间（线程数，精度） |"
        )
    else:
        header = (
            "| recipe | dataset | parameters | seeds | test accuracy (mean ± std) | min–max "
            "| ensemble of the seeds | training time per run (threads, precision) |"
        )
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        a, t = r["test_accuracy"], r["train_seconds"]
        ensemble = _pct(r["ensemble_accuracy"]) if "ensemble_accuracy" in r else "–"
        if "ensemble_tta_accuracy" in r:
            ensemble += (
                f"{'（TTA ' if chinese else ' (TTA '}{_pct(r['ensemble_tta_accuracy'])}{'）' if chinese else ')'}"
            )
        threads = "/".join(map(str, r.get("threads", ["?"])))
        # Results from before the precision was recorded: every recipe then computed in fp32.
        precision = "/".join(r.get("precision", ["fp32"]))
        lines.append(
            f"| `{r['recipe']}` | {r['dataset']} | {r['parameters']:,} | {r['seeds']} | "
            f"{_pct(a['mean'])} ± {100 * a['std']:.2f} | {_pct(a['min'])}–{_pct(a['max'])} | {ensemble} | "
            f"{t['mean']:.1f} s (max {t['max']:.1f} s; {threads}, {precision}) |"
        )
    if not rows:
        lines.append("| – | – | – | – | – | – | – | – |")
    if not rows:
        return "\n".join(lines)
    torch = _host(rows[0])["torch"]
    note = (
        f"\n\n测量环境：{_where(rows[0], chinese)}，PyTorch {torch}（`benchmarks/seeds.py`）。"
        if chinese
        else f"\n\nMeasured on {_where(rows[0], chinese)}, PyTorch {torch} (`benchmarks/seeds.py`)."
    )
    return "\n".join(lines) + note


def _devices(data: dict, chinese: bool) -> str:
    """ "; baseline on cuda, mnist-nn on cpu" where a GPU was in play (the two sides may differ); "" on a CPU."""
    devices = data.get("devices")
    if not devices or all(d == "cpu" for d in [devices["baseline"], *devices["ours"]]):
        return ""
    ours = "/".join(devices["ours"])
    if chinese:
        return f"；基线在 {devices['baseline']} 上，mnist-nn 在 {ours} 上"
    return f"; baseline on {devices['baseline']}, mnist-nn on {ours}"


def speed_table(results: Path, chinese: bool) -> str:
    """The tutorial's script and PyTorch's example against mnist-nn, each row with the machine it was measured on."""
    lines = [
        "| 对比 | 基线 | mnist-nn | 倍数 | 测量机器 |"
        if chinese
        else "| comparison | baseline | mnist-nn | speed-up | measured on |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    found = []
    tutorial = results / "tutorial.json"
    if tutorial.exists():
        t = json.loads(tutorial.read_text())
        found.append(t)
        b, o = t["baseline"], t["ours"]
        what = (
            f"教程配方 {t['epochs']} 轮训练时间（{t['repeats']} 次中位数）"
            if chinese
            else f"`tutorial` recipe, {t['epochs']} epochs: training time (median of {t['repeats']})"
        )
        lines.append(
            f"| {what} | {b['train_seconds']['median']:.1f} s ({_pct(b['test_accuracy']['median'])}) | "
            f"{o['train_seconds']['median']:.1f} s ({_pct(o['test_accuracy']['median'])}) | {t['speedup']:.1f}x | "
            f"{_where(t, chinese)}{_devices(t, chinese)} |"
        )
    to99 = results / "time-to-99.json"
    if to99.exists():
        t = json.loads(to99.read_text())
        found.append(t)
        if t.get("speedup"):
            what = (
                f"达到 99% 测试准确率的训练时间（{t['repeats']} 次中位数）：PyTorch 示例 vs `{t['recipe']}`"
                if chinese
                else f"time to 99% test accuracy (median of {t['repeats']}): PyTorch's example vs `{t['recipe']}`"
            )
            lines.append(
                f"| {what} | {t['baseline']['median']:.1f} s | {t['ours']['median']:.1f} s | {t['speedup']:.1f}x | "
                f"{_where(t, chinese)}{_devices(t, chinese)} |"
            )
    if not found:
        return "\n".join(lines)
    torch = "、".join(dict.fromkeys(_host(t)["torch"] for t in found))
    note = (
        f"\n\nPyTorch {torch}。AMX 是新一代英特尔至强 CPU 上的矩阵乘法单元。"
        if chinese
        else f"\n\nPyTorch {torch}. AMX: the matrix-multiply units of recent Intel Xeon CPUs."
    )
    return "\n".join(lines) + note


def _machine_note(results: Path, names: list[str], chinese: bool) -> str:
    found = [json.loads((results / n).read_text()) for n in names if (results / n).exists()]
    if not found:
        return ""
    where, torch = _where(found[0], chinese), _host(found[0])["torch"]
    return f"\n\n测量环境：{where}，PyTorch {torch}。" if chinese else f"\n\nMeasured on {where}, PyTorch {torch}."


def inference_table(results: Path, chinese: bool) -> str:
    path = results / "inference.json"
    header = (
        "| 模型 | batch 1：最快路径 | batch 1000：eager | batch 1000：最快路径 |"
        if chinese
        else "| model | batch 1: fastest path | batch 1000: eager | batch 1000: fastest path |"
    )
    lines = [header, "| --- | ---: | ---: | ---: |"]
    if not path.exists():
        return "\n".join(lines)
    data = json.loads(path.read_text())
    for model in dict.fromkeys(r["model"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["model"] == model]

        def best(batch, rows=rows):
            return max((r for r in rows if r["batch"] == batch), key=lambda r: r["images_per_second"])

        eager = next(r for r in rows if r["batch"] == 1000 and r["path"].startswith("eager"))
        b1, b1000 = best(1), best(1000)
        lines.append(
            f"| `{model}` | {b1['images_per_second']:,.0f}/s ({b1['path']}) | {eager['images_per_second']:,.0f}/s | "
            f"{b1000['images_per_second']:,.0f}/s ({b1000['path']}) |"
        )
    threads = f"{data['threads']} threads; " if not chinese else f"{data['threads']} 个线程；"
    return "\n".join(lines) + _machine_note(results, ["inference.json"], chinese).replace(
        "Measured on ", "Measured with " + threads
    ).replace("测量环境：", "测量环境：" + threads)


def ddp_table(results: Path, chinese: bool) -> str:
    header = (
        "| 进程 × 线程 | 训练时间（中位数） | 总耗时 | 测试准确率 |"
        if chinese
        else "| processes × threads | training (median) | wall | test accuracy |"
    )
    lines = [header, "| --- | ---: | ---: | ---: |"]
    path = results / "ddp.json"
    if not path.exists():
        return "\n".join(lines)
    data = json.loads(path.read_text())
    for side, values in data["sides"].items():
        lines.append(
            f"| {side.replace('x', ' × ')} | {values['train_seconds']['median']:.1f} s | "
            f"{values['wall_seconds']['median']:.1f} s | {_pct(values['test_accuracy']['median'])} |"
        )
    best = data["best_single_process"].replace("x", " × ")
    speedup = data["speedup_train_seconds"]
    note = (
        f"\n\n`{data['recipe']}`，{data['epochs']} 轮；与最快的单进程（{best}）相比，"
        f"2 个进程的训练速度是它的 {speedup:.2f} 倍。"
        if chinese
        else f"\n\n`{data['recipe']}`, {data['epochs']} epoch(s); 2 processes train at {speedup:.2f} times the speed "
        f"of the fastest single process ({best})."
    )
    return "\n".join(lines) + note + _machine_note(results, ["ddp.json"], chinese)


def profile_table(results: Path, chinese: bool) -> str:
    blocks = []
    for path in sorted(results.glob("profile-*.json")):
        data = json.loads(path.read_text())
        lines = [
            f"`{data['recipe']}`, {data['epochs']} epoch(s), {data['train_seconds']:.1f} s of training (profiled):",
            "",
            "| operator | self CPU time | share | calls |",
            "| --- | ---: | ---: | ---: |",
        ]
        lines += [
            f"| `{row['op']}` | {row['self_ms']:.0f} ms | {100 * row['share']:.1f}% | {row['calls']:,} |"
            for row in data["top"]
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "(no profile yet: run benchmarks/profile_training.py)"


def load_table(results: Path, chinese: bool) -> str:
    header = (
        "| 请求 | 服务进程 | 客户端 | 请求数 | 吞吐量 | p50 | p99 | 各轮 p99 | 错误 | 畸形请求的状态码 |"
        if chinese
        else "| requests | server processes | clients | requests in all | throughput | p50 | p99 | p99 of each run "
        "| errors | statuses of the malformed |"
    )
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    names = ["load.json", "load-json.json", "load-malformed.json", "load-json-malformed.json"]
    for name in names:
        path = results / name
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        kind = "PNG 112x112" if d["payload"] == "png" else "JSON 28x28"
        if d["malformed_fraction"]:
            kind += f" + {100 * d['malformed_fraction']:.0f}% {'畸形' if chinese else 'malformed'}"
        statuses = {}
        for counts in d["malformed_status_counts"].values():
            for status, count in counts.items():
                statuses[status] = statuses.get(status, 0) + count
        shown = ", ".join(f"{count} × {status}" for status, count in sorted(statuses.items())) or "–"
        lat = d["latency_ms"]
        # Results from before --workers and --repeats: one process, one run.
        runs = d.get("runs") or [{"p99": lat["p99"]}]
        each = ", ".join(f"{run['p99']:.1f}" for run in runs)
        lines.append(
            f"| {kind} | {d.get('server_workers') or 1} | {d['clients']} | {d['requests']:,} | "
            f"{d['throughput_rps']:.0f}/s | {lat['p50']:.1f} ms | {lat['p99']:.1f} ms | {each} | {d['errors']} | "
            f"{shown} |"
        )
    model = next((json.loads((results / n).read_text())["model"] for n in names if (results / n).exists()), None)
    note = ""
    if model:
        note = (
            f"\n\n模型：`{model}`。每一行是同一个服务上连续几轮负载（`--repeats`）中 p99 居中的那一轮。"
            if chinese
            else f"\n\nModel: `{model}`. Each row is the run with the median p99 of several runs against one server "
            "(`--repeats`)."
        )
    return "\n".join(lines) + note + _machine_note(results, [n for n in names if (results / n).exists()][:1], chinese)


def robustness_table(results: Path, chinese: bool) -> str:
    """MNIST-C: one row per corruption, one column per recipe with a robustness-<recipe>.json, the mean, the clean."""
    found = {r["recipe"] or r["model"]: r for r in _load(results, "robustness-*.json")}
    order = sorted(found, key=_recipe_rank)
    columns = [found[name] for name in order]
    header = "| 损坏 |" if chinese else "| corruption |"
    lines = [header + "".join(f" `{name}` |" for name in order), "| --- |" + " ---: |" * len(order)]
    names = list(dict.fromkeys(name for r in columns for name in r["corruptions"]))
    for name in names:
        cells = "".join(f" {_pct(r['corruptions'][name]) if name in r['corruptions'] else '–'} |" for r in columns)
        lines.append(f"| `{name}` |{cells}")
    mean, clean = (
        ("**平均**", "干净的测试集（不计入平均）") if chinese else ("**mean**", "clean test set (not in the mean)")
    )
    lines.append(f"| {mean} |" + "".join(f" **{_pct(r['mean_accuracy'])}** |" for r in columns))
    lines.append(f"| {clean} |" + "".join(f" {_pct(r['clean_accuracy'])} |" for r in columns))
    if not columns:
        return "\n".join(lines)
    first = columns[0]
    cores = first["machine"].get("cpu_count", "?")
    unit, comma = (" 秒", "、") if chinese else (" s", ", ")
    scoring = comma.join(f"`{name}` {found[name]['score_seconds']:.0f}{unit}" for name in order)
    note = (
        f"\n\n准确率是在全部 {first['test_size']:,} 张测试数字的每种损坏版本上测得的"
        f"（`mnist-nn robustness`，`benchmarks/robustness.py`，种子 {first['seed']}）。"
        f"在 {cores} 个 CPU 核上生成这 {len(names)} 个数据集只需一次，用了 {first['build_seconds']:.0f} 秒；"
        f"之后的运行从缓存读取它们（{first['cached_read_seconds']:.2f} 秒），只为模型打分（{scoring}）。"
        if chinese
        else f"\n\nAccuracy on all {first['test_size']:,} test digits under each corruption (`mnist-nn robustness`, "
        f"`benchmarks/robustness.py`, seed {first['seed']}). Building the {len(names)} sets took "
        f"{first['build_seconds']:.0f} s on {cores} CPU cores, once: later runs read them from the cache "
        f"({first['cached_read_seconds']:.2f} s) and only score the model ({scoring})."
    )
    return "\n".join(lines) + note


def photo_table(results: Path, chinese: bool) -> str:
    """Photo-like digits: one row per look, one column per predict-realphoto-<name>.json, then the totals."""
    found = {
        r.name[len("predict-realphoto-") : -len(".json")]: json.loads(r.read_text())
        for r in sorted(results.glob("predict-realphoto-*.json"))
    }
    order = sorted(found, key=_recipe_rank)
    columns = [found[name] for name in order]
    lines = [("| 样式 |" if chinese else "| look |") + "".join(f" `{name}` |" for name in order)]
    lines.append("| --- |" + " ---: |" * len(order))
    looks = list(dict.fromkeys(look for r in columns for look in r["photo_accuracy_by_look"]))
    for look in looks:
        cells = "".join(
            f" {_pct(r['photo_accuracy_by_look'][look]['accuracy'])} |"
            if look in r["photo_accuracy_by_look"]
            else " – |"
            for r in columns
        )
        lines.append(f"| {look} |{cells}")

    def sets(r: dict) -> str:
        wrong = sum(f["images"] - f["right"] for f in r["photo_sets"])
        hard = sum(f["wrong_in_mnist_form"] for f in r["photo_sets"])
        return f"{_pct(r['photo_sets_accuracy'])} ({wrong} / {hard})"

    if not columns:
        return "\n".join(lines)
    first = columns[0]
    count, many = first["photo_images"], len(first["photo_sets"]) * first["photo_images"]
    labels = (
        (
            f"**全部 {count:,} 张**",
            f"{len(first['photo_sets'])} 组共 {many:,} 张（读错 / 其中 MNIST 原图也读错）",
            f"只有经典样式的 {count:,} 张",
            "多位数整串读对",
        )
        if chinese
        else (
            f"**all {count:,}**",
            f"{len(first['photo_sets'])} sets, {many:,} images (misread / also misread as MNIST)",
            f"classic look only, {count:,} images",
            "numbers read exactly",
        )
    )
    lines.append(f"| {labels[0]} |" + "".join(f" **{_pct(r['photo_accuracy'])}** |" for r in columns))
    lines.append(f"| {labels[1]} |" + "".join(f" {sets(r)} |" for r in columns))
    lines.append(f"| {labels[2]} |" + "".join(f" {_pct(r['classic_photo_accuracy'])} |" for r in columns))
    lines.append(f"| {labels[3]} |" + "".join(f" {_pct(r['multi_exact'])} |" for r in columns))
    return "\n".join(lines)


def pretrained_table(results: Path, chinese: bool) -> str:
    """The bundled models (src/mnist_nn/models/pretrained/models.json, made by scripts/make_pretrained.py)."""
    models = json.loads(PRETRAINED_INDEX.read_text())["models"]  # missing: an error, never an empty table
    header = (
        "| 名称 | 配方（种子） | 参数 | 文件 | MNIST 测试集 | MNIST-C 平均 |"
        if chinese
        else "| name | recipe (seed) | parameters | file | MNIST test | MNIST-C mean |"
    )
    lines = [header, "| --- | --- | ---: | ---: | ---: | ---: |"]
    for index, model in enumerate(models):
        size = (PRETRAINED_INDEX.parent / model["file"]).stat().st_size / 1024
        default = ("（默认）" if chinese else " (default)") if index == 0 else ""
        lines.append(
            f"| `{model['name']}`{default} | `{model['recipe']}` ({model['seed']}) | {model['parameters']:,} | "
            f"{size:.0f} KB | {_pct(model['clean_accuracy'])} | {_pct(model['mnist_c_mean'])} |"
        )
    return "\n".join(lines)


GPU_PARTS = ["tutorial", "cnn-fast", "speedrun", "cnn-best"]


def _spread(d: dict, fmt) -> str:
    """ "mean (min–max)" of a describe() dict, or the one value when min and max agree."""
    if d["min"] == d["max"]:
        return fmt(d["mean"])
    return f"{fmt(d['mean'])} ({fmt(d['min'])}–{fmt(d['max'])})"


def gpu_table(results: Path, chinese: bool) -> str:
    """benchmarks/gpu.py's results: training time, time to 99% and accuracy per recipe, inference images/s."""
    found = {r["part"]: r for r in _load(results, "gpu-*.json")}
    if not found:
        return (
            "尚未测量：还没有在 GPU 上运行过 `python benchmarks/gpu.py`（它需要一块 CUDA GPU，结果会显示在这里）。"
            if chinese
            else "Not measured yet: `python benchmarks/gpu.py` has not been run on a GPU (it needs a CUDA GPU; "
            "its figures will appear here)."
        )
    blocks = []

    def seconds(value: float) -> str:
        # A speed run on a GPU takes about a second: tenths alone would hide the differences between seeds.
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"

    training = [found[part] for part in GPU_PARTS if part in found]
    if training:
        lines = [
            "| 配方 | 轮数 | 次数 | 训练时间：均值（最低–最高） | 达到 99% 的时间 | 测试准确率：均值（最低–最高） |"
            if chinese
            else "| recipe | epochs | runs | training time: mean (min–max) | time to 99% "
            "| test accuracy: mean (min–max) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in training:
            runs = str(r["seeds"])
            if r.get("cut_by_budget"):
                runs = (
                    f"{r['seeds']}（计划 {r['planned_seeds']} 次，超出时间预算）"
                    if chinese
                    else f"{r['seeds']} of {r['planned_seeds']} (budget)"
                )
            if r["seconds_to_99"] is None:
                to_99 = "未达到" if chinese else "not reached"
            else:
                to_99 = _spread(r["seconds_to_99"], seconds)
                if r["reached_99"] < r["seeds"]:
                    to_99 += (
                        f"；{r['seeds']} 次中 {r['reached_99']} 次达到"
                        if chinese
                        else f"; {r['reached_99']} of {r['seeds']} reached it"
                    )
            lines.append(
                f"| `{r['recipe']}` | {r['epochs']} | {runs} | {_spread(r['train_seconds'], seconds)} | {to_99} | "
                f"{_spread(r['test_accuracy'], _pct)} |"
            )
        blocks.append("\n".join(lines))
    inference = found.get("inference")
    if inference:
        batches = inference["batches"]
        lines = [
            ("| 模型 |" if chinese else "| model |") + "".join(f" batch {b} |" for b in batches),
            "| --- |" + " ---: |" * len(batches),
        ]
        fastest = {(f["model"], f["batch"]): f for f in inference["fastest"]}
        for model in dict.fromkeys(f["model"] for f in inference["fastest"]):
            cells = "".join(
                f" {fastest[model, b]['images_per_second']:,.0f}/s ({fastest[model, b]['path']}) |"
                if (model, b) in fastest
                else " – |"
                for b in batches
            )
            lines.append(f"| `{model}` |{cells}")
        blocks.append("\n".join(lines))
    first = next(iter(found.values()))
    host = _host(first)
    gpu = host.get("gpu") or "?"
    note = (
        f"测量环境：{gpu}（主机 {_where(first, chinese, gpu=False)}），PyTorch {host['torch']}"
        f"（`python benchmarks/gpu.py`）。训练时间不含评估；达到 99% 的时间就是测试准确率 ≥ 99% 的那次运行的训练时间。"
        "推理一栏是每秒图片数及最快的方式。"
        if chinese
        else f"Measured on {gpu} (host: {_where(first, chinese, gpu=False)}), "
        f"PyTorch {host['torch']} (`python benchmarks/gpu.py`). Training time excludes evaluation; the time to 99% "
        "is the training time of a run whose test accuracy is ≥ 99%. Inference: images per second, fastest path."
    )
    return "\n\n".join([*blocks, note])


TABLES = {
    "pretrained-models": pretrained_table,
    "load-results": load_table,
    "profile-results": profile_table,
    "recipe-results": recipe_table,
    "speed-results": speed_table,
    "inference-results": inference_table,
    "ddp-results": ddp_table,
    "robustness-results": robustness_table,
    "photo-results": photo_table,
    "gpu-results": gpu_table,
}


def render(text: str, results: Path, chinese: bool) -> str:
    for name, make in TABLES.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
        table = make(results, chinese)
        text = pattern.sub(lambda m, table=table: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--page",
        "--readme",
        dest="page",
        type=Path,
        action="append",
        help="page(s) to render (default: docs/**/*.md and benchmarks/README.md)",
    )
    parser.add_argument("--check", action="store_true", help="only report whether the pages are up to date")
    args = parser.parse_args(argv)
    stale = []
    for page in args.page or pages():
        if not page.exists():
            continue
        text = page.read_text(encoding="utf-8")
        new = render(text, args.results, chinese=is_chinese(page))
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("out of date: " + ", ".join(str(p) for p in stale) + " (run benchmarks/render_results.py)")
        return 1
    print("up to date" if args.check else f"rendered {len(stale)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
