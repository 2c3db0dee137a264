"""``compression-studio search``: bad options and models it cannot search are one line and
exit code 2, before any trial runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from studio.cli.main import main

PREFIX = "compression-studio: error:"


def _recipe(tmp_path: Path, model: str = "demo") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"schema_version": 1, "model": {"path": model}}))
    return path


@pytest.mark.parametrize(("options", "named"), [
    (["--max-ratio", "2"], "max_cost_ratio: Input should be less than or equal to 1"),
    (["--granularities", "diagonal"], "granularities: Value error, use some of"),
    (["--layers", "stem.9"], "'stem.9' is not a prunable layer"),
    (["--trials", "0"], "trials: Input should be greater than or equal to 1"),
    (["--seed-recipe", "no-such.yaml"], "no-such.yaml: cannot read the file"),
    (["--space", "subnet", "--seed-recipe", "no-such.yaml"], "a subnet search has none to "
                                                               "start from"),
])
def test_bad_search_options_are_one_line(tmp_path: Path, capsys, options: list[str],
                                         named: str) -> None:
    code = main(["search", str(_recipe(tmp_path)), "--out", str(tmp_path / "s"), *options])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(PREFIX) and named in err and "\n" not in err
    assert not (tmp_path / "s" / "search.db").exists()


def test_an_onnx_model_is_refused_before_any_trial(tmp_path: Path, capsys,
                                                   demo_onnx_path: Path) -> None:
    code = main(["search", str(_recipe(tmp_path, str(demo_onnx_path))), "--out",
                 str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs a torch model with an example input" in err
