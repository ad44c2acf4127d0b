"""One trainer for every model and objective.

The whole training split lives on the device as uint8; an epoch is **one** jitted device call
(:mod:`vaegen.train.steps`).  The state is donated, so parameters are updated in place.

The trainer takes a typed run spec (:class:`vaegen.spec.run.RunSpec`: the config after the
boundary) and runs in named stages: :meth:`_Training.prepare` (every check; nothing written),
:meth:`_Training.restore` (the initial state, or the workdir's latest checkpoint; nothing
written), :meth:`_Training.write_run_files` (from here on the workdir is written), then per
epoch :meth:`_Training.run_epoch` and :meth:`_Training.end_of_epoch`.

Randomness is stateless: every key is derived from ``config.seed`` by purpose and then by
epoch or step (``fold_in``), never carried through the loop, so a run resumed from a
checkpoint at epoch e draws exactly the noise an uninterrupted run would have drawn.

The workdir describes itself (:mod:`vaegen.train.workdir`): ``config.json`` (the config),
``run.json`` (dataset, shapes, versions, devices, user components' modules), ``metrics.jsonl`` (one line per epoch: training terms averaged over the
epoch, validation bound, gradient norm, steps/s, skipped steps), ``checkpoints/<epoch>/``
(orbax).  Training resumes from the latest checkpoint when the workdir has one.

Faults (:mod:`vaegen.train.faults`, ``docs/errors.md``): a step with a non-finite loss or gradient
is skipped on the device and counted, and ``train.max_consecutive_skips`` consecutive skips
stop the run with :class:`vaegen.errors.NonFiniteError`.  SIGINT/SIGTERM are honoured when
the current device call returns (an epoch, or ``train.steps_per_call`` steps): a checkpoint
is written (``interrupted/<step>/`` in the middle of an epoch) and
:class:`vaegen.errors.TrainingInterrupted` is raised.  A run killed at any moment resumes
from its latest checkpoint to bitwise the parameters of an uninterrupted run (on the CPU;
results do not depend on ``steps_per_call``).  Every check on the config, the data and the
workdir runs before anything is written, and no error deletes or overwrites what a workdir
holds.

Multi-host (:mod:`vaegen.sharding`, ``docs/scaling.md``): the same code runs on one device,
several, or several hosts; the splits are sharded by rows over all devices and each step
gathers the same global batch as on one device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from vaegen import compilation as compilation_lib
from vaegen import sharding as sharding_lib
from vaegen.data import binarization
from vaegen.data import checks as checks_lib
from vaegen.data import datasets
from vaegen.data import splits as splits_lib
from vaegen.estimators import diagnostics as diagnostics_lib
from vaegen.errors import CheckpointError, ConfigError, NonFiniteError, TrainingInterrupted
from vaegen.model import latent as latent_lib
from vaegen.objectives.base import Objective
from vaegen.objectives.bounds import bits_per_dim
from vaegen.registry import to_mapping
from vaegen.spec.run import RunSpec
from vaegen.train import board as board_lib
from vaegen.train import checkpoint as checkpoint_lib
from vaegen.train import faults as faults_lib
from vaegen.train import workdir as workdir_lib
from vaegen.train.early_stopping import EarlyStopping
from vaegen.train.optim import make_optimizer, make_schedule
from vaegen.train.rng import purpose_key
from vaegen.train.steps import EpochLog, TrainState, initial_state, make_train_steps, make_validation

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
INTERRUPTED_DIR = "interrupted"
_MAX_LOGGED_SKIPS = 100


class LastMetrics(dict):
    """What :func:`train_and_evaluate` returns: the last line of ``metrics.jsonl`` (a dict), and
    what this call did.

    Attributes:
      epochs_trained: epochs this call trained (0: the run was finished before it -- its
        ``config.train.num_epochs`` reached, or stopped early -- and nothing was done).
      checkpoint_epoch: the epoch of the checkpoint the call started from (0: none).
      stopped_early: the run had been stopped by early stopping before this call.
    """

    def __init__(self, line: dict[str, Any], *, epochs_trained: int, checkpoint_epoch: int,
                 stopped_early: bool = False):
        super().__init__(line)
        self.epochs_trained, self.checkpoint_epoch, self.stopped_early = epochs_trained, checkpoint_epoch, stopped_early

    @property
    def finished_before(self) -> bool:
        """Nothing was left to train: this call trained no epoch."""
        return self.epochs_trained == 0
logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Setup:
    """Everything a run derives from its spec and the shape of its data (shared by training and
    loading)."""

    spec: RunSpec
    model: latent_lib.Model
    event_shape: tuple[int, ...]
    steps_per_epoch: int
    objective: Objective
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule


def build_setup(spec: RunSpec, event_shape: tuple[int, ...], num_train: int) -> Setup:
    """The model, objective and optimiser of the run spec ``spec`` for ``num_train`` training
    examples of shape ``event_shape``."""
    batch = spec.train.batch_size
    if batch > num_train:
        raise ConfigError(f"config.train.batch_size={batch} is larger than the training set ({num_train} examples)")
    steps_per_epoch = num_train // batch
    model = latent_lib.build_model(spec.model, spec.inference, event_shape)
    objective = spec.objective.build(steps_per_epoch=steps_per_epoch)
    optimizer = make_optimizer(spec.optim, steps_per_epoch)
    return Setup(spec, model, tuple(event_shape), steps_per_epoch, objective, optimizer,
                 make_schedule(spec.optim, steps_per_epoch))


def load_data(spec: RunSpec) -> datasets.Splits:
    """The splits of a run spec, checked against its likelihood's support."""
    return splits_lib.load_data(spec.data, support=spec.model.likelihood.trait("support"))


def initial_variables(spec: RunSpec, model: latent_lib.Model, event_shape: tuple[int, ...], train_u8: np.ndarray) -> Any:
    """A new run's variables: initialised from the init stream, the likelihood's output bias at
    the data mean (``model.init_output_bias_from_data``), and any data-dependent initialisation
    of the prior (its ``data_init`` trait, e.g. the VampPrior's pseudo-inputs from data)."""
    seed = spec.seed
    protocol = splits_lib.split_protocol(spec.data, "train")
    variables = latent_lib.init_params(model, purpose_key(seed, "init"), event_shape)
    if spec.model.init_output_bias_from_data:
        variables = latent_lib.set_output_bias(variables, model, binarization.data_mean(train_u8, protocol))
    data_init = spec.model.prior.trait("data_init")
    if data_init is not None:
        def examples(k: int) -> np.ndarray:
            """k training examples, drawn without replacement by the init stream, as the model sees them."""
            rows = np.asarray(jax.random.choice(jax.random.fold_in(purpose_key(seed, "init"), 1),
                                                train_u8.shape[0], (k,), replace=False))
            stored = splits_lib.stored_split(spec.data, train_u8[np.sort(rows)], "train")
            return np.asarray(binarization.to_float(None, stored, "real" if spec.data.binarization == "real"
                                                    else "none"))

        variables = data_init(spec.model.prior.settings, variables, examples=examples,
                              num_examples=int(train_u8.shape[0]))
    return variables


def train_and_evaluate(spec: RunSpec, workdir: str | os.PathLike, *, splits: datasets.Splits | None = None,
                       devices=None) -> dict[str, Any]:
    """Trains the model of the run spec ``spec`` in ``workdir`` (resuming if it holds a checkpoint).

    Args:
      spec: a :class:`vaegen.spec.run.RunSpec` (``vaegen.train_and_evaluate`` also takes a
        config and converts it).
      splits: the data (default: loaded from ``spec.data``); checked by
        :func:`vaegen.data.checks.check_splits`.
      devices: devices to train data-parallel on (default: all, of all processes).

    Returns the last line written to ``metrics.jsonl`` (a :class:`LastMetrics`, a dict whose
    ``epochs_trained`` is 0 when nothing was left to train: the line is then the last one of the
    earlier call that finished the run).

    Raises (each before anything is written, except the last two):
      vaegen.errors.ConfigError, DataError, SupportError, DatasetNotFoundError: bad config or data.
      vaegen.errors.WorkdirError: the workdir holds another run, other data, or cannot be written.
      vaegen.errors.CheckpointError: its checkpoint is corrupt or from another config.
      vaegen.errors.NonFiniteError: ``train.max_consecutive_skips`` consecutive non-finite steps.
      vaegen.errors.TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was written.
    """
    compilation_lib.enable()  # the persistent compilation cache (vaegen.compilation)
    training = _Training(spec, pathlib.Path(workdir), splits, devices)
    # One process writes into a run at a time (vaegen.train.workdir.lock; on several hosts, the first
    # process holds it for all).
    with (workdir_lib.lock(training.workdir, "train") if sharding_lib.is_primary() else contextlib.nullcontext()):
        training.prepare()
        training.restore()
        if training.finished:  # nothing to train: nothing is written either
            return training.finished_before()
        try:
            training.write_run_files()
            return training.run()
        except OSError as e:
            if not faults_lib.is_disk_full(e):
                raise
            raise training.disk_full(e) from None


class _Training:
    """One call of :func:`train_and_evaluate`, in its stages."""

    def __init__(self, spec: RunSpec, workdir: pathlib.Path, splits: datasets.Splits | None, devices):
        self.spec, self.workdir, self.splits, self.devices = spec, workdir, splits, devices

    # --- stage 1: every check; nothing is written -----------------------------------------------------
    def prepare(self) -> None:
        spec = self.spec
        if self.splits is None:
            self.splits = load_data(spec)
        else:
            checks_lib.check_splits(self.splits, support=spec.model.likelihood.trait("support"),
                                    binarization=spec.data.binarization, dataset=spec.data.name)
        self.event_shape = tuple(self.splits.train.shape[1:])
        self.num_train = int(self.splits.train.shape[0])
        self.setup = build_setup(spec, self.event_shape, self.num_train)
        self.mesh = sharding_lib.data_mesh(self.devices)
        n_dev = self.mesh.devices.size
        if spec.train.batch_size % n_dev:
            raise ConfigError(f"config.train.batch_size={spec.train.batch_size} must be divisible by the number of "
                              f"devices ({n_dev})")
        self.resuming = workdir_lib.check(self.workdir, spec)
        self.data_hash = workdir_lib.data_fingerprint(self.splits)
        if self.resuming:
            workdir_lib.check_run_json(self.workdir, self.data_hash)
        self.primary = sharding_lib.is_primary()
        if spec.train.tensorboard and self.primary:
            board_lib.check_writable(self.workdir)
        # A resumed run is identified by its config as written: keys added to the schema since then
        # (filled in with their defaults, which workdir.check has compared) do not orphan it.
        self.fingerprint = (workdir_lib.config_fingerprint(workdir_lib.read_stored(self.workdir / workdir_lib.CONFIG_FILE))
                            if self.resuming else workdir_lib.config_fingerprint(to_mapping(spec)))

    # --- stage 2: the initial state, or the latest checkpoint; nothing is written -------------------------
    def restore(self) -> None:
        spec, setup = self.spec, self.setup
        variables = initial_variables(spec, setup.model, self.event_shape, self.splits.train)
        state = initial_state(setup.objective, setup.optimizer, setup.model, variables, purpose_key(spec.seed, "auxiliary"))
        state = jax.device_put(state, sharding_lib.replicated(self.mesh))  # also the template checkpoints restore into
        exists = self.workdir.exists()
        checkpointer = checkpoint_lib.Checkpointer(self.workdir / CHECKPOINTS_DIR, spec.train.keep_checkpoints,
                                                   read_only=not exists)
        interrupts = checkpoint_lib.Checkpointer(self.workdir / INTERRUPTED_DIR, 1, read_only=not exists)
        try:
            resume = _restore(state, self.fingerprint, checkpointer, interrupts)
        finally:
            checkpointer.close()
            interrupts.close()
        self.state = resume.state
        self.start_epoch, self.start_offset = resume.epoch, resume.offset
        self.epoch_log, self.last_finite = resume.log, resume.last_finite
        self.stopper = EarlyStopping.from_json(resume.early_stopping, patience=spec.train.early_stopping_patience,
                                               min_epochs=spec.train.early_stopping_min_epochs)

    @property
    def finished(self) -> bool:
        """The checkpoint restored is the run's last: ``train.num_epochs`` reached, or stopped early."""
        return self.start_epoch >= self.spec.train.num_epochs or self.stopper.stopped

    def finished_before(self) -> "LastMetrics":
        return LastMetrics(workdir_lib.last_metrics(self.workdir / workdir_lib.METRICS_FILE), epochs_trained=0,
                           checkpoint_epoch=self.start_epoch, stopped_early=self.stopper.stopped)

    # --- stage 3: from here on the workdir is written -------------------------------------------------------
    def write_run_files(self) -> None:
        self.metrics_path = self.workdir / workdir_lib.METRICS_FILE
        if not self.primary:
            return
        workdir_lib.create(self.workdir)
        if not self.resuming:
            workdir_lib.write_atomic(self.workdir / workdir_lib.CONFIG_FILE, workdir_lib.to_json(self.spec) + "\n")
        workdir_lib.write_atomic(self.workdir / workdir_lib.RUN_FILE, json.dumps({
            "event_shape": list(self.event_shape),
            "data": self.splits.info,
            "data_fingerprint": self.data_hash,
            "steps_per_epoch": self.setup.steps_per_epoch,
            "devices": [str(d) for d in self.mesh.devices.flat],
            "processes": jax.process_count(),
            "platform": jax.default_backend(),
            "versions": workdir_lib.versions(),
            "config_fingerprint": self.fingerprint,
            "user_components": workdir_lib.user_components(self.spec),
        }, indent=2, default=str) + "\n")
        workdir_lib.truncate_metrics(self.metrics_path, self.start_epoch)

    # --- stage 4: the epochs ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        spec, setup = self.spec, self.setup
        num_epochs = spec.train.num_epochs
        if self.finished:
            return self.finished_before()
        self.checkpointer = checkpoint_lib.Checkpointer(self.workdir / CHECKPOINTS_DIR, spec.train.keep_checkpoints)
        self.interrupts = checkpoint_lib.Checkpointer(self.workdir / INTERRUPTED_DIR, 1)
        self.best = (checkpoint_lib.Checkpointer(self.workdir / BEST_DIR, 1) if spec.train.early_stopping_patience
                     else None)
        self.train_rows = sharding_lib.shard_rows(
            np.asarray(splits_lib.stored_split(spec.data, self.splits.train, "train")), self.mesh)
        self.num_val = int(self.splits.validation.shape[0])
        self.val_rows = sharding_lib.shard_rows(
            np.asarray(splits_lib.stored_split(spec.data, self.splits.validation, "validation")), self.mesh)
        self.validate = make_validation(setup.model, setup.objective.for_validation(spec.eval.validation_num_samples),
                                        protocol=splits_lib.split_protocol(spec.data, "validation"),
                                        batch_size=spec.eval.batch_size, mesh=self.mesh)
        self.bound = setup.objective.bound_name
        self.compiled: dict[int, Any] = {}
        self.health_inputs = self.validation_examples(spec.train.latent_health_examples) if (
            spec.model.kind.trait("one_latent_vector")) else None
        self.board = self.open_board()
        last: dict[str, Any] = {}
        trained = 0
        bar = tqdm(range(self.start_epoch, num_epochs), initial=self.start_epoch, total=num_epochs, unit="epoch",
                   disable=not (spec.train.progress and self.primary), dynamic_ncols=True, desc="train")
        try:
            with faults_lib.stop_signals(spec.train.handle_signals) as stop:
                for epoch in bar:
                    log, first_offset, seconds, compile_s = self.run_epoch(epoch, stop)
                    last = self.end_of_epoch(epoch, log, first_offset, seconds, compile_s, stop, bar)
                    trained += 1
                    if self.stopper.stopped:
                        logger.info("early stopping at epoch %d: validation %s has not improved on %.4f (epoch %d) "
                                    "for %d evaluations", epoch + 1, self.bound, self.stopper.best_value,
                                    self.stopper.best_epoch, spec.train.early_stopping_patience)
                        break
        finally:
            bar.close()
            self.checkpointer.close()
            self.interrupts.close()
            if self.best is not None:
                self.best.close()
            if self.board is not None:
                self.board.close()
        return LastMetrics(last, epochs_trained=trained, checkpoint_epoch=self.start_epoch)

    def open_board(self) -> board_lib.Board | None:
        """The TensorBoard writer (primary process, ``train.tensorboard``), and what it shows at
        each validation: the first ``train.tensorboard_images`` validation images to reconstruct."""
        spec = self.spec
        self.pictures = None
        if not (spec.train.tensorboard and self.primary):
            return None
        step = int(self.state.step)
        board = board_lib.Board(self.workdir, purge_step=step + 1 if step else None)
        self.picture_inputs = self.validation_examples(spec.train.tensorboard_images)
        if self.picture_inputs is not None and board_lib.shows_images(self.event_shape):
            n = int(self.picture_inputs.shape[0])
            self.pictures = board_lib.make_pictures(self.setup.model, num_images=n,
                                                    mesh=self.mesh if jax.process_count() == 1 else None,
                                                    has_latents=spec.model.kind.trait("latents") != "none")
        return board

    def validation_examples(self, n: int) -> jax.Array | None:
        """The first ``n`` validation examples as the model sees them (one draw of the validation
        stream under a dynamic binarization); ``None`` if there are none."""
        n = min(n, self.num_val)
        if not n:
            return None
        stored = splits_lib.stored_split(self.spec.data, self.splits.validation[:n], "validation")
        return binarization.to_float(purpose_key(self.spec.seed, "validation"), jnp.asarray(stored),
                                     splits_lib.split_protocol(self.spec.data, "validation"))

    def latent_health(self) -> dict[str, Any]:
        """The latent diagnostics (:func:`vaegen.estimators.diagnostics.diagnose`) on the first
        ``train.latent_health_examples`` validation examples, as ``latent/...`` entries of the
        metrics line (nats; what is undefined for the model, e.g. the rate of an autoencoder, is
        left out), with the seconds they took."""
        t = time.perf_counter()
        d = diagnostics_lib.diagnose(self.setup.model, self.local_params(), self.health_inputs,
                                     purpose_key(self.spec.seed, "validation"),
                                     devices=None if jax.process_count() > 1 else self.devices)
        out = {"latent/active_units": d["active_units"], "latent/distortion": d["distortion"]["mean"]}
        for name in ("rate", "mutual_information", "marginal_kl", "collapsed_units", "kl_per_dim"):
            if name in d:
                out[f"latent/{name}"] = d[name]["mean"] if name == "rate" else d[name]
        out["latent/seconds"] = time.perf_counter() - t
        return out

    def local_params(self) -> Any:
        """The parameters, as this process's own copy where they are replicated over several
        processes (what a computation of this process alone, not the whole mesh, can take)."""
        if jax.process_count() == 1:
            return self.state.params
        return jax.tree_util.tree_map(lambda a: a.addressable_data(0), self.state.params)

    def show(self, line: dict[str, Any], validated: bool) -> None:
        """The epoch's line in TensorBoard, with image grids after a validation."""
        self.board.scalars(line)
        if validated and self.pictures is not None:
            images = jax.device_get(self.pictures(self.local_params(), self.picture_inputs,
                                                  purpose_key(self.spec.seed, "sample")))
            for name, grid in images.items():
                self.board.images(f"images/{name}", grid, line["step"])
        self.board.flush()

    def disk_full(self, error: OSError) -> Exception:
        """One line for a write into the workdir (metrics, run files) that failed on a full disk;
        checkpoints report their own (:meth:`vaegen.train.checkpoint.Checkpointer.save`)."""
        ckpt = checkpoint_lib.Checkpointer(self.workdir / CHECKPOINTS_DIR, read_only=True)
        try:
            latest = ckpt.latest_epoch()
        finally:
            ckpt.close()
        kept = (f"the checkpoint of epoch {latest} ({self.workdir / CHECKPOINTS_DIR / str(latest)}) and everything "
                "written before are kept, and the run resumes from it" if latest is not None
                else "nothing written before was changed")
        return faults_lib.disk_full_error(error.filename or str(self.workdir), kept)

    def train_steps(self, num_steps: int):
        """The compiled call for ``num_steps`` steps (at most two lengths: a full call and the
        rest of an epoch) and the seconds spent compiling it now."""
        if num_steps in self.compiled:
            return self.compiled[num_steps], 0.0
        t0 = time.perf_counter()
        spec, setup = self.spec, self.setup
        fn = make_train_steps(setup.model, setup.objective, setup.optimizer, batch_size=spec.train.batch_size,
                              steps_per_epoch=setup.steps_per_epoch, num_steps=num_steps,
                              protocol=splits_lib.split_protocol(spec.data, "train"), seed=spec.seed, mesh=self.mesh,
                              max_consecutive_skips=spec.train.max_consecutive_skips, num_examples=self.num_train)
        self.compiled[num_steps] = fn.compile(self.state, self.train_rows, jnp.int32(0), jnp.int32(0))
        return self.compiled[num_steps], time.perf_counter() - t0

    def meta(self, epoch: int, **extra) -> dict[str, Any]:
        """What a checkpoint records beside the arrays."""
        return {"epoch": epoch, "step": int(self.state.step), "config_fingerprint": self.fingerprint,
                "last_finite": _last_finite_json(self.last_finite), "early_stopping": self.stopper.to_json(), **extra}

    def run_epoch(self, epoch: int, stop: faults_lib.StopSignals) -> tuple[EpochLog, int, float, float]:
        """The steps of ``epoch`` (from where a resumed run left off), in device calls of
        ``train.steps_per_call`` steps; stops on non-finite steps or a stop signal.  Returns the
        epoch's log, its first offset, and the seconds spent running and compiling."""
        spe = self.setup.steps_per_epoch
        max_skips = self.spec.train.max_consecutive_skips
        chunk = self.spec.train.steps_per_call or spe
        log = self.epoch_log if epoch == self.start_epoch else EpochLog()
        offset = self.start_offset if epoch == self.start_epoch else 0
        first_offset, seconds, compile_s = offset, 0.0, 0.0
        while offset < spe:
            n = min(chunk, spe - offset)
            fn, c = self.train_steps(n)
            compile_s += c
            t = time.perf_counter()
            self.state, step_metrics = fn(self.state, self.train_rows, jnp.int32(epoch), jnp.int32(offset))
            log.add(step_metrics)
            seconds += time.perf_counter() - t
            offset += n
            self.last_finite = log.last_finite() or self.last_finite
            if int(self.state.consecutive_skips) >= max_skips:
                if self.primary:
                    workdir_lib.append_jsonl(self.metrics_path, _halted_line(epoch, self.state, log))
                raise NonFiniteError(_halt_message(epoch, self.state, max_skips, self.last_finite,
                                                   self.checkpointer.latest_epoch()))
            if offset < spe and sharding_lib.any_process(stop.requested is not None):
                key = int(self.state.step)
                self.interrupts.save(key, self.state.params, self.state.checkpoint_items(),
                                     self.meta(epoch, offset=offset, epoch_log=log.to_json(),
                                               signal=_signal_name(stop.requested)))
                raise _interrupted(stop.requested, key, self.interrupts.path(key), epoch, offset, spe)
        return log, first_offset, seconds, compile_s

    def end_of_epoch(self, epoch: int, log: EpochLog, first_offset: int, seconds: float, compile_s: float,
                     stop: faults_lib.StopSignals, bar: Any) -> dict[str, Any]:
        """The epoch's line of metrics.jsonl (training means, the validation bound), early stopping,
        the end-of-epoch checkpoint, and a stop requested during the epoch."""
        spec, spe, bound = self.spec, self.setup.steps_per_epoch, self.bound
        num_epochs, batch_size = spec.train.num_epochs, spec.train.batch_size
        line: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": int(self.state.step),
            **{f"train/{k}": faults_lib.finite_or_none(v) for k, v in log.means().items()},
            "train/skipped_steps": len(log.skipped_at()),
            "skipped_steps_total": int(self.state.skipped_steps),
            "steps_per_second": (spe - first_offset) / seconds,
            "examples_per_second": (spe - first_offset) * batch_size / seconds,
            "epoch_seconds": seconds,
            "learning_rate": float(self.setup.learning_rate(max(int(self.state.step) - 1, 0))),
        }
        skipped = log.skipped_at()
        if skipped:
            line["skipped_at"] = skipped[:_MAX_LOGGED_SKIPS]
            logger.warning("epoch %d: skipped %d step(s) with a non-finite loss or gradient (steps %s)",
                           epoch + 1, len(skipped), ", ".join(map(str, skipped[:10])) + (" ..." if len(skipped) > 10 else ""))
        if first_offset:
            line["resumed_at_offset"] = first_offset
        if compile_s:
            line["compile_seconds"] = compile_s
        every = spec.train.eval_every_epochs
        if self.num_val and every and ((epoch + 1) % every == 0 or epoch + 1 == num_epochs):
            terms = jax.device_get(self.validate(self.state.params, self.val_rows, purpose_key(spec.seed, "validation")))
            line.update({f"validation/{k}": float(np.mean(v[:self.num_val])) for k, v in terms.items()})
            if self.health_inputs is not None and self.primary:  # written by the primary process only
                line.update(self.latent_health())
        num_dims = int(np.prod(self.event_shape))
        for split in ("train", "validation"):
            if line.get(f"{split}/{bound}") is not None:
                line[f"{split}/{bound}_bits_per_dim"] = bits_per_dim(line[f"{split}/{bound}"], num_dims)
        if spec.train.early_stopping_patience and f"validation/{bound}" in line:
            if self.stopper.update(epoch + 1, line[f"validation/{bound}"]):
                self.best.save(epoch + 1, self.state.params, {"step": self.state.step}, self.meta(epoch + 1, bound=bound))
            line.update(self.stopper.metrics())
        if self.primary:
            workdir_lib.append_jsonl(self.metrics_path, line)
        if self.board is not None:
            self.show(line, f"validation/{bound}" in line)
        train_bound = line.get(f"train/{bound}")
        postfix = {f"train_{bound}": "nan" if train_bound is None else f"{train_bound:.2f}",
                   "ex/s": f"{line['examples_per_second']:.3g}"}
        if f"validation/{bound}" in line:
            postfix[f"val_{bound}"] = f"{line[f'validation/{bound}']:.2f}"
        bar.set_postfix(postfix)
        stopping = epoch + 1 < num_epochs and sharding_lib.any_process(stop.requested is not None)
        if ((epoch + 1) % spec.train.checkpoint_every_epochs == 0 or epoch + 1 == num_epochs or stopping
                or self.stopper.stopped):
            self.checkpointer.save(epoch + 1, self.state.params, self.state.checkpoint_items(), self.meta(epoch + 1))
            for key in self.interrupts.all_epochs():  # superseded interrupt checkpoints
                self.interrupts.delete(key)
                if self.primary:
                    with contextlib.suppress(OSError):
                        self.interrupts.directory.rmdir()  # only if empty
        if stopping:
            raise _interrupted(stop.requested, int(self.state.step), self.checkpointer.path(epoch + 1),
                               epoch + 1, 0, spe)
        return line


@dataclasses.dataclass
class _Resume:
    state: TrainState
    epoch: int = 0  # epochs completed
    offset: int = 0  # steps of epoch ``epoch`` already taken (interrupt checkpoints)
    log: EpochLog = dataclasses.field(default_factory=EpochLog)
    last_finite: tuple[int, dict[str, float]] | None = None
    early_stopping: dict[str, Any] | None = None


def _restore(state: TrainState, fingerprint: str, checkpointer: checkpoint_lib.Checkpointer,
             interrupts: checkpoint_lib.Checkpointer) -> _Resume:
    """The latest state in the workdir: its latest end-of-epoch checkpoint or, if later, its
    interrupt checkpoint.  Checks fingerprints and checksums; writes nothing."""
    candidates = []
    latest = checkpointer.latest_epoch()
    if latest is not None:
        candidates.append((checkpointer, latest, checkpointer.restore_meta(latest)))
    latest_interrupt = interrupts.latest_epoch()
    if latest_interrupt is not None:
        candidates.append((interrupts, latest_interrupt, interrupts.restore_meta(latest_interrupt)))
    if not candidates:
        return _Resume(state=state)
    manager, key, meta = max(candidates, key=lambda c: (int(c[2].get("step", -1)), c[0] is checkpointer))
    if meta.get("config_fingerprint") != fingerprint:
        raise CheckpointError(
            f"checkpoint {manager.path(key)} was written under a different config "
            f"(fingerprint {meta.get('config_fingerprint')} != {fingerprint}): it comes from another run (copied "
            "from another workdir?); move that checkpoint directory away to fall back to an earlier one, or use a "
            "new --workdir"
        )
    items = state.checkpoint_items()
    if "checksums" not in meta:  # written by vaegen 0.1.0, before the skip counters were stored
        items = {"step": items["step"], "opt_state": items["opt_state"]}
    params, rest = manager.restore(key, state.params, items, meta=meta)
    restored = state.replace(params=params, **rest)
    log = EpochLog.from_json(meta["epoch_log"]) if "epoch_log" in meta else EpochLog()
    return _Resume(state=restored, epoch=int(meta["epoch"]), offset=int(meta.get("offset", 0)), log=log,
                   last_finite=_last_finite_from_json(meta.get("last_finite")),
                   early_stopping=meta.get("early_stopping"))


def _last_finite_json(last_finite):
    if last_finite is None:
        return None
    step, metrics = last_finite
    return {"step": step, "metrics": {k: faults_lib.finite_or_none(v) for k, v in metrics.items()}}


def _last_finite_from_json(data):
    if not data:
        return None
    return int(data["step"]), {k: float("nan") if v is None else float(v) for k, v in data["metrics"].items()}


def _signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "SIGTERM"


def _interrupted(signum: int | None, step: int, path: pathlib.Path, epoch: int, offset: int,
                 spe: int) -> TrainingInterrupted:
    signum = signum or signal.SIGTERM
    where = f"epoch {epoch + 1}, step {offset} of {spe}" if offset else f"end of epoch {epoch}"
    return TrainingInterrupted(
        f"stopped by {_signal_name(signum)} at step {step} ({where}); checkpoint written to {path}; "
        "run the same command again to resume",
        signum=signum, step=step, checkpoint=str(path))


def _halted_line(epoch: int, state: TrainState, log: "EpochLog") -> dict[str, Any]:
    skipped = log.skipped_at()
    return {"epoch": epoch + 1, "step": int(state.step), "halted": "non-finite",
            **{f"train/{k}": faults_lib.finite_or_none(v) for k, v in log.means().items()},
            "train/skipped_steps": len(skipped), "skipped_steps_total": int(state.skipped_steps),
            "skipped_at": skipped[:_MAX_LOGGED_SKIPS]}


def _halt_message(epoch: int, state: TrainState, max_skips: int, last_finite, checkpoint_epoch) -> str:
    last_step = int(state.step) - 1
    first = last_step - max_skips + 1
    msg = (f"training stopped at step {last_step} (epoch {epoch + 1}): {max_skips} consecutive steps "
           f"({first}..{last_step}) had a non-finite loss or gradient and were skipped "
           f"(train.max_consecutive_skips={max_skips}); ")
    if last_finite is None:
        msg += "no step of this run had finite metrics; "
    else:
        step, metrics = last_finite
        keys = [k for k in metrics if k not in ("kl_weight",)]
        msg += f"last finite step {step}: {faults_lib.format_metrics(metrics, tuple(keys))}; "
    msg += ("latest checkpoint: " + (f"epoch {checkpoint_epoch}" if checkpoint_epoch is not None else "none")
            + "; lower optim.learning_rate, set optim.grad_clip_norm, or check the data")
    return msg
