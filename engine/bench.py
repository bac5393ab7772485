"""The benchmark: the measuring stick for every speed claim.

    python -m engine.bench --target ID|PATH --draft ID|PATH|ngram|none \\
        --prompts FILE.jsonl --modes plain,fixed:2,fixed:4,auto --max-tokens 128 \\
        --temperature 0 --seed 0 --json OUT.json

Modes run interleaved per prompt (plain, mode A, plain, mode B, …) so machine drift hits all
alike; each mode's speedup is its rate over the median of the plain runs of the same prompt.
A fixed mode runs once per drafter available for the pair ("fixed:4/model", "fixed:4/ngram").
Greedy texts of every mode are compared with plain decoding and divergences are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import llama_cpp  # noqa: F401  (llama.cpp's libraries before numpy: see engine/worker.py)

from engine import hardware
from engine.session import ChatRequest, LoadRequest, Session

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPTS = PROMPTS_DIR / "dev.jsonl"


def load_prompts(path: Path, limit: int | None = None, per_category: int | None = None,
                 categories: list[str] | None = None) -> list[dict]:
    prompts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if categories:
        prompts = [prompt for prompt in prompts if prompt["category"] in categories]
    if per_category:
        seen: dict[str, int] = defaultdict(int)
        kept = []
        for prompt in prompts:
            if seen[prompt["category"]] < per_category:
                seen[prompt["category"]] += 1
                kept.append(prompt)
        prompts = kept
    return prompts[:limit] if limit else prompts


def expand_modes(modes: list[str], drafters: list[str]) -> list[tuple[str, str, str]]:
    """(label, mode, drafter) for each requested mode."""
    out = []
    for mode in modes:
        if mode == "plain":
            continue
        if mode == "auto":
            out.append(("auto", "auto", "both"))
        elif mode.startswith("fixed:"):
            for drafter in drafters:
                out.append((f"{mode}/{drafter}", mode, drafter))
        else:
            raise SystemExit(f"unknown mode '{mode}' (plain, fixed:K, auto)")
    return out


def run_one(session: Session, prompt: dict, mode: str, drafter: str, args) -> dict:
    kind, _, window = mode.partition(":")
    request = ChatRequest(prompt["messages"], max_tokens=args.max_tokens,
                          temperature=args.temperature, seed=args.seed,
                          mode={"plain": "off"}.get(kind, kind), window=int(window or 0),
                          drafter=drafter)
    done = None
    for event in session.chat(request):
        if event["type"] == "done":
            done = event
    assert done is not None
    stats = done["stats"]
    return {"prompt_id": prompt["id"], "category": prompt["category"], "mode": mode,
            "drafter": stats["drafter"], "tokens": stats["tokens"], "seconds": stats["seconds"],
            "tok_per_s": stats["tok_per_s"], "drafted": stats["drafted"],
            "accepted": stats["accepted"], "target_passes": stats["target_passes"],
            "text": done["text"]}


def summarise(runs: list[dict]) -> list[dict]:
    plain: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        if run["mode"] == "plain":
            plain[run["prompt_id"]].append(run["tok_per_s"])
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["category"], run["label"])].append(run)
        groups[("all", run["label"])].append(run)
    summary = []
    for (category, label), group in sorted(groups.items()):
        ratios = [r["tok_per_s"] / statistics.median(plain[r["prompt_id"]]) for r in group]
        drafted = sum(r["drafted"] for r in group)
        summary.append({
            "category": category, "mode": label,
            "tok_per_s": statistics.median(r["tok_per_s"] for r in group),
            "speedup_vs_plain": statistics.median(ratios),
            "acceptance": sum(r["accepted"] for r in group) / drafted if drafted else None,
            "tokens_per_pass": sum(r["tokens"] for r in group)
            / max(sum(r["target_passes"] for r in group), 1),
        })
    return summary


def divergences(runs: list[dict]) -> list[dict]:
    reference = {r["prompt_id"]: r["text"] for r in runs if r["mode"] == "plain"}
    out = []
    for run in runs:
        if run["mode"] != "plain" and run["text"] != reference[run["prompt_id"]]:
            ref = reference[run["prompt_id"]]
            at = next((i for i, (a, b) in enumerate(zip(ref, run["text"])) if a != b),
                      min(len(ref), len(run["text"])))
            out.append({"prompt_id": run["prompt_id"], "mode": run["label"], "char": at})
    return out


def print_table(summary: list[dict], out=sys.stdout) -> None:
    print(f"{'category':10} {'mode':18} {'tok/s':>7} {'speedup':>8} {'accept':>7} {'tok/pass':>8}",
          file=out)
    for row in summary:
        acc = "-" if row["acceptance"] is None else f"{100 * row['acceptance']:.0f}%"
        print(f"{row['category']:10} {row['mode']:18} {row['tok_per_s']:7.1f} "
              f"{row['speedup_vs_plain']:7.2f}x {acc:>7} {row['tokens_per_pass']:8.2f}",
              file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct-q4_k_m",
                        help="model id or path, 'ngram' or 'none'")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS)
    parser.add_argument("--modes", default="plain,fixed:1,fixed:2,fixed:4,fixed:8,auto")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="first N prompts only")
    parser.add_argument("--per-category", type=int, default=None)
    parser.add_argument("--categories", default=None, help="comma-separated, e.g. rewrite,code")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each prompt's interleaved sequence this many times")
    parser.add_argument("--drafters", default=None,
                        help="fixed modes only for these drafters (model,ngram); default both")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    model_draft = args.draft not in ("ngram", "none")
    drafters = (["model", "ngram"] if model_draft else ["ngram"]) if args.draft != "none" else []
    if args.drafters:
        drafters = [d for d in drafters if d in args.drafters.split(",")]
    session = Session()
    info = session.load(LoadRequest(args.target, args.draft if model_draft else None,
                                    n_ctx=args.n_ctx))
    prompts = load_prompts(args.prompts, args.limit, args.per_category,
                           args.categories.split(",") if args.categories else None)
    modes = expand_modes(args.modes.split(","), drafters)
    runs = []
    for prompt in [p for p in prompts for _ in range(args.repeats)]:
        for label, mode, drafter in modes:
            for current_label, current_mode, current_drafter in (("plain", "plain", "none"),
                                                                 (label, mode, drafter)):
                run = run_one(session, prompt, current_mode, current_drafter, args)
                run["label"] = current_label
                runs.append(run)
                print(f"{prompt['id']:8} {current_label:18} {run['tok_per_s']:6.1f} tok/s "
                      f"acc {run['accepted']}/{run['drafted']}", file=sys.stderr, flush=True)
    summary = summarise(runs)
    diverged = divergences(runs) if args.temperature == 0 else []
    print_table(summary)
    limits = session.ceilings()
    verify = session.costs().curve.verify
    print("\npass over n tokens / one token, as seen in this run: "
          + ", ".join(f"n={n} x{verify(n) / verify(1):.2f}" for n in (2, 3, 4, 8)))
    print("ceiling (every draft accepted) on this machine: "
          + ", ".join(f"{name} {value:.2f}x" for name, value in limits.items()))
    if args.temperature == 0:
        print(f"\ngreedy texts differing from plain: {len(diverged)} of "
              f"{sum(1 for r in runs if r['mode'] != 'plain')} runs", file=sys.stdout)
        for item in diverged:
            print(f"  {item['prompt_id']} {item['mode']} first differs at char {item['char']}")
    if args.json:
        machine = {**hardware.describe(), "python": platform.python_version(),
                   "threads": info["threads"], "gpu_layers": info["gpu_layers"]}
        report = {"machine": machine, "target": args.target, "draft": args.draft,
                  "compatibility": info.get("compatibility"),
                  "calibration": info.get("calibration"), "ceilings": limits, "runs": runs,
                  "summary": summary, "divergent": diverged}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
