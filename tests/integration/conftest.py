"""Fixtures for whole-fleet tests; the helpers live in ``fleet_support``."""

from fleet_support import fleet_model, single_thread_torch, start_agent, start_controller

__all__ = ["fleet_model", "single_thread_torch", "start_agent", "start_controller"]
