"""Figures and tables for humans: everything here reads results, nothing computes them."""
