"""The ``search`` job: a compression search over the recipe's plan, or, with ``space:
subnet``, a supernet trained once into ``out_dir/supernet.pt`` and a search of its subnets;
stored in ``out_dir`` (``search.db``; full-fidelity trials as experiments under
``out_dir/experiments`` or the project named by ``project_dir``). Running it again on the same
folder resumes it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from studio.core.errors import StudioError
from studio.core.jobs import CancelToken, Event, Log, Result
from studio.core.plan.recipe import Recipe, read_recipe
from studio.core.search.compression import CompressionProblem
from studio.core.search.driver import run_search
from studio.core.search.settings import SearchSettings
from studio.core.search.subnet import SubnetProblem, supernet_path, train_supernet_job

JOB_OPTIONS = ("project_dir", "seed_recipes")
"""Options the job reads itself: where experiments go, the recipes whose plans seed a new
study."""


def search_settings(options: Mapping[str, Any], source: str = "search") -> SearchSettings:
    """The options as settings, or one line naming the bad ones."""
    values = {k: v for k, v in options.items() if k not in JOB_OPTIONS}
    try:
        return SearchSettings.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in error.errors())
        raise StudioError(f"{source}: {problems}") from error


def search_job(recipe: Recipe, base_dir: Path | None, out_dir: Path, token: CancelToken,
               options: Mapping[str, Any], trust: bool = False, source: str = "recipe"
               ) -> Iterator[Event]:
    settings = search_settings(options, source)
    seeds = options.get("seed_recipes") or []
    if seeds and settings.space == "subnet":
        raise StudioError(f"{source}: seed recipes give plans; a subnet search has none to "
                          "start from (leave out the seed recipes)")
    plans = [read_recipe(path).to_plan() for path in seeds]  # a bad one stops it here
    problem: CompressionProblem | SubnetProblem
    if settings.space == "subnet":
        if not supernet_path(out_dir).exists():  # trained once per folder; a resume reuses it
            for event in train_supernet_job(recipe, base_dir, out_dir, token, settings, trust,
                                            source):
                if isinstance(event, Result):  # the search's result comes last, not this one
                    event = Log(f"Supernet trained in {event.report['seconds']} s; searching "
                                "its subnets")
                yield event
        problem = SubnetProblem.create(recipe, base_dir, trust, settings, out_dir, source)
    else:
        problem = CompressionProblem.create(recipe, base_dir, trust, settings, source)
    project = options.get("project_dir")
    yield from run_search(problem, settings, out_dir, token,
                          project_dir=Path(project) if project else None,
                          seeds=problem.seed_params(plans) if plans else ())
