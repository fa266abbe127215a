"""The README's "Transformers and text" program runs as written, in an empty folder."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_readme import _run, readme_programs

pytest.importorskip("transformers")


@pytest.mark.slow
def test_transformers_text_program(tmp_path: Path) -> None:
    done = _run(*readme_programs()["transformers-text"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    perplexity = float(done.stdout.strip().splitlines()[-1])
    assert 1 < perplexity < 258  # better than uniform over the 258 byte tokens
    import transformers

    for name in ("gpt_a", "gpt_b"):
        folder = tmp_path / "runs/hf-dml/final/peers" / name
        model = transformers.AutoModelForCausalLM.from_pretrained(folder)
        tok = transformers.AutoTokenizer.from_pretrained(folder)
        assert model.config.vocab_size == len(tok) == 258
    assert math.isfinite(perplexity)
