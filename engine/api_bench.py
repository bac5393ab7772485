"""What the HTTP API costs: tokens/s a streaming client sees through Tandem's OpenAI-compatible
API against the engine's own rate for the same requests.

    python -m engine.api_bench --target ID|PATH --draft ID|PATH|none --prompts dev \\
        --per-category 1 --max-tokens 128 --modes off,auto --json OUT.json

Launches the app (``python -m app``, a worker process, the HTTP server) on a free loopback
port with the pair, or loads the same pair in a ``Session`` in this process — one at a time, in
alternating phases (``--rounds``), so the two never compete for the cores. Each prompt and mode
runs the same greedy request both ways:

- **engine**: ``Session.chat`` here — no process boundary, no HTTP;
- **API**: ``POST /v1/chat/completions`` with ``stream: true``, read by an HTTP client until
  ``data: [DONE]``.

Both rates are end to end as the caller sees them: completion tokens / wall time from sending
the request to the last token (prompt processing included). The ratio API / engine is
reported per run, as the median, and over all tokens; the greedy texts are compared too.

Not for: speculation's own speedup (``engine.bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp  # noqa: F401  (llama.cpp's libraries before numpy: see engine/worker.py)

from engine import catalog, models
from engine.bench import load_prompts, prompts_file
from engine.launched_app import LaunchedApp
from engine.session import ChatRequest, LoadRequest, Session


def through_api(app: LaunchedApp, model: str, messages: list[dict], max_tokens: int,
                mode: str) -> dict:
    import httpx

    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "speculation": "off" if mode == "off" else "auto"}
    text, tokens = [], 0
    started = time.perf_counter()
    with httpx.stream("POST", app.base + "/chat/completions", json=body, timeout=600,
                      headers=app.headers()) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                text.append(choice["delta"].get("content") or "")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    seconds = time.perf_counter() - started
    return {"text": "".join(text), "tokens": tokens, "seconds": seconds}


def in_engine(session: Session, messages: list[dict], max_tokens: int, mode: str) -> dict:
    started = time.perf_counter()
    done = [e for e in session.chat(ChatRequest(messages, max_tokens=max_tokens,
                                                temperature=0.0, mode=mode))
            if e["type"] == "done"][0]
    seconds = time.perf_counter() - started
    return {"text": done["text"], "tokens": done["stats"]["tokens"], "seconds": seconds}


def engine_phase(target: Path, draft: Path | None, prompts: list[dict], modes: list[str],
                 max_tokens: int) -> dict:
    session = Session()
    try:
        session.load(LoadRequest(str(target), str(draft) if draft else None))
        return {(prompt["id"], mode): in_engine(session, prompt["messages"], max_tokens, mode)
                for prompt in prompts for mode in modes}
    finally:
        session.close()


def api_phase(target: Path, draft: Path | None, prompts: list[dict], modes: list[str],
              max_tokens: int, home: Path) -> dict:
    app = LaunchedApp(home, target, draft, home / "app.log")
    try:
        app.wait_ready()
        model = app.model()
        return {(prompt["id"], mode): through_api(app, model, prompt["messages"], max_tokens,
                                                  mode)
                for prompt in prompts for mode in modes}
    finally:
        app.close()


def run(args: argparse.Namespace) -> dict:
    target = models.resolve(args.target)
    draft = None if args.draft == "none" else models.resolve(args.draft)
    prompts = load_prompts(prompts_file(args.prompts), args.limit, args.per_category)
    modes = args.modes.split(",")
    home = Path(tempfile.mkdtemp(prefix="tandem-api-bench-"))
    os.environ["TANDEM_HOME"] = str(home)  # one calibration for both sides (models resolved)
    # The two sides take turns as whole phases, never side by side: on a small CPU a second
    # process holding a model steals cycles from the one answering (its idle llama.cpp
    # threads spin), which made the in-process engine look several times slower than the API.
    sides: dict[str, list[dict]] = {"engine": [], "api": []}
    for round_ in range(args.rounds):
        order = ("engine", "api") if round_ % 2 == 0 else ("api", "engine")
        for side in order:
            sides[side].append(
                engine_phase(target, draft, prompts, modes, args.max_tokens) if side == "engine"
                else api_phase(target, draft, prompts, modes, args.max_tokens, home))
            print(f"round {round_ + 1}: {side} done", flush=True)
    runs = []
    for prompt in prompts:
        for mode in modes:
            key = (prompt["id"], mode)
            own = [phase[key] for phase in sides["engine"]]
            api = [phase[key] for phase in sides["api"]]
            row = {"prompt": prompt["id"], "category": prompt["category"], "mode": mode,
                   "engine_tok_s": statistics.median(r["tokens"] / r["seconds"] for r in own),
                   "api_tok_s": statistics.median(r["tokens"] / r["seconds"] for r in api),
                   "tokens": own[0]["tokens"],
                   "same_text": all(r["text"] == own[0]["text"] for r in own + api)}
            row["ratio"] = row["api_tok_s"] / row["engine_tok_s"]
            runs.append(row)
            print(f"{row['prompt']:8} {mode:5} engine {row['engine_tok_s']:6.1f} tok/s · "
                  f"API {row['api_tok_s']:6.1f} tok/s · ratio {row['ratio']:.3f} · "
                  f"{'same text' if row['same_text'] else 'TEXT DIFFERS'}", flush=True)
    summary = {"runs": len(runs), "median_ratio": statistics.median(r["ratio"] for r in runs),
               "tokens_ratio": (sum(r["tokens"] for r in runs)
                                / sum(r["tokens"] / r["api_tok_s"] for r in runs))
               / (sum(r["tokens"] for r in runs)
                  / sum(r["tokens"] / r["engine_tok_s"] for r in runs)),
               "texts_differing": sum(not r["same_text"] for r in runs)}
    return {"target": args.target, "draft": args.draft, "max_tokens": args.max_tokens,
            "rounds": args.rounds, "runs": runs, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.api_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=catalog.DEFAULT_TARGET)
    parser.add_argument("--draft", default=catalog.DEFAULT_DRAFT)
    parser.add_argument("--prompts", default="dev")
    parser.add_argument("--per-category", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--modes", default="off,auto")
    parser.add_argument("--rounds", type=int, default=2,
                        help="engine and API phases, alternating (medians over rounds)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args)
    s = result["summary"]
    print(f"API / engine, {s['runs']} runs: median {s['median_ratio']:.3f}, over all tokens "
          f"{s['tokens_ratio']:.3f}; greedy texts differing: {s['texts_differing']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
