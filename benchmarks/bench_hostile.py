"""How fast the app refuses hostile input, and what a refusal costs in memory (issue 33's "< 2 s").

    .venv/bin/python benchmarks/bench_hostile.py            # the shipped models when present, else tiny ones
    .venv/bin/python benchmarks/bench_hostile.py --json bench_hostile.json

Starts the app on 127.0.0.1 and sends each hostile input of ``tests/test_app_hostile.py`` (the
same table the tests sweep) through the API: upload, queue, refusal, as a client would see it,
``--repeat`` times each; prints the median and the worst wall time of each refusal (from the call to
its answer; the upload before it is not counted), the process's
resident memory before and after all of them, and that the server answered a good slice at the end.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import app
    from brainseg.inference import Predictor
    from test_app import free_port
    from test_app_hostile import HOSTILE, hostile_call, still_serving

    shipped = (ROOT / "models" / "segmenter" / "model.safetensors").is_file()
    if shipped:
        predictor = Predictor.from_sources()
    else:
        import torch

        from brainseg.config import ClassifierConfig, SegmenterConfig
        from brainseg.models import ResUNet, TumorClassifier
        d = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        ResUNet(SegmenterConfig(encoder="test_resnet", image_size=64)).save_pretrained(d / "s")
        TumorClassifier(ClassifierConfig(encoder="test_resnet", image_size=64)).save_pretrained(d / "c")
        predictor = Predictor.from_sources(str(d / "s"), str(d / "c"))
    demo = app.build_demo(predictor, Path(tempfile.mkdtemp()))
    _, url, _ = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    rows, work = {}, Path(tempfile.mkdtemp())
    try:
        still_serving(url, work)  # warm-up
        before = rss_mb()
        for name in HOSTILE:
            times, kinds = [], set()
            for _ in range(args.repeat):
                (kind, payload, seconds), _ = hostile_call(url, work, name)
                times.append(seconds)
                kinds.add("message" if kind == "error" and payload and payload.get("error") else f"{kind}: {payload}")
            rows[name] = {"median_s": statistics.median(times), "max_s": max(times), "answers": sorted(kinds)}
        after = rss_mb()
        still_serving(url, work)
    finally:
        demo.close()
    width = max(map(len, rows))
    print(f"{'hostile input':<{width}}  median   worst  answer")
    for name, r in rows.items():
        print(f"{name:<{width}}  {r['median_s']:5.2f} s {r['max_s']:5.2f} s  {', '.join(r['answers'])}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"models: {'shipped' if shipped else 'tiny'}; {args.repeat} runs each; resident memory {before:.0f} MB "
          f"before the hostile inputs, {after:.0f} MB after (peak of the process {peak:.0f} MB); "
          "a good slice answered after them")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "rss_mb_before": before, "rss_mb_after": after,
                                         "peak_rss_mb": peak}, indent=2) + "\n")
    return 0 if all(r["answers"] == ["message"] and r["max_s"] < 2 for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
