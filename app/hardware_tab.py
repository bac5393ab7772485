"""The Hardware tab: what this machine has, what the loaded pair runs with, and the measured
costs (calibration, and pass times seen while answering) that the adaptive window uses.

Not for: measuring anything (the engine does, behind ``EngineClient``).
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app import render
from engine.errors import TandemError

ENGINE = {"concurrency_id": "engine", "concurrency_limit": 1}
GIB = 1024**3
MIB = 1024**2


class HardwareHandlers:
    """Needs ``self.engine``."""

    def hardware(self):
        hw = self.engine.hardware()
        info = self.engine.info()
        lines = [f"**CPU** {hw.cpu} · {hw.physical_cores} physical / {hw.logical_cores} "
                 "logical cores",
                 f"**RAM** {hw.ram_available / GIB:.1f} GiB available of "
                 f"{hw.ram_total / GIB:.1f} GiB",
                 f"**GPU offload** {'available' if hw.gpu_offload else 'not available'}"]
        frame = pd.DataFrame([{"batch": 1, "ms": 0.0, "series": "target"}])
        if info is not None:
            lines.append(f"**In use** {info.threads} threads · {info.gpu_layers} GPU layers · "
                         f"context {info.n_ctx}")
            cal = info.calibration
            lines.append(render.numerics_line(info.numerics, cal.probe if cal else None))
            if info.suffix_memory:
                used, limit = info.suffix_memory
                lines.append(f"**Suffix index** {used / MIB:.1f} MiB of {limit / MIB:.0f} MiB "
                             "(everything said: conversations, replies, API requests; "
                             "`TANDEM_SUFFIX_MEMORY` sets the bound)")
            if cal:
                lines.append(f"**Plain decoding** {cal.plain_tok_per_s:.1f} tok/s (measured)")
                lines.append("**If every draft were accepted** " + ", ".join(
                    f"{name} {value:.2f}×" for name, value in cal.ceilings.items())
                    + " vs plain (the most speculation can give on this machine)")
                rows = [{"batch": n + 1, "ms": 1000 * s, "series": "target pass"}
                        for n, s in enumerate(cal.target_seconds)]
                rows += [{"batch": n, "ms": 1000 * s,
                          "series": "target pass, seen while answering"}
                         for n, s in sorted(cal.seen_seconds.items())]
                for name, seconds in cal.draft_token_seconds.items():
                    if seconds:
                        rows += [{"batch": n + 1, "ms": 1000 * seconds * (n + 1),
                                  "series": f"{name} × n"} for n in range(16)]
                frame = pd.DataFrame(rows)
        return "  \n".join(lines), frame

    def remeasure(self):
        try:
            self.engine.recalibrate()
        except TandemError as error:
            return f"⚠ {error}", gr.update()
        return self.hardware()


def tab(ctl) -> list:
    """The Hardware tab and its events; returns what the page fills in when it opens."""
    with gr.Tab("Hardware"):
        hw_md = gr.Markdown()
        calib_plot = gr.LinePlot(pd.DataFrame([{"batch": 1, "ms": 0.0, "series": "target"}]),
                                 x="batch", y="ms", color="series",
                                 title="Measured cost: target pass vs batch size, draft × n",
                                 height=260)
        remeasure_button = gr.Button("Re-measure")
    remeasure_button.click(ctl.remeasure, None, [hw_md, calib_plot], **ENGINE)
    return [hw_md, calib_plot]
