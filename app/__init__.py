"""Tandem's Gradio UI. Talks to the engine only through ``engine.facade.EngineClient``."""
