"""``vaegen compress`` and ``vaegen decompress``: a trained run's p(x) as a lossless compressor
(:mod:`vaegen.runs.compression`, :mod:`vaegen.coding`)."""

from __future__ import annotations

import pathlib
import time

import numpy as np

from vaegen.cli.common import key_values, non_negative_int, positive_int
from vaegen.cli.evaluate import add_density
from vaegen.coding.coders import CODERS
from vaegen.data import binarization as binarization_lib
from vaegen.data import images as images_lib
from vaegen.data import splits as splits_lib
from vaegen.errors import ConfigError
from vaegen.runs import compression as compression_lib
from vaegen.runs import evaluate as evaluate_lib
from vaegen.runs import loading
from vaegen.train import workdir as workdir_lib


def _coding_run(workdir: str, density: str | None):
    """The run of ``workdir`` with the recipe ``density`` applied (:func:`vaegen.load`)."""
    return loading.load(workdir, density=density)


def _json_path(out: pathlib.Path) -> pathlib.Path:
    return out.with_name(out.name + ".json")


def cmd_compress(args, overrides) -> int:
    """Codes a split or the user's images with the run's p(x) into one file; prints and writes (FILE.json)
    its bits/dim beside the model's bound on the same images."""
    if args.binarize and not args.images:
        raise ConfigError("--binarize applies to --images only (a split is binarized as its run's config says)")
    out = pathlib.Path(args.out)
    for path in (out, _json_path(out)):
        workdir_lib.check_writable(path, option="--out")
    settings = key_values(args.set)
    run = _coding_run(args.workdir, args.density)
    support = run.spec.model.likelihood.trait("support")
    if args.images:
        user = images_lib.load_images(args.images, event_shape=run.event_shape, support=support,
                               binarize=args.binarize or "none", seed=args.seed, max_examples=args.max_examples)
        x = np.asarray(binarization_lib.to_float(None, user.stored, user.protocol))
        images = {"source": str(args.images), "binarization": user.info["binarize"]}
    else:
        split = args.split or "test"
        x = run.split(split, max_examples=args.max_examples)
        protocol = splits_lib.split_protocol(run.spec.data, split)
        images = {"source": f"the {split} split of {run.spec.data.name}",
                  "binarization": f"{protocol} (the run's protocol for its {split} split)"}
    t0 = time.perf_counter()
    data, stats = compression_lib.compress_with_stats(run, x, coder=args.coder, settings=settings, images=images,
                                                      model={"density": args.density})
    seconds = time.perf_counter() - t0
    print(f"compressed {x.shape[0]} images ({images['source']}; binarization: {images['binarization']}) in "
          f"{seconds:.2f} s")
    result = compression_lib.report(run, x, data, seed=args.seed, samples=args.samples, stats=stats, seconds=seconds)
    compression_lib.write_file(out, data)
    saved = evaluate_lib.save_json(_json_path(out), result)
    print(compression_lib.format_report(result))
    print(f"wrote {out}; {saved.message()}")
    return 0


def cmd_decompress(args, overrides) -> int:
    """Decodes a file of `vaegen compress` with the run that wrote it into a .npy of the images as the
    model saw them; prints and writes (PATH.npy.json) the same measurements."""
    out = pathlib.Path(args.out)
    if out.suffix != ".npy":
        raise ConfigError(f"--out writes the images as a .npy file; got {args.out!r}")
    for path in (out, _json_path(out)):
        workdir_lib.check_writable(path, option="--out")
    source = pathlib.Path(args.file)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such compressed file")
    data = source.read_bytes()
    header = compression_lib.read_header(data)            # a damaged file: one line, before the run is read
    run = _coding_run(args.workdir, args.density)
    t0 = time.perf_counter()
    x = compression_lib.decompress(run, data)
    seconds = time.perf_counter() - t0
    images = header["images"]
    print(f"decompressed {x.shape[0]} images ({images.get('source', 'images')}; binarization: "
          f"{images.get('binarization', 'not recorded')}) in {seconds:.2f} s")
    result = compression_lib.report(run, x, data, seed=args.seed, samples=args.samples, seconds=seconds)
    compression_lib.save_images(out, x)
    saved = evaluate_lib.save_json(_json_path(out), result)
    print(compression_lib.format_report(result))
    print(f"wrote {out}; {saved.message()}")
    return 0


def add(sub) -> None:
    """The ``compress`` and ``decompress`` subcommands."""
    samples_help = ("samples of the bound it is compared with: z per image for the -ELBO (8; none where a discrete z "
                    "has at most 256 values: its -ELBO is then summed exactly), importance samples (100)")
    z = sub.add_parser("compress", help="code images losslessly with the model's p(x) into one file",
                       description="Codes a split or your images with the run's model (bits back for a VAE, its z "
                                   "continuous or discrete, the quantized code for an AE with a density over its codes, a VQ-VAE's codes, "
                                   "MADE's pixels) into FILE, and writes FILE.json: the file's bits/dim, the "
                                   "model's bound on the same images and the gap. An AE without p(z) is refused: "
                                   "it defines no p(x).")
    z.add_argument("--workdir", required=True)
    add_density(z, "code with the run")
    source = z.add_mutually_exclusive_group()
    source.add_argument("--images", metavar="PATH", help="your images, as `vaegen evaluate --images` takes them")
    source.add_argument("--split", choices=("test", "validation"), default=None, help="a split of the run's data "
                        "(default test), binarized as the run's evaluation protocol")
    z.add_argument("--binarize", choices=images_lib.BINARIZE, default=None,
                   help="--images for a Bernoulli likelihood: threshold, sample (one draw keyed by --seed) or none")
    z.add_argument("--max-examples", type=non_negative_int, default=0, help="the first n images (0 = all)")
    z.add_argument("--coder", choices=CODERS.names(), default=None, help="a registered coder (default: the model's)")
    z.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a setting of the coder, e.g. --set precision=12 (`vaegen config --components coder`)")
    z.add_argument("--samples", type=positive_int, default=None, help=samples_help)
    z.add_argument("--seed", type=non_negative_int, default=0)
    z.add_argument("--out", required=True, metavar="FILE", help="the compressed file (and FILE.json)")
    z.set_defaults(func=cmd_compress)

    u = sub.add_parser("decompress", help="decode a file of `vaegen compress` into a .npy of the images",
                       description="Decodes FILE with the run (and --density) that wrote it into PATH.npy (the "
                                   "images as the model saw them, after the binarization the file records) and "
                                   "writes PATH.npy.json. A file of another model, or damaged, is refused.")
    u.add_argument("file", metavar="FILE")
    u.add_argument("--workdir", required=True)
    add_density(u, "decode with the run")
    u.add_argument("--samples", type=positive_int, default=None, help=samples_help)
    u.add_argument("--seed", type=non_negative_int, default=0)
    u.add_argument("--out", required=True, metavar="PATH.npy", help="the decoded images (and PATH.npy.json)")
    u.set_defaults(func=cmd_decompress)
