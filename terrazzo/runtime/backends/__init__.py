"""Worker-pool backends with one interface: `local` (processes) and `ray` (actors)."""
