"""Hugging Face importer against published parameter counts: derived ÷ published for every shipped config.

Run: .venv/bin/python bench/bench_importers.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

from terrazzo.importers.hf_config import import_hf

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "hf"


def main() -> None:
    published = yaml.safe_load((DATA / "published.yaml").read_text())
    print(f"{'config':26} {'model_type':12} {'derived B':>10} {'published B':>12} {'ratio':>7}"
          f" {'active B':>9} {'published':>10} {'ratio':>7}")
    worst = 0.0
    for name, facts in sorted(published.items()):
        model = import_hf(DATA / name)
        total = model.total_params / 1e9
        ratio = total / facts["total"]
        worst = max(worst, abs(ratio - 1))
        line = f"{name:26} {model.model_type:12} {total:10.3f} {facts['total']:12g} {ratio:7.4f}"
        if "active" in facts:  # compared in the publisher's convention (with or without the input embedding)
            embedding = 0 if facts["active_counts_embedding"] else model.spec.vocab * model.spec.hidden
            active = model.active_params - embedding
            line += f" {active / 1e9:9.3f} {facts['active']:10g} {active / 1e9 / facts['active']:7.4f}"
        print(line)
    print(f"largest total-parameter error: {worst:.2%}")


if __name__ == "__main__":
    main()
