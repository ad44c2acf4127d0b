"""The ``vaegen`` command: thin wrappers that parse arguments and call the library.

    vaegen train     --config PRESET|FILE[:ARG] --workdir W [--config.key=value ...]
    vaegen evaluate  --workdir W [--density NAME] [--estimators elbo,iwae,is,ais,bdmc,diagnostics] [--k 5000]
                     [--images PATH --binarize threshold|sample|none]   (your own images)
                     [--ks 1,5,50] [--ais-steps 1000 --ais-chains 16 --leapfrog 10] ...  (config.eval's settings)
    vaegen gaps      --workdir W [--family diag,fullcov,flow] [--steps 500] [--k 1000]
    vaegen sample    --workdir W [--density NAME] [--n 64]
    vaegen reconstruct --workdir W [--n 32]
    vaegen data      prepare NAME [--from-dir DIR | --from-idx DIR] | list
    vaegen config    PRESET [--config.key=value ...]      (print the resolved config)
    vaegen demo      [--workdir runs/demo]
    vaegen compare   [--preset quick|full|tiny] [--workdir runs/compare] [--set KEY=VALUE ...]
    vaegen expost    --workdir W [--density gmm|flow|two_stage|diffusion|code_prior] [--refit] [--set KEY=VALUE ...]
    vaegen compress  --workdir W [--density NAME] (--images PATH | --split test) --out FILE   (lossless, at the bound)
    vaegen decompress --workdir W [--density NAME] FILE --out PATH.npy

Each command is one module of this package with ``add(subparsers)`` (its parser) and its
``cmd_*`` function; :func:`build_parser` assembles them.  ``vaegen --import FILE.py COMMAND ...``
imports a module of the user's own first (a recipe, a prior, ...), so its components are chosen by
name like the built-in ones.

Errors a user can fix (bad config, missing data, bad workdir, ...) print one line,
``vaegen: error: ...``, and exit with status 2; nothing in the workdir is modified.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys

from vaegen import compilation as compilation_lib
from vaegen.cli import coding, compare, demo, evaluate, expost, gaps, info, samples, train
from vaegen.cli.common import EXIT_USAGE, Parser
from vaegen.cli.info import _default_text, components_markdown, components_text
from vaegen.config import loading as config_lib
from vaegen.errors import USER_ERRORS, ConfigError, TrainingInterrupted
from vaegen.runs import loading
from vaegen.train import faults as faults_lib
from vaegen.train import workdir as workdir_lib

COMMANDS = (train, evaluate, gaps, samples, info, demo, expost, compare, coding)
"""The modules that add the commands, in the order ``vaegen --help`` lists them."""

__all__ = ["COMMANDS", "EXIT_USAGE", "build_parser", "components_markdown", "components_text", "main"]
_ = _default_text  # re-exported for the docs' component tables


def build_parser() -> Parser:
    p = Parser(prog="vaegen", description="Deep latent-variable models in JAX: train, evaluate, sample.")
    p.add_argument("--compilation-cache", metavar="DIR|off", default=None,
                   help=f"JAX's persistent compilation cache (default ${compilation_lib.ENV_VAR}, else "
                        "$XDG_CACHE_HOME/vaegen/jax or ~/.cache/vaegen/jax); off disables it")
    p.add_argument("--import", dest="imports", action="append", metavar="FILE.py", default=[],
                   help="a module of your own to import first (it registers its components: a recipe, a prior, ...)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add(sub)
    return p


def _split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    rest, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else rest).append(a)
    return rest, overrides


def import_user_modules(argv: list[str]) -> None:
    """Imports every ``--import FILE.py`` of ``argv`` (before the parser is built: a user's recipe adds
    its settings' flags).  A file that does not exist or fails to import is one line."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--import"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--import=")]
    for file in files:
        path = pathlib.Path(file)
        if not path.is_file():
            raise ConfigError(f"--import {file}: no such file")
        name = path.stem
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ConfigError(f"--import {file} failed: {type(e).__name__}: {e}") from None


def _workdirs(argv: list[str]) -> list[str]:
    return ([argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--workdir"]
            + [a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_config_overrides(argv)
    try:
        import_user_modules(rest)
        for workdir in _workdirs(rest):       # recipes of the user's own fitted to this run before
            loading.import_user_recipes(workdir)
    except USER_ERRORS as e:
        print(f"vaegen: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(rest)  # a usage error: one line and SystemExit(2)
    compilation_lib.enable(args.compilation_cache)
    if overrides and not getattr(args, "accepts_overrides", False):
        parser.error(f"--config.* overrides only apply to train, config, demo and compare, not {args.command}")
    # orbax's "Event loop is closed" race can print before an error is reported: silenced from the start.
    faults_lib.quiet_closed_event_loops()
    try:
        config_lib.check_distinct(overrides)
        with _workdir_lock(args):
            return args.func(args, [o.removeprefix("--") for o in overrides])
    except USER_ERRORS as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"vaegen: error: {msg}", file=sys.stderr)
        faults_lib.quiet_background_errors()
        return EXIT_USAGE
    except OSError as e:  # a write that no writer of vaegen reports itself (a full disk)
        if not faults_lib.is_disk_full(e):
            raise
        print(f"vaegen: error: {faults_lib.disk_full_error(e.filename or 'a file', 'files written before are kept')}",
              file=sys.stderr)
        faults_lib.quiet_background_errors()
        return EXIT_USAGE
    except TrainingInterrupted as e:
        print(f"vaegen: {e}", file=sys.stderr)
        faults_lib.quiet_background_errors()
        return e.exit_code
    except KeyboardInterrupt:
        print("vaegen: interrupted (nothing more was saved; what was written before is kept, and `vaegen train` "
              "resumes from its latest checkpoint)", file=sys.stderr)
        faults_lib.quiet_background_errors()
        return 130
    except SystemExit as e:  # SIGTERM outside the trainer's epochs (vaegen.train.workdir.lock), sys.exit
        if e.code not in (0, None):
            faults_lib.quiet_background_errors()
        raise


def _workdir_lock(args):
    """The commands other than ``train`` that write into a run (``gaps`` without ``--out``,
    ``expost``: their ``writes_into_run``) hold its workdir while they run
    (:func:`vaegen.train.workdir.lock`); ``train`` holds it in the trainer."""
    writes = getattr(args, "writes_into_run", None)
    if writes is not None and (pathlib.Path(args.workdir) / workdir_lib.CONFIG_FILE).is_file() and writes(args):
        return workdir_lib.lock(args.workdir, args.command)
    return contextlib.nullcontext()

