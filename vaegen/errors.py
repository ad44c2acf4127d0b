"""Every error a user can fix, in one place at the bottom of the package.

Any module raises these without importing the layer that "owns" the problem, and the command
line turns each into one line, ``vaegen: error: ...``, and exit status 2 (:data:`USER_ERRORS`);
the table of messages is ``docs/errors.md``.  Classes subclass ``ValueError`` where the caller
passed a bad value and ``RuntimeError`` where the state of a run, a workdir or a dataset is the
problem, so ``except ValueError`` around a library call keeps its usual meaning.
"""

from __future__ import annotations


# --- configuration ---------------------------------------------------------------------------

class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, preset or component, wrong type, invalid
    value, or components that do not fit together."""


# --- data --------------------------------------------------------------------------------------

class DatasetNotFoundError(RuntimeError):
    """A dataset is not prepared in the TFDS data_dir and could not be prepared."""


class SourceFormatError(ValueError):
    """Local files to import (``prepare(..., from_dir=...)``) are missing, corrupt or do not hold
    what the dataset needs."""


class IDXFormatError(SourceFormatError):
    """An IDX file is missing, corrupt or does not hold what the dataset needs."""


class DataError(ValueError):
    """Data that the trainer cannot use: wrong shape or dtype, NaN, an empty split."""


class ImagesError(DataError):
    """Images given to score (``vaegen evaluate --images``) that cannot be read or do not fit the
    run: format, shape, dtype, value range, or a binarization the likelihood does not allow."""


class ArgumentError(ValueError):
    """An argument of the Python API that cannot be used (``run.log_px(x, k=2.5)``, ``z`` of the
    wrong shape, a seed where a key is expected): the message names the method and the argument.
    Raised on the host, before anything is computed."""


class SupportError(ValueError):
    """Data lie outside the support of the likelihood they are given to."""


# --- what a model does not have ------------------------------------------------------------------

class NoPriorError(RuntimeError):
    """The model has no prior p(z): an autoencoder is not a generative model by itself."""


NO_PRIOR_MESSAGE = (
    "this model has no prior p(z) (an autoencoder: a point-mass encoder and a decoder, trained on "
    "log p(x | z = f(x)) alone), so it defines no distribution over x to sample from or to "
    "evaluate log p(x) under. Fit a density to its codes to make it generative "
    "(an ex-post mixture prior), or train a VAE."
)


class NoLatentError(RuntimeError):
    """The model has no latent variable z (an autoregressive model): nothing to encode or decode."""


NO_LATENT_MESSAGE = ("this model is autoregressive (MADE): it has no latent variable z, hence no q(z|x), "
                     "no p(z) and no codes to reconstruct from; it defines p(x) directly, with an exact "
                     "log-likelihood (`vaegen evaluate`) and pixel-by-pixel samples (`vaegen sample`)")


class UndefinedObjectiveError(ValueError):
    """The objective does not exist for this model (e.g. an ELBO for a point-mass posterior)."""


class UndefinedEstimateError(UndefinedObjectiveError):
    """The quantity does not exist for this model (e.g. log p(x) without a prior p(z))."""


POINT_MASS_PROPOSAL = (
    "importance sampling needs a proposal with a density, and q(z|x) is a point mass "
    "delta(z - f(x)) (an autoencoder): its weights p(x, z) / q(z | x) are undefined. Use the prior "
    "as the proposal (--is-proposal prior) or AIS from the prior, if the model has one"
)


class RecipeError(ConfigError):
    """A way of getting p(x) from a trained run (a recipe: ``vaegen.load(W, density=NAME)``,
    ``--density NAME``) that does not fit the run, or whose fit is unfinished or was made with other
    settings than those asked for."""


class InferenceError(ValueError):
    """A family, an initialisation or inference settings that cannot be used with this model."""


# --- lossless coding -----------------------------------------------------------------------------

class CodingError(ValueError):
    """A model, coder or likelihood that cannot code images losslessly (a continuous likelihood, a
    density with no tractable mass on the bins of z, a coder that does not fit the model)."""


class CompressedFileError(ValueError):
    """A compressed file that cannot be decoded: not one, damaged, truncated, of another format
    version, or written by another model."""


NO_PRIOR_TO_CODE = (
    "this model has no prior p(z) (an autoencoder: a point-mass encoder and a decoder), so there is nothing to code "
    "z with: it defines no p(x), and what defines no p(x) compresses nothing. Attach a density over its codes "
    "(`vaegen expost`, then --density NAME) and it codes its codes with it, or train a VAE"
)


# --- runs, workdirs, checkpoints ----------------------------------------------------------------

class WorkdirError(RuntimeError):
    """The workdir cannot be used for this run (another run's, or not writable)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used with this run (corrupt, or from another config)."""


class NonFiniteError(RuntimeError):
    """Training stopped: too many consecutive steps had a non-finite loss or gradient."""


class DiskFullError(RuntimeError):
    """No space left on the device (or over quota) while writing a checkpoint, metrics, an
    evaluation or a figure; the message names the path, what was kept, and the next step."""


class DamagedFileError(RuntimeError):
    """A file vaegen wrote (or a user gave) that cannot be read back: missing, truncated, damaged
    or holding something else; the message names the file and what to do (``vaegen.files``)."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint.

    Attributes:
      signum: the signal number.
      step: the global step of the checkpoint written.
      checkpoint: its directory.
    """

    def __init__(self, message: str, *, signum: int, step: int, checkpoint: str):
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by signal: 128 + signal number."""
        return 128 + int(self.signum)


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DatasetNotFoundError, SourceFormatError, DataError, ArgumentError, SupportError, NoPriorError,
    NoLatentError,
    UndefinedObjectiveError, InferenceError, WorkdirError, CheckpointError, NonFiniteError, DiskFullError,
    CodingError, CompressedFileError, DamagedFileError, FileNotFoundError,
)
"""The errors the command line reports on one line with exit status 2 (TrainingInterrupted exits
with 128 + the signal number)."""
