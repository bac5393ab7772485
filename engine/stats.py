"""Speculation statistics, per step and per message. Plain data, so they cross process
boundaries and serialise to JSON as they are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class StepStats:
    drafter: str
    window: int  # k the controller asked for
    drafted: int  # tokens actually proposed
    accepted: int
    draft_seconds: float
    pass_seconds: float  # the rest: evaluation, logits, acceptance, rollback, text, policy
    near_ties: int = 0  # fast numerics: tokens decided by a margin under the rounding difference
    target_seconds: float = 0.0  # of pass_seconds, the time inside the target's llama.cpp calls


@dataclass
class MessageStats:
    tokens: int = 0  # tokens emitted
    drafted: int = 0
    accepted: int = 0
    target_passes: int = 0
    draft_seconds: float = 0.0
    pass_seconds: float = 0.0
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    cache_reused: int = 0  # prompt tokens whose cache entries were kept from the last request
    seconds: float = 0.0  # generation wall time (after the prompt)
    first_token_seconds: float | None = None  # prompt processing + the first step
    drafted_at: list[int] = field(default_factory=list)  # per draft position
    accepted_at: list[int] = field(default_factory=list)
    drafter: str = "none"
    window: int = 0
    controller_note: str = ""
    expected_speedup: float | None = None
    ceiling_speedup: float | None = None  # what drafts that are always right would give here
    plain_tok_per_s: float | None = None  # plain rate of this target seen lately (estimate)
    numerics: str = "exact"  # the pass shape's mode (engine.numerics)
    near_ties: int = 0
    accepted_by: dict[str, int] = field(default_factory=dict)  # accepted tokens per drafter

    def add(self, step: StepStats) -> None:
        self.drafted += step.drafted
        self.accepted += step.accepted
        self.target_passes += 1
        self.draft_seconds += step.draft_seconds
        self.pass_seconds += step.pass_seconds
        self.near_ties += step.near_ties
        if step.accepted:
            self.accepted_by[step.drafter] = self.accepted_by.get(step.drafter, 0) + step.accepted
        if self.first_token_seconds is None:
            self.first_token_seconds = (self.prompt_seconds + step.draft_seconds
                                        + step.pass_seconds)
        if step.drafted or not self.drafted:  # a budget-limited last step keeps the label
            self.drafter, self.window = step.drafter, step.window
        while len(self.drafted_at) < step.drafted:
            self.drafted_at.append(0)
            self.accepted_at.append(0)
        for position in range(step.drafted):
            self.drafted_at[position] += 1
            self.accepted_at[position] += position < step.accepted

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.target_passes if self.target_passes else 0.0

    @property
    def tok_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def speedup(self) -> float | None:
        """This reply's decoding rate over the plain rate seen lately for the same target: an
        estimate, not a side-by-side measurement (the bench measures). None when nothing was
        drafted (then it is plain decoding) or the plain rate is unknown."""
        if not self.drafted or not self.plain_tok_per_s or not self.seconds:
            return None
        return self.tok_per_s / self.plain_tok_per_s

    @classmethod
    def from_dict(cls, data: dict) -> MessageStats:
        """From ``to_dict()`` output (derived and unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(acceptance=self.acceptance, tokens_per_pass=self.tokens_per_pass,
                    tok_per_s=self.tok_per_s, speedup=self.speedup)
        return data

    def summary_line(self) -> str:
        parts = [f"{self.tokens} tokens", f"{self.tok_per_s:.1f} tok/s decoding"]
        if self.first_token_seconds is not None:
            parts.append(f"first token after {self.first_token_seconds:.2f} s")
        if self.acceptance is not None:
            parts.append(f"acceptance {100 * self.acceptance:.0f}%")
        if self.speedup is not None:
            parts.append(f"≈{self.speedup:.2f}x vs plain (estimate)")
        parts.append(f"drafter {self.drafter}" + (f", window {self.window}" if self.window else ""))
        if self.numerics == "fast":
            parts.append(f"fast numerics: {self.near_ties} near-tie tokens may differ")
        return " · ".join(parts)
