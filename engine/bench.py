"""The benchmark: the measuring stick for every speed claim.

    python -m engine.bench --target ID|PATH --draft ID|PATH|ngram|none \\
        --prompts dev|edits|FILE.jsonl --modes plain,fixed:2,fixed:4,auto --max-tokens 128 \\
        --numerics exact|fast|exact:N --costs costs/h100-1.5b-llama.json --json OUT.json

Modes run interleaved per prompt (plain, mode A, plain, mode B, …) so machine drift hits all
alike; each mode's speedup is its rate over the median of the plain runs of the same prompt.
A fixed mode runs once per drafter available for the pair ("fixed:4/model", "fixed:4/ngram").
Auto starts from the controller's default priors, not from the acceptance this machine's app
remembered (an empty memory per bench run, which its own runs then teach, as the app's do).
Greedy texts of every mode are compared with plain decoding and divergences are reported.
Table columns: speedup is measured; median-cost is the same ratio with every step's time
inside llama.cpp replaced by the run's median for that pass size (each run's own drafts, choices
and loop overhead, without the VM's run-to-run noise in llama.cpp's time). tok/pass, acc/pass
and acc/step count every target step; acc/draft only the steps that verified a draft (a
drafter that drafts rarely but well scores high there); draft ms/tok is all drafting time,
lookups that found nothing included, per drafted token (large where little was drafted).

Also printed: the numerics in use (and, in fast numerics, the tokens decided by a margin under
the measured rounding difference); per pass size, the loop's step cost beside the time inside
llama.cpp's calls in those same steps and the calibrated raw pass; the loop's time against the
time spent inside llama.cpp; plain decoding
against llama.cpp's own one-token rate (``--llama-bench PATH`` adds llama-bench tg128 itself,
at depth 0 and after the prompt, right after each prompt's first plain run);
with ``--costs``, the speedup each mode would give at another machine's costs (fixed modes:
their recorded steps re-costed; auto: the window policy replayed there over the lookup drafters);
in greedy runs, the copy ceiling: the most accepted tokens per step that any drafter copying
from the request itself could get (``engine.replay.copy_ceiling``) beside the lookup drafters'.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import llama_cpp  # noqa: F401  (llama.cpp's libraries before numpy: see engine/worker.py)

from engine import hardware, parity
from engine.adaptive_window import AdaptiveController
from engine.costs import LOOKUP_DRAFTERS, Costs
from engine.prompting import prompt_tokens
from engine.replay import Trace, copy_ceiling, load_costs, record, replay
from engine.session import ChatRequest, LoadRequest, Session, suffix_scope
from engine.speculative import Finished, GenerationParams, Step, generate

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPTS = PROMPTS_DIR / "dev.jsonl"


def prompts_file(name: str) -> Path:
    """A prompt set shipped in ``prompts/`` by name ("dev", "edits"), or any JSONL path."""
    shipped = PROMPTS_DIR / f"{name}.jsonl"
    return shipped if shipped.is_file() else Path(name)


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


PLAIN = ("plain", "plain", "none")


def interleaved(modes: list[str], drafters: list[str]) -> list[tuple[str, str, str]]:
    """One prompt's run order: a plain run before each other mode, so drift hits all alike;
    plain alone when nothing else is asked for."""
    return [run for mode in expand_modes(modes, drafters) for run in (PLAIN, mode)] or [PLAIN]


def run_one(session: Session, prompt: dict, mode: str, drafter: str, args) -> dict:
    kind, _, window = mode.partition(":")
    request = ChatRequest(prompt["messages"], max_tokens=args.max_tokens,
                          temperature=args.temperature, seed=args.seed,
                          mode={"plain": "off"}.get(kind, kind), window=int(window or 0),
                          drafter=drafter)
    steps: list[Step] = []
    # every run prefills its prompt into an empty cache: a prompt whose first tokens were
    # reused from the previous prompt's cache is prefilled in other batch sizes, which round
    # differently, and its greedy text can differ at a near tie (edit-16: the first plain run
    # after edit-15 differed from every later run of it, plain or speculative alike)
    session.target.reset()
    suffix = session.drafters()["suffix"]
    if not args.keep_memory:  # else a run would draft the reply the plain run just gave
        suffix.forget()
    # the copy below drafts with this request's learned acceptance, as the chat will
    suffix.scope(suffix_scope(prompt["messages"]))
    # for replaying auto on other machines' costs: the lookup drafters as this run finds them
    lookups = ({name: copy.deepcopy(d) for name, d in session.drafters().items()
                if name in LOOKUP_DRAFTERS} if kind == "auto" and args.costs else {})
    done = None
    for event in session.chat(request, on_step=steps.append):
        if event["type"] == "done":
            done = event
    assert done is not None
    stats = done["stats"]
    reply = [token for s in steps for token in s.emitted]
    trace = (record(prompt["id"], done["category"], prompt_tokens(session.target,
                                                                   prompt["messages"]),
                    reply, lookups) if lookups else None)
    return {"prompt_id": prompt["id"], "category": prompt["category"], "mode": mode,
            "cache_reused": stats["cache_reused"],
            "drafter": stats["drafter"], "tokens": stats["tokens"], "seconds": stats["seconds"],
            "tok_per_s": stats["tok_per_s"], "drafted": stats["drafted"],
            "prompt_tokens": stats["prompt_tokens"],
            "accepted": stats["accepted"], "target_passes": stats["target_passes"],
            "near_ties": stats["near_ties"], "text": done["text"],
            "target_seconds": sum(s.stats.target_seconds for s in steps),
            # every step's drafting time, proposals that came to nothing included
            "draft_seconds": sum(s.stats.draft_seconds for s in steps),
            "steps": [[s.stats.drafter, s.stats.drafted, s.stats.accepted] for s in steps],
            "step_seconds": [[s.stats.drafted + 1, s.stats.pass_seconds, s.stats.target_seconds]
                             for s in steps],
            "reply_tokens": reply, "trace": trace}


def record_traces(session: Session, prompts: list[dict], max_tokens: int) -> list[Trace]:
    """For each prompt: the target's greedy reply, and what every drafter of the pair would
    propose after each prefix of it (``engine.replay``)."""
    traces = []
    for prompt in prompts:
        tokens = prompt_tokens(session.target, prompt["messages"])
        finished = None
        for event in generate(session.target, tokens, GenerationParams(max_tokens)):
            finished = event if isinstance(event, Finished) else finished
        drafters = {}
        for drafter in session.drafters().values():
            drafter.prepare(prompt["messages"])
            drafters[drafter.name] = drafter
        traces.append(record(prompt["id"], prompt["category"], tokens, finished.tokens,
                             drafters))
        print(f"{prompt['id']:8} traced {len(finished.tokens)} tokens", file=sys.stderr,
              flush=True)
    return traces


def projected(run: dict, costs: Costs) -> float:
    """Speedup over plain decoding at ``costs``. A run with a trace (auto) replays the window
    policy there over its lookup drafters' proposals: it would choose other windows on other
    costs (the draft model is left out: tracing it costs a draft per position). Other runs
    re-cost their own steps (the same drafts, the same outcomes)."""
    trace: Trace | None = run.get("trace")
    if trace is not None:
        return replay(trace, costs, lambda drafters, live: AdaptiveController(
            drafters, costs, category=trace.category, live=live)).speedup
    # plain on that machine: one step per token emitted (the end token included)
    plain = sum(accepted + 1 for _, _, accepted in run["steps"]) * costs.curve.verify(1)
    spent = sum(drafted * costs.draft_cost(drafter) + costs.curve.verify(drafted + 1)
                for drafter, drafted, _ in run["steps"])
    return plain / max(spent, 1e-12)


def at_median_costs(runs: list[dict]) -> list[float]:
    """Each run's tokens per second with the time inside llama.cpp of every step replaced by
    the median for its pass size over all runs, and its own time outside llama.cpp kept
    (drafting, the loop): the run's choices and overheads without this machine's run-to-run
    noise in llama.cpp's own time (on a shared VM ±10% per run, larger than what separates
    auto from plain where auto drafts little)."""
    inside: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for tokens, _, seconds in run["step_seconds"]:
            inside[tokens].append(seconds)
    median = {n: statistics.median(seconds) for n, seconds in inside.items()}
    return [run["tokens"] / max(sum(median[n] for n, _, _ in run["step_seconds"])
                                + run["seconds"] - run["target_seconds"], 1e-12)
            for run in runs]


def summarise(runs: list[dict], projections: dict[str, Costs] | None = None) -> list[dict]:
    plain: dict[str, list[float]] = defaultdict(list)
    even: dict[str, list[float]] = defaultdict(list)
    steady = {id(run): rate for run, rate in zip(runs, at_median_costs(runs))}
    for run in runs:
        if run["mode"] == "plain":
            plain[run["prompt_id"]].append(run["tok_per_s"])
            even[run["prompt_id"]].append(steady[id(run)])
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["category"], run["label"])].append(run)
        groups[("all", run["label"])].append(run)
    summary = []
    for (category, label), group in sorted(groups.items()):
        ratios = [r["tok_per_s"] / statistics.median(plain[r["prompt_id"]]) for r in group]
        drafted = sum(r["drafted"] for r in group)
        row = {
            "category": category, "mode": label,
            "tok_per_s": statistics.median(r["tok_per_s"] for r in group),
            "speedup_vs_plain": statistics.median(ratios),
            "speedup_at_median_costs": statistics.median(
                steady[id(r)] / statistics.median(even[r["prompt_id"]])
                for r in group),
            "acceptance": sum(r["accepted"] for r in group) / drafted if drafted else None,
            "tokens_per_pass": sum(r["tokens"] for r in group)
            / max(sum(r["target_passes"] for r in group), 1),
            "accepted_per_pass": sum(r["accepted"] for r in group)
            / max(sum(r["target_passes"] for r in group), 1),
            # a step: one draft and its verification, however many passes that took
            "accepted_per_step": sum(r["accepted"] for r in group)
            / max(sum(len(r["steps"]) for r in group), 1),
            # per step that verified a draft: what a drafter that drafts rarely but well earns
            "accepted_per_draft": sum(r["accepted"] for r in group)
            / max(sum(1 for r in group for _, drafted, _ in r["steps"] if drafted), 1),
            "draft_ms_per_token": 1000 * sum(r.get("draft_seconds", 0.0) for r in group)
            / drafted if drafted else None,
            "near_ties": sum(r.get("near_ties", 0) for r in group),
        }
        for name, cost in (projections or {}).items():
            row[f"projected:{name}"] = statistics.median(projected(r, cost) for r in group)
        summary.append(row)
    return summary


def copy_ceilings(session: Session, prompts: list[dict], runs: list[dict],
                  summary: list[dict], window: int, remembered: bool = False,
                  out=sys.stdout) -> dict:
    """Per category, accepted tokens per step at ``window`` of the copy oracle
    (``engine.replay.copy_ceiling``) over the plain replies, beside each lookup drafter's own
    figure at ``fixed:window``: how far they are from what copying the request can give."""
    reply = {r["prompt_id"]: r["reply_tokens"] for r in runs if r["mode"] == "plain"}
    totals: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for prompt in prompts:
        tokens = prompt_tokens(session.target, prompt["messages"])
        for min_match in (2, 1):
            accepted, steps = copy_ceiling(tokens, reply[prompt["id"]], window, min_match)
            for category in (prompt["category"], "all"):
                totals[(category, min_match)][0] += accepted
                totals[(category, min_match)][1] += steps
    own = {(row["category"], row["mode"]): row["accepted_per_step"] for row in summary}
    print(f"\ncopy ceiling at window {window}: accepted tokens per step of a drafter that always "
          "picks the best earlier occurrence in the request itself (the plain replies)"
          + ("; with --keep-memory the suffix drafter also copies earlier runs, beyond it"
             if remembered else "") + ":", file=out)
    result = {}
    for category in sorted({c for c, _ in totals}):
        two, one = (totals[(category, m)][0] / max(totals[(category, m)][1], 1) for m in (2, 1))
        drafters = {d: own[(category, f"fixed:{window}/{d}")] for d in ("ngram", "suffix")
                    if (category, f"fixed:{window}/{d}") in own}
        print(f"  {category:10} matching 2 tokens {two:5.2f}   matching 1 token {one:5.2f}"
              + "".join(f"   {d} {v:5.2f}" for d, v in drafters.items()), file=out)
        result[category] = {"min_match_2": two, "min_match_1": one, **drafters}
    return result


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
    projections = sorted({k for row in summary for k in row if k.startswith("projected:")})
    print(f"{'category':10} {'mode':18} {'tok/s':>7} {'speedup':>8} {'median-cost':>11} "
          f"{'accept':>7} {'tok/pass':>8}"
          f" {'acc/pass':>8} {'acc/step':>8} {'acc/draft':>9} {'draft ms/tok':>12}"
          + "".join(f" {p.split(':', 1)[1][:18]:>18}" for p in projections), file=out)
    for row in summary:
        acc = "-" if row["acceptance"] is None else f"{100 * row['acceptance']:.0f}%"
        noise = " (0% accepted: noise)" if row["acceptance"] == 0 else ""
        cost = row["draft_ms_per_token"]
        print(f"{row['category']:10} {row['mode']:18} {row['tok_per_s']:7.1f} "
              f"{row['speedup_vs_plain']:7.2f}x {row['speedup_at_median_costs']:10.2f}x "
              f"{acc:>7} {row['tokens_per_pass']:8.2f} "
              f"{row['accepted_per_pass']:8.2f} {row['accepted_per_step']:8.2f} "
              f"{row['accepted_per_draft']:9.2f} "
              f"{'-' if cost is None else f'{cost:.3f}':>12}"
              + "".join(f" {row[p]:17.2f}x" for p in projections) + noise, file=out)


def print_machine_report(session: Session, runs: list[dict], args, out=sys.stdout) -> dict:
    """Numerics, the loop's cost against llama.cpp's, and plain decoding against llama.cpp's
    own one-token rate; returns the same figures for the JSON report."""
    cal = session.calibration
    shape = session.target.shape
    print(f"\nnumerics: {shape.describe()}", file=out)
    if cal.probe is not None:
        probe = cal.probe
        levels = list(zip(probe.depths, probe.classes_at)) or [(None, probe.classes)]
        for depth, classes in levels:
            where = "at every depth" if depth is None else f"{depth} tokens deep"
            print(f"  bit-identical pass sizes {where}: " + "  ".join(
                "{" + ",".join(map(str, c)) + "}" for c in classes), file=out)
        print(f"  largest batched-vs-one-token logit difference {probe.max_difference:.3g}",
              file=out)
    if not shape.exact:
        ties = sum(r.get("near_ties", 0) for r in runs)
        print(f"  fast numerics: {ties} tokens were decided by a margin under "
              f"{shape.rounding:.3g} and may differ from plain decoding", file=out)
    raw = {n: cal.target.verify(n) for n in range(1, 17)}
    rows = parity.pass_parity([step for r in runs for step in r["step_seconds"]], raw)
    print("\nloop cost per pass size, every step of every run (medians; everything but drafting) "
          "vs the time inside llama.cpp's calls in the same steps, and the calibration's raw "
          "pass:", file=out)
    for row in rows:
        print(f"  n={row['n']:<2} {row['steps']:5} steps   loop "
              f"{1000 * row['loop_seconds']:8.2f} ms"
              f"   inside llama.cpp {1000 * row['inside_seconds']:8.2f} ms"
              f" (x{row['loop_over_inside']:.3f})   calibrated raw pass "
              f"{1000 * row['raw_seconds']:8.2f} ms (x{row['loop_over_raw']:.3f})", file=out)
    loop = sum(r["seconds"] - r["draft_seconds"] for r in runs)
    inside = sum(r["target_seconds"] for r in runs)
    print("all runs, end to end: generation time but drafting / time inside the target's "
          f"llama.cpp calls = {loop / max(inside, 1e-12):.3f}", file=out)
    verify = session.costs().curve.verify
    print("step over n tokens / one-token step, as the loop saw it: "
          + ", ".join(f"n={n} x{verify(n) / verify(1):.2f}" for n in (2, 3, 4, 8)), file=out)
    print("ceiling (every draft accepted) on this machine: " + ", ".join(
        f"{name} {value:.2f}x" for name, value in session.ceilings().items()), file=out)
    report = {"numerics": shape.to_dict(), "pass_parity": rows,
              "loop_over_llama": loop / max(inside, 1e-12)}
    plain_runs = [r for r in runs if r["mode"] == "plain"]
    if plain_runs:
        ratios = sorted(r["tok_per_s"] / r["raw_decode_tok_per_s"] for r in plain_runs
                        if r.get("raw_decode_tok_per_s"))
        if ratios:
            median = statistics.median(ratios)
            print(f"\nplain decoding / llama.cpp's one-token decode loop (as many tokens, as "
                  f"deep, right after each prompt's first plain run): median {median:.3f} "
                  f"(from {ratios[0]:.3f} to {ratios[-1]:.3f} over {len(ratios)} prompts)",
                  file=out)
            report["plain_over_raw_decode"] = median
        for key, where in (("llama_bench_tok_per_s", "tg128"),
                           ("llama_bench_deep_tok_per_s", "tg128 after the prompt (-d)")):
            pairs = [(r["tok_per_s"], r[key]) for r in plain_runs if r.get(key)]
            if pairs:
                ratio = statistics.median(rate / bench for rate, bench in pairs)
                print(f"plain decoding / llama-bench {where}, same build, "
                      f"{session.target.options.threads()} threads, right after each "
                      f"prompt's first plain run: median {ratio:.3f} over {len(pairs)} prompts "
                      f"(llama-bench median {statistics.median(b for _, b in pairs):.1f} tok/s)",
                      file=out)
                report[f"plain_over_{key}"] = ratio
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct-q4_k_m",
                        help="model id or path, or 'none' (lookup drafters only)")
    parser.add_argument("--prompts", default="dev",
                        help="a set in prompts/ by name (dev, edits) or a JSONL file")
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
                        help="fixed modes only for these drafters (model,ngram,suffix); "
                             "default all")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--numerics", default=None,
                        help="exact (default), fast, or exact:N (sets TANDEM_NUMERICS)")
    parser.add_argument("--costs", nargs="*", type=Path, default=[],
                        help="cost files (costs/*.json, or a saved calibration): project each "
                             "mode's recorded steps onto that machine's costs")
    parser.add_argument("--llama-bench", default=None,
                        help="path of a llama-bench binary built from the same llama.cpp")
    parser.add_argument("--keep-memory", action="store_true",
                        help="let the suffix drafter remember earlier runs (repeated requests, "
                             "as an agent re-sending a conversation); default: forget each run")
    parser.add_argument("--traces", type=Path, default=None,
                        help="instead of timing: record acceptance traces (engine.replay) of "
                             "the prompts into this JSON file")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.numerics:
        os.environ["TANDEM_NUMERICS"] = args.numerics

    model_draft = args.draft not in ("ngram", "none")
    drafters = ["model", "ngram", "suffix"] if model_draft else ["ngram", "suffix"]
    if args.drafters:
        drafters = [d for d in drafters if d in args.drafters.split(",")]
    # auto starts from the default priors, as on a fresh install, and learns within the run
    acceptance = tempfile.TemporaryDirectory(prefix="tandem-bench-acceptance-")
    session = Session(acceptance_dir=Path(acceptance.name))
    info = session.load(LoadRequest(args.target, args.draft if model_draft else None,
                                    n_ctx=args.n_ctx))
    prompts = load_prompts(prompts_file(args.prompts), args.limit, args.per_category,
                           args.categories.split(",") if args.categories else None)
    if args.traces:
        traces = record_traces(session, prompts, args.max_tokens)
        args.traces.parent.mkdir(parents=True, exist_ok=True)
        args.traces.write_text(json.dumps([t.to_dict() for t in traces]))
        session.close()
        acceptance.cleanup()
        return 0
    sequence = interleaved(args.modes.split(","), drafters)
    runs = []
    raw_measured: set[str] = set()
    for prompt in [p for p in prompts for _ in range(args.repeats)]:
        for current_label, current_mode, current_drafter in sequence:
            run = run_one(session, prompt, current_mode, current_drafter, args)
            run["label"] = current_label
            if (current_mode == "plain" and prompt["id"] not in raw_measured
                    and run["tokens"] >= 32):  # a short reply's rate is mostly noise
                # llama.cpp's own loop, right after and as deep: drift hits both alike
                raw_measured.add(prompt["id"])
                run["raw_decode_tok_per_s"] = parity.raw_decode_rate(
                    session.target, tokens=run["tokens"],
                    depth=run["prompt_tokens"])
                if args.llama_bench:  # also right after: one shot at the end drifts apart
                    run["llama_bench_tok_per_s"] = parity.llama_bench_rate(
                        args.llama_bench, session.target)
                    run["llama_bench_deep_tok_per_s"] = parity.llama_bench_rate(
                        args.llama_bench, session.target, depth=run["prompt_tokens"])
            runs.append(run)
            print(f"{prompt['id']:8} {current_label:18} {run['tok_per_s']:6.1f} tok/s "
                  f"acc {run['accepted']}/{run['drafted']}", file=sys.stderr, flush=True)
    projections = {path.stem: load_costs(path) for path in args.costs}
    summary = summarise(runs, projections)
    diverged = divergences(runs) if args.temperature == 0 else []
    print_table(summary)
    windows = [int(m.split(":")[1]) for m in args.modes.split(",") if m.startswith("fixed:")]
    copying = (copy_ceilings(session, prompts, runs, summary, max(windows or [8]),
                             args.keep_memory)
               if args.temperature == 0 and any(r["mode"] == "plain" for r in runs) else {})
    limits = session.ceilings()
    machine_report = print_machine_report(session, runs, args)
    if args.temperature == 0:
        print(f"\ngreedy texts differing from plain: {len(diverged)} of "
              f"{sum(1 for r in runs if r['mode'] != 'plain')} runs "
              f"({sum(1 for r in runs if r['mode'] != 'plain' and r['drafted'])} of them "
              "drafted anything)", file=sys.stdout)
        for item in diverged:
            print(f"  {item['prompt_id']} {item['mode']} first differs at char {item['char']}")
    if args.json:
        machine = {**hardware.describe(), "python": platform.python_version(),
                   "threads": info["threads"], "gpu_layers": info["gpu_layers"]}
        report = {"machine": machine, "target": args.target, "draft": args.draft,
                  "compatibility": info.get("compatibility"),
                  "calibration": info.get("calibration"), "ceilings": limits,
                  "runs": [{k: v for k, v in r.items() if k != "trace"} for r in runs],
                  "summary": summary, "divergent": diverged, "copy_ceiling": copying,
                  **machine_report}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    session.close()
    acceptance.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
