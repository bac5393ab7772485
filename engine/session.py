"""One loaded model pair and everything needed to answer with it: the in-process engine.

Requests and events are plain data (dicts of strings, numbers and lists), so the same session
runs inside the worker process behind ``engine.facade`` or directly in the benchmark.

Drafter modes: "auto" (the adaptive controller), "fixed" (window k), "off" (plain decoding).
Drafter choice: "model" (the draft model), "ngram" (prompt lookup), "suffix" (everything
already said: this conversation, and earlier replies and requests under the same system
prompt) or "both" (all of them: auto picks per step; a fixed window uses the draft model).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from engine import compat, models, numerics, paths, prompt_type
from engine.adaptive_window import AcceptanceMemory, AdaptiveController, ceiling
from engine.calibration import Calibration, calibrate
from engine.costs import Costs, LiveCosts
from engine.drafters.base import Drafter
from engine.drafters.model import ModelDrafter
from engine.drafters.ngram import NgramDrafter
from engine.drafters.suffix import SuffixDrafter, requested_max_bytes, scope_key
from engine.drafters.universal import UniversalDrafter
from engine.hardware import check_fits
from engine.prompting import prompt_tokens, stop_strings, system_prompt
from engine.runtime import Model, RuntimeOptions, requested_cache_types
from engine.sampling import SamplingParams
from engine.speculative import Chunk, GenerationParams, Step, generate, loop_overhead
from engine.window import FixedWindow, WindowPolicy


@dataclass
class ChatRequest:
    messages: list[dict]
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    mode: str = "auto"  # auto | fixed | off
    window: int = 3  # for mode "fixed"
    drafter: str = "both"  # model | ngram | suffix | both (every drafter of the pair)
    stop: list[str] = field(default_factory=list)


@dataclass
class LoadRequest:
    target: str
    draft: str | None = None  # id, path, or None for no draft model
    n_ctx: int = 4096
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    numerics: str | None = None  # exact | fast | exact:N; None: $TANDEM_NUMERICS, else exact


STATS_EVERY = 0.05  # seconds between statistics carried by streamed chunks
RECALIBRATE_ABOVE = 1.2  # observed plain rate / calibrated plain rate that triggers re-measuring


class Session:
    def __init__(self, acceptance_dir: Path | None = None) -> None:
        # where acceptance learned per prompt type is kept (default: the calibration
        # directory); the benchmark points it at an empty one, so its runs do not depend on
        # what earlier replies on this machine taught the controller
        self.acceptance_dir = acceptance_dir
        self.target: Model | None = None
        self.draft: Model | None = None
        self.compatibility: compat.Compatibility | None = None
        self.calibration: Calibration | None = None
        self.live_costs = LiveCosts()  # pass times seen while answering, for the controller
        self.loaded: LoadRequest | None = None
        self._drafters: dict[str, Drafter] = {}
        self._lock = threading.Lock()

    # ---- loading ---------------------------------------------------------------------
    def load(self, request: LoadRequest) -> dict:
        target_path = models.resolve(request.target)
        draft_path = models.resolve(request.draft) if request.draft else None
        check_fits([p for p in (target_path, draft_path) if p], request.n_ctx)
        suffix_bytes = requested_max_bytes()  # a bad setting fails before anything is unloaded
        self.close()
        options = RuntimeOptions(n_ctx=request.n_ctx, n_threads=request.n_threads,
                                 n_gpu_layers=request.n_gpu_layers)
        self.target = Model(target_path, replace(options, cache_types=requested_cache_types()))
        self._drafters = {"ngram": NgramDrafter(),
                          "suffix": SuffixDrafter(max_bytes=suffix_bytes)}
        if draft_path is not None:
            self.draft = Model(draft_path, options)
            self.compatibility = compat.analyse(self.target, self.draft)
            if self.compatibility.kind == "native":
                self._drafters["model"] = ModelDrafter(self.draft,
                                                       target_vocab=self.target.n_vocab)
            else:
                self._drafters["model"] = UniversalDrafter(self.draft, self.target)
        self.loaded = request
        self.calibration = calibrate(self.target, self._model_drafters(), loop_overhead,
                                     mode=self._numerics())
        self.live_costs = LiveCosts()
        return self.info()

    def _suffix_memory(self) -> dict | None:
        suffix = self._drafters.get("suffix")
        if not isinstance(suffix, SuffixDrafter):
            return None
        return {"used": suffix.estimated_bytes(), "limit": suffix.max_bytes}

    def _numerics(self) -> str:
        requested = self.loaded.numerics if self.loaded is not None else None
        return requested or numerics.requested_mode()

    def drafters(self) -> dict[str, Drafter]:
        """The drafters this pair offers, by the names requests use ("ngram", "model")."""
        return dict(self._drafters)

    def _model_drafters(self) -> dict[str, Model]:
        drafter = self._drafters.get("model")
        return {drafter.name: drafter.model} if isinstance(drafter, ModelDrafter) else {}

    def recalibrate(self) -> dict:
        assert self.target is not None
        self.calibration = calibrate(self.target, self._model_drafters(), loop_overhead,
                                     refresh=True, mode=self._numerics())
        self.live_costs = LiveCosts()
        return self.info()

    def info(self) -> dict:
        if self.target is None or self.loaded is None:
            return {"loaded": False}
        cal = self.calibration
        return {
            "loaded": True,
            "target": self.loaded.target,
            "draft": self.loaded.draft,
            "target_path": str(self.target.path),
            "compatibility": None if self.compatibility is None else {
                **asdict(self.compatibility), "label": self.compatibility.label()},
            "n_ctx": self.target.n_ctx,
            "threads": self.target.options.threads(),
            "gpu_layers": self.target.options.gpu_layers(),
            "numerics": self.target.shape.to_dict(),
            "suffix_memory": self._suffix_memory(),
            "calibration": None if cal is None else {
                "target_seconds": cal.target.seconds,
                "draft_token_seconds": cal.draft_token_seconds,
                "plain_tok_per_s": self.costs().plain_tok_per_s,
                "step_overhead": cal.step_overhead,
                "seen_seconds": self.live_costs.seen(),
                "ceilings": self.ceilings(),
                "probe": None if cal.probe is None else cal.probe.to_dict(),
            },
        }

    def costs(self) -> Costs | None:
        """The costs in use: what a loop step costs, calibrated, with the step times seen while
        answering put in."""
        if self.calibration is None:
            return None
        return self.live_costs.apply(self.calibration.costs())

    def ceilings(self) -> dict[str, float]:
        """Per drafter: the speedup over plain decoding if every drafted token were accepted,
        from the costs measured on this machine (the most speculation can give here)."""
        costs = self.costs()
        if costs is None:
            return {}
        return {name: ceiling(cost, costs.curve.verify)
                for name, cost in costs.draft_token_seconds.items()}

    def close(self) -> None:
        for model in (self.target, self.draft):
            if model is not None:
                model.close()
        self.target = self.draft = None
        self.compatibility = None
        self._drafters = {}

    # ---- answering -------------------------------------------------------------------
    def policy(self, request: ChatRequest) -> WindowPolicy:
        wanted = {"model": ["model"], "ngram": ["ngram"], "suffix": ["suffix"],
                  "both": ["suffix", "ngram", "model"]}
        drafters = [self._drafters[name] for name in wanted.get(request.drafter, [])
                    if name in self._drafters]
        for drafter in drafters:
            drafter.prepare(request.messages)
        if request.mode == "off" or not drafters:
            return FixedWindow(Drafter(), 0)
        if request.mode == "fixed":
            return FixedWindow(drafters[-1], request.window)
        assert self.calibration is not None and self.loaded is not None
        memory_file = (self.acceptance_dir or paths.calibration_dir()) / (
            "acceptance-" + _safe(self.loaded.target) + "--" + _safe(self.loaded.draft or "none")
            + ".json")
        return AdaptiveController(drafters, self.calibration.costs(),
                                  AcceptanceMemory(memory_file),
                                  prompt_type.classify(request.messages), live=self.live_costs)

    def chat(self, request: ChatRequest, cancel: threading.Event | None = None,
             on_step: Callable[[Step], None] | None = None) -> Iterator[dict]:
        """Stream events: {"type": "chunk", "pieces"[, "stats"]} … then {"type": "done"};
        chunks carry the statistics at most every ``STATS_EVERY`` seconds.
        ``on_step`` also sees every step of the loop (in-process callers: the benchmark)."""
        if self.target is None:
            yield {"type": "error", "message": "No model is loaded."}
            return
        with self._lock:
            prompt = prompt_tokens(self.target, request.messages)
            params = GenerationParams(
                max_tokens=request.max_tokens,
                sampling=SamplingParams(request.temperature, request.top_k, request.top_p,
                                        request.seed),
                stop=tuple(request.stop) + stop_strings(self.target))
            policy = self.policy(request)
            # plain decoding's rate as seen in recent replies (the calibration until then)
            costs = self.costs()
            plain_rate = costs.plain_tok_per_s if costs else None
            def report(step: Step) -> None:
                self.live_costs.observe(step.stats)
                if on_step is not None:
                    on_step(step)

            suffix = self._drafters["suffix"]
            suffix.scope(suffix_scope(request.messages))
            suffix.reset(prompt, params.sampling)  # indexes this turn, drafting with it or not
            new_turn = suffix.new_prompt_tokens()
            stats_sent = 0.0
            for event in generate(self.target, prompt, params, policy, cancel, on_step=report):
                event.stats.plain_tok_per_s = plain_rate
                if isinstance(event, Chunk):
                    chunk = {"type": "chunk", "pieces": event.pieces}
                    now = time.monotonic()
                    if now - stats_sent >= STATS_EVERY:  # the UI redraws a few times a second
                        stats_sent = now
                        event.stats.controller_note = policy.note()
                        chunk["stats"] = event.stats.to_dict()
                    yield chunk
                else:
                    # what was said feeds later drafts: other conversations and API calls
                    # under the same system prompt (bounded, per scope)
                    suffix.remember(new_turn)  # each turn once, not the whole history
                    suffix.remember(event.tokens)
                    yield {"type": "done", "text": event.text, "reason": event.reason,
                           "message": event.message, "stats": event.stats.to_dict(),
                           "summary": event.stats.summary_line(),
                           "category": prompt_type.classify(request.messages)}
                    self._check_calibration(event.stats)

    def _check_calibration(self, stats) -> None:
        """Re-measure when plain decoding just ran clearly faster than the cached calibration
        says it can (the cache was measured while the machine was busy): the speedup shown to
        the user is only honest against a true plain rate."""
        if (self.calibration is None or stats.drafted or stats.tokens < 32
                or stats.tok_per_s < RECALIBRATE_ABOVE * self.calibration.plain_tok_per_s):
            return
        self.calibration = calibrate(self.target, self._model_drafters(), loop_overhead,
                                     refresh=True, mode=self._numerics())


def suffix_scope(messages: list[dict]) -> str:
    """The suffix drafter's scope for a request: its store and its learned acceptance are
    shared by the requests with the same system prompt."""
    return scope_key(system_prompt(messages))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)[-80:]
