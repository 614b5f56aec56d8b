"""The study a sweep works on: its storage, shared by every worker, and how a worker takes trials.

Optuna's distributed mode: every worker opens the same RDB storage (an SQLite file for one machine, a
PostgreSQL URL for many) and the same study name. Each keeps a heartbeat for its running trial; a trial
whose worker died (no heartbeat for two intervals) is marked FAILED by the next worker that looks, and
``RetryFailedTrialCallback`` puts a copy of it back in the queue. ``--trials`` is a cap on the study's
total of finished (complete or pruned) trials, whichever workers ran them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from mnist_nn.core.errors import UserError, option

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Trials that count towards the cap: finished, or running (they may still finish), or queued retries.
CLAIMED = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
PRUNERS = ("median", "hyperband", "none")
SAMPLERS = ("tpe", "random", "grid")
SURPLUS = "surplus"
# Queues a copy of a trial whose worker died (Optuna 4.9 renamed RetryFailedTrialCallback to this).
RetryStaleTrial = RetryHeartbeatStaleTrialCallback


class SurplusTrial(Exception):
    """Another worker took the study's last trial at the same moment: this one does not run."""


@dataclass(frozen=True)
class StudySettings:
    storage: str
    name: str
    pruner: str
    epochs: int
    seed: int | None
    heartbeat: int
    sampler: str = "tpe"
    grid: dict[str, list[Any]] | None = None  # the grid sampler's space


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(url: str, heartbeat: int) -> RDBStorage:
    """The RDB storage at ``url``, connected (a URL that does not answer is a UserError, before any trial)."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else None
    url = with_driver(url)
    for attempt in range(5):
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=3),
            )
        except (IntegrityError, ProgrammingError):
            # Workers started together on a new database race to create Optuna's tables: the loser tries again.
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))
        except Exception as exc:  # SQLAlchemy's and the drivers' errors: all mean "cannot use this storage"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"storage {redact(url)} does not answer: {reason}; check {option('storage')}") from None
    raise AssertionError("unreachable")


def with_driver(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; the sweep extra brings psycopg 3: used where psycopg2 is not."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None:
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}:***@{tail}"


def open_study(settings: StudySettings) -> optuna.Study:
    """The study (created, or loaded to continue it), maximizing the validation accuracy."""
    storage = open_storage(settings.storage, settings.heartbeat)
    try:
        study = optuna.create_study(
            study_name=settings.name,
            storage=storage,
            pruner=make_pruner(settings.pruner, settings.epochs),
            direction="maximize",
            load_if_exists=True,
        )
    except ValueError as exc:  # an existing study of that name that minimizes, or has several objectives
        raise UserError(f"study {settings.name!r} in {redact(settings.storage)}: {exc}") from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(f"study {settings.name!r} in {redact(settings.storage)} does not maximize; choose another")
    # A continued study draws on from where it stopped, not the same first values again.
    seed = settings.seed if settings.seed is None else settings.seed + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(settings, seed)
    return study


def make_sampler(settings: StudySettings, seed: int | None) -> optuna.samplers.BaseSampler:
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler(settings.grid or {}, seed=seed)
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        # Optuna's defaults: no pruning before five trials have finished; each epoch compared with theirs.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def count(study: optuna.Study, states: tuple[TrialState, ...], below: int | None = None) -> int:
    trials = study.get_trials(deepcopy=False, states=states)
    return sum(1 for t in trials if below is None or t.number < below)


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    cap: int,
    deadline: float | None,
    callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
    poll: float,
) -> None:
    """Run trials until the study has ``cap`` finished ones (or the deadline passes).

    While the trials that count towards the cap are all taken but some still run on other workers, this
    worker waits: one of them may die, and its retry is then for this worker to take.
    """
    while deadline is None or time.monotonic() < deadline:
        fail_stale_trials(study)
        if count(study, FINISHED) >= cap or grid_done(study):
            return
        if count(study, CLAIMED) >= cap:
            time.sleep(poll)
            continue
        study.optimize(objective, n_trials=1, catch=(SurplusTrial,), callbacks=[callback])


def grid_done(study: optuna.Study) -> bool:
    """Every point of a grid tried (or being tried): the grid sampler would only repeat them."""
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


def check_not_surplus(trial: optuna.Trial, cap: int) -> None:
    """Trial numbers are given out in order by the storage: the trials before this one decide whether it is needed."""
    if count(trial.study, CLAIMED, below=trial.number) >= cap:
        trial.set_user_attr(SURPLUS, True)
        raise SurplusTrial(f"the study reached {cap} trials meanwhile")
