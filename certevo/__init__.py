"""certevo: evolutionary search for sparse, certifiably robust neural networks.

The public API. Names are imported on first use, so ``import certevo`` (and the
``certevo`` command's ``--help``) stays light: torch, Ray and MLflow load only when a name
that needs them is used.

    import certevo

    config = certevo.load_config("search.yaml", ["search.generations=10"])
    result = certevo.Search.create(config, "runs/exp-1", [certevo.MlflowTracker()]).run()
    export = certevo.read_export("best.json")
    model = certevo.build_exported_model(export, trained=True)

The code lives in four subpackages, imported one way (each only from those before it):
``certevo.population`` (genomes, operators, selection, files) <- ``certevo.evaluators``
(training, certification) <- ``certevo.cluster`` (Ray) <- ``certevo.search`` (the loop,
its run directory, tracking and the command line).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from certevo._lazy import lazy_names

__version__ = "0.1.0"

# In the repository the four subpackages are folders beside this one (the layout is part
# of the design); an installed certevo (a wheel) has them inside this folder. Adding the
# checkout's root to the search path makes ``certevo.search`` the checkout's own
# ``search/`` when certevo is imported from a source tree, installed or not.
_here = Path(__file__).resolve().parent
if not (_here / "search").is_dir() and (_here.parent / "search" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

#: Public name -> the module that defines it.
_EXPORTS = {
    "Search": "certevo.search.loop",
    "SearchResult": "certevo.search.loop",
    "SearchObserver": "certevo.search.observer",
    "SearchConfig": "certevo.search.config",
    "load_config": "certevo.search.config",
    "MlflowTracker": "certevo.search.tracking",
    "load_frames": "certevo.search.run_frames",
    "open_run": "certevo.search.run_directory",
    "Export": "certevo.population.export",
    "read_export": "certevo.population.export",
    "write_export": "certevo.population.export",
    "Genome": "certevo.population.genome",
    "build_exported_model": "certevo.evaluators.exported_model",
    "apply_mask_to_model": "certevo.evaluators.exported_model",
    "make_mask_permanent": "certevo.evaluators.exported_model",
    "train_final": "certevo.evaluators.final_training",
    "CertevoError": "certevo.population.errors",
    "ConfigError": "certevo.population.errors",
    "DataError": "certevo.population.errors",
    "CheckpointError": "certevo.population.errors",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from certevo.evaluators.exported_model import apply_mask_to_model, build_exported_model, make_mask_permanent
    from certevo.evaluators.final_training import train_final
    from certevo.population.errors import CertevoError, CheckpointError, ConfigError, DataError
    from certevo.population.export import Export, read_export, write_export
    from certevo.population.genome import Genome
    from certevo.search.config import SearchConfig, load_config
    from certevo.search.loop import Search, SearchResult
    from certevo.search.observer import SearchObserver
    from certevo.search.run_directory import open_run
    from certevo.search.run_frames import load_frames
    from certevo.search.tracking import MlflowTracker
