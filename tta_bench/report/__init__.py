"""Publishable results: collect run records, render Markdown/LaTeX tables and plots (`make paper-tables`)."""
