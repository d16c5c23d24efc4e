"""Renderers: turn measured data into text, tables and plots. They never measure."""
