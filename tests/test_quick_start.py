"""The README's quick start stays true: the KPI lines it shows are what `make demo` must produce."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from mtt_exporter.simulate import SimConfig, generate

ROOT = Path(__file__).resolve().parent.parent


def demo_config() -> SimConfig:
    """The SimConfig of the Makefile's `demo` target (defaults for what it does not set)."""
    makefile = (ROOT / "Makefile").read_text()
    command = re.search(r"^demo:.*\n\t(.+)$", makefile, re.M)
    assert command, "no demo target"
    args = shlex.split(command[1].replace("$(ARGS)", "").replace("$(VENV)/bin/", ""))
    assert args[:2] == ["mtt-exporter", "simulate"]
    options = dict(zip(args[2::2], args[3::2]))
    fields = {flag.lstrip("-").replace("-", "_"): value for flag, value in options.items()}
    return SimConfig(**fields)


def readme_block() -> list[str]:
    """The metric lines shown after the quick start's curl | grep."""
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("## Endpoints")]
    return re.findall(r"^(mtt_\w+(?:\{[^}]*\})? [\d.]+)$", quick, re.M)


def test_readme_shows_what_make_demo_gives():
    truth = generate(demo_config()).truth
    names = ("mtt_call_attempts_total", "mtt_call_answers_total", "mtt_call_legs_total", "mtt_calls_total")
    expected = set()
    for sample in truth.samples():
        if sample.name in names and sample.value and (sample.labels or sample.name.startswith("mtt_call_a")):
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels)
            expected.add(f"{sample.name}{{{labels}}} {sample.value:.1f}" if labels else f"{sample.name} {sample.value:.1f}")
    shown = readme_block()
    assert shown and set(shown) == expected
