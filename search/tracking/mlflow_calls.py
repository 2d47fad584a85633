"""Every MLflow call of the tracker, each run by the MLflow thread (certevo.search.tracking.op_queue)
as one queued operation: the parent run, its params, metrics and artifacts, the child runs
of the front and their membership tag."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from certevo.search import plots
from certevo.search.run_directory import FRONTS_DIR, MASKS_DIR, MLFLOW_DATABASE, MLFLOW_RUN_FILE
from certevo.search.tracking.failures import _describe, _is_missing, _is_transient, _NoRun, _NotReady
from certevo.search.tracking.http_env import _is_http
from certevo.search.tracking.names import child_run_name
from certevo.search.tracking.plot_worker import PLOT_TIMEOUT
from certevo.search.tracking.values import MAX_PARAM_VALUE, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VALUE, _cut, _key


class MlflowCalls:
    """The MLflow part of :class:`certevo.search.tracking.MlflowTracker` (background thread
    only; its state is set up by ``MlflowTracker._reset``)."""

    def _get_client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            from certevo.search.tracking.store import prepare_store

            prepare_store(self.tracking_uri, self._artifact_root)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _run(self) -> str:
        if self.run_id is None:
            if self._start_error is not None:
                raise _NoRun(f"no MLflow run ({self._start_error})")
            raise _NotReady("the parent run is not created yet")
        return self.run_id

    def _experiment(self) -> str:
        client = self._get_client()
        experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                return client.create_experiment(self.experiment_name, artifact_location=self._artifact_root)
            except Exception as exc:
                if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(self.experiment_name)
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
            self._say(f"MLflow tracking: experiment {self.experiment_name!r} was deleted; restored it", warn=False)
        return experiment.experiment_id

    def _op_start_run(self) -> None:
        if self.run_id is not None:  # done on an earlier attempt
            return
        try:
            self.experiment_id = self._experiment()
            client = self._get_client()
            previous = self._read_run_file()
            if previous.get("run_id"):
                run = None
                try:
                    run = client.get_run(previous["run_id"])
                except Exception as exc:
                    if _is_transient(exc) or not _is_missing(exc):
                        raise
                if run is not None and run.info.lifecycle_stage == "active":
                    client.update_run(run.info.run_id, status="RUNNING")
                    self.run_id = run.info.run_id
                    self.experiment_id = run.info.experiment_id
                    self.resumed = True
                    self._existing_params = dict(run.data.params)
                    self._say(f"MLflow tracking: resuming parent run {self.run_id}", warn=False)
                else:
                    self._say(f"MLflow tracking: could not find the parent run {previous['run_id']} of {self.run_dir} "
                              f"in {self.tracking_uri} (deleted, or another tracking URI); starting a new run")
            if self.run_id is None:
                tags = dict(self._tags)
                if previous.get("run_id"):
                    tags["certevo.previous_run_id"] = str(previous["run_id"])
                run = client.create_run(self.experiment_id, run_name=self.run_name or self.run_dir.name, tags=tags)
                self.run_id = run.info.run_id
            if _is_http(self.tracking_uri):
                self.run_url = f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
                self._say(f"MLflow tracking: parent run at {self.run_url}", warn=False)
            self._write_run_file()
        except Exception as exc:
            if not _is_transient(exc):
                self._start_error = f"starting it failed: {_describe(exc)}"
            raise

    def _read_run_file(self) -> dict[str, Any]:
        path = self.run_dir / MLFLOW_RUN_FILE
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_run_file(self) -> None:
        data = {"run_id": self.run_id, "experiment_id": self.experiment_id, "experiment_name": self.experiment_name,
                "tracking_uri": self.tracking_uri,  # certevo.search.tracking.location: a moved run directory finds
                "default_store": self.tracking_uri == f"sqlite:///{self.run_dir / MLFLOW_DATABASE}"}  # its own store
        tmp = self.run_dir / f".{MLFLOW_RUN_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.run_dir / MLFLOW_RUN_FILE)

    def _op_params(self) -> None:
        from mlflow.entities import Param, RunTag

        run_id = self._run()
        existing = self._existing_params
        params = [Param(k, v) for k, v in self._params.items() if k not in existing]
        tags = dict(self._tags)
        for name, value in self._params.items():
            if name in existing and existing[name] != value:  # params are immutable: say it as a tag
                tags[_key(f"resume.{name}")] = _cut(value, MAX_TAG_VALUE)
        if self.resumed:
            tags["certevo.resumed"] = "true"
        entities: list[Any] = params + [RunTag(k, v) for k, v in tags.items()]
        client = self._get_client()
        for i in range(0, len(entities), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = entities[i:i + MAX_PARAMS_TAGS_PER_BATCH]
            client.log_batch(run_id, params=[e for e in chunk if isinstance(e, Param)],
                             tags=[e for e in chunk if isinstance(e, RunTag)])
        self._existing_params = {**existing, **{p.key: p.value for p in params}}

    def _op_metrics(self, step: int, metrics: Mapping[str, float], stamp: int) -> None:
        from mlflow.entities import Metric

        self._get_client().log_batch(self._run(), metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])

    def _op_artifact(self, path: Path, where: str | None) -> None:
        if path in self._failed_local:  # not written: already in tracker.unwritten
            return
        self._get_client().log_artifact(self._run(), str(path), where)

    def _op_masks(self, cid: str) -> None:
        """Upload ``masks/<cid>.json`` and ``.safetensors`` (skipped for a child run an
        earlier session logged: its masks were uploaded before it was created)."""
        if cid in self._earlier_children:
            return
        run_id = self._run()
        for path in self._mask_paths.get(cid, []):  # none if writing failed (see tracker.unwritten)
            self._get_client().log_artifact(run_id, str(path), MASKS_DIR)

    def _op_backfill(self, history: list[Mapping[str, Any]]) -> None:
        """Log the generations of ``history`` the parent run has no metrics for (a new run
        for a resumed search, or a crash before the queue drained)."""
        run_id = self._run()
        client = self._get_client()
        logged = {m.step for m in client.get_metric_history(run_id, "hypervolume")}
        stamp = int(time.time() * 1000)
        for entry in history:
            generation = int(entry["generation"])
            if generation in logged:
                continue
            self._op_metrics(generation, self._generation_metrics(entry), stamp)
            png = self._front_png(entry)
            name = png.relative_to(self.artifacts_dir).as_posix()
            with self._cv:  # on_start queued the pictures a crash left undrawn
                self._cv.wait_for(lambda: name not in self._local_pending, timeout=PLOT_TIMEOUT)
            if png.is_file():
                client.log_artifact(run_id, str(png), FRONTS_DIR)
            logged.add(generation)

    def _op_find_children(self) -> None:
        client = self._get_client()
        run_id = self._run()
        if not self.resumed:  # a new parent run has no children yet
            return
        token = None
        while True:
            page = client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
                                      max_results=500, page_token=token)
            for run in page:
                cid = run.data.tags.get("certevo.candidate_id")
                if cid and cid not in self.child_run_ids:
                    self.child_run_ids[cid] = run.info.run_id
                    self._earlier_children.add(cid)
                    self._on_front_tag[cid] = run.data.tags.get("certevo.on_front", "")
            token = page.token
            if not token:
                return

    def _op_child(self, candidate: Any, generation: int | None, step: int) -> None:
        """Create the finished child run of a front member (``step``: the generation it
        entered the front; ``generation``: the one it was made in)."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._get_client()
        parent = self._run()
        cid = candidate.id
        record = candidate.record
        if cid in self.child_run_ids:  # logged in an earlier session: _op_membership tags it
            return
        child = self._child_pending.get(cid)
        if child is None:  # a retry after a failure below reuses the run created before it
            tags = {"mlflow.parentRunId": parent, "certevo.candidate_id": cid, "certevo.on_front": "true",
                    "mask_artifact": f"{MASKS_DIR}/{cid}"}
            if generation is not None:
                tags["generation"] = str(generation)
            child = client.create_run(self.experiment_id, run_name=child_run_name(candidate), tags=tags).info.run_id
            self._child_pending[cid] = child
            self._on_front_tag[cid] = "true"
        pattern = candidate.genome.activation_pattern()
        params = [Param(_key(f"layer_sparsity.{layer}"), f"{float(value):.6g}")
                  for layer, value in record.layer_sparsity.items()]
        params.append(Param("activations", _cut(json.dumps(pattern), MAX_PARAM_VALUE)))
        stamp = int(time.time() * 1000)
        metrics = [Metric("sparsity", float(record.sparsity), stamp, step),
                   Metric("certified_accuracy", float(record.certified_accuracy), stamp, step),
                   Metric("clean_accuracy", float(record.clean_accuracy), stamp, step)]
        if record.pgd_accuracy is not None:
            metrics.append(Metric("pgd_accuracy", float(record.pgd_accuracy), stamp, step))
        first = MAX_PARAMS_TAGS_PER_BATCH - 1
        client.log_batch(child, metrics=metrics, params=params[:first],
                         tags=[RunTag("activations_text", _cut(plots.activation_text(pattern), MAX_TAG_VALUE))])
        for i in range(first, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(child, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])
        client.set_terminated(child, "FINISHED")
        self.child_run_ids[cid] = child
        self._child_pending.pop(cid, None)

    def _op_membership(self, front: frozenset[str]) -> None:
        """Set ``certevo.on_front`` of every child run to whether it is in ``front``, writing
        only the tags that change."""
        client = self._get_client()
        for cid, child in list(self.child_run_ids.items()):
            value = "true" if cid in front else "false"
            if self._on_front_tag.get(cid) != value:
                client.set_tag(child, "certevo.on_front", value)
                self._on_front_tag[cid] = value

    def _op_terminate(self, status: str) -> None:
        self._get_client().set_terminated(self._run(), status)
