"""The text source: .txt/.jsonl files or a folder, tokenized with the model's tokenizer into
full blocks joined by the end-of-text token, split like every source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from studio.core.data.sources import load_task
from studio.core.errors import StudioError
from studio.core.models.hf import load_tokenizer
from studio.core.plan.stages import DataSection

from .conftest import TEXT


def _section(path: Path, **options: object) -> DataSection:
    return DataSection(source="text", path=str(path), block_length=16, calibration_samples=3,
                       **options)


def test_blocks_are_the_tokens_of_the_documents_joined_by_end_of_text(
        tiny_llama: Path, tmp_path: Path) -> None:
    folder = tmp_path / "text"
    (folder / "more").mkdir(parents=True)
    (folder / "a.txt").write_text(TEXT[:200], encoding="utf-8")
    (folder / "more" / "b.jsonl").write_text(
        json.dumps({"text": TEXT[200:400]}) + "\n\n" + json.dumps(TEXT[400:600]) + "\n",
        encoding="utf-8")
    (folder / "notes.md").write_text("not text data")
    task = load_task(_section(folder, test_fraction=0.25), model_path=tiny_llama)
    tokenizer = load_tokenizer(tiny_llama)
    end = tokenizer.eos_token_id
    expected = []
    for document in (TEXT[:200], TEXT[200:400], TEXT[400:600]):
        expected += tokenizer(document, add_special_tokens=False)["input_ids"] + [end]
    blocks = len(expected) // 16
    assert task.metric == "perplexity" and not task.labelled
    assert task.splits is not None and task.splits.sizes["test"] == round(blocks * 0.25)
    every = torch.cat([task.test.tensors[0], task.train.tensors[0]]).tolist()
    assert len(every) == blocks
    rows = sorted(task.splits.indices["test"] + task.splits.indices["train"])
    assert rows == list(range(blocks))
    chunks = [expected[i * 16:(i + 1) * 16] for i in range(blocks)]
    assert sorted(every) == sorted(chunks)
    assert all(index < blocks for index in task.splits.indices["calibration"])


def test_max_samples_caps_the_blocks(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    task = load_task(_section(tmp_path / "t.txt", max_samples=5), model_path=tiny_llama)
    assert task.splits is not None
    assert task.splits.sizes["train"] + task.splits.sizes["test"] == 5


@pytest.mark.parametrize(("content", "name", "message"), [
    ("", "empty", "holds no .txt or .jsonl files"),
    ("{\"text\": 3}\n", "bad.jsonl", "line 1: give a JSON string or an object"),
    ("{oops\n", "bad.jsonl", "line 1: not JSON"),
    ("tiny", "short.txt", "make 0 block\\(s\\) of 16"),
    ("text", "notes.md", "a .txt or .jsonl file"),
])
def test_bad_text_is_a_clear_error(tiny_llama: Path, tmp_path: Path, content: str, name: str,
                                   message: str) -> None:
    path = tmp_path / name
    if name == "empty":
        path.mkdir()
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(StudioError, match=message):
        load_task(_section(path), model_path=tiny_llama)


def test_text_without_a_model_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TEXT)
    with pytest.raises(StudioError, match="tokenized with the model's tokenizer"):
        load_task(_section(tmp_path / "t.txt"))


def test_a_folder_without_tokenizer_files_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(TEXT)
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(StudioError, match="no usable tokenizer"):
        load_task(_section(tmp_path / "t.txt"), model_path=model)


def test_check_data_tokenizes_with_the_recipe_model(tiny_llama: Path, tmp_path: Path) -> None:
    from studio.core.engine.data_check import data_check_job
    from studio.core.jobs import CancelToken, Result
    from studio.core.plan.recipe import parse_recipe

    (tmp_path / "t.txt").write_text(TEXT)
    recipe = parse_recipe(f"""schema_version: 1
model: {{path: {tiny_llama}}}
data: {{source: text, path: t.txt, block_length: 16}}
""", "recipe")
    result = list(data_check_job(recipe, tmp_path, tmp_path / "out", CancelToken()))[-1]
    assert isinstance(result, Result)
    assert result.report["metric"] == "perplexity"
    assert result.report["samples"] == [["", "16 int64"]]
