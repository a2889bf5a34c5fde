"""Search strategies on one ask/tell interface, over integer gene vectors (0 = largest choice).

* ``nsga2``: pymoo's NSGA-II: `IntegerRandomSampling` (with the max, min and heuristic configs
  seeded in), SBX and PM with `RoundingRepair`, duplicates eliminated;
* ``random``: uniform configs, never one twice;
* ``tpe`` and ``optuna-nsga2``: optuna's multi-objective `TPESampler` and `NSGAIISampler`,
  asked a population at a time;
* ``exhaustive``: every config, for spaces small enough to enumerate (the true front in tests).

Every strategy starts with the max, min and heuristic configs, so runs of different strategies
share their reference points (NSGA-II and random then take the configs a surrogate seeds, if
any). ``ask()`` returns ``(genes, source)`` pairs (an empty list when the strategy has nothing
left); ``tell()`` takes the normalised minimisation objectives ``F`` and the constraint values
``G`` (``<= 0`` is feasible) of the batch just asked.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import LoraSearchError
from ..space import SearchSpace

Proposal = tuple[np.ndarray, str]


@dataclass
class StrategySettings:
    """Settings shared by the strategies (each uses what applies to it)."""

    population: int = 10
    """Configs per generation (NSGA-II population, batch size of the others)."""
    seed: int = 0
    """Seeds the strategy (and, from the command line, the validation subset)."""
    crossover_prob: float = 0.9
    """SBX probability (the reference's value)."""
    crossover_eta: float = 10.0
    """SBX distribution index (the reference's value)."""
    mutation_prob: float = 1.0
    """PM probability that an offspring is mutated; each gene then mutates with prob. 1/genes."""
    mutation_eta: float = 3.0
    """PM distribution index (the reference's value)."""
    max_exhaustive: int = 100_000
    """Largest space the exhaustive strategy enumerates."""


class Strategy(Protocol):
    name: str

    def ask(self) -> list[Proposal]: ...

    def tell(self, genes: Sequence[np.ndarray], F: np.ndarray, G: np.ndarray | None) -> None: ...


class Oversampling(Protocol):
    """A strategy that can propose more candidates than it keeps (what a surrogate screens)."""

    def ask_many(self, n: int) -> list[Proposal]:
        """``n`` candidates for the next batch."""

    def keep(self, indices: Sequence[int]) -> None:
        """Of the candidates just proposed, only these are evaluated and told."""


def reference_genes(space: SearchSpace) -> list[Proposal]:
    """The max, min and heuristic configs as gene vectors, labelled.

    A config that is several of them at once (the heuristic of two-value lists is the max) is
    proposed once, with the labels joined by ``+`` (``max+heuristic``).
    """
    labels: dict[tuple[int, ...], list[str]] = {}
    for label, config in (("max", space.max()), ("min", space.min()), ("heuristic", space.heuristic())):
        labels.setdefault(tuple(int(g) for g in space.encode(config)), []).append(label)
    return [(np.array(key), "+".join(names)) for key, names in labels.items()]


def first_population(space: SearchSpace, initial: Sequence[Proposal], population: int) -> list[Proposal]:
    """The reference configs, then ``initial`` (e.g. a surrogate's predicted front), without repeats,
    at most ``population`` of them."""
    chosen = list(reference_genes(space))
    seen = {tuple(int(v) for v in g) for g, _ in chosen}
    for genes, label in initial:
        key = tuple(int(v) for v in genes)
        if key not in seen:
            seen.add(key)
            chosen.append((np.asarray(key), label))
    return chosen[:population]


class NSGA2Strategy:
    """pymoo's NSGA-II driven through its ask/tell interface."""

    name = "nsga2"

    def __init__(self, space: SearchSpace, n_obj: int, n_constr: int, settings: StrategySettings,
                 initial: Sequence[Proposal] = ()) -> None:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.operators.sampling.rnd import IntegerRandomSampling

        lower, upper = space.bounds()
        problem = Problem(n_var=len(lower), n_obj=n_obj, n_ieq_constr=n_constr, xl=lower, xu=upper, vtype=int)
        chosen = first_population(space, initial, settings.population)
        rng = np.random.default_rng(settings.seed)
        population = IntegerRandomSampling()(problem, settings.population, random_state=rng).get("X")
        for row, (genes, _) in enumerate(chosen):
            population[row] = genes
        self.labels = {tuple(int(v) for v in g): label for g, label in [*reference_genes(space), *chosen]}
        self.algorithm = NSGA2(
            pop_size=settings.population,
            sampling=population,
            crossover=SBX(prob=settings.crossover_prob, eta=settings.crossover_eta, vtype=float, repair=RoundingRepair()),
            mutation=PM(prob=settings.mutation_prob, eta=settings.mutation_eta, vtype=float, repair=RoundingRepair()),
            eliminate_duplicates=True,
        )
        self.algorithm.setup(problem, termination=NoTermination(), seed=settings.seed, verbose=False)
        self._pop = None
        self._first = True

    def ask(self) -> list[Proposal]:
        self._pop = self.algorithm.ask()
        X = self._pop.get("X")
        default = "initial" if self._first else self.name
        self._first = False
        return [(np.asarray(x), self.labels.get(tuple(int(v) for v in x), default)) for x in X]

    def ask_many(self, n: int) -> list[Proposal]:
        """``n`` offspring of the current population (pymoo's mating, duplicates eliminated)."""
        if self._first:
            return self.ask()  # the initial population is not offspring
        pop_size = self.algorithm.n_offsprings
        self.algorithm.n_offsprings = n
        try:
            return self.ask()
        finally:
            self.algorithm.n_offsprings = pop_size

    def keep(self, indices: Sequence[int]) -> None:
        self._pop = self._pop[list(indices)]

    def tell(self, genes: Sequence[np.ndarray], F: np.ndarray, G: np.ndarray | None) -> None:
        self._pop.set("F", np.asarray(F, dtype=float))
        if G is not None and G.size:
            self._pop.set("G", np.asarray(G, dtype=float))
        self.algorithm.tell(infills=self._pop)


class RandomStrategy:
    """Uniform random configs, never one twice, a population at a time."""

    name = "random"

    def __init__(self, space: SearchSpace, settings: StrategySettings, initial: Sequence[Proposal] = ()) -> None:
        self.space, self.settings = space, settings
        self.rng = np.random.default_rng(settings.seed)
        self.seen: set[tuple[int, ...]] = set()
        self.pending = first_population(space, initial, max(settings.population, len(reference_genes(space))))
        self.size = space.size()

    def ask(self) -> list[Proposal]:
        return self.ask_many(self.settings.population)

    def ask_many(self, n: int) -> list[Proposal]:
        """``n`` new uniform configs (the references first); unkept ones are never proposed again."""
        batch = [p for p in self.pending if self._new(p[0])]
        self.pending = []
        upper = self.space.bounds()[1] + 1
        tries = 0
        while len(batch) < n and len(self.seen) < self.size and tries < 1000 * n:
            tries += 1
            genes = self.rng.integers(0, upper)
            if self._new(genes):
                batch.append((genes, self.name))
        return batch

    def _new(self, genes: np.ndarray) -> bool:
        key = tuple(int(g) for g in genes)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def keep(self, indices: Sequence[int]) -> None:
        pass

    def tell(self, genes, F, G) -> None:
        pass


class ExhaustiveStrategy:
    """Every config of a small space, in gene order, a population at a time."""

    name = "exhaustive"

    def __init__(self, space: SearchSpace, settings: StrategySettings) -> None:
        size = space.size()
        if size > settings.max_exhaustive:
            raise LoraSearchError(
                f"strategy exhaustive: the space holds {size:.3g} configs, above max_exhaustive={settings.max_exhaustive}; "
                "fix: use nsga2, or raise max_exhaustive"
            )
        self.settings = settings
        self.labels = {tuple(g): label for g, label in reference_genes(space)}
        self.iterator = itertools.product(*(range(len(g.choices)) for g in space.genes))

    def ask(self) -> list[Proposal]:
        batch = list(itertools.islice(self.iterator, self.settings.population))
        return [(np.array(g), self.labels.get(g, self.name)) for g in batch]

    def tell(self, genes, F, G) -> None:
        pass


class OptunaStrategy:
    """optuna's multi-objective TPE or NSGA-II sampler, asked a population at a time."""

    def __init__(self, space: SearchSpace, n_obj: int, n_constr: int, settings: StrategySettings, kind: str,
                 storage: str | None = None, study_name: str | None = None) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.name = "tpe" if kind == "tpe" else "optuna-nsga2"
        constraints = (lambda trial: trial.user_attrs["constraints"]) if n_constr else None
        if kind == "tpe":
            sampler = optuna.samplers.TPESampler(seed=settings.seed, constraints_func=constraints)
        else:
            sampler = optuna.samplers.NSGAIISampler(
                population_size=settings.population, seed=settings.seed, constraints_func=constraints
            )
        self.study = optuna.create_study(
            directions=["minimize"] * n_obj, sampler=sampler, storage=storage, study_name=study_name, load_if_exists=True
        )
        self.space, self.settings = space, settings
        self.labels = {tuple(g): label for g, label in reference_genes(space)}
        if not self.study.trials:
            for genes, _ in reference_genes(space):
                self.study.enqueue_trial({gene.key: int(i) for gene, i in zip(space.genes, genes)})
        self._trials = []

    def ask(self) -> list[Proposal]:
        self._trials = [self.study.ask() for _ in range(self.settings.population)]
        proposals = []
        for trial in self._trials:
            genes = np.array([trial.suggest_int(g.key, 0, len(g.choices) - 1) for g in self.space.genes])
            proposals.append((genes, self.labels.get(tuple(int(v) for v in genes), self.name)))
        return proposals

    def tell(self, genes, F, G) -> None:
        for row, trial in enumerate(self._trials):
            if G is not None and G.size:
                trial.set_user_attr("constraints", [float(v) for v in G[row]])
            self.study.tell(trial, [float(v) for v in F[row]])


# name -> factory(space, n_obj, n_constr, settings, **optuna_kw): a new strategy is one entry here.
STRATEGY_FACTORIES: dict[str, Callable[..., Strategy]] = {
    "nsga2": lambda space, n_obj, n_constr, settings, initial=(), **_: NSGA2Strategy(space, n_obj, n_constr, settings,
                                                                                  initial),
    "random": lambda space, n_obj, n_constr, settings, initial=(), **_: RandomStrategy(space, settings, initial),
    "tpe": lambda space, n_obj, n_constr, settings, **kw: OptunaStrategy(space, n_obj, n_constr, settings, "tpe", **kw),
    "optuna-nsga2": lambda space, n_obj, n_constr, settings, **kw: OptunaStrategy(space, n_obj, n_constr, settings,
                                                                                 "nsga2", **kw),
    "exhaustive": lambda space, n_obj, n_constr, settings, **_: ExhaustiveStrategy(space, settings),
}
STRATEGIES = tuple(STRATEGY_FACTORIES)


def make_strategy(name: str, space: SearchSpace, n_obj: int, n_constr: int, settings: StrategySettings, **optuna_kw) -> Strategy:
    """Build a strategy by name (see `STRATEGY_FACTORIES`); nsga2 and random also take ``initial``,
    proposals for the first population after the reference configs."""
    if name not in STRATEGY_FACTORIES:
        raise LoraSearchError(f"strategy: unknown {name!r}; fix: use one of {', '.join(STRATEGIES)}")
    return STRATEGY_FACTORIES[name](space, n_obj, n_constr, settings, **optuna_kw)
