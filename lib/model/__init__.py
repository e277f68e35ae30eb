"""Backbone loading, the Patch-IB model and its losses."""
