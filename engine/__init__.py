"""Tandem's engine: every piece of model logic (catalog, fetching, runtime, drafting,
verification, window control, calibration, benchmark). It never imports gradio; the UI
reaches it only through ``engine.facade``."""
